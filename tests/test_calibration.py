"""TARP (inversion/calibration.py) against the `tarp` package on the same inputs and reference points, and against
known answers on a conjugate Gaussian toy (exact, too narrow, too wide, biased posteriors); the agreement of two
posteriors against shifts and widths built by hand, alone and through `validate`'s comparison with mcmc."""

from __future__ import annotations

import math
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import tarp as tarp_package

from funcae_cli.inversion.calibration import (
    TARP_ALPHAS,
    agreement,
    expected_coverage,
    tarp,
    tarp_credibility,
)
from funcae_cli.jobs import validate as validate_job

TAU, SIGMA = 2.0, 1.0  # the toy: theta ~ N(0, TAU^2) per coordinate, x ~ N(theta, SIGMA^2)
POST_SD = 1 / math.sqrt(1 / TAU**2 + 1 / SIGMA**2)


def _toy(n: int, s: int, p: int, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """True parameters (n, p), the exact posterior's means (n, p) and standard normal noise (n, s, p) for draws."""
    rng = np.random.default_rng(seed)
    theta = rng.normal(0, TAU, (n, p))
    x = theta + rng.normal(0, SIGMA, (n, p))
    return theta, POST_SD**2 * x / SIGMA**2, rng.standard_normal((n, s, p))


@pytest.mark.parametrize("p, s, bins", [(1, 50, 40), (2, 300, 200), (3, 120, 99)])
def test_the_tarp_curve_is_the_tarp_package_s_on_the_same_references(p, s, bins) -> None:
    """Same draws, truths and reference points (tarp's norm=True: the unit cube of the truths' range): the expected
    coverage at every one of tarp's credibility edges agrees to rounding; tarp's last edge (max f) is 1 by its
    histogram's closed last bin, ours is 1 at alpha = 1 (checked apart)."""
    theta, mean, z = _toy(800, s, p, seed=p)
    draws = mean[:, None, :] + 0.8 * POST_SD * z  # not calibrated: a curve with some shape to compare
    refs = np.random.default_rng(10 + p).uniform(size=theta.shape)
    ecp, alpha = tarp_package.get_tarp_coverage(draws.transpose(1, 0, 2).copy(), theta.copy(), references=refs,
                                                norm=True, num_alpha_bins=bins)  # fmt: skip
    ours = expected_coverage(tarp_credibility(theta, draws, refs), alpha)
    np.testing.assert_allclose(ours[:-1], ecp[:-1], rtol=0, atol=1e-12)
    assert ecp[-1] == pytest.approx(1.0) and expected_coverage(np.array([0.3, 1.0]), np.array([1.0]))[0] == 1.0


def test_tarp_in_natural_coordinates_leaves_out_fixed_parameters_and_matches_the_package() -> None:
    """`tarp` takes log10 of scale parameters, drops a parameter every truth shares (its float32 draws would divide
    by tarp's 1e-10), draws its references from the rng given; the package on those coordinates and references
    gives the same curve."""
    theta, mean, z = _toy(600, 200, 2, seed=5)
    draws = mean[:, None, :] + POST_SD * z
    scale = np.exp(theta[:, 1:])  # the second parameter, reported as a scale: log10 of it is the natural one
    truth = np.concatenate([theta[:, :1], scale, np.full((600, 1), 0.7)], axis=1)
    sampled = np.concatenate([draws[..., :1], np.exp(draws[..., 1:]), np.full((600, 200, 1), np.float32(0.7))], -1)
    got = tarp(truth, sampled, ["a", "b", "fixed"], [False, True, False], np.random.default_rng(9))
    assert got.names == ["a", "b"]
    nat = np.stack([theta[:, 0], np.log10(scale[:, 0])], axis=1)
    nat_draws = np.stack([draws[..., 0], np.log10(np.exp(draws[..., 1]))], axis=-1)
    refs = np.random.default_rng(9).uniform(size=(600, 2))  # the first thing `tarp` draws from its rng
    ecp, alpha = tarp_package.get_tarp_coverage(nat_draws.transpose(1, 0, 2).copy(), nat.copy(), references=refs,
                                                norm=True)  # fmt: skip
    np.testing.assert_allclose(expected_coverage(got.credibility, alpha)[:-1], ecp[:-1], rtol=0, atol=1e-12)
    np.testing.assert_array_equal(got.ecp, expected_coverage(got.credibility, TARP_ALPHAS))


def test_an_exact_posterior_stays_in_its_band_and_wrong_ones_fall_outside() -> None:
    """The conjugate toy in 2-d, 1000 targets x 400 draws: the exact posterior's curve holds the diagonal in its
    band; draws half as wide (overconfident), twice as wide, or shifted by one posterior sd in each coordinate
    (biased) do not; the area above alpha = 0.5 is negative when too narrow, positive when too wide."""
    theta, mean, z = _toy(1000, 400, 2, seed=1)
    cases = {"exact": (1.0, 0.0), "narrow": (0.5, 0.0), "wide": (2.0, 0.0), "biased": (1.0, 1.0)}
    got = {k: tarp(theta, mean[:, None, :] + POST_SD * (w * z + b), ["a", "b"], [False, False],
                   np.random.default_rng(2)) for k, (w, b) in cases.items()}  # fmt: skip
    assert got["exact"].within and got["exact"].max_deviation < 0.03 and abs(got["exact"].atc) < 0.01
    for k in ("narrow", "wide", "biased"):
        assert not got[k].within and got[k].max_deviation > 2 * got[k].band, (k, got[k].max_deviation)
    assert got["narrow"].atc < -0.03 and got["wide"].atc > 0.03
    assert got["exact"].band == pytest.approx(1.358 / math.sqrt(1000), rel=0.15)  # Kolmogorov's 95% point


def test_the_band_holds_a_calibrated_posterior_about_95_percent_of_the_time() -> None:
    """40 independent toys with exact posteriors (400 targets each): the simultaneous 95% band holds the diagonal
    in at least 34 (a binomial(40, 0.95) falls below that with probability ~0.5%); a pointwise band would not."""
    within = [tarp(*_exact(seed), ["a", "b"], [False, False], np.random.default_rng(seed)).within for seed in range(40)]
    assert sum(within) >= 34, sum(within)


def _exact(seed: int) -> tuple[np.ndarray, np.ndarray]:
    theta, mean, z = _toy(400, 200, 2, seed=100 + seed)
    return theta, mean[:, None, :] + POST_SD * z


# --- amortized against mcmc -----------------------------------------------------------------------------------


def _natural(values: np.ndarray, log10: list[bool]) -> np.ndarray:
    out = values.astype(np.float64)
    out[..., log10] = np.log10(out[..., log10])
    return out


def _shifted(draws: np.ndarray, log10: list[bool], shift: np.ndarray, widen: float) -> np.ndarray:
    """Each target's draws, in natural coordinates, moved by `shift` (p,) and widened `widen` times about its own
    median: its median moves by exactly `shift`, its quantile widths grow exactly `widen` times."""
    nat = _natural(draws, log10)
    med = np.median(nat, axis=1, keepdims=True)
    out = med + widen * (nat - med) + shift
    out[..., log10] = 10 ** out[..., log10]
    return out


def test_agreement_of_a_posterior_with_itself_and_with_a_shifted_copy() -> None:
    rng = np.random.default_rng(4)
    sd = rng.uniform(0.1, 2.0, (300, 1, 2))
    centers = np.stack([rng.normal(0, 1, 300), np.zeros(300)], axis=-1)[:, None, :]
    reference = centers + sd * rng.standard_normal((300, 500, 2))  # 300 targets x 500 draws, widths 0.1 to 2
    reference[..., 1] = 10 ** reference[..., 1]  # a scale parameter: judged in log10
    log10 = [False, True]
    same = agreement(reference, reference, ["a", "b"], log10)
    assert [(a.shift, a.width_ratio) for a in same] == [(0.0, 1.0), (0.0, 1.0)]
    shift = np.array([0.3, -0.05])
    moved = agreement(_shifted(reference, log10, shift, 1.5), reference, ["a", "b"], log10)
    nat = _natural(reference, log10)
    lo, hi = np.percentile(nat, [16, 84], axis=1)  # (n, p)
    for j, a in enumerate(moved):
        assert a.shift == pytest.approx(np.median(np.abs(shift[j]) / ((hi[:, j] - lo[:, j]) / 2)), rel=1e-9)
        assert a.width_ratio == pytest.approx(1.5, rel=1e-9)
    assert [a.tails_off for a in same] == [0.0, 0.0]
    fixed = agreement(np.ones((5, 10, 1)), np.ones((5, 10, 1)), ["c"], [False])[0]
    assert math.isnan(fixed.shift) and math.isnan(fixed.width_ratio)  # no reference width: no verdict
    assert math.isnan(fixed.tails_off)


def test_agreement_counts_the_targets_whose_tail_one_posterior_misses() -> None:
    """A quarter of the targets get a tail the reference lacks (their last 10% of draws moved 5 sigma up): their 97.5%
    quantile then lies ~3 sigma above the reference's, and exactly they count in tails_off, while the medians and
    68% widths, medians over targets, hardly move (what the amortized check's tails look like against mcmc on
    bench row 11's curves, the note of 2026-12-07)."""
    rng = np.random.default_rng(5)
    reference = rng.standard_normal((400, 500, 1))
    tailed = reference.copy()
    tailed[:100, 450:, 0] += 5.0
    a = agreement(tailed, reference, ["a"], [False])[0]
    assert a.tails_off == pytest.approx(0.25)
    assert a.shift < 0.1 and a.width_ratio == pytest.approx(1.0, abs=0.05)
    lo = reference * 1.02  # 2% wider: every end within 0.05 sigma
    assert agreement(lo, reference, ["a"], [False])[0].tails_off == 0.0


MCMC = {"walkers": 16, "steps": 60, "burn": 30}  # a short chain: the comparison is what is tested, not the chain


@pytest.mark.parametrize("shift, widen", [((0.0, 0.0), 1.0), ((0.04, -0.01), 1.5)])
def test_validate_compares_amortized_with_mcmc_on_the_first_curves(smoke_copy: Path, monkeypatch, shift,
                                                                   widen) -> None:  # fmt: skip
    """validate --posterior amortized on the smoke run, its flow replaced by mcmc's own draws (the same chains: each
    target's seed is its own) moved and widened by hand: the report's shift is the constructed one in units of each
    target's mcmc sigma (0 for mcmc's draws as they are) and its width ratio the constructed widening."""
    real = validate_job.invert_batch
    seen: dict[str, list[np.ndarray]] = {"amortized": [], "mcmc": []}
    log10 = [False, True]  # the normal family: mu linear, sigma a scale

    def fake(trained, targets, inv, lm, flow=None, **kw):
        res = real(trained, targets, replace(inv, posterior="mcmc"), lm)
        seen[inv.posterior].append(res.posterior.samples.copy())
        if inv.posterior == "amortized":
            res.posterior.samples = _shifted(res.posterior.samples, log10, np.array(shift), widen).astype(np.float32)
        return res

    monkeypatch.setattr(validate_job, "flow_for", lambda rd, posterior, proposal: object())
    monkeypatch.setattr(validate_job, "invert_batch", fake)
    rd = validate_job.RunDir(smoke_copy)
    rep = validate_job.run_validate(rd, {"n": 12, "posterior": "amortized", "compare_mcmc": 8}, MCMC, "cpu")
    assert [rep["params"][k]["scale"] for k in ("mu", "sigma")] == ["linear", "log10"]  # as `log10` above
    c = rep["compare_mcmc"]
    assert c["targets"] == 8 and set(c["params"]) == {"mu", "sigma"}
    reference = np.concatenate(seen["mcmc"])
    np.testing.assert_array_equal(reference, np.concatenate(seen["amortized"])[:8])  # the same chains
    nat = _natural(reference, log10)
    lo, hi = np.percentile(nat, [16, 84], axis=1)
    for j, name in enumerate(("mu", "sigma")):
        want = np.median(abs(shift[j]) / ((hi[:, j] - lo[:, j]) / 2))
        assert c["params"][name]["median_shift_sigma"] == pytest.approx(want, rel=1e-3, abs=1e-6)
        assert c["params"][name]["width_ratio"] == pytest.approx(widen, rel=1e-3)
        if widen == 1.0:  # mcmc's own draws: no 95% interval end apart
            assert c["params"][name]["tails_off_share"] == 0.0
    assert set(rep["tarp"]) >= {"alpha", "ecp", "band", "max_deviation", "within_band", "atc"}
    assert len(rep["tarp"]["ecp"]) == len(TARP_ALPHAS) and (smoke_copy / "validate" / "tarp.png").is_file()
