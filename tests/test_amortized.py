"""The amortized posterior (inversion/amortized.py): a conditional flow trained from the simulator, checked against
the likelihood. References: an exact posterior by quadrature (float64 on a fine grid), the identity of a set's
embedding under permutation, zuko's own inverse of the flow (flow_sampling.py's batched sampler), a target's draws
alone and in batches of 12 and 300, and the real commands."""

from __future__ import annotations

import copy
import json
import math
from dataclasses import asdict, replace
from pathlib import Path

import numpy as np
import pytest
import torch

from funcae_cli.config import AmortizedConfig, config_from_dict
from funcae_cli.inversion import seeding
from funcae_cli.inversion.amortized import (
    ADAPT_ROUNDS,
    ESS_MIN,
    FLAG,
    KHAT_MAX,
    MISSED_MODE,
    MOMENT_GROW,
    PosteriorNet,
    SetEncoder,
    Simulator,
    _flow_pool,
    _moment_look,
    amortized_posterior,
    flow_args,
    net_from_checkpoint,
    train_flow,
)
from funcae_cli.inversion.flow_sampling import FlowSampler
from funcae_cli.inversion.flow_spaces import FormulaSpace
from funcae_cli.inversion.physics import Bounds
from funcae_cli.inversion.prior import log_prior
from funcae_cli.inversion.psis import importance_ess, psis
from funcae_cli.inversion.targets import Targets

from .conftest import ok, torch_threads, usage_error

SIGMA = 1.0  # the known width of the normal family's curve: only mu is sampled
MU = (-2.0, 2.0)  # mu's uniform prior
ROTATION = {"md": (1e6, 5e11), "rd": (0.2, 15.0), "mh": (1e9, 5e13), "c": (2.0, 40.0)}  # rotation_curve_observed


def seeds_of(batch):
    """Each target's seed from its own data, as invert_batch computes it."""
    return seeding.seeds_of_curves(0, batch.y, batch.x, batch.yerr, batch.mask)


def _simulator(fcfg, bounds: Bounds, grid: torch.Tensor, log_x: bool, cfg: AmortizedConfig) -> Simulator:
    space = FormulaSpace(fcfg, bounds, log_prior(fcfg))
    return Simulator(space, flow_args(space, grid, log_x, cfg), cfg)


def _known_sigma_problem(cfg: AmortizedConfig) -> tuple:
    fcfg = config_from_dict({"family": {"name": "normal", "params": {
        "mu": {"dist": "uniform", "low": MU[0], "high": MU[1]}, "sigma": {"dist": "fixed", "value": SIGMA}}},
        "grid": {"kind": "linspace", "start": -5, "stop": 5, "num": 64}}).family  # fmt: skip
    bounds = Bounds(torch.tensor([MU[0], 0.0], dtype=torch.float64), torch.tensor([MU[1], 0.0], dtype=torch.float64),
                    [False, True], "prior")  # fmt: skip
    grid = torch.linspace(-5, 5, 64, dtype=torch.float64)
    return fcfg, bounds, _simulator(fcfg, bounds, grid, False, cfg)


def _rotation_problem(cfg: AmortizedConfig) -> tuple:
    """configs/rotation_curve_observed.yaml's family and priors: four free log-uniform parameters."""
    params = {k: {"dist": "loguniform", "low": a, "high": b} for k, (a, b) in ROTATION.items()}
    fcfg = config_from_dict({"family": {"name": "rotation_curve", "prior": "independent", "params": params},
                             "grid": {"kind": "logspace", "start": -1, "stop": 1.9, "num": 64}}).family  # fmt: skip
    low, high = (torch.tensor([math.log10(v[i]) for v in ROTATION.values()], dtype=torch.float64) for i in (0, 1))
    bounds = Bounds(low, high, [True] * 4, "prior")
    grid = torch.logspace(-1, 1.9, 64, dtype=torch.float64)
    return fcfg, bounds, _simulator(fcfg, bounds, grid, True, cfg)


