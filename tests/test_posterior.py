"""Posteriors against known answers: the sampler on analytic densities, the diagnostics on chains of known
autocorrelation, the prior's density, Laplace on a linear-Gaussian model; and the commands end to end."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy import stats

from funcae_cli.config import load_config
from funcae_cli.inversion import seeding
from funcae_cli.inversion.calibration import calibrate, chi2_uniform_p
from funcae_cli.inversion.diagnostics import integrated_time, split_rhat
from funcae_cli.inversion.ensemble import ensemble
from funcae_cli.inversion.prior import log_prior

from .conftest import CONFIGS, ok, usage_error


def test_the_ensemble_samples_a_correlated_gaussian_and_a_truncated_flat_density() -> None:
    """Many independent targets at once: target 0 a correlated Gaussian, target 1 a uniform box (hard bounds,
    where proposals outside are rejected). Means, covariances and quantiles against the exact ones."""
    mean = torch.tensor([1.0, -2.0], dtype=torch.float64)
    cov = torch.tensor([[1.0, 0.9 * 0.5], [0.9 * 0.5, 0.25]], dtype=torch.float64)
    prec = torch.linalg.inv(cov)

    def log_prob(x: torch.Tensor) -> torch.Tensor:  # x (2, m, 2)
        d = x[0] - mean
        gauss = -0.5 * ((d @ prec) * d).sum(dim=1)
        inside = ((x[1] >= 0) & (x[1] <= torch.tensor([1.0, 3.0], dtype=torch.float64))).all(dim=1)
        return torch.stack([gauss, torch.where(inside, 0.0, -math.inf)])

    gen = torch.Generator().manual_seed(0)
    x0 = torch.stack([mean + 0.1 * torch.randn(32, 2, generator=gen, dtype=torch.float64),
                      torch.rand(32, 2, generator=gen, dtype=torch.float64) * torch.tensor([1.0, 3.0])])  # fmt: skip
    chain, acc = ensemble(log_prob, x0, steps=1500, burn=300, seeds=seeding.mix64(torch.arange(2)))
    g = chain[0].reshape(-1, 2)
    torch.testing.assert_close(g.mean(dim=0), mean, atol=0.03, rtol=0)
    torch.testing.assert_close(torch.cov(g.T), cov, atol=0.03, rtol=0)
    box = chain[1].reshape(-1, 2)
    assert bool((box >= 0).all()) and bool((box[:, 0] <= 1).all()) and bool((box[:, 1] <= 3).all())
    # the box's quantiles vary run to run by ~0.02 (sd of the median of the long side over 40 seeds, 1000 steps):
    # 0.06 is 3 sd, a bias of that size fails
    np.testing.assert_allclose(np.quantile(box.numpy(), [0.1, 0.5, 0.9], axis=0),
                               [[0.1, 0.3], [0.5, 1.5], [0.9, 2.7]], atol=0.06)  # fmt: skip
    assert 0.2 < float(acc.min()) and float(acc.max()) < 0.95


def test_advance_records_only_the_steps_asked() -> None:
    """every / phase: the positions of the recorded steps alone (the sampler's memory holds the thinned chain, not
    every step), the same walk as recording all of them."""
    from funcae_cli.inversion.ensemble import advance

    def log_prob(x):
        return -0.5 * x.square().sum(dim=2)

    x0 = torch.randn(3, 8, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    seeds = seeding.mix64(torch.arange(3))
    xa, xb = x0.clone(), x0.clone()
    full, acc_a = advance(log_prob, xa, log_prob(xa), 20, seeds, start=5)
    some, acc_b = advance(log_prob, xb, log_prob(xb), 20, seeds, start=5, every=3, phase=1)
    kept = [t for t in range(20) if (1 + t + 1) % 3 == 0]  # 1, 4, 7, ...
    assert some.shape == (3, 8, len(kept), 2) and torch.equal(some, full[:, :, kept])
    assert torch.equal(xa, xb) and torch.equal(acc_a, acc_b)
    none, _ = advance(log_prob, x0.clone(), log_prob(x0), 20, seeds, start=5, every=0)
    assert none.shape[2] == 0


def test_the_same_seed_gives_the_same_chain() -> None:
    def log_prob(x):
        return -0.5 * x.square().sum(dim=2)

    runs = [ensemble(log_prob, torch.ones(3, 8, 2, dtype=torch.float64), 50, 10, seeding.mix64(torch.arange(3)))
            for _ in range(2)]  # fmt: skip
    assert torch.equal(runs[0][0], runs[1][0])


def test_split_rhat_and_integrated_time_on_chains_of_known_autocorrelation() -> None:
    """AR(1) chains x_t = phi x_{t-1} + e_t have tau = (1 + phi) / (1 - phi); independent chains of one law
    give R-hat ~ 1, chains stuck in different places a large R-hat."""
    rng = np.random.default_rng(1)
    w, steps = 32, 4000
    for phi in (0.0, 0.5, 0.9):
        e = rng.standard_normal((w, steps))
        x = np.zeros((w, steps))
        x[:, 0] = e[:, 0] / math.sqrt(1 - phi**2)
        for t in range(1, steps):
            x[:, t] = phi * x[:, t - 1] + e[:, t]
        chains = torch.as_tensor(x)[None, :, :, None]
        tau = float(integrated_time(chains))
        assert tau == pytest.approx((1 + phi) / (1 - phi), rel=0.15)
        assert float(split_rhat(chains)) < 1.01
    stuck = torch.as_tensor(rng.standard_normal((w, steps)) + np.arange(w)[:, None] * 0.5)[None, :, :, None]
    assert float(split_rhat(stuck)) > 1.5


def test_the_prior_density_in_natural_coordinates() -> None:
    """Normal run: mu uniform(-3, 3) (linear), sigma uniform(0.5, 3) with sigma sampled in log10: its density in
    u = log10 sigma is proportional to 10^u. Rotation curves' scaling relations: the log-normal relations."""
    cfg = load_config(CONFIGS / "normal.yaml")
    lp = log_prior(cfg.family)
    u = torch.tensor([[0.0, math.log10(1.0)], [0.0, math.log10(2.0)], [3.5, 0.0], [0.0, math.log10(0.4)]],
                     dtype=torch.float64)  # fmt: skip
    out = lp(u)
    assert float(out[1] - out[0]) == pytest.approx(math.log(2.0))  # the Jacobian of u = log10 sigma
    assert math.isinf(float(out[2])) and math.isinf(float(out[3]))  # outside the priors' support
    rot = load_config(CONFIGS / "rotation_curve.yaml")
    lpr = log_prior(rot.family)
    log_md = 10.5
    rd0, mh0 = (log_md - 10.7) * 0.3 + 0.5, (log_md - 10.7) * 0.75 + 12.0
    c0 = 0.905 - 0.101 * (mh0 + math.log10(0.7) - 12)
    centre = torch.tensor([[log_md, rd0, mh0, c0]], dtype=torch.float64)
    off = centre + torch.tensor([[0.0, 0.4, 0.0, 0.0]], dtype=torch.float64)  # one scatter (0.4 dex) off in rd
    assert float(lpr(centre) - lpr(off)) == pytest.approx(0.5, rel=1e-9)
    assert math.isinf(float(lpr(centre - torch.tensor([[2.0, 0, 0, 0]], dtype=torch.float64))))  # md < 1e9


