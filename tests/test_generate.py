"""Grids, parameter sampling, data generation and `funcae generate` (CliRunner and a real subprocess)."""

from __future__ import annotations

import json
import math
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from scipy import stats
from typer.testing import CliRunner

from funcae_cli.cli import app
from funcae_cli.config import GridConfig, config_from_dict, load_config
from funcae_cli.config.families import FAMILIES
from funcae_cli.data import dataset as data_mod
from funcae_cli.data.dataset import Dataset, evaluate, generate
from funcae_cli.data.formulas import FORMULAS
from funcae_cli.data.grids import make_grid, sample_params
from funcae_cli.errors import InputError
from funcae_cli.store.dataset import load_dataset, save_dataset

RUN_FILES = {"config.yaml", "data.npz", "data_preview.png"}
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
ANSI = re.compile(r"\x1b\[")


def invoke(*args):
    """Like the `cli` fixture, but an unexpected exception becomes exit code 1 (as in a real process)."""
    return CliRunner().invoke(app, [str(a) for a in args])


def write_config(workdir: Path, raw: dict, name: str = "exp.yaml") -> Path:
    path = workdir / "configs" / name
    path.write_text(yaml.safe_dump(raw))
    return path


def snapshot(folder: Path) -> dict[str, tuple[bytes, int]]:
    return {p.name: (p.read_bytes(), p.stat().st_mtime_ns) for p in sorted(folder.iterdir())}


def npz(path: Path) -> dict[str, np.ndarray]:
    with np.load(path, allow_pickle=False) as z:
        return {k: z[k] for k in z.files}


# --- grids --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "grid, expected",
    [
        (GridConfig("linspace", -5.0, 5.0, 1000), np.linspace(-5, 5, 1000)),
        (GridConfig("logspace", -1.0, math.log10(50), 50), np.logspace(-1, np.log10(50), 50)),
        (GridConfig("logspace", 0.0, 2.0, 3), np.array([1.0, 10.0, 100.0])),
        (GridConfig("points", points=[0.1, 0.5, 2.0]), np.array([0.1, 0.5, 2.0])),
    ],
    ids=["linspace", "logspace", "logspace-exponents", "points"],
)
def test_make_grid_matches_numpy(grid, expected):
    g = make_grid(grid)
    assert g.dtype == torch.float64
    np.testing.assert_allclose(g.numpy(), expected, rtol=1e-12)


# --- parameter sampling -------------------------------------------------------------------------


def _sample(raw_family: dict, n: int = 20_000, seed: int = 0) -> np.ndarray:
    cfg = config_from_dict({"family": raw_family})
    p = sample_params(cfg.family, n, torch.Generator().manual_seed(seed))
    assert p.dtype == torch.float64 and tuple(p.shape) == (n, len(cfg.family.family.params))
    return p.numpy()


def test_uniform_and_loguniform_samples_stay_in_range_and_fill_it():
    p = _sample(
        {
            "name": "normal",
            "params": {
                "mu": {"dist": "uniform", "low": -2, "high": 3},
                "sigma": {"dist": "loguniform", "low": 0.01, "high": 100},
            },
        }
    )
    mu, log_sigma = p[:, 0], np.log10(p[:, 1])
    assert mu.min() >= -2 and mu.max() <= 3
    assert p[:, 1].min() >= 0.01 and p[:, 1].max() <= 100
    assert stats.kstest((mu + 2) / 5, "uniform").pvalue > 1e-3
    assert stats.kstest((log_sigma + 2) / 4, "uniform").pvalue > 1e-3


def test_normal_and_fixed_laws():
    p = _sample({"name": "normal", "params": {"mu": {"dist": "normal", "mean": 1.5, "std": 0.5}, "sigma": 0.7}})
    assert p[:, 0].mean() == pytest.approx(1.5, abs=0.02)
    assert p[:, 0].std() == pytest.approx(0.5, rel=0.03)
    assert (p[:, 1] == 0.7).all()


