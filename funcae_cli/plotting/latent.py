"""Latent-space figures: `latent` (histograms, scatter, pair plot), `decoder_grid` and `corner`.

Each function takes arrays (codes, decoded curves, parameter values) and returns a Figure; the
caller computes them from a trained run (see runs/plot.py).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np
from matplotlib import colormaps
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Circle, Rectangle
from matplotlib.ticker import FixedLocator, FuncFormatter, MaxNLocator, NullLocator

from funcae_cli.config.families import Family
from funcae_cli.plotting.base import (
    CMAP,
    POINT_COLOR,
    REFERENCE_COLOR,
    inner_ticks,
    latent_label,
    new_figure,
    range_with_margin,
    shown_caption,
    subsample,
)

VAE_RADII = (1, 2, 3, 4, 5)  # circles of the N(0, I) prior (notebook 001)

# The reference region drawn over the codes, per model kind: (caption, region the axes must show).
REFERENCE = {
    "ae": ("dashed: the (-1, 1) square", (-1.1, 1.1)),
    "vae": ("dashed: circles r = 1..5 of the N(0, I) prior", (-1.1, 1.1)),
}


def _draw_reference(ax, model_kind: str) -> None:
    style = {"fill": False, "ls": "--", "lw": 1.2, "color": REFERENCE_COLOR, "zorder": 3}
    if model_kind == "vae":
        for r in VAE_RADII:
            ax.add_patch(Circle((0, 0), r, **style))
    else:
        ax.add_patch(Rectangle((-1, -1), 2, 2, **style))


def _draw_reference_1d(ax, model_kind: str, legend: bool = True) -> None:
    """On a histogram: the prior density for a VAE, the square's edges for an AE."""
    if model_kind == "vae":
        t = np.linspace(*ax.get_xlim(), 200)
        ax.plot(t, np.exp(-0.5 * t * t) / np.sqrt(2 * np.pi), ls="--", color=REFERENCE_COLOR, label="N(0, 1)")
        if legend:
            ax.legend(loc="upper right")
    else:
        for v in (-1, 1):
            ax.axvline(v, ls="--", lw=1.2, color=REFERENCE_COLOR)


def _limits(z: np.ndarray, model_kind: str) -> list[tuple[float, float]]:
    include = REFERENCE.get(model_kind, REFERENCE["ae"])[1]
    return [range_with_margin(z[:, i], include) for i in range(z.shape[1])]


def _hist(
    ax, values: np.ndarray, lim: tuple[float, float], model_kind: str, label: str, bins: int = 60, legend: bool = True
) -> None:
    # bins over the codes' own range (fine even when they occupy a sliver of the shown range)
    bins = int(np.clip(np.sqrt(values.size), 15, bins))
    ax.hist(values, bins=bins, range=range_with_margin(values, margin=0.0), density=True, color=POINT_COLOR, alpha=0.75)
    ax.set_xlim(lim)
    _draw_reference_1d(ax, model_kind, legend)
    ax.set_xlabel(label)
    ax.set_ylabel("density")


MAX_CATEGORIES = 20  # labels drawn in categorical colours (tab10, tab20); more: a colour scale


@dataclass
class Categories:
    """Integer labels drawn in categorical colours with a legend (e.g. the digit of each image)."""

    values: np.ndarray  # (n,) labels of every point
    classes: np.ndarray  # (k,) the distinct labels, sorted
    palette: np.ndarray  # (k, 4) RGBA, one per class

    @classmethod
    def of(cls, labels: np.ndarray) -> Categories | None:
        """None when there are too many distinct labels for categorical colours."""
        labels = np.asarray(labels)
        classes = np.unique(labels)
        if len(classes) > MAX_CATEGORIES:
            return None
        cmap = colormaps["tab10" if len(classes) <= 10 else "tab20"]
        return cls(labels, classes, np.array([cmap(i) for i in range(len(classes))]))

    def colors(self, idx: np.ndarray) -> np.ndarray:
        """RGBA (len(idx), 4) of the points idx."""
        return self.palette[np.searchsorted(self.classes, self.values[idx])]

    def handles(self) -> list[Line2D]:
        return [
            Line2D([], [], ls="", marker="o", ms=6, color=c, label=str(k)) for k, c in zip(self.classes, self.palette)
        ]

    def legend(self, ax, **kwargs) -> None:
        ax.legend(
            handles=self.handles(),
            title="label",
            ncols=2 if len(self.classes) > 10 else 1,
            fontsize=8,
            title_fontsize=9,
            handletextpad=0.2,
            **kwargs,
        )


