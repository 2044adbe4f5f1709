"""Figures of inversions: each target's data with the decoded curve and the family's curve at the reported
parameters, residuals in units of sigma; a page of many targets; a summary of a batch's goodness of fit.

They take arrays (an `Inversion` record per target); runs/results.py builds them from what `funcae invert`
wrote, so the command's figures and `funcae plot --kind invert` agree.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from matplotlib.figure import Figure

from funcae_cli.config.families import Family
from funcae_cli.plotting.base import new_figure, plain_log_ticks, setup_curve_axes

DATA_STYLE: dict[str, Any] = {"fmt": "o", "ms": 3.5, "color": "k", "ecolor": "0.45", "elinewidth": 1.0, "capsize": 2.0}
DECODER_COLOR, FAMILY_COLOR = "tab:red", "tab:blue"
FLAG_COLORS = {"model_mismatch": "tab:red", "on_bound": "tab:orange", "off_manifold": "tab:purple"}


@dataclass
class Inversion:
    """One inverted target, as far as the figures need it."""

    x: np.ndarray  # the target's points
    target: np.ndarray  # its values there
    fit: np.ndarray  # the decoded curve there
    z: np.ndarray | None = None
    true_params: dict[str, float] = field(default_factory=dict)
    est_params: dict[str, float] = field(default_factory=dict)  # the reported parameters
    objective: float | None = None
    rel_l2: float | None = None
    source: str = ""
    yerr: np.ndarray | None = None  # one-sigma errors of the target (observed curves), same shape
    grid: np.ndarray | None = None  # the run's grid, where `decoded` and `family` are given
    decoded: np.ndarray | None = None  # the decoded curve on the grid
    family: np.ndarray | None = None  # the family's curve at the reported parameters, on the grid
    family_fit: np.ndarray | None = None  # ... and at the target's points
    reduced_chi2: float | None = None  # at the reported parameters
    flags: list[str] = field(default_factory=list)
    params_source: str = ""  # physics (the formula fitted) or regressor

    def model_at_points(self) -> tuple[np.ndarray, str]:
        """The reported model at the target's points: the family's curve where fitted, else the decoder's."""
        return (self.family_fit, "family") if self.family_fit is not None else (self.fit, "decoder")


def _fmt_params(p: dict[str, float], family: Family) -> str:
    known = {q.name: q for q in family.params}
    parts = []
    for k, v in p.items():
        q = known.get(k)
        parts.append(f"{q.label if q else k}={v:.4g}" + (f" {q.unit}" if q is not None and q.unit else ""))
    return ", ".join(parts)


def _draw_curves(ax, inv: Inversion, family: Family, legend: bool, small: bool = False) -> None:
    """Data with error bars, the decoded curve over the whole grid, the family's curve at the parameters."""
    if inv.yerr is not None:
        ax.errorbar(inv.x, inv.target, yerr=inv.yerr, **{**DATA_STYLE, "ms": 2.5 if small else 3.5},
                    label="data ±1σ", zorder=3)  # fmt: skip
    else:
        ax.plot(inv.x, inv.target, "o" if inv.x.size <= 60 else "-", color="k", ms=3, lw=1.5, label="data", zorder=3)
    if inv.decoded is not None and inv.grid is not None:
        ax.plot(inv.grid, inv.decoded, color=DECODER_COLOR, lw=1.6, label="decoder")
    else:
        ax.plot(inv.x, inv.fit, color=DECODER_COLOR, lw=1.6, label="decoder (at the points)")
    if inv.family is not None and inv.grid is not None:
        ax.plot(inv.grid, inv.family, color=FAMILY_COLOR, lw=1.8, ls="--", label=f"{family.name} at the parameters",
                zorder=4)  # fmt: skip
    setup_curve_axes(ax, family)
    lo, hi = float(np.min(inv.x)), float(np.max(inv.x))
    if family.x_log and lo > 0:
        pad = (hi / lo) ** 0.06
        ax.set_xlim(lo / pad, hi * pad)
        plain_log_ticks(ax)
    else:
        pad = 0.06 * (hi - lo or 1.0)
        ax.set_xlim(lo - pad, hi + pad)
    if legend:
        ax.legend(loc="best", fontsize=7)