def test_list_shorthand_is_a_uniform_law():
    p = _sample({"name": "normal", "params": {"mu": [0.25, 0.5], "sigma": 1}})
    assert p[:, 0].min() >= 0.25 and p[:, 0].max() <= 0.5 and p[:, 0].std() > 0.05


def test_beta_default_prior_stays_inside_the_open_domain():
    p = _sample({"name": "beta"})  # U(0, 5) each, open at 0
    assert (p > 0).all() and (p <= 5).all()
    assert p.min() < 0.01  # the prior really reaches down to its exclusive bound


def test_uniform_sample_at_an_exclusive_bound_is_still_inside_the_domain(monkeypatch):
    # the worst case a uniform draw can return is exactly 0; low = 0 is allowed only if that never yields 0
    monkeypatch.setattr(torch, "rand", lambda *a, dtype=None, **k: torch.zeros(*a, dtype=dtype))
    p = _sample({"name": "beta"}, n=10)
    assert (p > 0).all()
    cfg = config_from_dict({"family": "beta"})
    curves = evaluate(FAMILIES["beta"], make_grid(cfg.grid), torch.tensor(p), cfg.family.options)
    assert bool(torch.isfinite(curves).all())


def test_evaluate_in_chunks_equals_one_pass(monkeypatch):
    cfg = config_from_dict({"family": "rotation_curve"})
    params = sample_params(cfg.family, 50, torch.Generator().manual_seed(0))
    grid = make_grid(cfg.grid)
    whole = FORMULAS["rotation_curve"](grid, params, cfg.family.options).to(torch.float32)
    monkeypatch.setattr(data_mod, "GEN_CHUNK", 7)
    chunked = evaluate(FAMILIES["rotation_curve"], grid, params, cfg.family.options)
    assert torch.equal(chunked, whole)


# --- generate() ---------------------------------------------------------------------------------


@pytest.mark.parametrize("family", ["normal", "beta", "rotation_curve"])
def test_generate_is_deterministic_per_seed(family):
    cfg = config_from_dict({"family": family, "data": {"n": 300}, "seed": 11})
    a, b = generate(cfg), generate(cfg)
    assert a.curves.dtype == torch.float32 and a.params.dtype == torch.float64
    assert tuple(a.curves.shape) == (300, len(make_grid(cfg.grid)))
    assert torch.equal(a.curves, b.curves) and torch.equal(a.params, b.params)
    assert bool(torch.isfinite(a.curves).all())
    c = generate(cfg, seed=12)
    assert not torch.equal(a.params, c.params) and not torch.equal(a.curves, c.curves)
    assert torch.equal(generate(config_from_dict({"family": family, "data": {"n": 300}, "seed": 12})).curves, c.curves)


def test_check_finite_names_the_first_bad_parameter_set():
    curves = torch.ones(10, 4)
    curves[3, 2] = float("inf")
    curves[7, 0] = float("nan")
    params = torch.column_stack([torch.arange(10.0, dtype=torch.float64) + 0.5, torch.full((10,), 2.25)])
    ds = Dataset(curves, params, ["alpha", "beta"], torch.linspace(0, 1, 4, dtype=torch.float64))
    with pytest.raises(InputError) as e:
        ds.check_finite()
    msg = str(e.value)
    assert "3.5" in msg and "2.25" in msg and "alpha" in msg and "beta" in msg
    assert "7.5" not in msg
    ds.curves[3, 2] = 1.0
    ds.curves[7, 0] = float("-inf")
    with pytest.raises(InputError, match="7.5"):
        ds.check_finite()


