"""`data` figures: example curves labelled with their parameters (notebooks 000, 001, 004), or
for image data a grid of examples, one row per label (notebook 002)."""

from __future__ import annotations

from matplotlib.figure import Figure

from funcae_cli.config.families import Family
from funcae_cli.data.dataset import Dataset
from funcae_cli.plotting.base import new_figure, param_label, setup_curve_axes
from funcae_cli.plotting.images import image_examples_figure


def data_preview(
    ds: Dataset, family: Family, n: int = 5, title: str = "", image_shape: tuple[int, int] | None = None
) -> Figure:
    """The first n curves of the data set, each labelled with its parameter values (and units).

    image_shape (height, width): the rows are images; a grid of examples instead, one row per
    label when the data has at most 10 labels.
    """
    if image_shape is not None:
        labels = ds.labels.numpy() if ds.labels is not None else None
        return image_examples_figure(
            ds.curves.numpy(),
            image_shape,
            labels=labels,
            title=title,
            value_label=family.y_label,
        )
    n = min(n, ds.curves.shape[0])
    labelled = ds.params.ndim == 2 and ds.params.shape[1] > 0
    labels = (
        [param_label(family, ds.params[i].numpy(), names=ds.param_names) for i in range(n)] if labelled else [None] * n
    )
    wide = max((len(label) for label in labels if label), default=0) > 45  # e.g. four parameters with units
    fig, ax = new_figure(figsize=(11, 6.0) if wide else (9, 4.6))
    x = ds.grid.numpy()
    for curve, label in zip(ds.curves[:n].numpy(), labels):
        ax.plot(x, curve, lw=1.6, label=label)
    setup_curve_axes(ax, family)
    ax.set_xlim(x.min(), x.max())
    if labelled:  # beside the axes, or below them when the labels are long
        fig.legend(loc="outside lower center" if wide else "outside right upper", ncols=2 if wide else 1)
    what = f"{n} of {ds.curves.shape[0]:,} curves: {family.description}"
    fig.suptitle(f"{title}\n{what}" if title else what)
    return fig