def _draw_residuals(ax, inv: Inversion, family: Family) -> str:
    """(data - model) / sigma at the points, for the family's curve and the decoder's; returns the y label."""
    model, which = inv.model_at_points()
    scale = inv.yerr if inv.yerr is not None else np.ones_like(inv.target)
    ax.axhline(0, color="0.5", lw=0.8)
    if inv.yerr is not None:
        ax.axhspan(-1, 1, color="0.9", zorder=0)
        ax.axhspan(-2, 2, color="0.95", zorder=0)
    ax.plot(inv.x, (inv.target - inv.fit) / scale, "o", ms=4, color=DECODER_COLOR, label="decoder", alpha=0.8)
    if which == "family":
        ax.plot(inv.x, (inv.target - model) / scale, "s", ms=4, mfc="none", color=FAMILY_COLOR, label=family.name)
    setup_curve_axes(ax, family)
    if family.x_log:
        plain_log_ticks(ax)
    return "(data − model) / σ" if inv.yerr is not None else f"data − model [{family.y_label}]"


def _stats(inv: Inversion) -> str:
    parts = []
    if inv.reduced_chi2 is not None:
        parts.append(f"χ²/dof {inv.reduced_chi2:.3g}")
    elif inv.rel_l2 is not None:
        parts.append(f"rel. L2 {inv.rel_l2:.3g}")
    if inv.flags:
        parts.append("flags: " + ", ".join(inv.flags))
    return "; ".join(parts)


def inversions_figure(results: list[Inversion], family: Family, *, title: str = "", note: str = "") -> Figure:
    """One row per target (a handful): on the left the data (with error bars when given), the decoded curve
    over the whole grid and the family's curve at the reported parameters (parameters in the legend); on the
    right the residuals in units of sigma (family units without errors). One title."""
    n = len(results)
    height = 3.4 * n + 0.7
    fig, axes = new_figure(
        nrows=n, ncols=2, figsize=(13, height), squeeze=False, width_ratios=[1.4, 1], sharex="row", layout=None
    )
    fig.subplots_adjust(left=0.07, right=0.98, bottom=0.5 / height + 0.02, top=1 - 0.55 / height, hspace=0.35,
                        wspace=0.18)  # fmt: skip
    for row, inv in zip(axes, results):
        ax = row[0]
        _draw_curves(ax, inv, family, legend=False)
        if inv.est_params:
            source = f" ({inv.params_source})" if inv.params_source else ""
            ax.plot([], [], " ", label=f"parameters{source}: {_fmt_params(inv.est_params, family)}")
        if inv.true_params:
            ax.plot([], [], " ", label=f"true: {_fmt_params(inv.true_params, family)}")
        ax.legend(loc="best", fontsize=7)
        ax.set_title(f"{inv.source}" + (f" — {_stats(inv)}" if _stats(inv) else ""), fontsize=9, loc="left")
        ylabel = _draw_residuals(row[1], inv, family)
        row[1].set_ylabel(ylabel)
        row[1].legend(loc="best", fontsize=7)
    for ax in axes[:-1].ravel():
        ax.set_xlabel("")
    fig.suptitle(" — ".join(t for t in (title, note) if t))
    return fig