def test_save_and_load_dataset_round_trip(tmp_path):
    ds = generate(config_from_dict({"family": "beta", "data": {"n": 50}}))
    save_dataset(ds, tmp_path / "d.npz", "abc123")
    back, fingerprint = load_dataset(tmp_path / "d.npz")
    assert fingerprint == "abc123"
    assert back.param_names == ds.param_names
    for name in ("curves", "params", "grid"):
        assert torch.equal(getattr(back, name), getattr(ds, name)), name


def test_load_dataset_refuses_a_foreign_file(tmp_path):
    (tmp_path / "x.npz").write_bytes(b"not a zip")
    with pytest.raises(InputError):
        load_dataset(tmp_path / "x.npz")


# --- funcae generate through CliRunner ----------------------------------------------------------


def test_generate_smoke_writes_exactly_the_run_files(cli, workdir):
    result = cli("generate", "configs/smoke.yaml")
    assert result.exit_code == 0, result.output
    run = workdir / "runs" / "smoke"
    assert {p.name for p in run.iterdir()} == RUN_FILES
    assert (run / "data_preview.png").read_bytes()[:8] == PNG_SIGNATURE
    # the summary: shape, parameter ranges, value range, seconds
    assert "2,000" in result.stderr or "2000" in result.stderr
    assert "64" in result.stderr and "mu" in result.stderr and "sigma" in result.stderr
    assert re.search(r"\d+(\.\d+)?\s*s\b", result.stderr)


def test_generated_data_file_holds_curves_params_names_and_grid(cli, workdir):
    assert cli("generate", "configs/smoke.yaml").exit_code == 0
    z = npz(workdir / "runs" / "smoke" / "data.npz")
    assert z["curves"].dtype == np.float32 and z["curves"].shape == (2000, 64)
    assert z["params"].shape == (2000, 2)
    assert [str(s) for s in z["param_names"]] == ["mu", "sigma"]
    np.testing.assert_allclose(z["grid"], np.linspace(-5, 5, 64), rtol=1e-12)
    mu, sigma = z["params"][:, 0], z["params"][:, 1]
    assert mu.min() >= -2 and mu.max() <= 2 and sigma.min() >= 0.7 and sigma.max() <= 2  # smoke.yaml's ranges
    expected = stats.norm.pdf(z["grid"][None, :], mu[:, None], sigma[:, None])
    np.testing.assert_allclose(z["curves"], expected, rtol=1e-5, atol=1e-37)


def test_generated_config_yaml_is_the_resolved_config(cli, workdir):
    assert cli("generate", "configs/smoke.yaml", "--set", "model.latent_dim=3").exit_code == 0
    written = load_config(workdir / "runs" / "smoke" / "config.yaml")
    assert written == load_config("configs/smoke.yaml", ["model.latent_dim=3"])


def test_generate_json_stdout_parses_and_matches_the_data(cli, workdir):
    result = cli("generate", "configs/smoke.yaml", "--json")
    assert result.exit_code == 0, result.output
    out = json.loads(result.stdout)
    assert out["shape"] == [2000, 64]
    z = npz(workdir / "runs" / "smoke" / "data.npz")
    for i, name in enumerate(["mu", "sigma"]):
        assert out["params"][name]["min"] == pytest.approx(z["params"][:, i].min())
        assert out["params"][name]["max"] == pytest.approx(z["params"][:, i].max())
    assert out["value_min"] == pytest.approx(float(z["curves"].min()))
    assert out["value_max"] == pytest.approx(float(z["curves"].max()))


def test_existing_run_is_not_overwritten_without_force(cli, workdir):
    assert cli("generate", "configs/smoke.yaml").exit_code == 0
    run = workdir / "runs" / "smoke"
    before = snapshot(run)
    result = cli("generate", "configs/smoke.yaml", "--seed", "1")
    assert result.exit_code == 2
    assert "--force" in result.stderr
    assert snapshot(run) == before