def _exact_quantiles(batch: Targets, levels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Quantiles (n, L) and sd (n,) of mu's posterior by quadrature: uniform prior times the Gaussian likelihood of
    the points, on 20001 values of mu, in float64 numpy (independent of torch and the flow)."""
    mu = np.linspace(*MU, 20001)
    out, sds = [], []
    for i in range(batch.n):
        keep = batch.mask[i].numpy()
        x, y, e = batch.x[i].numpy()[keep], batch.y[i].double().numpy()[keep], batch.yerr[i].double().numpy()[keep]
        f = np.exp(-0.5 * ((x[None, :] - mu[:, None]) / SIGMA) ** 2) / (SIGMA * math.sqrt(2 * math.pi))
        logp = -0.5 * (((f - y) / e) ** 2).sum(axis=1)
        p = np.exp(logp - logp.max())
        cdf = np.cumsum(p) / p.sum()
        out.append(np.interp(levels, cdf, mu))
        mean = (mu * p).sum() / p.sum()
        sds.append(math.sqrt(((mu - mean) ** 2 * p).sum() / p.sum()))
    return np.array(out), np.array(sds)


@pytest.fixture(scope="module")
def tiny_flow():
    """A flow over mu trained in seconds on the normal family with known sigma."""
    cfg = AmortizedConfig(epochs=4, steps=60, batch_size=128, lr=3e-3, hidden=[32, 32], embed=16, transforms=2,
                          points=[5, 15], frac=[0.1, 0.3])  # fmt: skip
    fcfg, bounds, sim = _known_sigma_problem(cfg)
    with torch_threads(1):  # the same weights under `make test` (one thread per worker) and a plain pytest
        return fcfg, bounds, sim, train_flow(sim, cfg, seed=0).net


def test_the_set_embedding_ignores_the_order_of_points_and_the_padding() -> None:
    torch.manual_seed(0)
    cfg = AmortizedConfig(hidden=[16, 16], embed=8)
    _, bounds, sim = _known_sigma_problem(cfg)
    batch, _ = sim(6, torch.Generator().manual_seed(1))
    enc = SetEncoder(sim.args)
    base = enc(batch.x, batch.y, batch.yerr, batch.mask)
    gen = torch.Generator().manual_seed(2)
    idx = torch.stack([torch.randperm(batch.y.shape[1], generator=gen) for _ in range(batch.n)])
    shuffled = [t.gather(1, idx) for t in (batch.x, batch.y, batch.yerr, batch.mask)]
    torch.testing.assert_close(enc(*shuffled), base, rtol=1e-5, atol=1e-6)
    padded = [torch.cat([t, t[:, :5]], dim=1) for t in (batch.x, batch.y, batch.yerr)]
    mask = torch.cat([batch.mask, torch.zeros(batch.n, 5, dtype=torch.bool)], dim=1)
    torch.testing.assert_close(enc(*padded, mask), base, rtol=1e-5, atol=1e-6)
    assert not torch.allclose(enc(batch.x, batch.y * 1.5, batch.yerr, batch.mask), base)  # it does see the data


def test_the_amortized_posterior_of_a_known_case_matches_quadrature(tiny_flow) -> None:
    """mu of the normal family's curve with sigma known: the flow alone (trained for seconds: wider than the
    posterior) holds the exact median in its 95% interval, and with the importance check its quantiles match the
    exact posterior's to 0.15 posterior sd."""
    fcfg, bounds, sim, net = tiny_flow
    batch, u_true = sim(40, torch.Generator().manual_seed(123))
    levels = np.array([0.16, 0.5, 0.84])
    exact, sd = _exact_quantiles(batch, levels)
    batch, names = replace(batch, names=[f"t{i}" for i in range(batch.n)]), ["mu", "sigma"]
    raw, _ = amortized_posterior(net, sim.space, batch, 2000, False, seeds_of(batch), names)
    inside = (raw.quantiles["q025"][:, 0] <= exact[:, 1]) & (exact[:, 1] <= raw.quantiles["q975"][:, 0])
    assert inside.mean() >= 0.9  # the flow alone: the exact median inside its 95% interval
    post, chk = amortized_posterior(net, sim.space, batch, 2000, True, seeds_of(batch), names)
    good = chk.k_hat < KHAT_MAX
    assert good.mean() >= 0.9
    got = np.stack([post.quantiles[k][:, 0] for k in ("q16", "median", "q84")], axis=1)
    err = np.abs(got - exact) / sd[:, None]
    assert np.median(err[good]) < 0.15, np.median(err[good], axis=0)
    assert not chk.off_range.any()
    assert np.isnan(raw.importance_ess).all()  # no check, no weights
    ess = post.importance_ess
    most = 2000 * max(1 + sum(ADAPT_ROUNDS), 2 * MOMENT_GROW)  # the largest pool a target is weighed from
    # (_adapted_look, _moment_look)
    assert ((ess >= 1) & (ess <= most)).all() and np.median(ess[good]) > 100  # a wider flow: most draws count


@pytest.mark.parametrize("shift", [0.5, 1.0, 2.0])
def test_the_k_hat_flag_fires_on_a_mismatched_flow(tiny_flow, shift: float) -> None:
    """The same flow shifted (mu by 0.5 to 2, ~8-30 posterior sd) and narrowed tenfold: its own draws miss every
    posterior. The check's rounds and looks (a Gaussian in the flow's base space at the weighted moments of the
    draws that did land, then a t there) rescue some targets; those are right (median within 0.25 posterior sd of
    quadrature's) and the others flagged: no silent failure. Shifted by 2 they rescue ~60%: >= 25% flagged
    (the matched flow's targets pass: >= 90%, the test above)."""
    fcfg, bounds, sim, net = tiny_flow
    batch, _ = sim(30, torch.Generator().manual_seed(7))
    bad = PosteriorNet(replace(net.args))
    bad.load_state_dict(net.state_dict())
    bad.center += shift
    bad.scale *= 0.1
    batch, names = replace(batch, names=[f"t{i}" for i in range(batch.n)]), ["mu", "sigma"]
    with torch.no_grad():
        sampler, context = bad.eval().sampler(), bad.embed(batch)
        _, _, _, _, k0 = _flow_pool(bad, sampler, sim.space, batch, context, seeds_of(batch), 500)
    assert (k0 >= KHAT_MAX).float().mean() >= 0.75  # its own draws fail
    post, chk = amortized_posterior(bad, sim.space, batch, 500, True, seeds_of(batch), names)
    exact, sd = _exact_quantiles(batch, np.array([0.5]))
    passed = ~chk.unreliable
    assert np.all(np.abs(post.quantiles["median"][passed, 0] - exact[passed, 0]) < 0.25 * sd[passed])
    if shift == 2.0:
        assert chk.unreliable.mean() >= 0.25 and any(FLAG in w for w in chk.warnings)