def inversion_page_figure(results: list[Inversion], family: Family, *, title: str = "", ncols: int = 4) -> Figure:
    """Small panels of many targets: data, decoded and family curves; each titled with its id, goodness of fit
    and flags (flagged panels framed in the flag's colour)."""
    n = len(results)
    nrows = math.ceil(n / ncols)
    top = 1.0  # inches above the first row: the suptitle and the first row's two-line panel titles apart
    height = 2.9 * nrows + top
    fig, axes = new_figure(nrows=nrows, ncols=ncols, figsize=(3.6 * ncols, height), squeeze=False, layout=None)
    fig.subplots_adjust(left=0.06, right=0.99, bottom=0.45 / height, top=1 - top / height, hspace=0.55, wspace=0.3)
    for k, ax in enumerate(axes.ravel()):
        if k >= n:
            ax.set_visible(False)
            continue
        inv = results[k]
        _draw_curves(ax, inv, family, legend=k == 0, small=True)
        ax.set_title(f"{inv.source}\n{_stats(inv)}", fontsize=8)
        for flag in inv.flags:
            for spine in ax.spines.values():
                spine.set_edgecolor(FLAG_COLORS.get(flag, "k"))
                spine.set_linewidth(2)
            break
        ax.tick_params(labelsize=7)
        ax.xaxis.label.set_size(8)
        ax.yaxis.label.set_size(8)
    fig.suptitle(title)
    return fig


def inversion_summary_figure(
    reduced_chi2: np.ndarray | None,
    flag_counts: dict[str, int],
    physics_objective: np.ndarray | None,
    decoder_objective: np.ndarray | None,
    measure: str,
    *,
    title: str = "",
    mismatch_at: float = 3.0,
) -> Figure:
    """A batch at a glance: the distribution of reduced chi^2 (the mismatch threshold marked), how many targets
    carry each flag, and the family's fit against the decoder's per target."""
    fig, axes = new_figure(ncols=3, figsize=(15, 4.4), squeeze=False, layout=None)
    fig.subplots_adjust(left=0.05, right=0.98, bottom=0.13, top=0.86, wspace=0.3)
    ax = axes[0, 0]
    if reduced_chi2 is not None and np.isfinite(reduced_chi2).any():
        r = reduced_chi2[np.isfinite(reduced_chi2)]
        bins = np.geomspace(max(r.min(), 1e-3), max(r.max(), mismatch_at * 2), 40)
        ax.hist(np.clip(r, bins[0], None), bins=bins, color="0.5")
        ax.set_xscale("log")
        ax.axvline(mismatch_at, color=FLAG_COLORS["model_mismatch"], ls="--", label=f"χ²/dof = {mismatch_at:g}")
        ax.axvline(1.0, color="k", lw=0.8, ls=":", label="χ²/dof = 1")
        ax.legend(fontsize=8)
        ax.set_title(f"reduced χ² at the reported parameters ({r.size} targets)", fontsize=10)
    else:
        ax.text(0.5, 0.5, "no errors given: no χ²", ha="center", va="center", transform=ax.transAxes)
    ax.set_xlabel("χ² / dof")
    ax.set_ylabel("targets")
    ax = axes[0, 1]
    names = list(flag_counts)
    ax.barh(names, [flag_counts[k] for k in names], color=[FLAG_COLORS.get(k, "0.5") for k in names])
    for i, k in enumerate(names):
        ax.text(flag_counts[k], i, f" {flag_counts[k]}", va="center", fontsize=9)
    ax.set_xlabel("targets flagged")
    ax.set_title("flags", fontsize=10)
    ax = axes[0, 2]
    if physics_objective is not None and decoder_objective is not None:
        ok = np.isfinite(physics_objective) & np.isfinite(decoder_objective) & (physics_objective > 0)
        ax.loglog(physics_objective[ok], decoder_objective[ok], ".", ms=4, color="0.3")
        lo = float(min(physics_objective[ok].min(), decoder_objective[ok].min())) if ok.any() else 1e-3
        hi = float(max(physics_objective[ok].max(), decoder_objective[ok].max())) if ok.any() else 1.0
        ax.plot([lo, hi], [lo, hi], color="k", lw=0.8, ls=":", label="equal")
        ax.legend(fontsize=8)
        ax.set_xlabel(f"family at the parameters: {measure}")
        ax.set_ylabel(f"decoder: {measure}")
        ax.set_title("the family's fit against the decoder's", fontsize=10)
    else:
        ax.set_visible(False)
    fig.suptitle(title)
    return fig
