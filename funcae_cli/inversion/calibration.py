"""Whether posteriors are calibrated: coverage of central intervals and simulation-based calibration (SBC).

Given true parameters (n, p) and posterior draws (n, s, p) of the same targets:
- coverage: for each nominal level L in LEVELS, the fraction of targets whose central L interval of the draws
  (quantiles (1 - L)/2 and (1 + L)/2) contains the truth; a calibrated posterior covers L of them, up to
  the binomial error sqrt(L (1 - L) / n);
- SBC (Talts et al. 2018): the rank of the truth among RANK_DRAWS draws spread over each target's draws is
  uniform on 0..RANK_DRAWS for a calibrated posterior: a histogram of RANK_BINS bins, tested by chi^2;
- the median's bias and spread against the truth, in natural coordinates (log10 for scale parameters), and
  their ratio to the posterior's own spread (calibrated: a z-score with mean 0 and standard deviation 1);
- TARP (Lemos, Coogan et al. 2023, "Sampling-based accuracy testing of posterior estimators"): one test of the
  joint posterior over all parameters at once (`tarp`);
- agreement with a reference posterior on the same targets (`agreement`): how far apart the medians are in units
  of the reference's sigma, the ratio of the 68% widths, and the share of targets whose 95% interval ends (2.5% or
  97.5% quantile) lie more than TAIL_OFF reference sigma from the reference's (a tail one posterior misses: medians
  and 68% widths agreeing over targets do not show it).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from funcae_cli.inversion.assess import chi2_p_value

LEVELS = (0.5, 0.68, 0.95)
RANK_DRAWS = 99  # draws per target the truth is ranked among: ranks 0..99
RANK_BINS = 20
TARP_ALPHAS = np.linspace(0, 1, 101)  # credibility levels at which TARP's expected coverage is reported
TARP_BOOTSTRAP = 1000  # resamples of the targets behind TARP's band
TARP_BAND = 0.95  # confidence of the band: simultaneous over every credibility level


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


def natural(values: np.ndarray, log10: list[bool]) -> np.ndarray:
    """values (..., p) in float64, log10 of the parameters flagged in log10 (p,): the coordinates judged here."""
    values = np.asarray(values, dtype=np.float64)
    return np.where(np.array(log10), np.log10(np.clip(values, 1e-300, None)), values)


def calibrate(truth: np.ndarray, draws: np.ndarray, names: list[str], log10: list[bool]) -> list[ParamCalibration]:
    """Per parameter: coverage, SBC ranks, bias and spread (module docstring). truth (n, p), draws (n, s, p)."""
    n, s, p = draws.shape
    nat, true = natural(draws, log10), natural(truth, log10)
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
    d, t = natural(draws, log10), natural(truth, log10)
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


# --- TARP: expected coverage of the joint posterior ---------------------------------------------------------
# Reference points, normalization and the credibility f follow the `tarp` package (get_tarp_coverage with
# norm=True, references="random"; tests/test_calibration.py checks the curve against it on the same references).
# Its band does not: tarp 0.1.1's "bootstrap" replaces one target at a time, cumulatively, in the caller's arrays;
# here the targets are resampled with replacement and the band is simultaneous over every credibility level.


@dataclass
class Tarp:
    """TARP's expected coverage probability (ECP) of the joint posterior against the credibility level alpha: the
    fraction of targets whose truth lies inside the ball around a random reference point that holds alpha of the
    posterior's draws. Calibrated: ecp = alpha at every alpha (and only then, for references of every kind)."""

    names: list[str]  # the parameters it judges together: those whose truths vary (a fixed one has no range)
    credibility: np.ndarray  # (n,) f per target (tarp_credibility)
    alpha: np.ndarray  # (A,) credibility levels, TARP_ALPHAS
    ecp: np.ndarray  # (A,)
    band: float  # half-width of the simultaneous TARP_BAND bootstrap band: ecp +- band
    max_deviation: float  # max over alpha of |ecp - alpha|: the KS distance of the f of every target from uniform
    at_alpha: float  # the alpha where the deviation is largest
    atc: float  # area between ecp and alpha over alpha in [0.5, 1]: > 0 too wide, < 0 too narrow or biased
    within: bool  # the diagonal inside the band everywhere: max_deviation <= band


def tarp_credibility(truth: np.ndarray, draws: np.ndarray, references: np.ndarray) -> np.ndarray:
    """(n,) TARP's f per target: the fraction of its draws nearer (Euclidean) to its reference point than its truth.

    truth (n, p), draws (n, s, p); all are first mapped to the unit cube of the truths' range over targets,
    (x - min) / (max - min + 1e-10) as tarp's norm=True, where references (n, p) lie. Calibrated: f is uniform,
    since truth and draws are exchangeable given the observation, the reference being independent of both."""
    truth, draws = np.asarray(truth, dtype=np.float64), np.asarray(draws, dtype=np.float64)
    low, high = truth.min(axis=0), truth.max(axis=0)
    truth, draws = (truth - low) / (high - low + 1e-10), (draws - low) / (high - low + 1e-10)
    d_truth = np.sqrt(((references - truth) ** 2).sum(axis=-1))  # (n,)
    d_draws = np.sqrt(((references[:, None, :] - draws) ** 2).sum(axis=-1))  # (n, s)
    return (d_draws < d_truth[:, None]).mean(axis=1)