def test_a_flow_whose_draws_all_miss_the_prior_fails_the_check(tiny_flow) -> None:
    """The tiny flow moved to mu ~ 10, outside the prior's [-2, 2]: no draw has a finite posterior, and no round or
    look finds one: every target's k-hat is inf and every target flagged (a NaN or -inf log weight made finite, as
    torch's nan_to_num does, once weighed such rows flat and passed them with k-hat -inf)."""
    fcfg, bounds, sim, net = tiny_flow
    batch, _ = sim(20, torch.Generator().manual_seed(3))
    bad = PosteriorNet(replace(net.args))
    bad.load_state_dict(net.state_dict())
    bad.center += 10.0
    batch, names = replace(batch, names=[f"t{i}" for i in range(batch.n)]), ["mu", "sigma"]
    post, chk = amortized_posterior(bad.eval(), sim.space, batch, 200, True, seeds_of(batch), names)
    assert (post.samples[:, :, 0] > MU[1]).all()  # the flow's own draws, reported as they are
    assert np.isinf(chk.k_hat).all() and chk.unreliable.all()


@pytest.mark.parametrize("seed, shift, widen", [(7, 0.3, 4.0), (8, 2.0, 0.1), (7, 0.0, 1.0), (8, 0.0, 1.0)])
def test_draws_that_miss_the_mode_are_flagged_against_the_targets_fits(tiny_flow, seed, shift, widen) -> None:
    """A flow whose draws lie on a plateau of the likelihood (the curve's bump outside the points: weights flat
    there, k-hat small, the answer tens of posterior sd off: one target of each mismatched flow here) passes
    PSIS; with each target's fit (quadrature's median) its best reported draw is far less probable than the fit:
    flagged MISSED_MODE. Every target neither flagged is right: its median within 0.4 posterior sd of quadrature's
    (a reweighted median's own error at the 100-400 effective draws of a rescued target is ~1.25 / sqrt(ESS) =
    0.06-0.13 sd). The matched flow (shift 0, widen 1): none flagged so."""
    fcfg, bounds, sim, net = tiny_flow
    batch, _ = sim(30, torch.Generator().manual_seed(seed))
    exact, sd = _exact_quantiles(batch, np.array([0.5]))
    bad = PosteriorNet(replace(net.args))
    bad.load_state_dict(net.state_dict())
    bad.center += shift
    bad.scale *= widen
    batch, names = replace(batch, names=[f"t{i}" for i in range(batch.n)]), ["mu", "sigma"]
    fits = torch.as_tensor(exact[:, 0])[:, None]
    args = (bad.eval(), sim.space, batch, 500, True, seeds_of(batch), names)
    post, chk = amortized_posterior(*args, fits=fits)
    err = np.abs(post.quantiles["median"][:, 0] - exact[:, 0]) / sd
    trusted = ~chk.unreliable & ~chk.missed
    assert (err[trusted] < 0.4).all()
    if chk.missed.any():
        blind, chk0 = amortized_posterior(*args)  # without fits: the same draws, the silent failure
        np.testing.assert_array_equal(blind.samples, post.samples)
        assert (err[~chk0.unreliable] > 10).any() and (err[chk.missed] > 10).all()
        assert any(MISSED_MODE in w for w in chk.warnings)
    if shift == 2.0:  # one target's draws on the plateau: caught
        assert chk.missed.sum() >= 1
    else:
        assert not chk.missed.any()


