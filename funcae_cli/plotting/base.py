"""Shared figure helpers: headless backend, atomic saving, curve labels."""

from __future__ import annotations

import io
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # headless: never needs a display

import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

from funcae_cli.families import Family  # noqa: E402
from funcae_cli.rundir import atomic_write_bytes  # noqa: E402

plt.rcParams.update({"figure.dpi": 100, "font.size": 10, "axes.titlesize": 11, "legend.fontsize": 8})


def new_figure(**kwargs) -> tuple[Figure, object]:
    """A Figure (not attached to pyplot's global state) with constrained layout."""
    fig = Figure(
        layout="constrained",
        **{k: v for k, v in kwargs.items() if k not in ("nrows", "ncols", "sharex", "sharey", "squeeze")},
    )
    axes = fig.subplots(
        nrows=kwargs.get("nrows", 1),
        ncols=kwargs.get("ncols", 1),
        sharex=kwargs.get("sharex", False),
        sharey=kwargs.get("sharey", False),
        squeeze=kwargs.get("squeeze", True),
    )
    return fig, axes


def save_figure(fig: Figure, path: str | Path, fmt: str | None = None, dpi: int = 110) -> Path:
    path = Path(path)
    buf = io.BytesIO()
    fig.savefig(buf, format=fmt or path.suffix.lstrip(".") or "png", dpi=dpi)
    atomic_write_bytes(path, buf.getvalue())
    return path


def param_label(family: Family, values) -> str:
    """'μ=2.372, σ=1.670' for a legend."""
    return ", ".join(f"{p.label}={float(v):.4g}" for p, v in zip(family.params, values))


def setup_curve_axes(ax, family: Family) -> None:
    ax.set_xlabel(family.x_label)
    ax.set_ylabel(family.y_label)
    if family.x_log:
        ax.set_xscale("log")