def test_force_regenerates(cli, workdir):
    assert cli("generate", "configs/smoke.yaml").exit_code == 0
    run = workdir / "runs" / "smoke"
    first = npz(run / "data.npz")
    (run / "stale.txt").write_text("left from an earlier run")
    result = cli("generate", "configs/smoke.yaml", "--seed", "1", "--force")
    assert result.exit_code == 0, result.output
    assert {p.name for p in run.iterdir()} == RUN_FILES
    second = npz(run / "data.npz")
    assert not np.array_equal(first["params"], second["params"])
    assert load_config(run / "config.yaml").seed == 1


def test_force_with_a_bad_config_keeps_the_existing_run(cli, workdir):
    assert cli("generate", "configs/smoke.yaml").exit_code == 0
    run = workdir / "runs" / "smoke"
    before = snapshot(run)
    result = cli("generate", "configs/smoke.yaml", "--force", "--set", "model.latnet_dim=3")
    assert result.exit_code == 2
    assert snapshot(run) == before


def test_n_and_seed_options(cli, workdir):
    result = cli("generate", "configs/smoke.yaml", "--n", "123", "--seed", "5")
    assert result.exit_code == 0, result.output
    run = workdir / "runs" / "smoke"
    z = npz(run / "data.npz")
    assert z["curves"].shape == (123, 64)
    written = load_config(run / "config.yaml")
    assert (written.data.n, written.seed) == (123, 5)
    expected = generate(load_config("configs/smoke.yaml", ["data.n=123", "seed=5"]))
    assert np.array_equal(z["curves"], expected.curves.numpy())
    assert np.array_equal(z["params"], expected.params.numpy())


def test_same_seed_same_bytes_different_seed_different_data(cli, workdir):
    for d, seed in (("a", "0"), ("b", "0"), ("c", "1")):
        assert cli("generate", "configs/smoke.yaml", "--run-dir", f"out/{d}", "--seed", seed).exit_code == 0
    a, b, c = (npz(workdir / "out" / d / "data.npz") for d in "abc")
    for key in ("curves", "params", "grid"):
        assert a[key].tobytes() == b[key].tobytes(), key
    assert (workdir / "out/a/data.npz").read_bytes() == (workdir / "out/b/data.npz").read_bytes()
    assert a["params"].tobytes() != c["params"].tobytes()
    assert a["curves"].tobytes() != c["curves"].tobytes()


def test_run_dir_and_name_override(cli, workdir):
    assert cli("generate", "configs/smoke.yaml", "--run-dir", "elsewhere/r1").exit_code == 0
    assert {p.name for p in (workdir / "elsewhere" / "r1").iterdir()} == RUN_FILES
    assert cli("generate", "configs/smoke.yaml", "--set", "name=other").exit_code == 0
    assert {p.name for p in (workdir / "runs" / "other").iterdir()} == RUN_FILES


@pytest.mark.parametrize("family", ["beta", "rotation_curve"])
def test_generate_other_families(cli, workdir, family):
    path = write_config(workdir, {"name": family, "family": family, "data": {"n": 200}})
    result = cli("generate", path)
    assert result.exit_code == 0, result.output
    z = npz(workdir / "runs" / family / "data.npz")
    assert z["curves"].shape == (200, len(make_grid(config_from_dict({"family": family}).grid)))
    assert np.isfinite(z["curves"]).all()


def test_config_without_family_section_generates_the_default_family(workdir):
    path = write_config(workdir, {"name": "nofamily", "data": {"n": 50}})
    result = invoke("generate", path)
    assert result.exit_code == 0, f"{result.output}\n{result.exception!r}"
    z = npz(workdir / "runs" / "nofamily" / "data.npz")
    assert [str(s) for s in z["param_names"]] == ["mu", "sigma"]


def test_written_config_loads_back_after_n_option(workdir):
    """`--n` below data.n's minimum (10) must not produce a config.yaml that `train` then refuses."""
    result = invoke("generate", "configs/smoke.yaml", "--n", "5")
    run = workdir / "runs" / "smoke"
    if result.exit_code == 0:
        load_config(run / "config.yaml")  # raises ConfigError: data.n must be >= 10
    else:
        assert result.exit_code == 2, f"{result.output}\n{result.exception!r}"
        assert not run.exists()


