"""Amortized posteriors of a data-only family: a flow over the latent code (the training codes' density the prior,
the decoder the simulator and the likelihood), reported as the data set's parameters through the regressor, checked
against latent mcmc on the same curves and calibrated by validate on curves decoded from codes of that density."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from funcae_cli.inversion.density import CodeDensity

from .conftest import ok
from .test_user_data import N_POINTS, damped_sines


def test_a_mixtures_draws_have_its_moments_and_its_density() -> None:
    """CodeDensity.sample and .moments against numpy: a 2-component mixture in 2-D with known weights, means and
    covariances; the draws' mean and sd within 4 standard errors of the analytic moments, and the fraction of draws
    nearer one component's mean as the weights say."""
    w = torch.tensor([0.3, 0.7], dtype=torch.float64)
    means = torch.tensor([[-2.0, 1.0], [3.0, 0.5]], dtype=torch.float64)
    covs = [np.array([[1.0, 0.6], [0.6, 0.5]]), np.array([[0.2, -0.1], [-0.1, 0.3]])]
    chol = torch.stack([torch.from_numpy(np.linalg.cholesky(c)) for c in covs])
    dens = CodeDensity(w, means, chol, torch.linspace(-10, 0, 1001, dtype=torch.float64), 0.0)
    n = 200_000
    z = dens.sample(n, torch.Generator().manual_seed(3)).numpy()
    wn, mn = w.numpy(), means.numpy()
    mean = wn @ mn
    var = sum(wi * (np.diag(c) + (m - mean) ** 2) for wi, c, m in zip(wn, covs, mn))
    got_mean, got_sd = dens.moments()
    np.testing.assert_allclose(got_mean.numpy(), mean, rtol=1e-12)
    np.testing.assert_allclose(got_sd.numpy(), np.sqrt(var), rtol=1e-12)
    assert np.all(np.abs(z.mean(axis=0) - mean) < 4 * np.sqrt(var / n))
    assert np.all(np.abs(z.std(axis=0) - np.sqrt(var)) < 4 * np.sqrt(var / (2 * n)) * 3)  # sd's se, kurtosis-widened
    first = np.mean(z[:, 0] < 0.5)  # the components are ~5 sd apart along z1
    assert abs(first - 0.3) < 4 * np.sqrt(0.3 * 0.7 / n)


def _observed(root: Path, n: int, seed: int) -> tuple[Path, np.ndarray]:
    """n damped sines at 8-16 irregular points each, 2% absolute errors, long-format CSV; their true parameters."""
    rng = np.random.default_rng(seed)
    rows, truth = ["id,x,y,yerr"], []
    for i in range(n):
        f, d = rng.uniform(0.15, 0.35), rng.uniform(0.03, 0.09)
        x = np.sort(rng.uniform(0, N_POINTS - 1, rng.integers(8, 17)))
        y = np.exp(-d * x) * np.sin(f * x) + 0.02 * rng.standard_normal(x.size)
        rows += [f"c{i},{a:.6f},{b:.6f},0.02" for a, b in zip(x, y)]
        truth.append((f, d))
    path = root / "obs.csv"
    path.write_text("\n".join(rows) + "\n")
    return path, np.array(truth)


@pytest.mark.slow
def test_a_data_only_familys_latent_flow_agrees_with_mcmc_and_is_calibrated(workdir: Path, cli) -> None:
    x, p = damped_sines(2000)
    np.savez(workdir / "curves.npz", X=x, params=p, param_names=np.array(["freq", "damp"]))
    config = {"name": "sines", "family": {"name": "dataset", "path": "curves.npz"},
              "model": {"latent_dim": 2, "hidden": [48, 48]}, "train": {"epochs": 30, "batch_size": 64, "lr": 3e-3},
              "amortized": {"points": [6, 20], "hidden": [48, 48], "embed": 24}}  # fmt: skip
    (workdir / "sines.yaml").write_text(yaml.safe_dump(config))
    ok(cli("generate", "sines.yaml"))
    ok(cli("train", "sines.yaml", "-q", "--force"))
    run = workdir / "runs" / "sines"
    ok(cli("amortize", run, "--epochs", "6", "--steps", "40", "--batch-size", "128", "--quiet"))
    ckpt = torch.load(run / "checkpoints" / "amortized.pt", weights_only=True)
    assert ckpt["args"]["space"] == "latent" and ckpt["args"]["q"] == 2 and ckpt["done"]

    obs, truth = _observed(workdir, 12, seed=7)
    common = ["--run", run, "--curves", obs, "--no-plot", "--json"]

    def rows(*args: str) -> dict:
        r = cli("invert", *common, *args)
        ok(r)
        return json.loads(r.stdout)

    am, mc = rows("--posterior", "amortized", "--name", "am"), rows("--posterior", "mcmc", "--name", "mc")
    assert am["summary"]["posterior"]["kind"] == "amortized"
    k = np.array([t["k_hat"] for t in am["targets"]])
    assert np.mean(k < 0.7) >= 0.9, k  # the flow's draws pass the importance check against the decoder's posterior
    for name in ("freq", "damp"):
        a = np.array([t["posterior"][name]["median"] for t in am["targets"]])
        m = np.array([t["posterior"][name]["median"] for t in mc["targets"]])
        sd = np.array([(t["posterior"][name]["q84"] - t["posterior"][name]["q16"]) / 2 for t in mc["targets"]])
        wa = np.array([t["posterior"][name]["q84"] - t["posterior"][name]["q16"] for t in am["targets"]])
        shift = np.abs(a - m)[k < 0.7] / sd[k < 0.7]
        assert np.median(shift) < 0.25, shift  # two samplers of one posterior: the same medians
        assert 0.7 < np.median(wa / (2 * sd)) < 1.4  # and widths
    inside = [abs(t["posterior"]["freq"]["median"] - f) < 0.08 for t, (f, _) in zip(am["targets"], truth)]
    assert np.mean(inside) >= 0.75  # the regressor's freq of the true curve: near its truth (val R^2 ~ 1)

    # auto: a curve of 4 points (the flow saw 6-20) is off its range and goes to latent mcmc, which gives it
    # exactly what mcmc gives it
    short = workdir / "short.csv"
    lines = obs.read_text().splitlines()
    c0 = [r for r in lines[1:] if r.startswith("c0,")]
    short.write_text("\n".join([lines[0], *c0, *(r.replace("c0,", "s,", 1) for r in c0[::3][:4])]) + "\n")
    auto = {t["name"]: t for t in rows("--curves", short, "--posterior", "auto", "--name", "auto")["targets"]}
    again = {t["name"]: t for t in rows("--curves", short, "--posterior", "mcmc", "--name", "mc2")["targets"]}
    assert auto["s"]["posterior_source"] == "mcmc" and auto["s"]["posterior"] == again["s"]["posterior"]
    assert auto["c0"]["posterior_source"] == "amortized"
    assert auto["c0"]["posterior"] == am["targets"][0]["posterior"]  # c0's answer: the same among 12 and among 2

    r = cli("validate", run, "--n", "150", "--posterior", "amortized", "--points", "8:16", "--noise", "0.05",
            "--compare-mcmc", "0", "--json")  # fmt: skip
    ok(r)
    rep = json.loads(r.stdout)
    assert rep["simulated"].startswith("codes from the training codes' density")
    assert set(rep["params"]) == {"freq", "damp"} and rep["k_hat_below"] >= 0.9
    for name, v in rep["params"].items():
        assert abs(v["coverage"]["0.68"] - 0.68) < 0.13 and abs(v["coverage"]["0.95"] - 0.95) < 0.07, (name, v)