def test_a_flow_that_misses_gets_a_second_look_from_laplaces_t(tiny_flow) -> None:
    """The mismatched flow above, given each target's Gaussian at its exact posterior (quadrature's median and
    sd, widened 1.5x: an approximate Laplace): the pool of the flow's and the t's draws, weighed under their
    mixture, passes the check where the flow alone failed, and its quantiles are the exact posterior's to 0.15
    sd. A Laplace far off (10 sd away and 100x narrow) leaves the targets flagged with the flow's own draws."""
    fcfg, bounds, sim, net = tiny_flow
    batch, _ = sim(30, torch.Generator().manual_seed(7))
    levels = np.array([0.16, 0.5, 0.84])
    exact, sd = _exact_quantiles(batch, levels)
    bad = PosteriorNet(replace(net.args))
    bad.load_state_dict(net.state_dict())
    bad.center += 2.0
    bad.scale *= 0.1
    batch, names = replace(batch, names=[f"t{i}" for i in range(batch.n)]), ["mu", "sigma"]
    args = (bad.eval(), sim.space, batch, 1000, True, seeds_of(batch), names)
    flow_only, chk0 = amortized_posterior(*args)
    assert chk0.unreliable.mean() >= 0.25  # the flow, its rounds (_adapted_look) and the moment look fail these

    def laplace(rows: torch.Tensor, shift: float = 0.0, widen: float = 1.5):
        mean = torch.as_tensor(exact[rows.numpy(), 1] + shift * sd[rows.numpy()])[:, None]
        return mean, torch.as_tensor((widen * sd[rows.numpy()]) ** 2)[:, None, None]

    post, chk = amortized_posterior(*args, laplace)
    assert (chk.k_hat < KHAT_MAX).mean() >= 0.9 and not chk.unreliable[~chk0.unreliable].any()
    looked = chk0.unreliable & ~chk.unreliable  # weighed from the pool of 1000 flow and 1000 t draws
    assert (post.importance_ess[looked] > flow_only.importance_ess[looked]).all()
    assert (post.importance_ess[looked] <= 2000).all()
    good = chk.k_hat < KHAT_MAX
    got = np.stack([post.quantiles[k][:, 0] for k in ("q16", "median", "q84")], axis=1)
    err = np.abs(got - exact) / sd[:, None]
    assert np.median(err[good]) < 0.15, np.median(err[good], axis=0)
    far, chk_far = amortized_posterior(*args, lambda rows: laplace(rows, shift=10.0, widen=0.01))
    np.testing.assert_array_equal(chk_far.unreliable, chk0.unreliable)
    np.testing.assert_array_equal(far.samples[chk_far.unreliable], flow_only.samples[chk_far.unreliable])

    def failed_fits(rows: torch.Tensor):  # a physics fit that failed (NaN): no second look, no error
        mean, cov = laplace(rows)
        return mean.fill_(math.nan), cov

    nan, chk_nan = amortized_posterior(*args, failed_fits)
    np.testing.assert_array_equal(chk_nan.unreliable, chk0.unreliable)
    np.testing.assert_array_equal(nan.samples, flow_only.samples)


@pytest.mark.parametrize("shift, widen, share", [(0.3, 4.0, 0.7), (0.15, 0.5, 0.8)])
def test_a_flow_off_in_place_and_spread_is_rescued_by_rounds_in_its_base_space(tiny_flow, shift, widen, share) -> None:
    """The tiny flow moved and made broader (0.3 in mu, 4x) or narrower (0.15, 0.5x): its first 500 draws fail the
    check or pass on few effective draws for most targets; _adapted_look's rounds (a Gaussian in the flow's base
    space at the pool's weighted moments) bring >= 80% to ESS_MIN effective draws, k-hat < KHAT_MAX, and medians
    and 68% intervals within 0.15 posterior sd of quadrature's, without the later looks (evaluations within the
    rounds' budget). Moved and 4x broader, 2 of the 30 targets' first draws all land outside the prior: there
    >= 70%."""
    fcfg, bounds, sim, net = tiny_flow
    batch, _ = sim(30, torch.Generator().manual_seed(7))
    exact, sd = _exact_quantiles(batch, np.array([0.16, 0.5, 0.84]))
    bad = PosteriorNet(replace(net.args))
    bad.load_state_dict(net.state_dict())
    bad.center += shift
    bad.scale *= widen
    batch, names = replace(batch, names=[f"t{i}" for i in range(batch.n)]), ["mu", "sigma"]
    with torch.no_grad():
        sampler, context = bad.eval().sampler(), bad.embed(batch)
        _, _, _, smoothed, k0 = _flow_pool(bad, sampler, sim.space, batch, context, seeds_of(batch), 500)
    first = (k0 < KHAT_MAX) & (importance_ess(smoothed) >= ESS_MIN)
    assert first.float().mean() <= 0.2
    post, chk = amortized_posterior(bad, sim.space, batch, 500, True, seeds_of(batch), names)
    passed = (post.importance_ess >= ESS_MIN) & (chk.k_hat < KHAT_MAX)
    print("DBG", np.round(post.importance_ess), np.round(chk.k_hat, 2), post.flow_evaluations)
    assert passed.mean() >= share
    assert (post.flow_evaluations[passed] <= 500 * (1 + sum(ADAPT_ROUNDS))).all()
    got = np.stack([post.quantiles[k][:, 0] for k in ("q16", "median", "q84")], axis=1)
    assert np.median((np.abs(got - exact) / sd[:, None])[passed]) < 0.15