def test_run_dir_that_is_a_file_is_an_input_error(workdir):
    (workdir / "taken").write_text("not a directory")
    result = invoke("generate", "configs/smoke.yaml", "--run-dir", "taken")
    assert result.exit_code == 2, f"{result.output}\n{result.exception!r}"
    assert (workdir / "taken").read_text() == "not a directory"


def test_empty_name_does_not_write_into_runs_itself(workdir):
    (workdir / "runs" / "keep").mkdir(parents=True)
    path = write_config(workdir, {"name": "", "data": {"n": 20}, "family": "normal"})
    result = invoke("generate", path)
    assert not (workdir / "runs" / "data.npz").exists(), "wrote the data set straight into runs/"
    assert result.exit_code == 2, f"{result.output}\n{result.exception!r}"
    assert "name" in result.stderr


def test_name_cannot_escape_the_runs_folder(workdir):
    path = write_config(workdir, {"name": "../escaped", "data": {"n": 20}, "family": "normal"})
    result = invoke("generate", path)
    assert not (workdir / "escaped").exists(), "a config name wrote outside runs/"
    assert result.exit_code in (0, 2), f"{result.output}\n{result.exception!r}"


def test_run_files_respect_the_umask(cli, workdir):
    old = os.umask(0o022)
    try:
        assert cli("generate", "configs/smoke.yaml").exit_code == 0
    finally:
        os.umask(old)
    for p in (workdir / "runs" / "smoke").iterdir():
        assert p.stat().st_mode & 0o777 == 0o644, f"{p.name}: mode {oct(p.stat().st_mode & 0o777)}"


def test_train_from_a_run_config_reproduces_the_run_config(cli, workdir):
    tiny = ["--set", "train.epochs=1", "--set", "data.n=200", "--set", "model.hidden=[8]"]
    assert cli("generate", "configs/smoke.yaml", *tiny).exit_code == 0
    run_config = workdir / "runs" / "smoke" / "config.yaml"
    result = cli("train", run_config, "--run-dir", "runs/again", "--quiet", "--no-plots")
    assert result.exit_code == 0, result.output
    again = load_config(workdir / "runs" / "again" / "config.yaml")
    assert again == load_config(run_config)
    assert again == load_config("configs/smoke.yaml", ["train.epochs=1", "data.n=200", "model.hidden=[8]"])


# --- non-finite data ----------------------------------------------------------------------------

HUGE_ALPHA = {
    "name": "huge",
    "family": {
        "name": "beta",
        "params": {
            "alpha": {"dist": "loguniform", "low": 1, "high": 1e60},
            "beta": {"dist": "uniform", "low": 1, "high": 2},
        },
    },
    "data": {"n": 20},
}