def test_calibration_of_exact_posteriors_is_nominal_and_of_overconfident_ones_is_not() -> None:
    """Conjugate normal model: truth ~ N(0, 1), data ~ N(truth, 1) x 4: the posterior is N(mean/..., 1/5)."""
    rng = np.random.default_rng(7)
    n = 4000
    truth = rng.standard_normal(n)
    data = truth[:, None] + rng.standard_normal((n, 4))
    post_mean, post_sd = data.sum(axis=1) / 5, math.sqrt(1 / 5)
    draws = post_mean[:, None] + post_sd * rng.standard_normal((n, 500))
    (good,) = calibrate(truth[:, None], draws[:, :, None], ["theta"], [False])
    for level, cov in good.coverage.items():
        assert abs(cov - level) < 3 * good.coverage_error[level]
    assert good.sbc_p > 0.001 and abs(good.z_mean) < 0.05 and good.z_sd == pytest.approx(1.0, abs=0.05)
    narrow = post_mean[:, None] + 0.5 * post_sd * rng.standard_normal((n, 500))
    (bad,) = calibrate(truth[:, None], narrow[:, :, None], ["theta"], [False])
    assert bad.coverage[0.68] < 0.5 and bad.sbc_p < 1e-6
    assert chi2_uniform_p(np.full(20, 50))[1] == pytest.approx(1.0)
    assert chi2_uniform_p(np.array([100, 0] * 10))[0] == pytest.approx(stats.chisquare([100, 0] * 10).statistic)


# --- the commands ---------------------------------------------------------------------------------