def test_a_broad_flow_off_target_is_rescued_by_a_t_at_its_weighted_moments(tiny_flow) -> None:
    """_moment_look alone (no Laplace): the tiny flow made 4x broader and shifted 0.3 in mu (its draws cover each
    posterior sparsely: most targets fail the check on 500 of them) gets a t at the weighted mean and covariance of
    4 x 500 of its draws; the mixture's pool passes for >= 80% of targets, their medians within 0.15 posterior sd of
    quadrature's, weighed from pools of 4000 draws. A narrow flow far off (the k-hat test's) stays failed."""
    fcfg, bounds, sim, net = tiny_flow
    batch, _ = sim(30, torch.Generator().manual_seed(7))
    exact, sd = _exact_quantiles(batch, np.array([0.16, 0.5, 0.84]))
    seeds = seeds_of(batch)

    def look(shift: float, widen: float) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        bad = PosteriorNet(replace(net.args))
        bad.load_state_dict(net.state_dict())
        bad.center += shift
        bad.scale *= widen
        bad.eval()
        with torch.no_grad():
            sampler, context = bad.sampler(), bad.embed(batch)
            u, lq = bad.sample(context, sampler.base_draws(seeds, 500), sampler)
            log_p = sim.space.log_posterior(batch, u)
            smoothed, k = psis(log_p - lq.double())
            ess, before = importance_ess(smoothed), k.numpy().copy()
            evals = torch.full((batch.n,), 500, dtype=torch.int64)
            _moment_look(bad, sampler, sim.space, batch, context, seeds, u, lq, log_p, k, ess, evals)
        return before, k.numpy(), ess.numpy(), np.median(u[:, :, 0].numpy(), axis=1)

    before, after, ess, median = look(0.3, 4.0)
    assert (before < KHAT_MAX).mean() <= 0.2 and (after < KHAT_MAX).mean() >= 0.8
    looked = (before >= KHAT_MAX) & (after < KHAT_MAX)
    assert np.median(np.abs(median - exact[:, 1])[looked] / sd[looked]) < 0.15
    assert np.median(ess[looked]) > 500  # more effective draws than the 500 a target had: the pool is larger
    before, after, _, _ = look(0.5, 0.1)
    assert (after < KHAT_MAX).mean() <= 0.2


def test_targets_passing_on_few_effective_draws_get_a_larger_pool(tiny_flow) -> None:
    """100 draws per target: every target that passes has fewer than ESS_MIN effective draws, so it is weighed
    again from a pool of up to (1 + sum(ADAPT_ROUNDS)) x 100 (_adapted_look: its effective draws then above 100),
    and its quantiles are the exact posterior's to 0.15 sd."""
    fcfg, bounds, sim, net = tiny_flow
    batch, _ = sim(30, torch.Generator().manual_seed(11))
    exact, sd = _exact_quantiles(batch, np.array([0.16, 0.5, 0.84]))
    batch, names = replace(batch, names=[f"t{i}" for i in range(batch.n)]), ["mu", "sigma"]
    post, chk = amortized_posterior(net, sim.space, batch, 100, True, seeds_of(batch), names)
    good = chk.k_hat < KHAT_MAX
    assert good.mean() >= 0.9 and ESS_MIN > 100
    ess = post.importance_ess
    assert (ess[good] > 100).mean() >= 0.75 and np.median(ess[good]) > 150  # without the larger pool: all <= 100
    assert (ess <= 100 * max(1 + sum(ADAPT_ROUNDS), 2 * MOMENT_GROW)).all()
    got = np.stack([post.quantiles[k][:, 0] for k in ("q16", "median", "q84")], axis=1)
    assert np.median((np.abs(got - exact) / sd[:, None])[good]) < 0.15


def test_a_larger_pool_extends_the_first_draws_rather_than_drawing_them_again(tiny_flow) -> None:
    """_flow_pool given a target's first S draws (their log q and log posterior) draws only the rest: the pool is
    the one drawn whole (each draw from its own base normals), its log posterior to float64 rounding."""
    fcfg, bounds, sim, net = tiny_flow
    batch, _ = sim(9, torch.Generator().manual_seed(5))
    seeds, sampler = seeds_of(batch), net.sampler()
    with torch.no_grad():
        context = net.embed(batch)
        whole = _flow_pool(net, sampler, sim.space, batch, context, seeds, 800)
        u, lq, log_p, _, _ = _flow_pool(net, sampler, sim.space, batch, context, seeds, 200)
        grown = _flow_pool(net, sampler, sim.space, batch, context, seeds, 800, (u, lq, log_p))
    assert torch.equal(grown[0], whole[0]) and torch.equal(grown[1], whole[1])
    assert torch.equal(grown[0][:, :200], u)
    np.testing.assert_allclose(grown[2].numpy(), whole[2].numpy(), rtol=1e-12)
    np.testing.assert_allclose(grown[4].numpy(), whole[4].numpy(), rtol=1e-9)


def test_targets_unlike_the_training_observations_are_flagged(tiny_flow) -> None:
    fcfg, bounds, sim, net = tiny_flow
    batch, _ = sim(4, torch.Generator().manual_seed(3))
    mask = batch.mask.clone()
    mask[0, 3:] = False  # 3 points: fewer than the 10 it was trained on
    x = batch.x.clone()
    x[1, 0] = -7.0  # outside the grid [-5, 5]
    odd = replace(batch, x=x, mask=mask, names=["a", "b", "c", "d"])
    _, chk = amortized_posterior(net, sim.space, odd, 50, False, seeds_of(odd), ["mu", "sigma"])
    assert chk.off_range.tolist() == [True, True, False, False]
    assert any("a, b lie outside" in w for w in chk.warnings)


