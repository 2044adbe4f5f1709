"""Figures of `funcae validate`: empirical coverage against nominal, the SBC rank histograms, and TARP's expected
coverage of the joint posterior."""

from __future__ import annotations

import math

import numpy as np
from matplotlib.figure import Figure

from funcae_cli.plotting.base import new_figure


def coverage_figure(
    names: list[str], coverage: list[dict[float, float]], n: int, *, title: str = "", note: str = ""
) -> Figure:
    """Per parameter, the fraction of targets whose central interval holds the truth, against the interval's
    nominal level; the grey band is the binomial 95% range of a calibrated posterior with n targets."""
    fig, ax = new_figure(figsize=(6.2, 5.4))
    grid = np.linspace(0.01, 0.99, 99)
    band = 1.96 * np.sqrt(grid * (1 - grid) / max(n, 1))
    ax.fill_between(grid, grid - band, grid + band, color="0.88", label=f"calibrated ±2σ ({n:,} targets)")
    ax.plot([0, 1], [0, 1], color="k", lw=0.8, ls=":")
    for name, cov in zip(names, coverage):
        levels = sorted(cov)
        ax.plot(levels, [cov[k] for k in levels], "o-", ms=5, label=name)
    ax.set_xlabel("nominal coverage of the central interval")
    ax.set_ylabel("empirical coverage (truth inside)")
    ax.set_xlim(0.35, 1.0)
    ax.set_ylim(0.35, 1.0)
    ax.legend(fontsize=8, loc="upper left")
    ax.set_title(" — ".join(t for t in (title, note) if t), fontsize=9)
    return fig


def ranks_figure(names: list[str], counts: list[np.ndarray], p_values: list[float], *, title: str = "") -> Figure:
    """SBC rank histograms, one per parameter: flat for a calibrated posterior; the band is the expected count
    +-2 binomial sigma."""
    p = len(names)
    cols = min(p, 4)
    rows = math.ceil(p / cols)
    fig, axes = new_figure(nrows=rows, ncols=cols, figsize=(3.6 * cols, 2.9 * rows + 0.6), squeeze=False)
    for k, ax in enumerate(axes.ravel()):
        if k >= p:
            ax.set_visible(False)
            continue
        c = counts[k]
        total, bins = c.sum(), c.size
        expected = total / bins
        sd = math.sqrt(expected * (1 - 1 / bins))
        ax.axhspan(expected - 2 * sd, expected + 2 * sd, color="0.88")
        ax.bar(np.arange(bins), c, width=0.9, color="tab:blue")
        ax.axhline(expected, color="k", lw=0.8)
        ax.set_title(f"{names[k]}: χ² test p = {p_values[k]:.3g}", fontsize=9)
        ax.set_xlabel("rank of the truth (binned)")
        ax.set_ylabel("targets")
    fig.suptitle(title, fontsize=10)
    return fig


def tarp_figure(alpha: np.ndarray, ecp: np.ndarray, band: float, *, n: int, names: list[str], level: float = 0.95,
                title: str = "", note: str = "") -> Figure:  # fmt: skip
    """TARP's expected coverage of the joint posterior against the credibility level, with its simultaneous
    bootstrap band (ecp +- band): a calibrated posterior's band holds the diagonal; a curve below it at high
    credibility is too narrow (or biased), above it too wide."""
    fig, ax = new_figure(figsize=(6.2, 5.4))
    ax.fill_between(alpha, np.clip(ecp - band, 0, 1), np.clip(ecp + band, 0, 1), color="0.85",
                    label=f"{level:.0%} bootstrap band ({n:,} targets)")  # fmt: skip
    ax.plot([0, 1], [0, 1], color="k", lw=0.8, ls=":", label="calibrated")
    ax.plot(alpha, ecp, color="tab:blue", lw=1.6, label="TARP: " + ", ".join(names))
    ax.set_xlabel("credibility level α")
    ax.set_ylabel("expected coverage (truth inside the α region)")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.legend(fontsize=8, loc="upper left")
    ax.set_title("\n".join(t for t in (title, note) if t), fontsize=9)
    return fig
