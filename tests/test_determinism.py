"""The same target, the same answer: per-target seeds (inversion/seeding.py) against a pure-Python SplitMix64 and
scipy's distribution tests, and a target's numbers alone, in a batch of 12 and in a batch of 1000 (API and CLI);
its posteriors (mcmc fixed and auto, laplace) alone, in 12 and in larger batches."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy import stats

from funcae_cli.config import override
from funcae_cli.inversion import seeding
from funcae_cli.inversion.invert import invert_batch
from funcae_cli.inversion.physics import natural_bounds
from funcae_cli.inversion.targets import pad
from funcae_cli.jobs.fitted import latent_model_for
from funcae_cli.store.rundir import RunDir
from funcae_cli.store.trained import load_trained

from .conftest import ok, torch_threads

M64 = 2**64


def splitmix64_reference(x: int) -> int:
    """SplitMix64's finalizer in Python's exact integers (Steele, Lea, Flood 2014)."""
    x %= M64
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) % M64
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) % M64
    return x ^ (x >> 31)


def test_mix64_is_splitmix64() -> None:
    rng = np.random.default_rng(0)
    xs = [0, 1, 2**63 - 1, 2**63, M64 - 1, *(int(v) for v in rng.integers(0, 2**63, 50, dtype=np.int64))]
    as_int64 = torch.tensor([x - M64 if x >= 2**63 else x for x in xs], dtype=torch.int64)
    assert [int(v) % M64 for v in seeding.mix64(as_int64)] == [splitmix64_reference(x) for x in xs]


@pytest.mark.parametrize("kernel", ["native", "torch"])
def test_uniforms_are_splitmix64s_high_bits(kernel: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Draw c of stream s of seed k: the 53 high bits of splitmix64(k + golden (s 2^40 + c)), over 2^53: the native
    kernel (native/counters.c) and the torch code, each against Python's exact integers; negative seeds and
    offsets past 2^32 included."""
    from funcae_cli.native import kernels as native

    if kernel == "torch":
        monkeypatch.setenv("FUNCAE_NATIVE", "0")
    elif native.kernels_or_none() is None:
        pytest.skip("native kernels unavailable (no C compiler): the torch code only")
    native.reset()
    try:
        seeds = torch.tensor([0, 1, -1, -(2**63), 2**63 - 1, 123456789], dtype=torch.int64)
        for offset in (0, 7, 2**33 + 5):
            u = seeding.uniform(seeds, "moves", (3, 2), offset)
            for i, k in enumerate(seeds.tolist()):
                for c in range(6):
                    h = splitmix64_reference(k + 0x9E3779B97F4A7C15 * ((seeding.STREAMS["moves"] << 40) + offset + c))
                    assert u[i].flatten()[c].item() == (h >> 11) * 2.0**-53
    finally:
        monkeypatch.delenv("FUNCAE_NATIVE", raising=False)
        native.reset()


def test_draws_follow_their_laws_row_by_row() -> None:
    seeds = seeding.mix64(torch.arange(2000))
    u = seeding.uniform(seeds, "latent", (50,))
    z = seeding.normal(seeds, "latent", (50,))
    assert stats.kstest(u.flatten().numpy(), "uniform").pvalue > 1e-3
    assert stats.kstest(z.flatten().numpy(), "norm").pvalue > 1e-3
    assert stats.kstest(z[:, 7].numpy(), "norm").pvalue > 1e-3  # across targets, one draw each
    lag = np.corrcoef(z[:, :-1].flatten().numpy(), z[:, 1:].flatten().numpy())[0, 1]
    assert abs(lag) < 4 / np.sqrt(z.numel())  # consecutive draws of a row are uncorrelated
    k = seeding.integers(seeds, "physics", 7, (50,))
    counts = np.bincount(k.flatten().numpy(), minlength=7)
    assert k.min() >= 0 and k.max() <= 6 and stats.chisquare(counts).pvalue > 1e-3
    perm = seeding.permutations(seeds[:10], "physics", 9, 3)
    assert torch.equal(perm.sort(dim=1).values, torch.arange(9)[None, :, None].expand(10, 9, 3))


