"""`reconstruction` (notebook 004's validation curves beside their reconstructions, plus the
worst five) and `pca` (per-curve error of the autoencoder against PCA) figures."""

from __future__ import annotations

import numpy as np
from matplotlib.figure import Figure

from funcae_cli.config.families import Family
from funcae_cli.plotting.base import (
    add_curves,
    new_figure,
    param_label,
    setup_curve_axes,
    shown_caption,
    subsample,
)


def reconstruction_figure(
    x: np.ndarray,
    curves: np.ndarray,
    recon: np.ndarray,
    family: Family,
    *,
    params: np.ndarray | None = None,
    color: np.ndarray | None = None,
    color_label: str = "",
    n_show: int = 40,
    n_worst: int = 5,
    seed: int = 0,
    split: str = "validation",
    title: str = "",
) -> Figure:
    """Top: `n_show` curves of the split beside their reconstructions (same colours, same axes;
    notebook 004); bottom: the `n_worst` curves with the largest per-curve SSE and their
    reconstructions.

    curves, recon: (n, n_points) in the family's units; params: (n, n_params) for the legend;
    color: (n,) values colouring the curves (e.g. log10 of a parameter), labelled color_label.
    """
    n = curves.shape[0]
    sse = ((recon.astype(np.float64) - curves) ** 2).sum(axis=1)  # per-curve sum of squares
    idx = subsample(n, n_show, seed)
    fig = Figure(layout="constrained", figsize=(14, 9.5))
    upper, lower = fig.subfigures(2, 1, height_ratios=[1, 1])  # laid out apart: the legend below
    top = list(upper.subplots(1, 2))  # does not squeeze the panels above
    c = None if color is None else np.asarray(color)[idx]
    style = {"colors": "tab:blue", "alpha": 0.6} if c is None else {"alpha": 0.85}
    lc = None
    for ax, ys in zip(top, (curves, recon)):
        lc = add_curves(ax, x, ys[idx], color=c, lw=1.1, **style)
        setup_curve_axes(ax, family)
    top[0].set_title(f"{len(idx)} of {n:,} {split} curves" if len(idx) < n else f"all {n:,} {split} curves")
    top[1].set_title("their reconstructions (same colours)")
    # the same range on both panels so that the eye can compare them
    lo = min(top[0].get_ylim()[0], top[1].get_ylim()[0])
    hi = max(top[0].get_ylim()[1], top[1].get_ylim()[1])
    for ax in top:
        ax.set_xlim(x.min(), x.max())
        ax.set_ylim(lo, hi)
    if c is not None:
        upper.colorbar(lc, ax=top, label=color_label, pad=0.01, aspect=30)

    ax = lower.subplots()
    worst = np.argsort(-sse)[:n_worst]
    colors = ["tab:red", "tab:blue", "tab:green", "tab:purple", "tab:orange", "tab:brown", "tab:pink"]
    for k, i in enumerate(worst):
        col = colors[k % len(colors)]
        label = f"SSE {sse[i]:.3g}"
        if params is not None and params.shape[1]:
            label += f": {param_label(family, params[i], digits=3)}"
        ax.plot(x, curves[i], color=col, lw=1.8, label=label)
        ax.plot(x, recon[i], color=col, lw=1.8, ls="--")
    ax.plot([], [], color="0.3", lw=1.6, label="solid: curve; dashed: reconstruction")
    setup_curve_axes(ax, family)
    ax.set_xlim(x.min(), x.max())
    ax.set_title(f"the worst {len(worst)} of {n:,} by per-curve SSE")
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0)  # beside the axes
    caption = (
        f"{split} split: per-curve SSE mean {sse.mean():.4g}, median {np.median(sse):.4g}, "
        f"95th percentile {np.percentile(sse, 95):.4g} (family units)"
    )
    fig.suptitle(f"{title}\n{caption}" if title else caption)
    return fig


def pca_figure(
    sse_model: np.ndarray,
    sse_pca: np.ndarray,
    *,
    components: int,
    model_label: str = "autoencoder",
    split: str = "test",
    max_points: int = 20_000,
    seed: int = 0,
    title: str = "",
) -> Figure:
    """Per-curve SSE of the model against PCA with the same number of components: histograms on a
    log axis (left) and curve by curve (right; below the diagonal the model wins)."""
    a = np.asarray(sse_model, dtype=float)
    b = np.asarray(sse_pca, dtype=float)
    pos = np.concatenate([a[a > 0], b[b > 0]])
    lo, hi = (pos.min(), pos.max()) if pos.size else (1e-12, 1.0)
    floor = lo / 2  # exact zeros (e.g. a constant curve) still get a place on the log axis
    a_, b_ = np.maximum(a, floor), np.maximum(b, floor)
    bins = np.geomspace(floor, hi * 1.05, int(np.clip(2 * np.sqrt(max(a.size, 1)), 10, 60)))
    pca_label = f"PCA, {components} component{'s' if components != 1 else ''}"
    fig, axes = new_figure(ncols=2, figsize=(13, 4.8), width_ratios=[1.4, 1])
    ax = axes[0]
    for vals, label, col in ((a_, model_label, "tab:blue"), (b_, pca_label, "tab:orange")):
        ax.hist(vals, bins=bins, histtype="stepfilled", alpha=0.35, color=col)
        ax.hist(vals, bins=bins, histtype="step", lw=1.6, color=col, label=f"{label}: median {np.median(vals):.3g}")
        ax.axvline(np.median(vals), color=col, ls="--", lw=1.2)
    ax.set_xscale("log")
    ax.set_ylim(0, ax.get_ylim()[1] * 1.2)  # head room for the legend
    ax.set_xlabel("per-curve SSE (family units)")
    ax.set_ylabel("number of curves")
    ax.set_title("distribution of the reconstruction error (dashed: medians)")
    ax.legend(loc="upper right")

    ax = axes[1]
    idx = subsample(a.size, max_points, seed)
    ax.scatter(b_[idx], a_[idx], s=12 if idx.size < 2000 else 4, alpha=0.5, linewidths=0, rasterized=True)
    ax.plot([floor, hi], [floor, hi], color="0.3", ls="--", lw=1, label="equal error")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel(f"SSE, {pca_label}")
    ax.set_ylabel(f"SSE, {model_label}")
    wins = float((a < b).mean()) if a.size else 0.0
    shown = f"; {shown_caption(idx.size, a.size, 'curves')}" if idx.size < a.size else ""
    ax.set_title(f"curve by curve: {model_label} better on {100 * wins:.0f}%{shown}")
    ax.legend(loc="upper left")
    ax.set_aspect("equal", adjustable="datalim")
    caption = (
        f"{split} split, {a.size:,} curves: mean SSE {model_label} {a.mean():.4g}, {pca_label} {b.mean():.4g} "
        f"(ratio {a.mean() / max(b.mean(), 1e-300):.3g})"
    )
    fig.suptitle(f"{title}\n{caption}" if title else caption)
    return fig
