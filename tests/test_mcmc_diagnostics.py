"""Convergence diagnostics against the references (ArviZ's rank-normalized R-hat and ESS, emcee's integrated
autocorrelation time, AR(1) chains of known tau), and `steps auto` on an easy and a pathological target."""

from __future__ import annotations

import math

import arviz as az
import emcee
import numpy as np
import pytest
import torch

from funcae_cli.inversion import seeding
from funcae_cli.inversion.diagnostics import RHAT_MAX, TAU_FACTOR, effective_size, integrated_time, rank_rhat
from funcae_cli.inversion.ensemble import sample


def _ar1(rng: np.random.Generator, phi: float, chains: int, steps: int) -> np.ndarray:
    """(chains, steps) stationary AR(1) x_t = phi x_{t-1} + e_t: tau = (1 + phi) / (1 - phi)."""
    e = rng.standard_normal((chains, steps))
    x = np.zeros((chains, steps))
    x[:, 0] = e[:, 0] / math.sqrt(1 - phi**2)
    for t in range(1, steps):
        x[:, t] = phi * x[:, t - 1] + e[:, t]
    return x


@pytest.mark.parametrize("dtype", [np.float64, np.float32])  # float32: the samplers' chains (native/ranks.c)
def test_rank_rhat_is_arviz_rank_rhat(dtype: type) -> None:
    """Batched over targets and parameters, with ties (rounded draws, as rejected MCMC moves repeat values), an odd
    number of draws, a shifted chain and a chain with a wider tail: ArviZ's rhat(method="rank") on each."""
    rng = np.random.default_rng(3)
    sets = [
        rng.standard_normal((4, 400)),
        np.round(rng.standard_normal((4, 401)), 1),
        rng.standard_normal((4, 401)) + np.array([0.0, 0.0, 0.0, 0.4])[:, None],
        rng.standard_normal((4, 400)) * np.array([1.0, 1.0, 1.0, 2.5])[:, None],
        _ar1(rng, 0.9, 4, 401),
    ]
    sets = [c.astype(dtype).astype(np.float64) for c in sets]  # arviz sees exactly the values we rank
    for chains in sets:
        ours = rank_rhat(torch.as_tensor(np.stack([chains, -2 * chains], axis=-1).astype(dtype))[None])  # (1, q=2)
        want = float(az.rhat(chains, method="rank"))
        torch.testing.assert_close(ours, torch.full((1, 2), want, dtype=torch.float64), rtol=1e-12, atol=0)
    assert float(rank_rhat(torch.as_tensor(sets[2])[None, :, :, None])) > RHAT_MAX  # a shifted chain is caught
    assert float(rank_rhat(torch.as_tensor(sets[0])[None, :, :, None])) < RHAT_MAX


def test_the_native_rank_scores_are_numpys_bits() -> None:
    """native/ranks.c (float32 chains: a radix sort, the folded order by a merge) and numpy's two argsorts (the same
    values in float64) give the same normal scores, bit for bit: many ties (a chain's rejected moves), +0 and -0
    (equal), a row of one value, rows of an odd and an even number of draws; and they are scipy's average ranks'."""
    from scipy import special, stats

    from funcae_cli.inversion.diagnostics import _rank_scores
    from funcae_cli.native.kernels import kernels_or_none

    if kernels_or_none() is None:
        pytest.skip("native kernels unavailable (no C compiler, or FUNCAE_NATIVE=0): numpy's path only")
    rng = np.random.default_rng(11)
    for s in (301, 300):
        x = rng.standard_normal((3, 4, s, 3)).cumsum(axis=2)
        x[:, :, 1::3] = x[:, :, 0:-1:3][:, :, : x[:, :, 1::3].shape[2]]  # every third draw repeats: ties
        x[0, :, :, 1] = np.where(rng.random((4, s)) < 0.5, 0.0, -0.0)  # only zeros of both signs: one tie
        x[1, :, :, 2] = 1.5  # a row of one value
        x32 = torch.from_numpy(x.astype(np.float32))
        native = _rank_scores(x32)
        numpy = _rank_scores(x32.double())
        for a, b in zip(native, numpy):
            assert torch.equal(a, b)
        flat = x32.double().permute(0, 3, 1, 2).reshape(9, -1).numpy()
        m = flat.shape[1]
        bulk = special.ndtri((stats.rankdata(flat, axis=1) - 0.375) / (m + 0.25))
        folded = np.abs(flat - np.median(flat, axis=1, keepdims=True))
        fold = special.ndtri((stats.rankdata(folded, axis=1) - 0.375) / (m + 0.25))
        flat_of = lambda z: z.permute(0, 3, 1, 2).reshape(9, -1).numpy()  # noqa: E731
        np.testing.assert_allclose(flat_of(native[0]), bulk, rtol=0, atol=1e-12)
        np.testing.assert_allclose(flat_of(native[1]), fold, rtol=0, atol=1e-12)


def test_integrated_time_is_the_same_in_any_block_of_targets() -> None:
    """tau is computed in blocks of targets (diagnostics.FFT_BYTES): each target's is the same alone."""
    rng = np.random.default_rng(4)
    x = torch.from_numpy(rng.standard_normal((9, 64, 500, 2)).cumsum(axis=2)).float()
    together = integrated_time(x)
    alone = torch.cat([integrated_time(x[i : i + 1]) for i in range(9)])
    assert torch.equal(together, alone)