def _scatter(ax, zx, zy, color, vmin_vmax, s: float):
    """color: None (one colour), (n,) values on the colour scale, or (n, 4) RGBA (categories)."""
    kwargs = dict(s=s, linewidths=0, alpha=0.7, rasterized=True)
    if color is None:
        return ax.scatter(zx, zy, color=POINT_COLOR, **kwargs)
    if np.ndim(color) == 2:
        return ax.scatter(zx, zy, c=color, **kwargs)
    return ax.scatter(zx, zy, c=color, cmap=CMAP, vmin=vmin_vmax[0], vmax=vmin_vmax[1], **kwargs)


def latent_figure(
    z: np.ndarray,
    *,
    model_kind: str = "ae",
    color: np.ndarray | None = None,
    color_label: str = "",
    labels: np.ndarray | None = None,
    max_points: int = 20_000,
    max_dims: int = 8,
    seed: int = 0,
    title: str = "",
    what: str = "training codes",
) -> Figure:
    """Histogram of each latent dimension and a scatter of the codes (notebooks 000, 001, 002).

    z: (n, latent_dim) codes; color: (n,) values to colour the points by (e.g. log10 of a
    parameter) labelled `color_label` on the colorbar; labels: (n,) integer labels (e.g. the
    digit) drawn in categorical colours with a legend titled "label", used instead of `color`
    (more than 20 distinct labels: on a colour scale). Histograms use every code; scatters at
    most `max_points` (a random subsample, said in the title). latent_dim > 2: a pair plot of
    the `max_dims` dimensions of largest variance.
    """
    n, d = z.shape
    cats = Categories.of(labels) if labels is not None else None
    if labels is not None and cats is None:
        color, color_label = np.asarray(labels, dtype=float), "label"
    idx = subsample(n, max_points, seed)
    zs = z[idx]
    cs = None if color is None else np.asarray(color)[idx]
    if cats is not None:
        cs = cats.colors(idx)
    # colour scale from the 0.5 and 99.5 percentiles: one extreme value does not wash out the rest
    vrange = None if color is None or cats else tuple(float(v) for v in np.nanpercentile(color, [0.5, 99.5]))
    s = 3.0 if len(idx) > 5000 else 8.0
    ref_caption = REFERENCE.get(model_kind, REFERENCE["ae"])[0]
    if len(idx) < n:
        caption = f"histograms: all {n:,} {what}; scatter: {shown_caption(len(idx), n, what)}; {ref_caption}"
    else:
        caption = f"all {n:,} {what}; {ref_caption}"
    if d <= 2:
        fig = _latent_small(z, zs, cs, vrange, s, model_kind, color_label, cats)
    else:
        fig = _latent_pairs(z, zs, cs, vrange, s, model_kind, color_label, max_dims, cats)
        if d > max_dims:
            caption += f"; the {max_dims} of {d} dimensions of largest variance"
    fig.suptitle(f"{title}\n{caption}" if title else caption)
    return fig