def _reference_finite_rows(params: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(surely finite, surely not) per row: scipy's Beta log-pdf against float32's max, with a 2x margin."""
    grid = np.linspace(0.01, 0.99, 100)
    with np.errstate(all="ignore"):
        ref = stats.beta.logpdf(grid[None, :], params[:, :1], params[:, 1:])
    peak = np.abs(ref).max(axis=1)  # inf or nan (scipy overflowing) counts as not finite
    f32max = float(np.finfo(np.float32).max)
    return peak < f32max / 2, ~(peak <= 2 * f32max)


def test_non_finite_curves_exit_2_naming_the_first_bad_parameter_set(cli, workdir):
    # pick a seed whose first bad row is not row 0 (decided by scipy, with a margin around float32's max)
    cfg = config_from_dict(HUGE_ALPHA)
    for seed in range(100):
        # the same generator use as data.generate: one torch.Generator seeded with the config's seed
        params = sample_params(cfg.family, 20, torch.Generator().manual_seed(seed)).numpy()
        finite, bad = _reference_finite_rows(params)
        if not (finite | bad).all() or finite.all() or not finite[0]:
            continue
        first = int(np.argmax(bad))
        break
    else:
        pytest.fail("no usable seed")
    path = write_config(workdir, HUGE_ALPHA)
    result = cli("generate", path, "--seed", str(seed))
    assert result.exit_code == 2
    msg = result.stderr
    assert "Traceback" not in result.output
    got = {k: float(v) for k, v in re.findall(r"\b(alpha|beta)\s*[=:]\s*([-+0-9.eE]+)", msg)}
    assert got["alpha"] == pytest.approx(params[first, 0], rel=1e-5), msg
    assert got["beta"] == pytest.approx(params[first, 1], rel=1e-5), msg
    assert re.search(rf"\b{first}\b", msg), msg
    assert not (workdir / "runs").exists() or not any((workdir / "runs").iterdir())


def test_grid_touching_the_domain_edge_is_a_config_error(cli, workdir):
    # log(0) on the grid would make every Beta log-pdf with alpha != 1 infinite: rejected up front
    raw = {"name": "edge", "family": "beta", "grid": {"kind": "linspace", "start": 0, "stop": 1, "num": 11}}
    result = cli("generate", write_config(workdir, raw))
    assert result.exit_code == 2
    assert "grid: points must lie in (0, 1) for beta" in result.stderr
    assert not (workdir / "runs" / "edge").exists()


def test_non_finite_failure_with_force_keeps_the_existing_run(cli, workdir):
    path = write_config(workdir, {**HUGE_ALPHA, "family": {**HUGE_ALPHA["family"], "params": {"alpha": 1}}})
    assert cli("generate", path).exit_code == 0
    run = workdir / "runs" / "huge"
    before = snapshot(run)
    result = cli("generate", path, "--force", "--set", "family.params.alpha=1e45")
    assert result.exit_code == 2
    assert snapshot(run) == before


# --- a real process ------------------------------------------------------------------------------


def _env() -> dict[str, str]:
    env = dict(os.environ)
    for var in ("FORCE_COLOR", "CLICOLOR_FORCE", "TTY_COMPATIBLE", "PY_COLORS", "TTY_INTERACTIVE"):
        env.pop(var, None)
    return env


def _run(argv: list[str], cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        argv, cwd=cwd, env=_env(), stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=120
    )


@pytest.mark.slow
def test_generate_as_a_real_process(workdir):
    result = _run([sys.executable, "-m", "funcae_cli", "generate", "configs/smoke.yaml"], workdir)
    assert result.returncode == 0, result.stderr
    run = workdir / "runs" / "smoke"
    assert {p.name for p in run.iterdir()} == RUN_FILES
    assert (run / "data_preview.png").read_bytes()[:8] == PNG_SIGNATURE
    assert npz(run / "data.npz")["curves"].shape == (2000, 64)
    assert "2,000" in result.stderr or "2000" in result.stderr
    assert not ANSI.search(result.stderr), "colour codes on a non-terminal stderr"


@pytest.mark.slow
def test_console_script_reports_a_config_error_as_a_real_process(workdir):
    script = Path(sys.executable).parent / "funcae"
    if not script.exists():
        pytest.skip("console script not installed next to this interpreter")
    argv = [str(script), "generate", "configs/smoke.yaml", "--set", "model.latnet_dim=3", "--run-dir", "bad"]
    result = _run(argv, workdir)
    assert result.returncode == 2, result.stderr
    assert "model.latnet_dim" in result.stderr and "did you mean model.latent_dim" in result.stderr
    assert "Traceback" not in result.stderr and result.stdout == ""
    assert not ANSI.search(result.stderr), "colour codes on a non-terminal stderr"
    assert not (workdir / "bad").exists() and not (workdir / "runs").exists()
