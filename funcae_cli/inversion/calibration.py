"""Whether posteriors are calibrated: coverage of central intervals and simulation-based calibration (SBC).

Given true parameters (n, p) and posterior draws (n, s, p) of the same targets:
- coverage: for each nominal level L in LEVELS, the fraction of targets whose central L interval of the draws
  (quantiles (1 - L)/2 and (1 + L)/2) contains the truth; a calibrated posterior covers L of them, up to
  the binomial error sqrt(L (1 - L) / n);
- SBC (Talts et al. 2018): the rank of the truth among RANK_DRAWS draws spread over each target's draws is
  uniform on 0..RANK_DRAWS for a calibrated posterior: a histogram of RANK_BINS bins, tested by chi^2;
- the median's bias and spread against the truth, in natural coordinates (log10 for scale parameters), and
  their ratio to the posterior's own spread (calibrated: a z-score with mean 0 and standard deviation 1).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from funcae_cli.inversion.assess import chi2_p_value

LEVELS = (0.5, 0.68, 0.95)
RANK_DRAWS = 99  # draws per target the truth is ranked among: ranks 0..99
RANK_BINS = 20


def chi2_uniform_p(counts: np.ndarray) -> tuple[float, float]:
    """(chi^2, p-value) of histogram counts against a uniform distribution over its bins."""
    expected = counts.sum() / counts.size
    chi2 = float(((counts - expected) ** 2 / max(expected, 1e-300)).sum())
    return chi2, float(chi2_p_value(np.array(chi2), np.array(counts.size - 1)))


@dataclass
class ParamCalibration:
    name: str
    coverage: dict[float, float]  # nominal level -> empirical coverage
    coverage_error: dict[float, float]  # the binomial standard error of a calibrated posterior at that level
    ranks: np.ndarray  # (RANK_BINS,) SBC histogram
    sbc_chi2: float
    sbc_p: float
    median_bias: float  # mean of (median - truth), natural coordinates
    median_spread: float  # standard deviation of (median - truth)
    z_mean: float  # mean of (median - truth) / posterior sd
    z_sd: float


def calibrate(truth: np.ndarray, draws: np.ndarray, names: list[str], log10: list[bool]) -> list[ParamCalibration]:
    """Per parameter: coverage, SBC ranks, bias and spread (module docstring). truth (n, p), draws (n, s, p)."""
    n, s, p = draws.shape
    draws, truth = np.asarray(draws, dtype=np.float64), np.asarray(truth, dtype=np.float64)
    nat = np.where(np.array(log10)[None, None, :], np.log10(np.clip(draws, 1e-300, None)), draws)
    true = np.where(np.array(log10)[None, :], np.log10(np.clip(truth, 1e-300, None)), truth)
    pick = np.linspace(0, s - 1, min(RANK_DRAWS, s)).round().astype(int)
    out = []
    for j, name in enumerate(names):
        v, t = nat[:, :, j], true[:, j]
        coverage, errors = {}, {}
        for level in LEVELS:
            lo, hi = np.quantile(v, [(1 - level) / 2, (1 + level) / 2], axis=1)
            coverage[level] = float(np.mean((lo <= t) & (t <= hi)))
            errors[level] = float(np.sqrt(level * (1 - level) / n))
        ranks = (v[:, pick] < t[:, None]).sum(axis=1)  # 0..len(pick)
        counts = np.histogram(ranks, bins=RANK_BINS, range=(-0.5, len(pick) + 0.5))[0]
        chi2, pval = chi2_uniform_p(counts)
        med = np.median(v, axis=1)
        sd = np.std(v, axis=1)
        z = (med - t) / np.where(sd > 0, sd, np.nan)
        out.append(
            ParamCalibration(
                name,
                coverage,
                errors,
                counts,
                chi2,
                pval,
                float(np.mean(med - t)),
                float(np.std(med - t)),
                float(np.nanmean(z)),
                float(np.nanstd(z)),
            )  # fmt: skip
        )
    return out


def covered(truth: np.ndarray, draws: np.ndarray, log10: list[bool], level: float) -> np.ndarray:
    """(n, p) bool: whether each target's central `level` interval of draws (n, s, p) contains truth (n, p)."""
    draws, truth = np.asarray(draws, dtype=np.float64), np.asarray(truth, dtype=np.float64)
    d = np.where(np.array(log10)[None, None, :], np.log10(np.clip(draws, 1e-300, None)), draws)
    t = np.where(np.array(log10)[None, :], np.log10(np.clip(truth, 1e-300, None)), truth)
    lo, hi = np.quantile(d, [(1 - level) / 2, (1 + level) / 2], axis=1)
    return (lo <= t) & (t <= hi)


def split_by_flag(truth: np.ndarray, draws: np.ndarray, names: list[str], log10: list[bool],
                  flagged: np.ndarray) -> dict:  # fmt: skip
    """Whether a posterior's flag (flagged (n,) bool) means something: the coverage of flagged and unflagged
    targets apart, and how many of the targets whose 95% interval missed the truth (any parameter) are flagged."""
    missed = ~covered(truth, draws, log10, 0.95).all(axis=1)
    out: dict = {"count": int(flagged.sum()), "fraction": float(flagged.mean()),
                 "missed_95": int(missed.sum()), "missed_95_flagged": int((missed & flagged).sum())}  # fmt: skip
    for key, keep in (("unflagged", ~flagged), ("flagged", flagged)):
        calib = calibrate(truth[keep], draws[keep], names, log10) if keep.any() else None
        out[f"coverage_{key}"] = (
            None if calib is None else {c.name: {f"{k:g}": v for k, v in c.coverage.items()} for c in calib}
        )
    return out


def misses(params: list[ParamCalibration], tolerance: float) -> list[str]:
    """Coverages further than `tolerance` from nominal: 'name at 68%: 0.62'."""
    return [
        f"{c.name} at {level:.0%}: {cov:.3f}"
        for c in params
        for level, cov in c.coverage.items()
        if abs(cov - level) > tolerance
    ]