def _latent_small(z, zs, cs, vrange, s, model_kind, color_label, cats: Categories | None = None) -> Figure:
    """latent_dim 1 or 2: one histogram per dimension and one scatter panel."""
    d = z.shape[1]
    lims = _limits(z, model_kind)
    if d == 1 and cats is not None:  # one histogram per label beside the histogram of all codes
        fig, axes = new_figure(ncols=2, figsize=(12, 4.4))
        _hist(axes[0], z[:, 0], lims[0], model_kind, latent_label(0))
        axes[0].set_title(f"distribution of {latent_label(0)}")
        ax = axes[1]
        bins = np.linspace(*range_with_margin(z[:, 0], margin=0.0), int(np.clip(np.sqrt(len(z)), 15, 60)))
        for k, c in zip(cats.classes, cats.palette):
            ax.hist(z[cats.values == k, 0], bins=bins, histtype="step", lw=1.5, color=c)
        ax.set_xlim(lims[0])
        ax.set_xlabel(latent_label(0))
        ax.set_ylabel("number of codes")
        ax.set_title(f"{latent_label(0)} by label")
        cats.legend(ax, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0)
        return fig
    if d == 1:
        fig, axes = new_figure(ncols=2 if cs is not None else 1, figsize=(11 if cs is not None else 5.5, 4.4))
        axes = np.atleast_1d(axes)
        _hist(axes[0], z[:, 0], lims[0], model_kind, latent_label(0))
        if cs is not None:
            ax = axes[1]
            ax.scatter(zs[:, 0], cs, s=s, linewidths=0, alpha=0.7, color=POINT_COLOR, rasterized=True)
            ax.set_xlim(lims[0])
            ax.set_xlabel(latent_label(0))
            ax.set_ylabel(color_label)
            ax.set_title(f"{latent_label(0)} against {color_label}")
        return fig
    fig, axes = new_figure(ncols=3, figsize=(15, 4.8), width_ratios=[1, 1, 1.35])
    for i in range(2):
        _hist(axes[i], z[:, i], lims[i], model_kind, latent_label(i))
        axes[i].set_title(f"distribution of {latent_label(i)}")
    ax = axes[2]
    sc = _scatter(ax, zs[:, 0], zs[:, 1], cs, vrange, s)
    _draw_reference(ax, model_kind)
    ax.set_xlim(lims[0])
    ax.set_ylim(lims[1])
    ax.set_aspect("equal", adjustable="box")
    ax.set_xlabel(latent_label(0))
    ax.set_ylabel(latent_label(1))
    if cats is not None:
        ax.set_title("codes, coloured by label")
        cats.legend(ax, loc="upper left", bbox_to_anchor=(1.02, 1.0), borderaxespad=0, markerscale=1.2)
    else:
        ax.set_title("codes" + (f", coloured by {color_label}" if cs is not None else ""))
    if cs is not None and cats is None:
        fig.colorbar(sc, ax=ax, label=color_label)
    return fig


def _latent_pairs(z, zs, cs, vrange, s, model_kind, color_label, max_dims, cats: Categories | None = None) -> Figure:
    """latent_dim > 2: pair (corner) plot; diagonal histograms, lower triangle scatters."""
    d = z.shape[1]
    dims = np.sort(np.argsort(-z.var(axis=0))[:max_dims]) if d > max_dims else np.arange(d)
    k = len(dims)
    lims = _limits(z, model_kind)
    size = min(2.5 * k + 1.5, 18.0)
    fig, axes = new_figure(nrows=k, ncols=k, figsize=(size, size - 0.6), squeeze=False)
    sc = None
    for r, i in enumerate(dims):
        for c, j in enumerate(dims):
            ax = axes[r, c]
            if c > r:
                ax.set_axis_off()
                continue
            if c == r:
                _hist(ax, z[:, i], lims[i], model_kind, "", bins=50, legend=False)
                ax.set_ylabel("")
                ax.set_yticks([])
            else:
                sc = _scatter(ax, zs[:, j], zs[:, i], cs, vrange, min(s, 3.0))
                _draw_reference(ax, model_kind)
                ax.set_ylim(lims[i])
            ax.set_xlim(lims[j])
            if r == k - 1:
                ax.set_xlabel(latent_label(j))
            else:
                ax.tick_params(labelbottom=False)
            if c == 0 and r > 0:
                ax.set_ylabel(latent_label(i))
            elif c > 0:
                ax.tick_params(labelleft=False)
    if cats is not None:  # in the empty top-right cells
        cats.legend(axes[0, -1], loc="upper right", borderaxespad=0)
    elif cs is not None and sc is not None:  # horizontal, in the empty top-right cell
        cax = axes[0, -1].inset_axes([0.05, 0.6, 0.9, 0.1])
        fig.colorbar(sc, cax=cax, orientation="horizontal", label=color_label)
    return fig


# --- decoder grid -----------------------------------------------------------------------------


