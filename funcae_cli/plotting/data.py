"""`data` figures: example curves labelled with their parameters (notebooks 000, 001, 004)."""

from __future__ import annotations

from matplotlib.figure import Figure

from funcae_cli.data import Dataset
from funcae_cli.families import Family
from funcae_cli.plotting.base import new_figure, param_label, setup_curve_axes


def data_preview(ds: Dataset, family: Family, n: int = 5, title: str = "") -> Figure:
    fig, ax = new_figure(figsize=(7, 4.2))
    x = ds.grid.numpy()
    for curve, params in zip(ds.curves[:n].numpy(), ds.params[:n].numpy()):
        ax.plot(x, curve, label=param_label(family, params))
    setup_curve_axes(ax, family)
    ax.legend(loc="best")
    ax.set_title(
        f"{title}: {n} of {ds.curves.shape[0]:,} curves ({family.description})" if title else family.description
    )
    return fig