def _noisy_curves(path: Path, n: int, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    lines = ["id,x,y,yerr"]
    for k in range(n):
        mu, sigma = rng.uniform(-1.5, 1.5), rng.uniform(0.8, 1.8)
        x = np.sort(rng.uniform(-4.5, 4.5, 25))
        v = np.exp(-0.5 * ((x - mu) / sigma) ** 2) / (sigma * math.sqrt(2 * math.pi))
        e = 0.05 * v + 0.003
        lines += [f"c{k},{a:.6g},{b:.6g},{c:.4g}" for a, b, c in zip(x, v + e * rng.standard_normal(25), e)]
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.mark.slow
def test_invert_with_mcmc_reports_intervals_diagnostics_and_samples(cli, smoke_copy: Path) -> None:
    _noisy_curves(smoke_copy.parent.parent / "obs.csv", 6)
    args = ("invert", "--curves", "obs.csv", "--posterior", "mcmc", "--steps", "150", "--burn", "80", "--json")
    r = cli(*args)
    ok(r)
    rec = json.loads(r.stdout)
    row = rec["targets"][0]
    post = row["posterior"]
    assert set(post) == {"mu", "sigma"}
    for name, q in post.items():
        assert q["q025"] < q["q16"] < q["median"] < q["q84"] < q["q975"]
        assert q["ess"] > 0 and q["rhat"] > 0.9 and q["tau"] >= 1
        assert q["ess"] == pytest.approx(32 * 150 / q["tau"], rel=1e-4)  # walkers x steps / tau
        assert q["q025"] <= row["params"][name] <= q["q975"]  # the best fit inside the posterior's 95%
    assert row["posterior_steps"] == 150 and isinstance(row["posterior_unconverged"], bool)
    assert len(row["posterior_corr"]) == 2 and row["posterior_corr"][0][0] == pytest.approx(1.0)
    assert rec["summary"]["posterior"]["kind"] == "mcmc"
    with np.load(smoke_copy / "invert" / "obs_samples.npz") as z:
        assert z["samples"].shape[0] == 6 and z["samples"].shape[2] == 2 and list(z["names"]) == ["mu", "sigma"]
        first = z["samples"].copy()
    header = (smoke_copy / "invert" / "obs.csv").read_text().splitlines()[0]
    assert "mu_median" in header and "sigma_q975" in header and "mu_rhat" in header and "sigma_ess" in header
    assert "sigma_tau" in header and "mcmc_steps" in header and "mcmc_unconverged" in header
    ok(cli(*args))  # seeded: the same command gives the same samples
    with np.load(smoke_copy / "invert" / "obs_samples.npz") as z:
        assert np.array_equal(z["samples"], first)
    r = cli("plot", "--kind", "posterior", "--json")
    ok(r)
    written = json.loads(r.stdout)["written"]
    assert {f"posterior_c{k}" for k in range(6)} <= set(written)


def test_laplace_posterior_and_bad_posterior_options(cli, smoke_copy: Path) -> None:
    _noisy_curves(smoke_copy.parent.parent / "obs.csv", 3)
    r = cli("invert", "--curves", "obs.csv", "--posterior", "laplace", "--json")
    ok(r)
    row = json.loads(r.stdout)["targets"][0]
    assert "rhat" not in row["posterior"]["mu"] and row["posterior"]["mu"]["q16"] < row["posterior"]["mu"]["q84"]
    usage_error(cli("invert", "--curves", "obs.csv", "--posterior", "nuts"), "--posterior", "nuts", "mcmc")
    usage_error(cli("invert", "--curves", "obs.csv", "--posterior", "mcmc", "--steps", "-5"), "--steps")
    usage_error(cli("invert", "--curves", "obs.csv", "--posterior", "mcmc", "--steps", "many"), "--steps", "auto")
    # walkers split into invert.groups (4) independent ensembles of an even size each
    usage_error(cli("invert", "--curves", "obs.csv", "--posterior", "mcmc", "--walkers", "12"), "--walkers", "multiple")
    usage_error(cli("invert", "--mu", "0", "--sigma", "1", "--posterior", "mcmc"), "--posterior", "yerr")
    usage_error(cli("invert", "--curves", "obs.csv", "--posterior", "laplace", "--samples", "some"), "--samples",
                "always")  # fmt: skip


def test_the_draws_are_written_unless_asked_not_to_or_too_large(
    cli, smoke_copy: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """--samples auto writes invert/<name>_samples.npz when the draws take at most SAMPLES_AUTO_BYTES (else a
    warning says what they would take and how to ask), never writes none, always writes them whatever their size."""
    import funcae_cli.jobs.invert as job

    _noisy_curves(smoke_copy.parent.parent / "obs.csv", 3)
    npz = smoke_copy / "invert" / "obs_samples.npz"

    def invert(*extra: str) -> dict:
        npz.unlink(missing_ok=True)
        r = cli("invert", "--curves", "obs.csv", "--posterior", "laplace", "--json", *extra)
        ok(r)
        return json.loads(r.stdout)

    rec = invert()
    assert rec["samples"] == "auto" and rec["files"]["samples"] == str(npz) and npz.is_file()
    rec = invert("--samples", "never")
    assert "samples" not in rec["files"] and not npz.exists()
    assert not [w for w in rec["warnings"] if "draws not written" in w]  # asked for: no warning
    monkeypatch.setattr(job, "SAMPLES_AUTO_BYTES", 1000)  # Laplace: 3 targets x 2000 draws x 2 float32: 48,000 bytes
    rec = invert()
    assert "samples" not in rec["files"] and not npz.exists()
    assert [w for w in rec["warnings"] if "draws not written (0 MB" in w and "--samples always" in w]
    rec = invert("--samples", "always")
    assert rec["files"]["samples"] == str(npz) and npz.is_file()
    with np.load(npz) as z:
        assert z["samples"].shape[0] == 3 and z["samples"].shape[2] == 2


@pytest.mark.slow
def test_validate_reports_calibration_and_can_require_it(cli, smoke_copy: Path) -> None:
    r = cli("validate", str(smoke_copy), "--n", "120", "--posterior", "laplace", "--json")
    ok(r)
    rep = json.loads(r.stdout)
    assert rep["n"] == 120 and set(rep["params"]) == {"mu", "sigma"}
    for p in rep["params"].values():
        assert set(p["coverage"]) == {"0.5", "0.68", "0.95"}
        assert sum(p["sbc"]["counts"]) == 120 and 0 <= p["sbc"]["p_value"] <= 1
    folder = smoke_copy / "validate"
    assert {p.name for p in folder.iterdir()} == {"validate.json", "coverage.png", "ranks.png", "tarp.png"}
    t = rep["tarp"]  # the record's fields (its numbers: tests/test_calibration.py)
    assert t["params"] == ["mu", "sigma"] and len(t["alpha"]) == len(t["ecp"]) == 101 and t["ecp"][-1] == 1
    assert 0 < t["band"] < 0.2 and t["max_deviation"] >= 0 and isinstance(t["within_band"], bool)
    assert rep["compare_mcmc"] is None  # only for amortized posteriors
    r = cli("validate", str(smoke_copy), "--n", "120", "--posterior", "laplace", "--require-coverage", "0.0001")
    assert r.exit_code == 5 and "coverage off by more than" in r.stderr
    assert "TARP (mu, sigma): max |expected coverage - credibility|" in r.stderr


def test_validate_bad_inputs_are_exit_2(cli, smoke_copy: Path) -> None:
    usage_error(cli("validate", str(smoke_copy), "--posterior", "none"), "--posterior", "expected one of laplace, mcmc")
    usage_error(cli("validate", str(smoke_copy), "--n", "-3"), "--n")
    usage_error(cli("validate", str(smoke_copy), "--points", "1:5"), "--points", "must be >= 2, got 1")
    usage_error(cli("validate", str(smoke_copy), "--points", "9:3"), "--points")
    usage_error(cli("validate", str(smoke_copy), "--points", "a:b"), "--points")
    usage_error(cli("validate", str(smoke_copy), "--noise", "2"), "--noise")
    assert not (smoke_copy / "validate").exists()


def test_validate_of_a_data_set_simulates_from_the_codes_density(cli, workdir: Path) -> None:
    """A run on a user's data set has no prior over its parameters: validate draws codes from the training codes'
    density instead and calibrates the reported quantities (the parameters through the regressor)."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=(300, 12))
    np.savez(workdir / "d.npz", X=x, params=x[:, :2], param_names=np.array(["a", "b"]))
    (workdir / "d.yaml").write_text("name: d\nfamily: {name: dataset, path: d.npz}\ntrain: {epochs: 2}\n")
    ok(cli("train", "d.yaml", "-q", "--no-plots"))
    r = cli("validate", "runs/d", "--n", "30", "--posterior", "laplace", "--json")
    ok(r)
    rep = json.loads(r.stdout)
    assert rep["simulated"].startswith("codes from the training codes' density") and set(rep["params"]) == {"a", "b"}
    assert all(0 <= v["coverage"]["0.95"] <= 1 for v in rep["params"].values())


def test_max_steps_option_caps_auto_steps_and_the_warning_names_it(cli, smoke_copy: Path) -> None:
    """A cap far under 50 autocorrelation times: every target stops at it, unconverged, and the warning says how
    to raise it."""
    _noisy_curves(smoke_copy.parent.parent / "obs.csv", 2)
    r = cli("invert", "--curves", "obs.csv", "--posterior", "mcmc", "--max-steps", "30", "--burn", "20", "--no-plot",
            "--json")  # fmt: skip
    ok(r)
    rec = json.loads(r.stdout)
    assert [t["posterior_steps"] for t in rec["targets"]] == [30, 30]
    assert all(t["posterior_unconverged"] for t in rec["targets"])
    assert any("stopped at the cap of 30 steps (invert.max_steps, --max-steps)" in w for w in rec["warnings"])