def grid_codes(center: np.ndarray, dims: tuple[int, ...], lim: float, n: int = 10) -> tuple[np.ndarray, np.ndarray]:
    """Codes of an n x n (or n for one dim) grid over [-lim, lim] in `dims`, others at `center`.

    Returns (codes (n**len(dims), latent_dim) row-major over (z_b descending, z_a ascending),
    ticks (n,)), the order the panels are drawn in: top row = largest z_b.
    """
    ticks = np.linspace(-lim, lim, n)
    if len(dims) == 1:
        codes = np.repeat(center[None, :], n, axis=0)
        codes[:, dims[0]] = ticks
        return codes, ticks
    a, b = dims
    zb, za = np.meshgrid(ticks[::-1], ticks, indexing="ij")  # (n, n): rows z_b high -> low
    codes = np.repeat(center[None, :], n * n, axis=0)
    codes[:, a] = za.ravel()
    codes[:, b] = zb.ravel()
    return codes, ticks


def support_mask(z: np.ndarray, dims: tuple[int, ...], ticks: np.ndarray) -> np.ndarray:
    """Which grid cells hold at least one training code (projected on `dims`): (n, n) bool, rows
    z_b high -> low like grid_codes; (n,) for one dim."""
    h = ticks[1] - ticks[0] if len(ticks) > 1 else 1.0
    edges = np.concatenate([ticks - h / 2, [ticks[-1] + h / 2]])
    if len(dims) == 1:
        counts, _ = np.histogram(z[:, dims[0]], bins=edges)
        return counts > 0
    counts, _, _ = np.histogram2d(z[:, dims[0]], z[:, dims[1]], bins=[edges, edges])  # (a, b)
    return (counts > 0).T[::-1]  # rows: z_b high -> low; columns: z_a low -> high


def decoder_grid_figure(
    x: np.ndarray,
    decoded: np.ndarray,
    codes: np.ndarray,
    dims: tuple[int, ...],
    family: Family,
    *,
    support: np.ndarray | None = None,
    title: str = "",
    note: str = "",
) -> Figure:
    """Decoded curves on a grid of codes (notebooks 000, 001), each panel titled with its code.

    decoded: (n*n, n_points) curves for `codes` in grid_codes' order; dims: the latent
    dimensions varied (one or two). support: cells with training codes; the others are shaded
    (the decoder extrapolates there).
    """
    n = int(round(len(codes) ** (1 / len(dims))))
    nrows, ncols = (n, n) if len(dims) == 2 else (1, n)
    names = " and ".join(latent_label(i) for i in dims)
    lines = [title, f"decoded curves on a grid of {names} {note}".strip()]
    lines.append(f"panel titles: ({names.replace(' and ', ', ')})")
    mask = None if support is None else np.asarray(support).reshape(nrows, ncols)
    if mask is not None and not mask.all():
        lines[-1] += "; grey panels: no training code in that cell (the decoder extrapolates)"
    header = "\n".join(line for line in lines if line)
    # Laid out by hand in inches: constrained layout costs seconds on 100 axes and is not needed
    # for a regular grid whose only labels are on the outer panels.
    panel_w, panel_h, gap_w, gap_h = 1.3, 0.95, 0.12, 0.3  # inches; gap_h leaves room for titles
    left, right, bottom, top = 0.95, 0.2, 0.65, 0.3 + 0.22 * (header.count("\n") + 1)
    width = left + right + ncols * panel_w + (ncols - 1) * gap_w
    height = bottom + top + nrows * panel_h + (nrows - 1) * gap_h
    fig = Figure(figsize=(width, height))
    fig.subplots_adjust(
        left=left / width,
        right=1 - right / width,
        bottom=bottom / height,
        top=1 - top / height,
        wspace=gap_w / panel_w,
        hspace=gap_h / panel_h,
    )
    axes = np.asarray(fig.subplots(nrows, ncols, sharex=True, sharey=True, squeeze=False))
    finite = decoded[np.isfinite(decoded)]
    lo, hi = (finite.min(), finite.max()) if finite.size else (0.0, 1.0)
    pad = 0.05 * (hi - lo if hi > lo else 1.0)
    for k, ax in enumerate(axes.ravel()):
        r, c = divmod(k, ncols)
        ax.plot(x, decoded[k], color="tab:blue", lw=1.2)
        code = ", ".join(f"{codes[k, i]:.2f}" for i in dims)
        ax.set_title(f"({code})", fontsize=8, pad=2)
        ax.tick_params(labelsize=7, length=2)
        ax.xaxis.set_visible(r == nrows - 1)  # tick labels on the outer panels only
        ax.yaxis.set_visible(c == 0)
        if mask is not None and not mask[r, c]:
            ax.set_facecolor("0.9")
    ax0 = axes[0, 0]
    if family.x_log:
        ax0.set_xscale("log")
    # few x ticks, none on a panel's edge: the labels of neighbouring panels must not collide
    ticks = inner_ticks(float(x.min()), float(x.max()), family.x_log)
    if len(ticks) >= 2:
        ax0.xaxis.set_major_locator(FixedLocator(ticks))
        ax0.xaxis.set_minor_locator(NullLocator())
        ax0.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    ax0.yaxis.set_major_locator(MaxNLocator(nbins=4))
    ax0.set_xlim(x.min(), x.max())
    ax0.set_ylim(lo - pad, hi + pad)
    xlab = f"{family.x_label}    (panels: {latent_label(dims[0])} increases to the right)"
    fig.supxlabel(xlab, fontsize=10, y=0.2 / height, va="bottom")
    ylab = family.y_label + (f"    (panels: {latent_label(dims[1])} increases upwards)" if len(dims) == 2 else "")
    fig.supylabel(ylab, fontsize=10, x=0.2 / width, ha="left")
    fig.suptitle(header, fontsize=11, y=1 - 0.1 / height, va="top")
    return fig