def _normal_csv(path: Path) -> Path:
    x = np.linspace(-3, 3, 20)
    y = np.exp(-0.5 * ((x - 0.3) / 1.2) ** 2) / (1.2 * math.sqrt(2 * math.pi))
    rows = [f"a,{a},{b},{0.05 * b + 1e-3}" for a, b in zip(x, y)]
    path.write_text("id,x,y,yerr\n" + "\n".join(rows) + "\n")
    return path


def test_without_a_posterior_network_amortized_is_exit_2_naming_the_command(cli, smoke_copy: Path) -> None:
    csv = _normal_csv(smoke_copy.parent / "obs.csv")
    r = cli("invert", "--run", smoke_copy, "--curves", csv, "--posterior", "amortized")
    usage_error(r, "no trained posterior network", f"funcae amortize {smoke_copy}")
    usage_error(cli("validate", smoke_copy, "--posterior", "amortized"), f"funcae amortize {smoke_copy}")
    r = cli("invert", "--run", smoke_copy, "--curves", csv, "--posterior", "mcmc", "--proposal", "flow")
    usage_error(r, "no trained posterior network", f"funcae amortize {smoke_copy}")  # asked for, not there


@pytest.mark.slow
def test_amortize_then_invert_and_validate_with_it(cli, smoke_copy: Path) -> None:
    """The real commands: train a tiny network (checkpoint written), invert observed curves with it (quantiles,
    k-hat per target, samples file), validate it; a second amortize without --force is refused."""
    r = cli("amortize", smoke_copy, "--epochs", "2", "--steps", "5", "--batch-size", "32", "--quiet")
    ok(r)
    assert "epoch" not in r.stderr + r.stdout and "trained the posterior network" in r.stderr + r.stdout  # --quiet
    ok(cli("amortize", smoke_copy, "--epochs", "1", "--steps", "5", "--batch-size", "32", "--force"))
    assert (smoke_copy / "checkpoints" / "amortized.pt").is_file()
    usage_error(cli("amortize", smoke_copy, "--epochs", "1", "--steps", "5", "--batch-size", "32"), "--force")
    csv = _normal_csv(smoke_copy.parent / "obs.csv")
    r = cli("invert", "--run", smoke_copy, "--curves", csv, "--posterior", "amortized", "--draws", "100",
            "--no-plot", "--json")  # fmt: skip
    ok(r)
    rec = json.loads(r.stdout)
    assert rec["posterior"] == "amortized" and rec["draws"] == 100
    assert r.stdout == Path(rec["files"]["json"]).read_text()  # --json: the record's file text, encoded once
    assert Path(rec["files"]["samples"]).is_file()
    r = cli("validate", smoke_copy, "--n", "20", "--posterior", "amortized", "--compare-mcmc", "4", "--json")
    ok(r)
    rep = json.loads(r.stdout)
    assert rep["posterior"] == "amortized" and 0 <= rep["k_hat_below"] <= 1
    ess = rep["importance_ess"]
    assert 1 <= ess["p10"] <= ess["median"] <= ess["p75"] <= 500 * (1 + sum(ADAPT_ROUNDS))  # of a target's pool
    assert 0 <= ess["split_low"]["count"] <= 20 and ess["low"] == 100
    assert rep["compare_mcmc"]["targets"] == 4 and set(rep["compare_mcmc"]["params"]) == {"mu", "sigma"}
    assert 0 <= rep["tarp"]["max_deviation"] <= 1 and (smoke_copy / "validate" / "tarp.png").is_file()

    # auto: a target off the flow's training range (3 points; it saw 5-60) is sampled by mcmc, and gets exactly
    # what mcmc gives it in the same call; a target the check passes keeps its amortized answer
    two = smoke_copy.parent / "two.csv"
    rows = _normal_csv(smoke_copy.parent / "a.csv").read_text().splitlines()
    b_rows = [r.replace("a,", "b,", 1) for r in rows[1:][::7]]  # 3 points
    two.write_text("\n".join([rows[0], *rows[1:], *b_rows]) + "\n")
    common = ["--run", smoke_copy, "--no-plot", "--json", "--draws", "100"]

    def posterior_rows(*args: str) -> dict[str, dict]:
        r = cli("invert", *common, *args)
        ok(r)
        rec = json.loads(r.stdout)
        return {"": rec["summary"]["posterior"], **{t["name"]: t for t in rec["targets"]}}

    auto = posterior_rows("--curves", two, "--posterior", "auto")
    assert auto["b"]["posterior_source"] == "mcmc" and "amortized_off_range" not in auto["b"]["flags"]
    mcmc = posterior_rows("--curves", two, "--posterior", "mcmc")  # proposal auto: the run's flow, in blocks
    assert auto["b"]["posterior"] == mcmc["b"]["posterior"] and mcmc[""]["proposal"] == auto[""]["proposal"] == "flow"
    local = posterior_rows("--curves", two, "--posterior", "mcmc", "--proposal", "none")
    assert local[""]["proposal"] == "none" and local["b"]["posterior"] != mcmc["b"]["posterior"]
    amort = posterior_rows("--curves", two, "--posterior", "amortized")
    # --no-physics skips the refit, not the formula: the flow's posterior of the parameters, without a second look
    quick = posterior_rows("--curves", two, "--posterior", "amortized", "--no-physics")
    assert set(quick["a"]["posterior"]) == {"mu", "sigma"} and quick[""]["kind"] == "amortized"
    # the Python API finds the run's network as the command does (amortized, and mcmc's proposal)
    import funcae_cli as fa

    x = np.linspace(-3, 3, 20)
    y = np.exp(-0.5 * ((x - 0.3) / 1.2) ** 2) / (1.2 * math.sqrt(2 * math.pi))
    run = fa.load_run(smoke_copy, device="cpu")
    api = run.invert(x=x, y=y, yerr=0.05 * y + 1e-3, names=["a"], posterior="amortized", draws=100)
    assert api.posterior.kind == "amortized"
    medians = [amort["a"]["posterior"][name]["median"] for name in api.posterior.names]
    np.testing.assert_allclose(api.posterior.quantiles["median"][0], medians, rtol=1e-12)
    for name, row in auto.items():
        if name and row["posterior_source"] == "amortized":
            assert row["posterior"] == amort[name]["posterior"] and row["k_hat"] < 0.7


