"""Figures of results: inversions (target, fit, residual) and sampled curves beside real ones.

They take arrays (an `Inversion` record per target); runs/results.py reads them from what `funcae invert`
and `funcae sample` wrote.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
from matplotlib.figure import Figure

from funcae_cli.data.families import Family
from funcae_cli.plotting.base import add_curves, latent_label, new_figure, setup_curve_axes, subsample

# --- inversion results ------------------------------------------------------------------------


@dataclass
class Inversion:
    """One inverted target, as far as the plot needs it."""

    x: np.ndarray
    target: np.ndarray
    fit: np.ndarray
    z: np.ndarray | None = None
    true_params: dict[str, float] = field(default_factory=dict)
    est_params: dict[str, float] = field(default_factory=dict)
    objective: float | None = None
    rel_l2: float | None = None
    source: str = ""
    yerr: np.ndarray | None = None  # one-sigma errors of the target (observed curves), same shape


def _fmt_params(p: dict[str, float], family: Family) -> str:
    labels = {q.name: q.label for q in family.params}
    return ", ".join(f"{labels.get(k, k)}={v:.4g}" for k, v in p.items())


ERRORBAR_STYLE: dict[str, Any] = {"fmt": "o", "ms": 3.5, "color": "k", "ecolor": "0.35", "elinewidth": 1.0,
                                  "capsize": 2.0}  # fmt: skip


def inversions_figure(results: list[Inversion], family: Family, *, title: str = "", note: str = "") -> Figure:
    """One row per inversion (at most a handful): target and fit on the left with the parameters
    and code in the legend, the residual target - fit on the right (notebook 000). A target with
    one-sigma errors (`yerr`) is drawn as points with error bars on both sides, and its chi^2 is
    given with the residual."""
    n = len(results)
    fig, axes = new_figure(
        nrows=n, ncols=2, figsize=(13, 3.3 * n + 0.9), squeeze=False, width_ratios=[1.3, 1], sharex="col"
    )
    for row, inv in zip(axes, results):
        ax = row[0]
        tlabel = "target" + (f": {_fmt_params(inv.true_params, family)}" if inv.true_params else "")
        if inv.yerr is None:
            ax.plot(inv.x, inv.target, color="k", lw=2.0, label=tlabel)
        else:
            ax.errorbar(inv.x, inv.target, yerr=inv.yerr, **ERRORBAR_STYLE, label=tlabel + " (±1σ)")
        flabel = "fit"
        if inv.z is not None:
            flabel += ": z = (" + ", ".join(f"{v:.3f}" for v in inv.z) + ")"
        ax.plot(inv.x, inv.fit, color="tab:red", lw=1.5, ls="--", label=flabel)
        if inv.est_params:
            ax.plot([], [], " ", label=f"estimated: {_fmt_params(inv.est_params, family)}")
        setup_curve_axes(ax, family)
        ax.legend(loc="best", fontsize=8)
        ax.set_title(inv.source, fontsize=9)
        ax = row[1]
        if inv.yerr is None:
            ax.plot(inv.x, inv.target - inv.fit, color="tab:purple", lw=1.2)
        else:
            ax.errorbar(inv.x, inv.target - inv.fit, yerr=inv.yerr, **{**ERRORBAR_STYLE, "color": "tab:purple"})
        ax.axhline(0, color="0.5", lw=0.8, ls=":")
        setup_curve_axes(ax, family)
        ax.set_ylabel("target − fit")
        stats = [f"|target − fit| {np.linalg.norm(inv.target - inv.fit):.4g}"]  # the plotted residual, family units
        if inv.rel_l2 is not None:
            stats.append(f"relative L2 {inv.rel_l2:.3g}")
        stats.append(f"max |residual| {np.abs(inv.target - inv.fit).max():.3g}")
        title = "residual: " + ", ".join(stats)
        if inv.yerr is not None:
            title += f"\nχ² {np.sum(((inv.target - inv.fit) / inv.yerr) ** 2):.4g} over {inv.target.size} points"
        ax.set_title(title, fontsize=9)
    for ax in axes[:-1].ravel():
        ax.set_xlabel("")
    lines = [title, f"{n} inversion result{'s' if n != 1 else ''}" + (f": {note}" if note else "")]
    fig.suptitle("\n".join(line for line in lines if line))
    return fig


RUG_BELOW = 100  # fewer sampled codes than this: a rug, not a histogram


def samples_comparison_figure(
    x: np.ndarray,
    real: np.ndarray,
    sampled: np.ndarray,
    family: Family,
    *,
    z_real: np.ndarray | None = None,
    z_sampled: np.ndarray | None = None,
    n_show: int = 40,
    max_dims: int = 6,
    seed: int = 0,
    title: str = "",
    note: str = "",
) -> Figure:
    """Curves sampled from the model beside real ones on the same axes (notebooks 003, 004); below,
    each latent dimension's distribution for the data's codes and the sampled codes (notebook 004)."""
    with_codes = z_real is not None and z_sampled is not None and z_real.shape[1] == z_sampled.shape[1]
    fig = Figure(layout="constrained", figsize=(14, 8.6 if with_codes else 5.0))
    top, bottom = fig.subfigures(2, 1, height_ratios=[1.5, 1]) if with_codes else (fig, None)
    ax_real, ax_samp = top.subplots(1, 2, sharex=True, sharey=True)
    isamp = subsample(len(sampled), n_show, seed + 1)
    ir = subsample(len(real), len(isamp), seed)  # as many real curves as sampled ones: a fair comparison
    add_curves(ax_real, x, real[ir], color=None, lw=1.0, alpha=0.7, colors="tab:blue")
    add_curves(ax_samp, x, sampled[isamp], color=None, lw=1.0, alpha=0.7, colors="tab:orange")
    for ax, name, k, tot in ((ax_real, "data", len(ir), len(real)), (ax_samp, "sampled", len(isamp), len(sampled))):
        setup_curve_axes(ax, family)
        ax.set_title(f"{k} of {tot:,} {name} curves" if k < tot else f"{tot:,} {name} curves")
    ax_samp.set_ylabel("")
    ax_real.set_xlim(x.min(), x.max())
    lo = min(np.nanmin(real[ir]), np.nanmin(sampled[isamp]))
    hi = max(np.nanmax(real[ir]), np.nanmax(sampled[isamp]))
    pad = 0.05 * (hi - lo if hi > lo else 1.0)
    ax_real.set_ylim(lo - pad, hi + pad)
    if with_codes:
        d = z_real.shape[1]
        dims = np.sort(np.argsort(-z_real.var(axis=0))[:max_dims]) if d > max_dims else np.arange(d)
        axes = np.atleast_1d(bottom.subplots(1, len(dims)))
        for ax, i in zip(axes, dims):
            both = np.concatenate([z_real[:, i], z_sampled[:, i]])
            lo_, hi_ = np.percentile(both, [0.1, 99.9])
            nb = int(np.clip(2 * np.sqrt(len(z_real)), 8, 40))
            bins = np.linspace(lo_, hi_ if hi_ > lo_ else lo_ + 1, nb)
            ax.hist(z_real[:, i], bins=bins, density=True, color="tab:blue", alpha=0.5, label="data codes")
            if len(z_sampled) >= RUG_BELOW:
                ax.hist(
                    z_sampled[:, i], bins=bins, density=True, histtype="step", lw=2, color="tab:orange", label="sampled"
                )
            else:  # too few for a histogram: one tick per sampled code
                ax.plot(
                    z_sampled[:, i], np.zeros(len(z_sampled)), "|", ms=22, mew=1.5, color="tab:orange", label="sampled"
                )
            ax.set_xlabel(latent_label(i))
            ax.set_yticks([])
        axes[0].set_ylabel("density")
        axes[0].legend(loc="upper left", fontsize=8)
        bottom.suptitle("latent codes: data against samples", fontsize=10)
    fig.suptitle("\n".join(line for line in (title, note) if line))
    return fig
