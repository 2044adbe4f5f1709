"""Multimodal posteriors found, not assumed away (inversion/modes.py, posterior.py): the ensembles' clustering,
R-hat within modes and the modes' weights on known mixtures; a two-mode normal-family target whose refit lands
in the lighter mode, against a brute-force grid integration of its posterior; a unimodal target against its
grid posterior (no flag, the same quantiles); the flag, modes and columns through `funcae invert`."""

from __future__ import annotations

import json
import math
from pathlib import Path
from types import SimpleNamespace

import arviz as az
import numpy as np
import pytest
import torch
from scipy import stats

from funcae_cli.config import load_config
from funcae_cli.inversion import seeding
from funcae_cli.inversion.modes import MIN_WEIGHT, cluster, count, weigh, within_rhat
from funcae_cli.inversion.physics import Fitter, Observations, fit_physics, natural_bounds
from funcae_cli.inversion.posterior import Sampling, physics_posterior
from funcae_cli.inversion.prior import log_prior

from .conftest import CONFIGS, ok

# --- the pieces, on chains of known law ---------------------------------------------------------------------


def _mixture_log_density(x: torch.Tensor, weights: tuple[float, float], centres: tuple[float, float],
                         scales: tuple[float, float]) -> torch.Tensor:  # fmt: skip
    """log of w0 N(c0, s0^2 I) + w1 N(c1, s1^2 I) in 2-D, normalized."""
    parts = [math.log(w) - 0.5 * ((x - c) / s).square().sum(dim=1) - 2 * math.log(s) - math.log(2 * math.pi)
             for w, c, s in zip(weights, centres, scales)]  # fmt: skip
    return torch.logaddexp(*parts)


def test_ensembles_are_clustered_by_where_they_settled_and_rhat_is_judged_within_modes() -> None:
    """Target 0: four ensembles of one Gaussian (one mode); target 1: two ensembles at -5 and two at +5 (two
    modes); target 2: like 0 but ensemble 3 shifted by 1 sd (one mode, its ensembles disagree). R-hat within
    modes is ArviZ's rank R-hat of each mode's chains, the worst mode's."""
    rng = np.random.default_rng(0)
    chains = rng.standard_normal((3, 4, 800, 2))
    chains[1, :2] -= 5
    chains[1, 2:] += 5
    chains[2, 3] += 1.0
    labels = cluster(torch.as_tensor(chains))
    assert labels.tolist() == [[0, 0, 0, 0], [0, 0, 2, 2], [0, 0, 0, 0]]
    assert count(labels).tolist() == [1, 2, 1]
    rhat = within_rhat(torch.as_tensor(chains), labels).numpy()
    for j in range(2):
        assert rhat[0, j] == pytest.approx(float(az.rhat(chains[0, :, :, j], method="rank")), rel=1e-10)
        want = max(float(az.rhat(chains[1, :2, :, j], method="rank")), float(az.rhat(chains[1, 2:, :, j],
                                                                                     method="rank")))  # fmt: skip
        assert rhat[1, j] == pytest.approx(want, rel=1e-10)
    assert rhat[1].max() < 1.01  # two well-sampled modes: converged within them
    assert rhat[2, 0] > 1.1  # ensembles of one mode that disagree are not