def test_integrated_time_is_emcees_and_ess_matches_known_tau_and_arviz() -> None:
    """tau equals emcee.autocorr.integrated_time on the same walkers (floored at 1); on AR(1) chains it is
    (1 + phi) / (1 - phi) and ESS = chains x steps / tau agrees with ArviZ's ess(method="mean") (Geyer's
    estimator, another window)."""
    rng = np.random.default_rng(5)
    chains, steps = 16, 4000
    for phi in (0.0, 0.5, 0.9):
        x = _ar1(rng, phi, chains, steps)
        y = np.stack([x, np.roll(x, 1, axis=0) + 0.5 * x], axis=-1)  # (walkers, steps, 2)
        ours = integrated_time(torch.as_tensor(y)[None])[0].numpy()
        want = emcee.autocorr.integrated_time(y.transpose(1, 0, 2), tol=0)
        np.testing.assert_allclose(ours, np.maximum(want, 1.0), rtol=1e-10)  # ours floored at 1 (ESS <= draws)
        assert ours[0] == pytest.approx((1 + phi) / (1 - phi), rel=0.15)
        ess = float(effective_size(torch.as_tensor(x)[None, :, :, None]))
        assert ess == pytest.approx(float(az.ess(x, method="mean")), rel=0.15)
        assert ess == pytest.approx(chains * steps * (1 - phi) / (1 + phi), rel=0.15)


@pytest.mark.slow
def test_steps_auto_stops_early_on_a_gaussian_and_on_settled_modes_and_runs_to_the_cap_where_ensembles_disagree() -> (
    None
):
    """Target 0: a correlated Gaussian; target 1: two narrow modes 20 sd apart with two of the four ensembles
    started in each (no move of an ensemble ever crosses): each mode is well sampled, so judged within modes it
    converges too, its ensembles clustered in two modes; target 2: the same modes, but each ensemble's walkers
    straddle them in its own proportion (8/0, 6/2, 4/4, 2/6; the modes far and narrow enough that no walker
    crosses): the ensembles of the one wide mode disagree forever, and it runs to the cap unconverged. Targets 0
    and 1 stop once steps >= 50 tau and R-hat < 1.01, well before the cap; target 0 with the right mean and
    covariance."""
    mean = torch.tensor([1.0, -2.0], dtype=torch.float64)
    cov = torch.tensor([[1.0, 0.45], [0.45, 0.25]], dtype=torch.float64)
    prec = torch.linalg.inv(cov)

    def per_row(x: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        d = x - mean
        gauss = -0.5 * ((d @ prec) * d).sum(dim=1)
        width = torch.where(target == 1, 0.5, 0.01)[:, None]
        modes = torch.logaddexp(
            -0.5 * ((x - 10) / width).square().sum(dim=1), -0.5 * ((x + 10) / width).square().sum(1)
        )
        return torch.where(target == 0, gauss, modes)

    gen = torch.Generator().manual_seed(0)
    w, groups, cap = 32, 4, 1500
    x0 = torch.randn(3, w, 2, generator=gen, dtype=torch.float64) * 0.3
    x0[0] += mean
    x0[1, : w // 2] += 10
    x0[1, w // 2 :] -= 10
    x0[2] *= 0.01 / 0.3
    side = torch.tensor(
        [1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, -1, -1, 1, 1, 1, 1, -1, -1, -1, -1, 1, 1, -1, -1, -1, -1, -1, -1],
        dtype=torch.float64,
    )  # per ensemble of 8: 8/0, 6/2, 4/4, 2/6 at +10/-10
    x0[2] += 10 * side[:, None]
    cohorts = sample(per_row, x0, groups, None, 50, cap, seeding.mix64(torch.arange(3)))
    by_target = {int(t): (c, k) for c in cohorts for k, t in enumerate(c.targets)}
    easy, k = by_target[0]
    assert bool(easy.converged[k]) and easy.steps < cap / 2 and easy.labels[k].tolist() == [0, 0, 0, 0]
    assert easy.steps >= TAU_FACTOR * float(easy.tau[k].max()) and float(easy.rhat[k].max()) < RHAT_MAX
    g = easy.chain[k].double().reshape(-1, 2)
    torch.testing.assert_close(g.mean(dim=0), mean, atol=0.05, rtol=0)
    # converged: ESS >= 32 walkers x 50 = 1600, so a variance of 1 is estimated to ~sqrt(2 / 1600) = 0.035 (1 sd)
    torch.testing.assert_close(torch.cov(g.T), cov, atol=0.1, rtol=0)
    settled, k = by_target[1]
    assert bool(settled.converged[k]) and settled.steps < cap / 2 and settled.labels[k].tolist() == [0, 0, 2, 2]
    assert float(settled.rhat[k].max()) < RHAT_MAX
    hard, k = by_target[2]
    assert hard.steps == cap and not bool(hard.converged[k]) and float(hard.rhat[k].min()) > 1.1
    assert hard.labels[k].tolist() == [0, 0, 0, 0]  # one wide mode whose ensembles disagree


def test_fixed_steps_run_exactly_and_flag_what_has_not_converged() -> None:
    """steps=N runs N steps for every target; a short run of a slowly mixing target is not converged."""

    def per_row(x: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return -0.5 * x.square().sum(dim=1)

    x0 = torch.randn(3, 16, 2, generator=torch.Generator().manual_seed(1), dtype=torch.float64) + 30  # far off
    (cohort,) = sample(per_row, x0, 2, 20, 0, 10_000, seeding.mix64(torch.arange(3)))
    assert cohort.steps == 20 and cohort.chain.shape == (3, 16, 20, 2) and not bool(cohort.converged.any())
