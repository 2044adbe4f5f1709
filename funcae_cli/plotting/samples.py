"""The `samples` figure: curves sampled from the model beside real ones, and the latent marginals."""

from __future__ import annotations

import numpy as np
from matplotlib.figure import Figure

from funcae_cli.config.families import Family
from funcae_cli.plotting.base import add_curves, latent_label, setup_curve_axes, subsample

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
