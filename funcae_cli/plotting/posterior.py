"""The `posterior` figure: a corner plot of one target's posterior draws, the truth marked when it is known."""

from __future__ import annotations

import numpy as np
from matplotlib.figure import Figure

from funcae_cli.plotting.base import new_figure, subsample

CREDIBLE = (0.16, 0.5, 0.84)  # quantiles marked on the diagonal
MAX_POINTS = 3000  # draws in each scatter panel


def corner_posterior_figure(
    draws: np.ndarray,
    labels: list[str],
    *,
    truth: np.ndarray | None = None,
    log10: list[bool] | None = None,
    title: str = "",
    note: str = "",
) -> Figure:
    """draws (s, p): histograms of each quantity on the diagonal with its median and 16/84% quantiles, pairs of
    draws below it. log10: which quantities are drawn on their log10 scale (positive scale parameters).
    truth (p,): the true values, drawn as lines."""
    s, p = draws.shape
    log10 = log10 or [False] * p
    values = np.where(np.array(log10)[None, :], np.log10(np.clip(draws, 1e-300, None)), draws).astype(np.float64)
    true = None
    if truth is not None:
        true = np.where(np.array(log10), np.log10(np.clip(truth, 1e-300, None)), truth)
    axis = [f"log10 {lab}" if lg else lab for lab, lg in zip(labels, log10)]
    size = 2.3 * p + 0.8
    fig, axes = new_figure(nrows=p, ncols=p, figsize=(size, size), squeeze=False, layout=None)
    fig.subplots_adjust(left=0.12, bottom=0.1, right=0.98, top=1 - 0.7 / size, wspace=0.08, hspace=0.08)
    pick = subsample(s, MAX_POINTS)
    lims = [_limits(values[:, j], None if true is None else true[j]) for j in range(p)]
    for i in range(p):
        for j in range(p):
            ax = axes[i, j]
            if j > i:
                ax.set_visible(False)
                continue
            if i == j:
                ax.hist(values[:, j], bins=40, range=lims[j], color="0.45", histtype="stepfilled", alpha=0.8)
                for q in np.quantile(values[:, j], CREDIBLE):
                    ax.axvline(q, color="k", lw=0.9, ls="--" if q != np.median(values[:, j]) else "-")
                med, lo, hi = np.quantile(values[:, j], (0.5, 0.16, 0.84))
                ax.set_title(f"{axis[j]} = {med:.3g} (+{hi - med:.2g} / −{med - lo:.2g})", fontsize=8)
                ax.set_yticks([])
            else:
                ax.plot(values[pick, j], values[pick, i], ",", color="0.25", alpha=0.5, rasterized=True)
                ax.set_ylim(lims[i])
                if true is not None:
                    ax.axhline(true[i], color="tab:red", lw=1)
            if true is not None:
                ax.axvline(true[j], color="tab:red", lw=1, label="truth" if i == j == 0 else None)
            ax.set_xlim(lims[j])
            ax.tick_params(labelsize=7)
            if i == p - 1:
                ax.set_xlabel(axis[j], fontsize=8)
            else:
                ax.set_xticklabels([])
            if j == 0 and i > 0:
                ax.set_ylabel(axis[i], fontsize=8)
            elif j > 0:
                ax.set_yticklabels([])
    if true is not None:
        axes[0, 0].legend(fontsize=7, loc="upper right")
    fig.suptitle(" — ".join(t for t in (title, note) if t), fontsize=10)
    return fig


def _limits(v: np.ndarray, true: float | None) -> tuple[float, float]:
    lo, hi = np.quantile(v, (0.002, 0.998))
    if true is not None and np.isfinite(true):
        lo, hi = min(lo, true), max(hi, true)
    pad = 0.05 * (hi - lo) if hi > lo else max(abs(hi), 1.0) * 0.05
    return float(lo - pad), float(hi + pad)
