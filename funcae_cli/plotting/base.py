"""Shared figure helpers: headless backend, atomic saving, curve labels, subsampling, colours."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")  # headless: never needs a display

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.collections import LineCollection  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from matplotlib.ticker import FuncFormatter, LogFormatter, LogLocator, NullLocator  # noqa: E402

from funcae_cli.config.families import Family  # noqa: E402

plt.rcParams.update({"figure.dpi": 100, "font.size": 10, "axes.titlesize": 11, "legend.fontsize": 8})

REFERENCE_COLOR = "crimson"  # the latent square / prior circles, drawn dashed
POINT_COLOR = "tab:blue"  # codes when there is nothing to colour them by
CMAP = "viridis"


SUBPLOT_KEYS = ("nrows", "ncols", "sharex", "sharey", "squeeze", "width_ratios", "height_ratios")


def new_figure(**kwargs) -> tuple[Figure, object]:
    """A Figure (not attached to pyplot's global state), with constrained layout unless `layout` says otherwise
    (None: the caller places the axes; constrained layout costs ~0.1 s per panel when drawn).

    Subplot arguments (nrows, ncols, sharex, sharey, squeeze, width_ratios, height_ratios) go to
    Figure.subplots, the rest to Figure.
    """
    kwargs.setdefault("layout", "constrained")
    fig = Figure(**{k: v for k, v in kwargs.items() if k not in SUBPLOT_KEYS})
    sub = {k: v for k, v in kwargs.items() if k in SUBPLOT_KEYS}
    axes = fig.subplots(**{"nrows": 1, "ncols": 1, **sub})
    return fig, axes


def warm_up_figure() -> Figure:
    """A small figure with what every figure has (a log axis and its ticks, labels, a title, a legend, constrained
    layout), to be rendered and thrown away: matplotlib loads its fonts, glyphs and caches on the first figure a
    process draws (~0.5 s of `funcae invert`'s three). A process that will draw later (jobs.figure_process)
    renders it while it waits."""
    fig, ax = new_figure(figsize=(3, 2))
    x = np.geomspace(0.1, 100.0, 20)
    ax.plot(x, np.sqrt(x), "o-", ms=3, label="$v_{c}$ (km/s)")
    ax.errorbar(x, np.sqrt(x), yerr=0.1 * np.sqrt(x), fmt="none")
    ax.set_xscale("log")
    ax.set_xlabel("r (kpc)")
    ax.set_ylabel("v (km/s)")
    ax.set_title("warm-up: $\\chi^2_\\nu$ = 1.0")
    ax.legend()
    return fig


def param_label(family: Family, values, digits: int = 4, names: list[str] | None = None) -> str:
    """'μ=2.372, σ=1.67' for a legend; with units where the parameter has one ('$R_d$=2.6 kpc'). Parameters
    the family does not describe (a user's file: `names`) are labelled by their names."""
    known = {p.name: p for p in family.params}
    parts = []
    for name, v in zip(names or family.param_names, values):
        p = known.get(name)
        text = f"{p.label if p is not None else name}={float(v):.{digits}g}"
        parts.append(text + (f" {p.unit}" if p is not None and p.unit else ""))
    return ", ".join(parts)


def setup_curve_axes(ax, family: Family) -> None:
    ax.set_xlabel(family.x_label)
    ax.set_ylabel(family.y_label)
    if family.x_log:
        ax.set_xscale("log")


def latent_label(i: int) -> str:
    """Axis label of latent dimension i (0-based): '$z_1$'."""
    return f"$z_{{{i + 1}}}$"


def subsample(n: int, k: int, seed: int = 0) -> np.ndarray:
    """Indices of at most k of n items: all of them in order when n <= k, else a seeded random subset.

    Random order also keeps a scatter from drawing one part of the data on top of the rest.
    """
    if n <= k:
        return np.arange(n)
    return np.random.default_rng(seed).choice(n, size=k, replace=False)


def shown_caption(shown: int, total: int, what: str = "points") -> str:
    """'all 1,800 points' or '20,000 of 90,000 points (random subsample)'."""
    if shown >= total:
        return f"all {total:,} {what}"
    return f"{shown:,} of {total:,} {what} (random subsample)"


def add_curves(ax, x: np.ndarray, curves: np.ndarray, color=None, cmap: str = CMAP, **kwargs) -> LineCollection:
    """Draw many curves at once (one LineCollection, not one Line2D each).

    color: None (one colour, kwargs may set it) or values (n,) mapped through cmap; the returned
    collection then serves as the mappable of a colorbar.
    """
    segs = np.stack([np.broadcast_to(x, curves.shape), curves], axis=-1)  # (n, n_points, 2)
    lc = LineCollection(segs, **kwargs)
    if color is not None:
        lc.set_array(np.asarray(color, dtype=float))
        lc.set_cmap(cmap)
    ax.add_collection(lc)
    ax.autoscale_view()
    return lc


def range_with_margin(values: np.ndarray, include: tuple[float, float] | None = None, margin: float = 0.05):
    """(lo, hi) covering the values (0.05 .. 99.95 percentiles, so one outlier does not squash the
    rest) and `include`, padded by `margin` of the span."""
    values = values[np.isfinite(values)]
    lo, hi = np.percentile(values, [0.05, 99.95]) if values.size else (0.0, 1.0)
    if include is not None:
        lo, hi = min(lo, include[0]), max(hi, include[1])
    span = hi - lo if hi > lo else max(abs(hi), 1.0)
    return float(lo - margin * span), float(hi + margin * span)


class _PlainLogFormatter(LogFormatter):
    """Log-axis labels as plain numbers (0.2, 0.5, 3) instead of 2 x 10^-1."""

    def _num_to_string(self, x, vmin, vmax):
        return f"{x:g}"


def log_scale(ax, values: np.ndarray, axis: str = "y") -> bool:
    """Log scale on `axis` when every finite value is positive (else leave it linear); within three
    decades the labels are plain numbers, minor ticks labelled when there is room. Returns whether
    the axis is logarithmic."""
    v = np.asarray(values, dtype=float)
    v = v[np.isfinite(v)]
    if not v.size or (v <= 0).any():
        return False
    target = ax.yaxis if axis == "y" else ax.xaxis
    (ax.set_yscale if axis == "y" else ax.set_xscale)("log")
    if np.log10(v.max() / v.min()) <= 3:
        target.set_major_formatter(_PlainLogFormatter(labelOnlyBase=False))
        target.set_minor_formatter(_PlainLogFormatter(labelOnlyBase=False))
    return True


def plain_log_ticks(ax, axis: str = "x") -> None:
    """A log axis ticked and labelled at 0.1, 0.2, 0.5, 1, 2, 5, ... in plain numbers, no minor ticks: readable in
    small panels whatever the range (matplotlib's default labels a narrow range's minor ticks 2x10^0, 3x10^0...)."""
    target = ax.xaxis if axis == "x" else ax.yaxis
    target.set_major_locator(LogLocator(subs=(1.0, 2.0, 5.0)))
    target.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    target.set_minor_locator(NullLocator())  # every tick is an artist: minor log ticks are half a panel's cost


def inner_ticks(lo: float, hi: float, log: bool, n: int = 3) -> list[float]:
    """A few ticks strictly inside (lo, hi), none on the edges, so that the labels of neighbouring
    small panels cannot collide: decades on a log axis, round numbers on a linear one."""
    from matplotlib.ticker import MaxNLocator

    if log:
        k0, k1 = int(np.ceil(np.log10(lo))), int(np.floor(np.log10(hi)))
        ticks = [10.0**k for k in range(k0, k1 + 1) if lo * 1.25 < 10.0**k < hi / 1.25]
        step = max(1, int(np.ceil(len(ticks) / n)))
        return ticks[::step]
    margin = 0.08 * (hi - lo)
    return [float(t) for t in MaxNLocator(nbins=n).tick_values(lo, hi) if lo + margin < t < hi - margin]