def test_a_row_is_drawn_from_its_own_seed_alone() -> None:
    seeds = seeding.mix64(torch.arange(300))
    for draw in (
        lambda s: seeding.uniform(s, "latent", (4, 3)),
        lambda s: seeding.normal(s, "physics", (5,)),
        lambda s: seeding.integers(s, "walkers", 1000, (6,)),
    ):
        full = draw(seeds)
        assert torch.equal(draw(seeds[17:18])[0], full[17])
        assert torch.equal(draw(seeds.flip(0))[0], full[-1])
    assert not torch.equal(seeding.uniform(seeds, "latent", (4,)), seeding.uniform(seeds, "physics", (4,)))


@pytest.mark.parametrize("activation", ["gelu", "tanh"])
def test_a_decoded_row_is_the_same_whatever_the_number_of_rows(activation: str) -> None:
    """seeding.invariant_rows: a decoder's row (and the gradient of a code through it, the latent search's) is the
    same in any number of rows, 1 to 70, as among 400: BLAS picks its kernel by the row count on this CPU."""
    from funcae_cli.models import ModelArgs, build_model

    torch.manual_seed(0)
    model = build_model(ModelArgs(kind="ae", n_points=64, latent_dim=4, hidden=[64, 64], activation=activation))
    z = torch.randn(400, 4, generator=torch.Generator().manual_seed(1))
    weights = torch.linspace(0, 1, 64)

    def decoded(codes: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        codes = codes.clone().requires_grad_(True)
        out = seeding.invariant_rows(model.decode, codes)
        (out * weights).sum().backward()
        return out.detach(), codes.grad

    full, grad = decoded(z)
    differ = [k for k in range(1, 71) if not all(torch.equal(a, b[:k]) for a, b in zip(decoded(z[:k]), (full, grad)))]
    assert differ == []


def test_a_targets_seed_is_its_data_not_its_place_name_or_padding() -> None:
    rng = np.random.default_rng(1)
    x = torch.tensor(np.sort(rng.uniform(0.5, 20, (3, 6)), axis=1))
    y = torch.tensor(rng.uniform(10, 200, (3, 6)), dtype=torch.float32)
    e = torch.full((3, 6), 5.0)
    base = seeding.seeds_of_curves(42, y, x, e, None)
    assert len(set(base.tolist())) == 3
    wide = lambda t, fill: torch.cat([t, torch.full((3, 4), fill, dtype=t.dtype)], dim=1)  # noqa: E731
    mask = torch.cat([torch.ones(3, 6, dtype=torch.bool), torch.zeros(3, 4, dtype=torch.bool)], dim=1)
    assert torch.equal(seeding.seeds_of_curves(42, wide(y, 7.0), wide(x, 99.0), wide(e, 1.0), mask), base)
    assert torch.equal(seeding.seeds_of_curves(42, y.flip(0), x.flip(0), e.flip(0), None), base.flip(0))
    bumped = y.clone()
    bumped[1, 3] = torch.nextafter(bumped[1, 3], torch.tensor(1e9))
    other = seeding.seeds_of_curves(42, bumped, x, e, None)
    assert other[0] == base[0] and other[1] != base[1] and other[2] == base[2]
    assert (seeding.seeds_of_curves(43, y, x, e, None) != base).all()


@pytest.fixture(scope="module")
def rotation(rotation_run: Path):
    trained = load_trained(RunDir(rotation_run), torch.device("cpu"))
    lm, _ = latent_model_for(trained)
    return trained, lm


def _galaxies(trained, n: int, seed: int):
    from benchmarks.observed import galaxies

    bounds = natural_bounds(trained, "prior")
    return galaxies(n, seed, bounds.low.numpy(), bounds.high.numpy())


REPORTED = ("z", "chi2", "params_est", "physics_objective", "reduced_chi2", "encoder_z")


@pytest.mark.slow
def test_the_same_target_alone_in_12_and_in_1000_gives_the_same_numbers(rotation) -> None:
    """Latent random starts, physics spread starts: a target's numbers do not depend on its batch (bitwise on
    this CPU; the assertion is the issue's 1e-6 relative)."""
    trained, lm = rotation
    items = [replace(g.obs, x=g.obs.x[:8], y=g.obs.y[:8], yerr=g.obs.yerr[:8]) for g in _galaxies(trained, 1000, 11)]
    options = override(trained.cfg.invert, {"starts": 3, "posterior": "none"})
    big = invert_batch(trained, pad(items, "all"), options, latent_model=lm)
    for at in (0, 997):
        alone = invert_batch(trained, pad([items[at]], "one"), options, latent_model=lm)
        twelve = invert_batch(trained, pad(items[at - 5 : at + 7] if at >= 5 else items[:12], "12"), options,
                              latent_model=lm)  # fmt: skip
        j = min(at, 5)
        for name in REPORTED:
            ref = getattr(big, name)[at]
            np.testing.assert_allclose(getattr(alone, name)[0], ref, rtol=1e-6, atol=0, err_msg=name)
            np.testing.assert_allclose(getattr(twelve, name)[j], ref, rtol=1e-6, atol=0, err_msg=name)
    assert len({tuple(z) for z in big.z}) > 990  # different targets, different answers


def test_a_curve_that_dips_below_zero_starts_from_its_own_data_not_its_batchs(rotation) -> None:
    """A noisy point <= 0 on a log run is raised before the encoder's start to the target's own smallest positive
    value (it was the batch's: a galaxy beside one with a lower curve started, and ended, elsewhere)."""
    trained, lm = rotation
    items = [replace(g.obs, x=g.obs.x[:8], y=g.obs.y[:8], yerr=g.obs.yerr[:8]) for g in _galaxies(trained, 2, 5)]
    dip = items[0].y.copy()
    dip[0] = -abs(dip[0])
    items[0] = replace(items[0], y=dip)
    items[1] = replace(items[1], y=items[1].y * 1e-3)  # its positive values far below the dipping galaxy's
    options = override(trained.cfg.invert, {"starts": 0, "posterior": "none"})
    both = invert_batch(trained, pad(items, "two"), options, latent_model=lm)
    alone = invert_batch(trained, pad(items[:1], "one"), options, latent_model=lm)
    assert np.isfinite(alone.encoder_z).all()
    for name in REPORTED:
        np.testing.assert_allclose(getattr(alone, name)[0], getattr(both, name)[0], rtol=1e-6, atol=0, err_msg=name)


@pytest.mark.slow
def test_invert_command_gives_a_galaxy_the_same_answer_alone_and_among_others(cli, rotation_copy: Path) -> None:
    from benchmarks.observed import write_long_csv

    trained = load_trained(RunDir(rotation_copy), torch.device("cpu"))
    items = _galaxies(trained, 12, seed=3)
    write_long_csv(items, "twelve.csv")
    write_long_csv(items[7:8], "one.csv")
    run = ["invert", "--run", str(rotation_copy), "--starts", "3", "--posterior", "none", "--json"]
    r12, r1 = cli(*run, "--curves", "twelve.csv"), cli(*run, "--curves", "one.csv")
    ok(r12)
    ok(r1)
    a, b = json.loads(r12.stdout)["targets"][7], json.loads(r1.stdout)["targets"][0]
    assert a["name"] == b["name"] == items[7].obs.name
    assert b["params"].keys() == a["params"].keys()
    for key in a["params"]:
        assert b["params"][key] == pytest.approx(a["params"][key], rel=1e-6, abs=0), key
    for key in ("physics_objective", "reduced_chi2", "chi2"):
        assert b[key] == pytest.approx(a[key], rel=1e-6, abs=0), key
    np.testing.assert_allclose(b["z"], a["z"], rtol=1e-6, atol=0)


# --- posteriors: every draw from the target's own seed ----------------------------------------------------


def _same_posterior(one, j: int, ref, at: int) -> None:
    """Target j of posterior `one` and target `at` of `ref`: the same samples and quantiles (bitwise on this CPU;
    the assertion is the issue's 1e-6 relative)."""
    np.testing.assert_allclose(one.samples[j], ref.samples[at], rtol=1e-6, atol=0)
    for key in ref.quantiles:
        np.testing.assert_allclose(one.quantiles[key][j], ref.quantiles[key][at], rtol=1e-6, atol=0, err_msg=key)
    for key in ("rhat", "tau", "steps", "acceptance", "k_hat"):
        if getattr(ref, key) is not None:
            np.testing.assert_allclose(getattr(one, key)[j], getattr(ref, key)[at], rtol=1e-6, atol=0, err_msg=key)


@pytest.mark.slow
@pytest.mark.parametrize(
    ("posterior", "steps", "n"),
    [("mcmc", "30", 24), ("mcmc", "auto", 24), ("laplace", "auto", 200)],
)
def test_a_targets_posterior_is_the_same_alone_in_12_and_in_a_larger_batch(rotation, posterior, steps, n) -> None:
    """Walker starts, moves, accept tests, Laplace's draws and its resample: all from the target's seed."""
    trained, lm = rotation
    items = [replace(g.obs, x=g.obs.x[:8], y=g.obs.y[:8], yerr=g.obs.yerr[:8]) for g in _galaxies(trained, n, 5)]
    options = override(trained.cfg.invert, {"starts": 1, "posterior": posterior, "walkers": 16, "steps": steps,
                                            "burn": 10, "max_steps": 150})  # fmt: skip
    with torch_threads(1):  # one lane
        big = invert_batch(trained, pad(items, "all"), options, latent_model=lm).posterior
    at = n - 3
    alone = invert_batch(trained, pad([items[at]], "one"), options, latent_model=lm).posterior
    twelve = invert_batch(trained, pad(items[at - 5 : at + 7], "12"), options, latent_model=lm).posterior
    _same_posterior(alone, 0, big, at)
    _same_posterior(twelve, 5, big, at)
    assert not np.array_equal(big.samples[at], big.samples[at - 1])  # different targets, different draws
    if posterior == "mcmc":  # threads.lanes: the batch in two lanes on two threads, every target's numbers the same
        with torch_threads(2):
            laned = invert_batch(trained, pad(items, "all"), options, latent_model=lm).posterior
        for key in ("samples", "rhat", "tau", "ess", "steps", "acceptance"):
            np.testing.assert_array_equal(getattr(laned, key), getattr(big, key), err_msg=key)
        for key in big.quantiles:
            np.testing.assert_array_equal(laned.quantiles[key], big.quantiles[key], err_msg=key)


@pytest.mark.slow
def test_invert_command_gives_a_galaxy_the_same_mcmc_intervals_alone_and_among_others(cli, rotation_copy) -> None:
    from benchmarks.observed import write_long_csv

    trained = load_trained(RunDir(rotation_copy), torch.device("cpu"))
    items = _galaxies(trained, 12, seed=4)
    write_long_csv(items, "twelve.csv")
    write_long_csv(items[2:3], "one.csv")
    run = ["invert", "--run", str(rotation_copy), "--posterior", "mcmc", "--walkers", "16", "--steps", "40",
           "--burn", "10", "--json"]  # fmt: skip
    r12, r1 = cli(*run, "--curves", "twelve.csv"), cli(*run, "--curves", "one.csv")
    ok(r12)
    ok(r1)
    a, b = json.loads(r12.stdout)["targets"][2], json.loads(r1.stdout)["targets"][0]
    assert a["name"] == b["name"] == items[2].obs.name
    assert a["posterior"] and b["posterior"].keys() == a["posterior"].keys()
    assert b["posterior"] == a["posterior"]  # bitwise: every quantile, R-hat, ESS... (data/powers.py: why bitwise)


@pytest.mark.slow
@pytest.mark.parametrize("pool", [None, 2])
def test_the_sampler_follows_each_ensembles_seed_when_finished_targets_leave(pool: int | None) -> None:
    """steps auto: easy Gaussians converge and leave the batch at different checks while a target whose ensembles
    straddle two narrow modes in different proportions (they never settle) runs to the cap, so rows are compacted
    under the others; every target's chain and diagnostics equal its chain run alone (the seeds follow their
    rows). pool 2: the five targets sampled two at a time, those still running at the pause step (300 of the cap
    1200) waiting there and continuing with the waiting targets of other pools: the same chains."""
    from funcae_cli.inversion.ensemble import pause_step, sample

    assert pause_step(1200) == 300

    scale = torch.tensor([0.5, 1.0, 2.0, 3.0, 1.0], dtype=torch.float64)  # target 4: two modes at +-6

    def per_row(x: torch.Tensor, target: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
        gauss = -0.5 * (x / scale[target, None]).square().sum(dim=1)
        modes = torch.logaddexp(-0.5 * ((x - 6) / 0.01).square().sum(dim=1), -0.5 * ((x + 6) / 0.01).square().sum(1))
        return torch.where(torch.isinf(scale[target]), modes, gauss)

    n, w, groups = 5, 16, 2
    scale[4] = torch.inf
    x0 = torch.randn(n, w, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    x0[4] *= 0.01
    x0[4, [0, 1, 2, 3, 4, 5, 8, 9]] += 6  # ensemble 0: 6 walkers at +6 and 2 at -6; ensemble 1: 2 and 6
    x0[4, [6, 7, 10, 11, 12, 13, 14, 15]] -= 6
    seeds = seeding.mix64(torch.arange(n) + 100)

    def run(rows: list[int]) -> dict[int, tuple]:
        idx = torch.tensor(rows)
        cohorts = sample(lambda x, t: per_row(x, t, scale[idx]), x0[idx], groups, None, 20, 1200, seeds[idx],
                         pool=pool)  # fmt: skip
        return {rows[int(t)]: (c.steps, c.chain[k], c.rhat[k], c.tau[k]) for c in cohorts for k, t in
                enumerate(c.targets)}  # fmt: skip

    together = run(list(range(n)))
    assert len({together[i][0] for i in range(n)}) >= 3  # stopped at different checks: the batch was compacted
    assert max(together[i][0] for i in range(n)) == 1200 and any(300 < together[i][0] < 1200 for i in range(n))
    for i in range(n):
        (alone,) = run([i]).values()
        assert alone[0] == together[i][0]
        for a, b in zip(alone[1:], together[i][1:], strict=True):
            assert torch.equal(a, b)


@pytest.mark.slow
@pytest.mark.parametrize("posterior", ["laplace", "mcmc"])
def test_a_latent_posterior_is_the_same_alone_and_in_12(smoke_run: Path, posterior: str) -> None:
    """The decoder's posterior (no formula: --no-physics, the codes' density as prior): the same draws per target."""
    from funcae_cli.inversion.targets import Targets

    trained = load_trained(RunDir(smoke_run), torch.device("cpu"))
    lm, _ = latent_model_for(trained)
    gen = torch.Generator().manual_seed(0)
    mu = torch.rand(20, 1, generator=gen) * 2 - 1
    y = torch.exp(-0.5 * ((trained.grid[None] - mu) / 0.6) ** 2) + 0.02 * torch.randn(20, trained.grid.shape[0],
                                                                                      generator=gen)  # fmt: skip
    err = torch.full_like(y, 0.02)

    def targets(rows: list[int]) -> Targets:
        return Targets(y[rows], names=[f"t{i}" for i in rows], source="array", yerr=err[rows])

    options = override(trained.cfg.invert, {"starts": 1, "posterior": posterior, "physics": False, "prior": "density",
                                            "walkers": 16, "steps": "30", "burn": 10})  # fmt: skip
    big = invert_batch(trained, targets(list(range(20))), options, latent_model=lm).posterior
    _same_posterior(invert_batch(trained, targets([17]), options, latent_model=lm).posterior, 0, big, 17)
    _same_posterior(invert_batch(trained, targets(list(range(8, 20))), options, latent_model=lm).posterior, 9, big, 17)