def test_mode_weights_of_a_known_mixture_by_importance_sampling() -> None:
    """Exact draws of each component of 0.3 N(-4, 1) + 0.7 N(+4, 0.5^2) (2-D), two ensembles in each: the weights
    are the mixture's, within the importance estimate's error (~0.01 with 2 x 1000 draws)."""
    rng = np.random.default_rng(1)
    chains = np.concatenate([rng.standard_normal((1, 2, 2000, 2)) - 4, 0.5 * rng.standard_normal((1, 2, 2000, 2)) + 4],
                            axis=1)  # fmt: skip
    chains = torch.as_tensor(chains)
    labels = cluster(chains)
    assert labels.tolist() == [[0, 0, 2, 2]]

    def log_density(x: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return _mixture_log_density(x, (0.3, 0.7), (-4.0, 4.0), (1.0, 0.5)) + 17.0  # unnormalized

    found = weigh(chains, labels, log_density, torch.zeros(1, dtype=torch.int64), seeding.mix64(torch.arange(1)))
    assert found.weight[0, 0] == pytest.approx(0.3, abs=0.02) and found.weight[0, 2] == pytest.approx(0.7, abs=0.02)
    assert math.isnan(found.weight[0, 1]) and math.isnan(found.weight[0, 3])
    assert bool(found.multimodal()[0]) and float(found.k_hat[0]) < 0.7


# --- a two-mode target of the normal family ---------------------------------------------------------------

# Points at x = -1 and +1 only pin a normal curve's value there: mu = 0, and exp(-1 / (2 sigma^2)) / sigma / sqrt(2 pi)
# = 0.225 has two roots in the prior (sigma 0.78 and 1.34). A third point at x = 3 leans toward the wide one.
X = np.array([-1.0, 1.0, 3.0])
Y = np.array([0.225, 0.225, 0.009])
E = np.array([0.003, 0.003, 0.01])


def _smoke_like() -> SimpleNamespace:
    cfg = load_config(CONFIGS / "smoke.yaml")  # mu uniform on [-2, 2], sigma uniform on [0.7, 2]
    return SimpleNamespace(family=cfg.family.family, cfg=cfg, data={"param_min": [-2.0, 0.7], "param_max": [2.0, 2.0]})


def _grid_posterior(x: np.ndarray, y: np.ndarray, e: np.ndarray, mu_half: float = 0.5):
    """The posterior of (mu, u = log10 sigma) brute-force on a fine grid, independently of funcae: scipy's normal
    pdf in the chi^2, the prior by hand (mu uniform on [-2, 2], sigma uniform on [0.7, 2]: in u its density is
    proportional to sigma). mu is gridded over [-mu_half, mu_half]: the mass beyond is returned (it must be
    negligible). Returns (u grid, the marginal density of u (normalized), the mass outside the mu window)."""
    mu = np.linspace(-mu_half, mu_half, 1201)
    u = np.linspace(math.log10(0.7), math.log10(2.0), 4001)
    m, uu = np.meshgrid(mu, u, indexing="ij")
    chi2 = sum(((stats.norm.pdf(a, m, 10**uu) - b) / c) ** 2 for a, b, c in zip(x, y, e))
    log_p = -0.5 * chi2 + uu * math.log(10)
    p = np.exp(log_p - log_p.max())
    edge = (p[:3].sum() + p[-3:].sum()) / p.sum()
    marginal = p.sum(axis=0)
    return u, marginal / marginal.sum(), edge


def _split(u: np.ndarray, marginal: np.ndarray) -> tuple[float, float, float]:
    """(the u of the lowest density between the marginal's two peaks, the mass below it, the two peaks' u)."""
    peaks = [i for i in range(1, len(u) - 1) if marginal[i] >= marginal[i - 1] and marginal[i] > marginal[i + 1]]
    assert len(peaks) == 2, peaks
    cut = peaks[0] + int(np.argmin(marginal[peaks[0] : peaks[1]]))
    return u[cut], float(marginal[:cut].sum()), (u[peaks[0]], u[peaks[1]])


def _posterior(seed: int, starts: int, estimate: float):
    trained = _smoke_like()
    bounds = natural_bounds(trained, "prior")
    obs = Observations.of(*(torch.tensor(a[None]) for a in (X, Y, E)), None, torch.device("cpu"))
    seeds = seeding.seeds_of_points(seed, obs.target, 1, [obs.x, obs.y, obs.weight])
    fit = fit_physics(trained, obs, torch.tensor([[0.0, estimate]], dtype=torch.float64), bounds, starts=starts,
                      seeds=seeds, alternatives=True)  # fmt: skip
    fitter = Fitter(trained, obs, bounds)
    u = bounds.to_natural(torch.as_tensor(fit.params))[:, fitter.free]
    alt = torch.as_tensor(fit.alternatives)[:, :, bounds.free]
    post = physics_posterior(fitter, u, log_prior(trained.cfg.family), "mcmc", Sampling(32, "auto", 200, 5000, 4),
                             ["mu", "sigma"], ["two"], seeds, alt)  # fmt: skip
    return fit, post


@pytest.mark.slow
def test_a_second_mode_the_refit_missed_is_found_weighed_and_flagged() -> None:
    """The refit (one start, from sigma = 0.75) ends in the narrow mode, which carries ~24% of the posterior; the
    ensemble started from the prior's box finds the wide one. Both modes are reported, their weights match the
    grid's within 0.03 (over 6 seeds the importance estimate scattered by < 0.01 around the grid's), the draws
    are the weighted mixture (the fraction below the grid's saddle: the same weight), and the target is not
    unconverged though its ensembles disagree across the modes."""
    u, marginal, edge = _grid_posterior(X, Y, E)
    assert edge < 1e-12
    cut, narrow, (u_narrow, u_wide) = _split(u, marginal)
    assert 0.15 < narrow < 0.35  # the narrow mode is the lighter one
    fit, post = _posterior(seed=0, starts=1, estimate=0.75)
    assert math.log10(fit.params[0, 1]) < cut  # the refit ended in the lighter mode
    assert bool(post.multimodal[0]) and not bool(post.unconverged[0])
    w = post.mode_weight[0]
    found = np.isfinite(w)
    assert found.sum() == 2 and (w[found] >= MIN_WEIGHT).all() and w[found].sum() == pytest.approx(1.0)
    medians = post.mode_median[0][found]  # (2, p): mu, sigma in units
    light = int(np.argmin(medians[:, 1]))
    assert w[found][light] == pytest.approx(narrow, abs=0.03)
    np.testing.assert_allclose(np.log10(medians[:, 1]).min(), u_narrow, atol=0.01)  # a mode's sd is ~0.007 in u
    np.testing.assert_allclose(np.log10(medians[:, 1]).max(), u_wide, atol=0.01)
    np.testing.assert_allclose(medians[:, 0], 0.0, atol=0.01)
    below = float(np.mean(np.log10(post.samples[0, :, 1]) < cut))
    assert below == pytest.approx(narrow, abs=0.03)
    assert post.quantiles["q025"][0, 1] < 10**cut < post.quantiles["q84"][0, 1]  # the interval spans both modes
    assert any("multimodal" in text and "two" in text for text in post.warnings)


@pytest.mark.slow
def test_a_unimodal_target_is_not_flagged_and_keeps_its_quantiles() -> None:
    """25 points of one normal curve: one mode (the box's ensemble joins the others), no flag, and the quantiles of
    sigma those of the grid's posterior (to the Monte Carlo error of ~1600 effective draws)."""
    rng = np.random.default_rng(4)
    x = np.sort(rng.uniform(-4, 4, 25))
    v = stats.norm.pdf(x, 0.4, 1.2)
    e = 0.05 * v + 0.003
    y = v + e * rng.standard_normal(25)
    trained = _smoke_like()
    bounds = natural_bounds(trained, "prior")
    obs = Observations.of(*(torch.tensor(a[None]) for a in (x, y, e)), None, torch.device("cpu"))
    seeds = seeding.seeds_of_points(0, obs.target, 1, [obs.x, obs.y, obs.weight])
    fit = fit_physics(trained, obs, torch.tensor([[0.0, 1.0]], dtype=torch.float64), bounds, seeds=seeds,
                      alternatives=True)  # fmt: skip
    fitter = Fitter(trained, obs, bounds)
    u0 = bounds.to_natural(torch.as_tensor(fit.params))[:, fitter.free]
    alt = torch.as_tensor(fit.alternatives)[:, :, bounds.free]
    post = physics_posterior(fitter, u0, log_prior(trained.cfg.family), "mcmc", Sampling(32, "auto", 200, 5000, 4),
                             ["mu", "sigma"], ["one"], seeds, alt)  # fmt: skip
    assert not bool(post.multimodal[0]) and not bool(post.unconverged[0])
    assert np.isfinite(post.mode_weight[0]).sum() == 1 and post.mode_weight[0, 0] == 1.0
    u, marginal, edge = _grid_posterior(x, y, e, mu_half=2.0)
    cdf = np.cumsum(marginal)
    for key, level in (("q16", 0.16), ("median", 0.5), ("q84", 0.84)):
        want = 10 ** np.interp(level, cdf, u)
        sd = (10 ** np.interp(0.84, cdf, u) - 10 ** np.interp(0.16, cdf, u)) / 2
        assert post.quantiles[key][0, 1] == pytest.approx(want, abs=0.1 * sd), key  # ~4 Monte Carlo errors


@pytest.mark.slow
def test_invert_reports_the_modes_flag_and_columns(cli, smoke_copy: Path) -> None:
    """Through `funcae invert`: the two-mode curve beside a plain one; flags, the per-target modes, the warning,
    the CSV's columns and the summary's count."""
    rng = np.random.default_rng(2)
    xs = np.sort(rng.uniform(-4, 4, 25))
    v = stats.norm.pdf(xs, -0.5, 1.1)
    es = 0.05 * v + 0.003
    lines = ["id,x,y,yerr"] + [f"two,{a},{b},{c}" for a, b, c in zip(X, Y, E)]
    lines += [f"plain,{a:.6g},{b:.6g},{c:.4g}" for a, b, c in zip(xs, v + es * rng.standard_normal(25), es)]
    (smoke_copy.parent.parent / "obs.csv").write_text("\n".join(lines) + "\n")
    r = cli("invert", "--curves", "obs.csv", "--posterior", "mcmc", "--json")
    ok(r)
    rec = json.loads(r.stdout)
    two, plain = rec["targets"]
    assert "multimodal" in two["flags"] and two["posterior_multimodal"] is True
    modes = two["posterior_modes"]
    assert len(modes) == 2 and sum(m["weight"] for m in modes) == pytest.approx(1.0)
    assert modes[0]["weight"] >= modes[1]["weight"] >= MIN_WEIGHT and all(m["in_draws"] for m in modes)
    assert sorted(round(m["median"]["sigma"], 1) for m in modes) == [0.8, 1.3]
    assert "multimodal" not in plain["flags"] and plain["posterior_multimodal"] is False
    assert "posterior_modes" not in plain
    assert rec["summary"]["flags"]["multimodal"] == 1 and rec["summary"]["posterior"]["multimodal"] == 1
    assert any("multimodal" in w and "two" in w for w in rec["warnings"])
    header, row_two = (smoke_copy / "invert" / "obs.csv").read_text().splitlines()[:2]
    cells = dict(zip(header.split(","), row_two.split(",")))
    assert cells["mcmc_modes"] == "2" and cells["mcmc_multimodal"] == "true" and "multimodal" in cells["flags"]


@pytest.mark.slow
def test_a_multimodal_targets_modes_and_draws_are_the_same_alone_and_in_a_batch() -> None:
    """The two-mode target alone and between two plain ones (whose chains converge and leave the batch at other
    checks): the same box start, mode weights, medians and mixture draws (bitwise on this CPU; asserted to 1e-6)."""
    trained = _smoke_like()
    bounds = natural_bounds(trained, "prior")
    rng = np.random.default_rng(5)
    xs = np.sort(rng.uniform(-4, 4, (2, 25)), axis=1)
    v = stats.norm.pdf(xs, np.array([[0.3], [-0.8]]), np.array([[1.0], [1.6]]))
    es = 0.05 * v + 0.003
    ys = v + es * rng.standard_normal(v.shape)
    pad = np.full(22, np.nan)
    x = np.stack([xs[0], np.concatenate([X, pad]), xs[1]])
    y = np.stack([ys[0], np.concatenate([Y, pad]), ys[1]])
    e = np.stack([es[0], np.concatenate([E, pad]), es[1]])
    mask = torch.tensor(np.isfinite(x))

    def posterior(rows: list[int]):
        obs = Observations.of(*(torch.tensor(np.nan_to_num(a[rows], nan=1.0)) for a in (x, y, e)), mask[rows],
                              torch.device("cpu"))  # fmt: skip
        seeds = seeding.seeds_of_points(0, obs.target, len(rows), [obs.x, obs.y, obs.weight])
        fit = fit_physics(trained, obs, torch.tensor([[0.0, 0.75]] * len(rows), dtype=torch.float64), bounds,
                          starts=1, seeds=seeds, alternatives=True)  # fmt: skip
        fitter = Fitter(trained, obs, bounds)
        u = bounds.to_natural(torch.as_tensor(fit.params))[:, fitter.free]
        alt = torch.as_tensor(fit.alternatives)[:, :, bounds.free]
        return physics_posterior(fitter, u, log_prior(trained.cfg.family), "mcmc",
                                 Sampling(32, "auto", 200, 5000, 4), ["mu", "sigma"], [str(r) for r in rows], seeds,
                                 alt)  # fmt: skip

    batch, alone = posterior([0, 1, 2]), posterior([1])
    assert batch.multimodal.tolist() == [False, True, False] and bool(alone.multimodal[0])
    assert len(set(batch.steps.tolist())) > 1  # the batch was compacted under the two-mode target
    for key in ("samples", "mode_weight", "mode_median", "rhat", "steps"):
        np.testing.assert_allclose(getattr(alone, key)[0], getattr(batch, key)[1], rtol=1e-6, atol=0, err_msg=key)
    for key in batch.quantiles:
        np.testing.assert_allclose(alone.quantiles[key][0], batch.quantiles[key][1], rtol=1e-6, atol=0, err_msg=key)
