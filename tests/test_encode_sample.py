"""`funcae encode`, `funcae invert` and `funcae sample` through the real CLI, on a copy of the smoke run."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from funcae_cli.cli import app

from .conftest import CONFIGS, ok, usage_error

INVERT_FIELDS = {
    "run", "run_dir", "family", "model", "latent_dim", "param_names", "device", "source", "method", "starts",
    "max_iter", "seed", "objective_kind", "objective_space", "n_targets", "seconds", "targets_per_second",
    "extrapolating", "warnings", "regressor", "regressor_fitted_now", "x", "summary", "targets", "files",
}  # fmt: skip
TARGET_FIELDS = {
    "index", "name", "z", "objective", "residual_norm", "data_residual", "rel_l2", "encoder_z", "encoder_objective",
    "encoder_rel_l2", "iterations", "converged", "start", "seconds", "estimated_params",
}  # fmt: skip


# --- encode ----------------------------------------------------------------------------------


def test_encode_whole_data_set(cli, smoke_copy):
    result = cli("encode", "--json")
    ok(result)
    out = json.loads(result.stdout)
    path = smoke_copy / "latents.npz"
    assert Path(out["files"]["latents"]).resolve() == path.resolve()
    with np.load(path) as z:
        assert z["z"].shape == (out["n"], 2) and z["params"].shape == (out["n"], 2)
        assert list(z["param_names"]) == ["mu", "sigma"] and z["split"].shape == (out["n"],)
        assert "mean" not in z  # an AE: no posterior


def test_encode_parameters_and_batch(cli, smoke_copy):
    result = cli("encode", "--mu", "0.5", "--sigma=1.2", "--json")
    ok(result)
    out = json.loads(result.stdout)
    (row,) = out["targets"]
    assert len(row["z"]) == 2 and row["true_params"] == {"mu": 0.5, "sigma": 1.2}
    assert (smoke_copy / "encode" / "mu_0.5_sigma_1.2.json").exists()
    (smoke_copy / "p.csv").write_text("mu,sigma\n0.1,1.0\n-0.3,1.5\n")
    ok(cli("encode", "--targets", smoke_copy / "p.csv", "--name", "two"))
    lines = (smoke_copy / "encode" / "two.csv").read_text().splitlines()
    assert lines[0] == "name,z1,z2,mu,sigma" and len(lines) == 3


# --- invert ----------------------------------------------------------------------------------


def test_invert_parameters_json_has_the_documented_fields(cli, smoke_copy):
    result = cli("invert", "--mu", "-0.7", "--sigma", "1.3", "--json")
    ok(result)
    rec = json.loads(result.stdout)
    assert INVERT_FIELDS <= set(rec)
    (row,) = rec["targets"]
    assert TARGET_FIELDS | {"true_params", "param_rel_error", "target", "fit"} <= set(row)
    assert rec["method"] == "lbfgs" and rec["objective_kind"] == "l2" and rec["extrapolating"] is False
    assert row["objective"] <= row["encoder_objective"] * (1 + 1e-5)
    assert len(row["target"]) == len(row["fit"]) == len(rec["x"]) == 64
    assert set(row["estimated_params"]) == {"mu", "sigma"}
    assert set(rec["regressor"]["val_r2"]) == {"mu", "sigma"}
    slug = "mu_-0.7_sigma_1.3"
    invert_dir = (smoke_copy / "invert").resolve()
    assert {k: Path(v).resolve() for k, v in rec["files"].items()} == {
        "json": invert_dir / f"{slug}.json",
        "csv": invert_dir / f"{slug}.csv",
        "png": invert_dir / f"{slug}.png",
    }
    assert json.loads((smoke_copy / "invert" / f"{slug}.json").read_text())["targets"][0]["z"] == row["z"]
    assert (smoke_copy / "invert" / f"{slug}.png").stat().st_size > 0


def test_invert_text_output_names_code_error_and_parameters(cli, smoke_copy):
    result = cli("invert", "--mu", "0.3", "--sigma", "1.1")
    ok(result)
    assert result.stdout == ""  # messages go to stderr
    for piece in ("z = [", "residual norm", "|fit - target|", "encoder", "mu=0.3", "sigma=1.1", "targets/s"):
        assert piece in result.stderr


def test_invert_csv_curve_with_irregular_x_and_yerr(cli, smoke_copy):
    rng = np.random.default_rng(0)
    x = np.sort(rng.uniform(-3.5, 4.0, 25))
    y = np.exp(-0.5 * ((x - 0.2) / 1.4) ** 2) / (1.4 * np.sqrt(2 * np.pi))
    path = smoke_copy / "obs.csv"
    np.savetxt(path, np.c_[x, y, np.full_like(x, 0.02)], delimiter=",", header="x,y,yerr", comments="")
    result = cli("invert", "--curve", path, "--json")
    ok(result)
    rec = json.loads(result.stdout)
    row = rec["targets"][0]
    assert rec["objective_kind"] == "chi2" and row["x"] == pytest.approx(x.tolist())  # the target's own points
    assert row["reduced_chi2"] == pytest.approx(row["physics_objective"] / (25 - 2))  # at the refitted parameters
    assert len(row["fit"]) == 25 and len(row["yerr"]) == 25
    assert (smoke_copy / "invert" / "obs.png").exists()


def test_invert_batch_writes_csv(cli, smoke_copy):
    (smoke_copy / "p.csv").write_text("mu,sigma\n0.1,1.0\n-0.3,1.5\n1.0,0.9\n")
    result = cli("invert", "--targets", smoke_copy / "p.csv", "--starts", "2", "--json")
    ok(result)
    rec = json.loads(result.stdout)
    assert rec["n_targets"] == 3 and rec["starts"] == 2
    assert {"objective", "rel_l2", "encoder_rel_l2", "converged_fraction"} <= set(rec["summary"])
    lines = (smoke_copy / "invert" / "p.csv").read_text().splitlines()
    assert lines[0].startswith("id,mu,sigma,params_source,physics_objective,decoder_objective,reduced_chi2,p_value")
    assert lines[0].endswith("z1,z2,converged,true_mu,true_sigma") and len(lines) == 4


@pytest.mark.parametrize("method", ["encoder", "adam", "nelder-mead"])
def test_invert_methods(cli, smoke_copy, method):
    result = cli("invert", "--mu", "0", "--sigma", "1", "--method", method, "--max-iter", "30", "--json", "--no-plot")
    ok(result)
    rec = json.loads(result.stdout)
    assert rec["method"] == method and "png" not in rec["files"]


def test_extrapolation_warns_and_says_so_in_json(cli, smoke_copy):
    result = cli("invert", "--mu", "0", "--sigma", "4", "--json")
    ok(result)
    rec = json.loads(result.stdout)
    assert rec["extrapolating"] is True and "sigma=4" in rec["warnings"][0]
    assert "warning:" in result.stderr and "extrapolating" in result.stderr


@pytest.mark.parametrize(
    "args, pieces",
    [
        (["--mu", "0", "--sigma", "1", "--tau", "3"], ["unknown option --tau", "--mu, --sigma"]),
        (["--mu", "0"], ["missing --sigma", "--mu, --sigma"]),
        (["--mu", "0", "--sigma", "-1"], ["sigma=-1", "outside the domain", "> 0"]),
        (["--mu", "zero", "--sigma", "1"], ["--mu", "expected a number"]),
        ([], ["give a target", "--mu VALUE --sigma VALUE"]),
        (["--method", "newton", "--mu", "0", "--sigma", "1"], ["--method", "nelder-mead"]),
        (["--curve", "nope.csv"], ["nope.csv", "not found"]),
        (["--mu", "0", "--sigma", "1", "--curve", "x.csv"], ["one kind of target"]),
    ],
)
def test_invert_usage_errors_exit_2(cli, smoke_copy, args, pieces):
    usage_error(cli("invert", *args), *pieces)


def test_encode_usage_error_exit_2(cli, smoke_copy):
    usage_error(cli("encode", "--mu", "1", "--sigma", "0"), "sigma=0", "outside the domain")


@pytest.mark.parametrize("command", [["encode"], ["invert", "--mu", "0", "--sigma", "1"], ["sample"]])
def test_missing_run_exit_2(cli, workdir, command):
    usage_error(cli(*command), "no trained run", "funcae train CONFIG")
    usage_error(cli(*command, "--run", "runs/nothing"), "runs/nothing")


# --- sample ----------------------------------------------------------------------------------


@pytest.mark.parametrize("latent", ["empirical", "gaussian"])
def test_sample_ae(cli, smoke_copy, latent):
    result = cli("sample", "-n", "7", "--latent", latent, "--seed", "3", "--json")
    ok(result)
    out = json.loads(result.stdout)
    assert out["latent"] == latent and out["n"] == 7 and out["finite_fraction"] == 1.0
    with np.load(smoke_copy / "samples.npz") as s:
        assert s["curves"].shape == (7, 64) and s["z"].shape == (7, 2) and s["grid"].shape == (64,)
        assert s["real"].shape[1] == 64 and str(s["latent"]) == latent
        first = s["curves"].copy()
    assert (smoke_copy / "samples.png").stat().st_size > 0
    ok(cli("sample", "-n", "7", "--latent", latent, "--seed", "3"))
    with np.load(smoke_copy / "samples.npz") as s:
        np.testing.assert_array_equal(s["curves"], first)  # same seed, same curves


def test_sample_ae_has_no_prior(cli, smoke_copy):
    usage_error(cli("sample", "--latent", "prior"), "an AE has no prior")


@pytest.fixture(scope="module")
def vae_run(tmp_path_factory) -> Path:
    """A tiny VAE trained for a couple of epochs: enough to exercise the VAE paths."""
    root = tmp_path_factory.mktemp("vae")
    shutil.copytree(CONFIGS, root / "configs")
    cwd = os.getcwd()
    os.chdir(root)
    try:
        args = ["train", "configs/smoke.yaml", "--run-dir", "runs/vae", "-q", "--no-plots"]
        args += ["--set", "model.kind=vae", "--set", "train.epochs=2", "--set", "data.n=400"]
        result = CliRunner().invoke(app, args, catch_exceptions=False)
        assert result.exit_code == 0, result.output
    finally:
        os.chdir(cwd)
    return root / "runs" / "vae"


def test_vae_sample_encode_invert(cli, vae_run):
    result = cli("sample", "--run", vae_run, "-n", "5", "--json")
    ok(result)
    assert json.loads(result.stdout)["latent"] == "prior"
    with np.load(vae_run / "samples.npz") as s:
        assert s["curves"].shape == (5, 64)
    ok(cli("encode", "--run", vae_run))
    with np.load(vae_run / "latents.npz") as z:
        assert z["mean"].shape == z["logvar"].shape == z["z"].shape == (400, 2)
    result = cli("invert", "--run", vae_run, "--mu", "0", "--sigma", "1", "--starts", "2", "--json")
    ok(result)
    assert json.loads(result.stdout)["model"] == "vae"