# --- latent dimensions against physical parameters ------------------------------------------------


def spearman_matrix(z: np.ndarray, values: np.ndarray) -> np.ndarray:
    """Spearman rank correlation of each latent dim with each parameter: (latent_dim, n_params);
    NaN where a column is constant."""
    from scipy.stats import spearmanr

    d = z.shape[1]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # constant columns -> NaN, reported as such
        rho = spearmanr(np.column_stack([z, values])).statistic
    rho = np.atleast_2d(rho)
    if rho.shape == (1, 1):  # two columns: spearmanr returns a scalar
        return rho
    return rho[:d, d:]


def corner_figure(
    z: np.ndarray,
    values: np.ndarray,
    value_labels: list[str],
    *,
    max_points: int = 20_000,
    seed: int = 0,
    title: str = "",
    what: str = "training codes",
) -> Figure:
    """Each latent dimension (rows) against each physical parameter (columns), as notebook 004,
    with the Spearman rank correlation over all codes printed in each panel.

    values: (n, n_params), already on the scale to plot (log10 for positive scale parameters);
    value_labels: their axis labels.
    """
    n, d = z.shape
    p = values.shape[1]
    rho = spearman_matrix(z, values)
    idx = subsample(n, max_points, seed)
    s = 2.0 if len(idx) > 5000 else 5.0
    fig, axes = new_figure(
        nrows=d, ncols=p, figsize=(min(max(2.9 * p + 1.0, 8.0), 18), min(2.4 * d + 1.5, 18)), squeeze=False
    )
    zlims = [range_with_margin(z[:, i]) for i in range(d)]
    vlims = [range_with_margin(values[:, j]) for j in range(p)]
    for i in range(d):
        for j in range(p):
            ax = axes[i, j]
            ax.scatter(values[idx, j], z[idx, i], s=s, linewidths=0, alpha=0.5, color=POINT_COLOR, rasterized=True)
            ax.set_xlim(vlims[j])
            ax.set_ylim(zlims[i])
            r = rho[i, j]
            text = "ρ = n/a (constant)" if not np.isfinite(r) else f"ρ = {r:+.2f}"
            strong = np.isfinite(r) and abs(r) >= 0.5
            ax.text(
                0.04,
                0.94,
                text,
                transform=ax.transAxes,
                va="top",
                fontsize=10,
                fontweight="bold" if strong else "normal",
                bbox={"boxstyle": "round,pad=0.2", "facecolor": "white", "alpha": 0.85, "edgecolor": "0.7"},
            )
            if i == d - 1:
                ax.set_xlabel(value_labels[j])
            else:
                ax.tick_params(labelbottom=False)
            if j == 0:
                ax.set_ylabel(latent_label(i))
            else:
                ax.tick_params(labelleft=False)
    caption = (
        f"latent dimensions against physical parameters; points: {shown_caption(len(idx), n, what)}\n"
        f"ρ: Spearman rank correlation over all {n:,} (bold when |ρ| ≥ 0.5)"
    )
    fig.suptitle(f"{title}\n{caption}" if title else caption)
    return fig