def expected_coverage(f: np.ndarray, alpha: np.ndarray) -> np.ndarray:
    """ECP at each alpha (A,): the fraction of targets with f < alpha (the truth inside the alpha-credible ball);
    1 at alpha = 1 (the whole space). tarp's histogram cumsum gives the same at its bin edges."""
    ecp = np.searchsorted(np.sort(f), alpha, side="left") / f.size
    return np.where(alpha >= 1, 1.0, ecp)


def tarp_band(f: np.ndarray, alpha: np.ndarray, rng: np.random.Generator, resamples: int = TARP_BOOTSTRAP,
              level: float = TARP_BAND) -> float:  # fmt: skip
    """Half-width c of a simultaneous bootstrap band: the `level` quantile, over resamples of the targets with
    replacement, of max_alpha |ECP_resampled - ECP|. The ECP depends on the targets only through how many fall
    between consecutive alphas, so a resample is one multinomial draw of those counts (exact, O(A) each)."""
    n = f.size
    bins = np.bincount(np.searchsorted(alpha, f, side="right"), minlength=alpha.size + 1)[: alpha.size]
    ecp = np.cumsum(bins) / n  # the same as expected_coverage below alpha = 1
    boot = np.cumsum(rng.multinomial(n, np.append(bins, n - bins.sum()) / n, size=resamples)[:, :-1], axis=1) / n
    keep = alpha < 1  # ECP(1) = 1 in every resample
    return float(np.quantile(np.abs(boot - ecp)[:, keep].max(axis=1), level))


def tarp(truth: np.ndarray, draws: np.ndarray, names: list[str], log10: list[bool],
         rng: np.random.Generator) -> Tarp:  # fmt: skip
    """TARP of posterior draws (n, s, p) against the truths (n, p), in natural coordinates (log10 for scale
    parameters), one reference point per target uniform in the unit cube of the truths' range (tarp's "random")."""
    t, d = natural(truth, log10), natural(draws, log10)
    vary = t.max(axis=0) > t.min(axis=0)
    t, d = t[:, vary], d[:, :, vary]
    f = tarp_credibility(t, d, rng.uniform(size=t.shape))
    alpha = TARP_ALPHAS
    ecp = expected_coverage(f, alpha)
    band = tarp_band(f, alpha, rng)
    dev = ecp - alpha
    k = int(np.argmax(np.abs(dev)))
    hi = alpha >= 0.5
    atc = float((0.5 * (dev[hi][1:] + dev[hi][:-1]) * np.diff(alpha[hi])).sum())  # trapezoids
    return Tarp([n for n, v in zip(names, vary) if v], f, alpha, ecp, band, float(abs(dev[k])), float(alpha[k]),
                atc, bool(abs(dev[k]) <= band))  # fmt: skip


# --- agreement with a reference posterior -------------------------------------------------------------------


@dataclass
class Agreement:
    name: str
    shift: float  # median over targets of |median - reference median| / reference sigma (its 16-84% half-width)
    width_ratio: float  # median over targets of the 16-84% width / the reference's
    tails_off: float  # share of targets whose 2.5% or 97.5% quantile is > TAIL_OFF reference sigma from the reference's


TAIL_OFF = 1.0  # reference sigma: a 95% interval end this far from the reference's is a tail of its own (a Gaussian's
# 2.5% quantile is 1.96 sigma from its median; 500 draws place it within ~0.15 sigma)


def agreement(draws: np.ndarray, reference: np.ndarray, names: list[str], log10: list[bool]) -> list[Agreement]:
    """Per parameter, in natural coordinates, how a posterior's draws (n, s, p) sit against a reference posterior's
    (n, s', p) of the same targets (module docstring); NaN where the reference has no width (a fixed parameter)."""
    levels = [0.025, 0.16, 0.5, 0.84, 0.975]
    q = np.quantile(natural(draws, log10), levels, axis=1)  # (5, n, p)
    r = np.quantile(natural(reference, log10), levels, axis=1)
    width = np.where(r[3] > r[1], r[3] - r[1], np.nan)
    shift, ratio = np.abs(q[2] - r[2]) / (width / 2), (q[3] - q[1]) / width
    ends = np.maximum(np.abs(q[0] - r[0]), np.abs(q[4] - r[4])) / (width / 2)
    return [Agreement(name, _median(shift[:, j]), _median(ratio[:, j]), _share_over(ends[:, j], TAIL_OFF))
            for j, name in enumerate(names)]  # fmt: skip


def _share_over(v: np.ndarray, limit: float) -> float:
    v = v[np.isfinite(v)]
    return float(np.mean(v > limit)) if v.size else float("nan")


def _median(v: np.ndarray) -> float:
    v = v[np.isfinite(v)]
    return float(np.median(v)) if v.size else float("nan")