@pytest.mark.parametrize("q, passes", [(4, None), (4, 2), (3, None), (5, 2), (1, None)])
def test_the_batched_sampler_is_zukos_inverse_of_the_flow(q: int, passes: int | None) -> None:
    """flow_sampling.FlowSampler against zuko's own inverse and log density of the same flow at the same base
    draws, and its forward pass against zuko's log density at other points, in float64 (where rounding is 1e-16):
    fully autoregressive, coupling, and zuko's element-wise q = 1."""
    import zuko

    torch.manual_seed(0)
    flow = zuko.flows.NSF(q, 8, transforms=3, passes=passes, hidden_features=(32, 32)).double()
    with torch.no_grad():
        for p in flow.parameters():
            p += 0.3 * torch.randn_like(p)  # splines far from the identity
    c, eps = torch.randn(5, 8, dtype=torch.float64), torch.randn(5, 50, q, dtype=torch.float64)
    x, log_q = FlowSampler(flow, q).sample(c, eps)
    with torch.no_grad():
        dist = flow(c[:, None, :].expand(5, 50, 8))
        ref = dist.transform.inv(eps)
        torch.testing.assert_close(x, ref, rtol=0, atol=1e-10)
        torch.testing.assert_close(log_q, dist.log_prob(ref), rtol=0, atol=1e-9)
        # the forward pass: zuko's log density at any points (here wide ones, some beyond the splines' bound 5)
        pts = 3 * torch.randn(5, 50, q, dtype=torch.float64)
        torch.testing.assert_close(FlowSampler(flow, q).log_prob(c, pts), dist.log_prob(pts), rtol=0, atol=1e-9)
    # the targets' share prepared once (the amortized check's rounds) and indexed: the same numbers (bitwise in
    # float32, as the check runs; float64's per-target products differ in the last bits with the rows they share)
    rows = torch.tensor([3, 0, 4])
    for f, dt, tol in ((flow, torch.float64, 1e-12), (copy.deepcopy(flow).float(), torch.float32, 0.0)):
        sampler, cc, e, p = FlowSampler(f, q), c.to(dt), eps.to(dt), pts.to(dt)
        cond = sampler.prepare(cc)[rows]
        for got, want in zip(sampler.sample(cond, e[rows]), sampler.sample(cc[rows], e[rows])):
            torch.testing.assert_close(got, want, rtol=0, atol=tol)
        torch.testing.assert_close(sampler.log_prob(cond, p[rows]), sampler.log_prob(cc[rows], p[rows]), rtol=0,
                                   atol=tol)  # fmt: skip


@pytest.mark.parametrize("passes", [None, 2], ids=["autoregressive", "coupling"])
@pytest.mark.parametrize("check", [False, True, "laplace"], ids=["flow", "checked", "second-look"])
def test_a_targets_amortized_draws_are_the_same_alone_in_12_and_in_300(passes: int | None, check) -> None:
    """Per-target determinism: a target's base normals from its own seed, its context once: its draws, quantiles
    and k-hat bitwise the same alone (its own padding), among 12 and among 300 (wider padding, two chunks of 262);
    also where the check's later looks (larger pools, a t at each target's own Gaussian, a t at its flow draws'
    weighted moments: nearly every target of an untrained flow gets them) weigh them again."""
    cfg = AmortizedConfig(hidden=[32, 32], embed=16, points=[10, 40], frac=[0.02, 0.1], passes=passes)
    fcfg, bounds, sim = _rotation_problem(cfg)
    torch.manual_seed(0)
    net = PosteriorNet(sim.args).eval()  # untrained: its draws still depend on the weights, context and seed
    batch, u_true = sim(300, torch.Generator().manual_seed(1))
    batch = replace(batch, names=[f"t{i}" for i in range(batch.n)])
    seeds, names = seeds_of(batch), list(ROTATION)

    looked: list[int] = []

    def laplace(rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        looked.extend(rows.tolist())
        return u_true[rows].double(), torch.eye(4, dtype=torch.float64).expand(rows.shape[0], 4, 4) * 0.01

    second = laplace if check == "laplace" else None
    with torch_threads(1):  # one chunk after another
        runs = [amortized_posterior(net, sim.space, batch.subset(slice(0, k)), 100, bool(check),
                                    seeds[:k], names, second) for k in (1, 12, 300)]  # fmt: skip
    (alone, chk1), (twelve, chk12), (all_, chk_all) = runs
    with torch_threads(2):  # threads.chunk_map: the 300's two chunks at once, on two threads
        both, chk_both = amortized_posterior(net, sim.space, batch, 100, bool(check), seeds, names, second)
    np.testing.assert_array_equal(both.samples, all_.samples)
    np.testing.assert_array_equal(chk_both.k_hat, chk_all.k_hat)
    for post, chk in ((twelve, chk12), (all_, chk_all)):
        np.testing.assert_array_equal(post.samples[0], alone.samples[0])
        np.testing.assert_array_equal(post.quantiles["median"][0], alone.quantiles["median"][0])
        np.testing.assert_array_equal(chk.k_hat[:1], chk1.k_hat)
    np.testing.assert_array_equal(all_.samples[:12], twelve.samples)
    np.testing.assert_array_equal(both.flow_evaluations, all_.flow_evaluations)  # what each target's check cost
    np.testing.assert_array_equal(all_.flow_evaluations[:12], twelve.flow_evaluations)
    np.testing.assert_array_equal(all_.flow_evaluations[:1], alone.flow_evaluations)
    # the check ran (k-hat a number; inf where an untrained flow's draws all miss the prior), or did not (NaN)
    assert np.isfinite(alone.samples).all() and (np.isnan(chk1.k_hat) != bool(check)).all()
    if check == "laplace":  # the second look ran, on every target the untrained flow failed (nearly all)
        assert len(looked) >= 0.9 * (1 + 12 + 300 + 300)


@pytest.mark.parametrize("check", [False, True, "laplace"])
def test_flow_evaluations_count_what_the_flow_computed(check, monkeypatch) -> None:
    """Each target's flow_evaluations (its cost, in the record) add up to the draws and densities the flow's sampler
    computed in the call, counted at the sampler: S each unchecked; checked, the larger pools and the looks' pools
    too (an untrained flow: nearly every target gets them)."""
    cfg = AmortizedConfig(hidden=[32, 32], embed=16, points=[10, 40], frac=[0.02, 0.1])
    _, _, sim = _rotation_problem(cfg)
    torch.manual_seed(0)
    net = PosteriorNet(sim.args).eval()
    batch, u_true = sim(40, torch.Generator().manual_seed(1))
    computed = []
    real_sample, real_log_prob = FlowSampler.sample, FlowSampler.log_prob
    monkeypatch.setattr(FlowSampler, "sample", lambda self, c, eps: computed.append(eps.shape[0] * eps.shape[1])
                        or real_sample(self, c, eps))  # fmt: skip
    monkeypatch.setattr(FlowSampler, "log_prob", lambda self, c, x: computed.append(x.shape[0] * x.shape[1])
                        or real_log_prob(self, c, x))  # fmt: skip

    def laplace(rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return u_true[rows].double(), torch.eye(4, dtype=torch.float64).expand(rows.shape[0], 4, 4) * 0.01

    post, _ = amortized_posterior(net, sim.space, batch, 50, bool(check), seeds_of(batch), list(ROTATION),
                                  laplace if check == "laplace" else None)  # fmt: skip
    assert post.flow_evaluations.sum() == sum(computed)
    if not check:
        assert (post.flow_evaluations == 50).all()
    else:
        assert (post.flow_evaluations >= 50).all() and post.flow_evaluations.max() > 4 * 50


def test_a_checkpoint_from_before_passes_loads_as_the_fully_autoregressive_flow() -> None:
    """Checkpoints written before FlowArgs.passes (no such key) rebuild the same network: every transform fully
    autoregressive, the same draws."""
    assert AmortizedConfig().passes == 2  # new networks: coupling
    cfg = AmortizedConfig(hidden=[16, 16], embed=8, passes=None)
    _, _, sim = _rotation_problem(cfg)
    torch.manual_seed(0)
    net = PosteriorNet(sim.args).eval()
    args = asdict(net.args)
    del args["passes"]
    old = net_from_checkpoint({"args": args, "state": net.state_dict()})
    assert old.args.passes is None and all(t.passes == 4 for t in old.flow.transform.transforms)
    batch, _ = sim(6, torch.Generator().manual_seed(2))
    eps = net.sampler().base_draws(seeds_of(batch), 20)
    with torch.no_grad():
        a, b = (m.sample(m.embed(batch), eps, m.sampler()) for m in (net, old))
    torch.testing.assert_close(a, b, rtol=0, atol=0)
