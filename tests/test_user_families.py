"""A user's own formula family (issue 24): by an installed package's entry point and by an import path in the config,
each through generate -> train -> invert -> validate -> plot in real `funcae` processes; the one-line errors of bad
families; the trust gate on run directories that name code to import.

The entry-point package (tests/userfam_pkg) is not pip-installed (the venv is shared): its folder goes on
PYTHONPATH, where funcae_linefam-0.1.0.dist-info/entry_points.txt declares it to importlib.metadata exactly as
`pip install tests/userfam_pkg` would. The recovered parameters are checked against the truth (inside the prior)
and against scipy's least_squares on a numpy copy of the formula, fitted to the same noisy points.
"""

from __future__ import annotations

import csv
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml
from scipy.optimize import least_squares

from funcae_cli.config.families import FAMILIES
from funcae_cli.config.userfamilies import TRUST_ENV
from tests.conftest import REPO, usage_error

PKG = REPO / "tests" / "userfam_pkg"
G = 4.301e-6  # kpc (km/s)^2 / Msun, as halo.py


def funcae(cwd: Path, *args: str, trust: bool = False, pkg: bool = False) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != TRUST_ENV}
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), *([str(PKG)] if pkg else [])])
    if trust:
        env[TRUST_ENV] = "1"
    return subprocess.run(
        [sys.executable, "-m", "funcae_cli", *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=900
    )


def done(r: subprocess.CompletedProcess) -> subprocess.CompletedProcess:
    assert r.returncode == 0, r.stdout + r.stderr
    return r


def one_line_error(r: subprocess.CompletedProcess, *pieces: str) -> None:
    assert r.returncode == 2, r.stdout + r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:") and "Traceback" not in r.stderr, r.stderr
    for piece in pieces:
        assert piece in lines[0], f"{piece!r} not in {lines[0]!r}"


def write_curve(path: Path, x: np.ndarray, y: np.ndarray, yerr: np.ndarray) -> None:
    with path.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["x", "y", "yerr"])
        w.writerows(zip(x, y, yerr))


def line_np(v: np.ndarray, a: float, c: float, w: float) -> np.ndarray:
    return 1.0 + a * np.exp(-0.5 * ((v - c) / w) ** 2)


def burkert_np(r: np.ndarray, rho0: float, r0: float) -> np.ndarray:
    x = r / r0
    mass = np.pi * rho0 * r0**3 * (np.log((1 + x) ** 2 * (1 + x * x)) - 2 * np.arctan(x))
    return np.sqrt(G * mass / r)


def scipy_fit(model, x, y, yerr, start, log_scale):
    """Weighted least squares in the natural coordinates (log10 of scale parameters), from a fixed start."""

    def units(u):
        return [10**v if lg else v for v, lg in zip(u, log_scale)]

    u0 = [np.log10(s) if lg else s for s, lg in zip(start, log_scale)]
    res = least_squares(lambda u: (model(x, *units(u)) - y) / yerr, u0, xtol=1e-14, ftol=1e-14, gtol=1e-14)
    return np.array(units(res.x)), float(np.sum(res.fun**2))


def invert_curve(cwd: Path, run: Path, curve: Path, trust: bool, pkg: bool) -> dict:
    r = done(funcae(cwd, "invert", "-r", str(run), "--curve", str(curve), "--json", "--no-plot", trust=trust, pkg=pkg))
    return json.loads(r.stdout)["targets"][0]


TINY = {
    "data": {"n": 600, "normalize": "per_point"},
    "model": {"kind": "ae", "latent_dim": 3, "hidden": [16, 16]},
    "train": {"epochs": 4, "batch_size": 128, "lr": 3.0e-3},
}


def pipeline(cwd: Path, cfg: Path, run: Path, trust_later: bool, pkg: bool) -> None:
    """generate -> train -> validate -> plot (inversion: in the callers, against scipy)."""
    done(funcae(cwd, "generate", str(cfg), "--run-dir", str(run), pkg=pkg))
    assert (run / "data.npz").exists()
    # --no-plots: train's default figures are not looked at; `plot` below draws (and checks) the family's
    done(funcae(cwd, "train", str(cfg), "--run-dir", str(run), "--force", "--no-plots", pkg=pkg))
    r = done(funcae(cwd, "validate", str(run), "-n", "4", "--posterior", "laplace", trust=trust_later, pkg=pkg))
    assert (run / "validate" / "validate.json").exists(), r.stdout
    r = done(funcae(cwd, "plot", "-r", str(run), "-k", "data,latent", "--json", trust=trust_later, pkg=pkg))
    assert set(json.loads(r.stdout)["written"]) == {"data", "latent"}


@pytest.mark.slow
def test_entry_point_family_end_to_end(tmp_path: Path) -> None:
    """`family: {name: line_profile}` from the installed package: no trust needed to reopen the run."""
    cfg = tmp_path / "line.yaml"
    cfg.write_text(yaml.safe_dump({"name": "line", "seed": 1, "family": {"name": "line_profile"}, **TINY}))
    run = tmp_path / "runs" / "line"
    pipeline(tmp_path, cfg, run, trust_later=False, pkg=True)
    config = yaml.safe_load((run / "config.yaml").read_text())
    assert config["family"]["name"] == "line_profile" and "function" not in config["family"]

    rng = np.random.default_rng(3)
    truth = (1.3, 25.0, 45.0)  # inside the package's default prior
    x = np.sort(rng.uniform(-380, 380, 50))
    yerr = np.full_like(x, 0.02)
    y = line_np(x, *truth) + yerr * rng.standard_normal(x.shape)
    write_curve(tmp_path / "obs.csv", x, y, yerr)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    got = invert_curve(elsewhere, run, tmp_path / "obs.csv", trust=False, pkg=True)
    fitted = np.array([got["params"][n] for n in ("amplitude", "centre", "width")])
    ref, chi2 = scipy_fit(line_np, x, y, yerr, (1.0, 0.0, 40.0), (True, False, True))
    assert np.allclose(fitted, ref, rtol=1e-4, atol=1e-3), (fitted, ref)
    assert abs(got["physics_objective"] - chi2) <= 1e-5 * chi2 + 1e-9
    assert 0.3 < fitted[0] < 3 and -100 < fitted[1] < 100 and 20 < fitted[2] < 80  # the prior
    assert np.allclose(fitted, truth, rtol=0.1, atol=3.0)  # 2% noise on 50 points: within a few km/s

    # mcmc with the user's formula as the likelihood: near-Gaussian here (50 points, 2% errors), so its medians
    # and standard deviations match scipy's weighted least squares (the fit, and sqrt diag (J'J)^-1 in natural
    # coordinates: log10 of amplitude and width) to a fraction of a sigma
    r = done(funcae(elsewhere, "invert", "-r", str(run), "--curve", str(tmp_path / "obs.csv"), "--posterior", "mcmc",
                    "--steps", "250", "--burn", "100", "--json", "--no-plot", pkg=True))  # fmt: skip
    post = json.loads(r.stdout)["targets"][0]["posterior"]
    u_ref = np.array([np.log10(ref[0]), ref[1], np.log10(ref[2])])
    jac = least_squares(lambda u: (line_np(x, 10 ** u[0], u[1], 10 ** u[2]) - y) / yerr, u_ref).jac
    sd_ref = np.sqrt(np.diag(np.linalg.inv(jac.T @ jac)))
    for j, (name, log) in enumerate(zip(("amplitude", "centre", "width"), (True, False, True))):
        q = {k: (np.log10(v) if log else v) for k, v in post[name].items() if k in ("median", "q16", "q84")}
        assert abs(q["median"] - u_ref[j]) < 0.25 * sd_ref[j], (name, q, u_ref[j], sd_ref[j])
        assert 0.8 < (q["q84"] - q["q16"]) / (2 * sd_ref[j]) < 1.25, (name, q, sd_ref[j])

    # a sweep over the user's family: a trial of the config with a learning rate of the sweep's space, complete
    sweep = tmp_path / "line_sweep.yaml"
    sweep.write_text(yaml.safe_dump({
        "name": "line_sweep", "base": "line.yaml", "space": {"train.lr": {"log_uniform": [1.0e-3, 1.0e-2]}},
        "objective": {"metric": "test.sse_mean"}, "sampler": {"name": "random", "seed": 0}, "trials": 1,
        "plots": False,  # the trial's figures are not looked at
    }))  # fmt: skip
    done(funcae(tmp_path, "sweep", str(sweep), pkg=True))
    trials = json.loads((tmp_path / "runs" / "line_sweep" / "leaderboard.json").read_text())["trials"]
    assert len(trials) == 1 and trials[0]["state"] == "complete" and np.isfinite(trials[0]["objective"]), trials
    assert 1.0e-3 <= trials[0]["params"]["train.lr"] <= 1.0e-2
    best = yaml.safe_load((tmp_path / "runs" / "line_sweep" / "best.yaml").read_text())
    assert best["family"]["name"] == "line_profile"


@pytest.mark.slow
def test_import_path_family_end_to_end_and_the_trust_gate(tmp_path: Path) -> None:
    """The README's Burkert example: halo.py + burkert.yaml in the working directory."""
    shutil.copy(PKG / "halo.py", tmp_path)
    raw = yaml.safe_load((PKG / "burkert.yaml").read_text())
    cfg = tmp_path / "burkert.yaml"
    cfg.write_text(yaml.safe_dump({**raw, **TINY}))
    run = tmp_path / "runs" / "burkert"
    pipeline(tmp_path, cfg, run, trust_later=True, pkg=False)
    assert yaml.safe_load((run / "config.yaml").read_text())["family"]["function"] == "halo:burkert"

    rng = np.random.default_rng(5)
    truth = (4e7, 6.0)
    x = np.geomspace(0.4, 28, 30)
    yerr = 0.02 * burkert_np(x, *truth)
    y = burkert_np(x, *truth) + yerr * rng.standard_normal(x.shape)
    write_curve(tmp_path / "obs.csv", x, y, yerr)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    # Opening the run names code to import: refused without trust, whatever the command.
    for args in (["invert", "-r", str(run), "--curve", str(tmp_path / "obs.csv")], ["plot", "-r", str(run)]):
        one_line_error(funcae(tmp_path, *args), "halo:burkert", "--trust-run-code")
    # Trusted, but from a folder where halo is not importable: says so.
    one_line_error(funcae(elsewhere, "--trust-run-code", "plot", "-r", str(run)), "cannot import 'halo'")
    got = invert_curve(tmp_path, run, tmp_path / "obs.csv", trust=True, pkg=False)
    fitted = np.array([got["params"]["rho0"], got["params"]["r0"]])
    ref, chi2 = scipy_fit(burkert_np, x, y, yerr, (3e7, 4.0), (True, True))
    assert np.allclose(fitted, ref, rtol=1e-4), (fitted, ref)
    assert 3e6 < fitted[0] < 3e8 and 1 < fitted[1] < 20
    assert np.allclose(fitted, truth, rtol=0.2)
    # The global flag (not only the environment) opens it too.
    r = funcae(tmp_path, "--trust-run-code", "invert", "-r", str(run), "--curve", str(tmp_path / "obs.csv"), "--json")
    assert json.loads(done(r).stdout)["targets"][0]["params"]["r0"] == pytest.approx(fitted[1], rel=1e-9)


# --- bad families: one line, exit 2, naming the family, before any data ----------------------------------

BAD = """
import torch
from funcae_cli import Param, UserFamily

def good(x, a, b):
    return a * torch.exp(-x * b)

def raises(x, a, b):
    raise ValueError("boom")

def wrong_shape(x, a, b):
    return (a * x).sum(dim=1)

def nan_on_prior(x, a, b):
    return torch.log(a - 1.5) + 0 * x * b

def detached(x, a, b):
    return torch.as_tensor((a * torch.exp(-x * b)).detach().numpy())

def normalized(x, a, b):
    y = a * torch.exp(-x * b)
    return y / y.sum(dim=1, keepdim=True)

def rounded(x, a, b):
    return torch.round(a) + 0 * torch.round(b) * x

not_a_function = 3
undeclared_nondiff = UserFamily(function=detached, params=("a", "b"))
declared_nondiff = UserFamily(function=detached, params=("a", "b"), differentiable=False)
"""


@pytest.fixture
def bad_module(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """badfam.py in a fresh working directory; the registry and sys.modules restored afterwards."""
    (tmp_path / "badfam.py").write_text(BAD)
    monkeypatch.chdir(tmp_path)
    before = dict(FAMILIES)
    yield tmp_path
    FAMILIES.clear()
    FAMILIES.update(before)
    sys.modules.pop("badfam", None)


def bad_config(path: Path, function: str, name: str = "formula") -> Path:
    cfg = path / f"{function.replace(':', '_')}.yaml"
    cfg.write_text(
        f"name: bad\nfamily:\n  name: {name}\n  function: '{function}'\n  params:\n"
        "    a: {dist: uniform, low: 1, high: 2}\n    b: {dist: uniform, low: 0.1, high: 1}\n"
        "grid: {kind: linspace, start: 0, stop: 5, num: 20}\ndata: {n: 50}\n"
    )
    return cfg


@pytest.mark.parametrize(
    ("function", "pieces"),
    [
        ("nomodule:good", ["cannot import 'nomodule'", "PYTHONPATH"]),
        ("badfam:missing", ["has no 'missing'"]),
        ("badfam:not_a_function", ["expected a funcae_cli.UserFamily or a function"]),
        ("badfam:raises", ["raised ValueError: boom"]),
        ("badfam:wrong_shape", ["returned shape (66,)", "expected (66, 20)"]),
        ("badfam:nan_on_prior", ["nan at x=", "inside the prior"]),
        ("badfam:normalized", ["depend only on its own x"]),
        ("badfam:detached", ["no derivatives", "differentiable=False"]),
        ("badfam:undeclared_nondiff", ["no derivatives"]),
        ("badfam:rounded", ["derivative by a is zero"]),
        ("not-a-path", ["expected an import path `module:attribute`"]),
    ],
)
def test_a_bad_family_is_one_line_exit_2_before_any_data(bad_module: Path, cli, function: str, pieces) -> None:
    r = cli("generate", bad_config(bad_module, function))
    usage_error(r, *pieces)
    if function.startswith("badfam:") and function != "badfam:missing" and "not_a" not in function:
        assert "'formula'" in r.stderr  # names the family
    assert not (bad_module / "runs").exists()  # nothing written


def test_a_declared_non_differentiable_family_generates_and_a_good_one_too(bad_module: Path, cli) -> None:
    for function in ("badfam:declared_nondiff", "badfam:good"):
        FAMILIES.pop("formula", None)
        r = cli("generate", bad_config(bad_module, function), "--run-dir", f"runs/{function.split(':')[1]}")
        assert r.exit_code == 0, r.stderr
    data = np.load(bad_module / "runs" / "good" / "data.npz")
    a, b = data["params"][:, :1], data["params"][:, 1:]
    assert np.allclose(data["curves"], a * np.exp(-data["grid"][None, :] * b), rtol=1e-6)  # numpy, float32 stored


def test_a_builtin_name_with_a_function_and_an_unknown_name_are_config_errors(bad_module: Path, cli) -> None:
    usage_error(cli("config", "check", bad_config(bad_module, "badfam:good", name="normal")), "built-in family")
    (bad_module / "u.yaml").write_text("name: u\nfamily: {name: no_such_family}\n")
    usage_error(cli("config", "check", bad_module / "u.yaml"), "unknown family 'no_such_family'", "function:")


def test_an_entry_point_that_fails_to_import_is_one_line(tmp_path: Path) -> None:
    (tmp_path / "b.yaml").write_text("name: b\nfamily: {name: broken_import}\n")
    one_line_error(
        funcae(tmp_path, "config", "check", "b.yaml", pkg=True),
        "broken_import",
        "cannot load entry point",
        "a_module_that_is_not_installed",
    )


def test_families_lists_installed_entry_points_without_importing_them(tmp_path: Path) -> None:
    code = (
        "import sys; from funcae_cli.cli import main; main(['families']); "
        "print('IMPORTED' if 'funcae_linefam' in sys.modules or 'torch' in sys.modules else 'LIGHT')"
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), str(PKG)])}
    r = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert "line_profile" in r.stdout and r.stdout.strip().splitlines()[-1] == "LIGHT"


def test_readme_shows_the_tested_burkert_files() -> None:
    readme = (REPO / "README.md").read_text()
    assert (PKG / "halo.py").read_text().strip() in readme
    assert (PKG / "burkert.yaml").read_text().strip() in readme


@pytest.mark.slow
def test_a_non_differentiable_family_refits_from_derivative_free_starts(bad_module: Path, cli, monkeypatch) -> None:
    """declared_nondiff: trains; invert keeps the best start (no Levenberg-Marquardt: not 'converged'), whose
    objective is no worse than the decoder's estimate's; a posterior, which needs derivatives, is one line."""
    monkeypatch.setenv(TRUST_ENV, "1")
    cfg = bad_config(bad_module, "badfam:declared_nondiff")
    cfg.write_text(cfg.read_text().replace("data: {n: 50}", "data: {n: 400}\ntrain: {epochs: 2}"))
    assert cli("train", cfg, "--run-dir", "runs/nd").exit_code == 0
    r = cli("invert", "-r", "runs/nd", "--a", "1.5", "--b", "0.5", "--json", "--no-plot")
    assert r.exit_code == 0, r.stderr
    t = json.loads(r.stdout)["targets"][0]
    assert t["physics_converged"] is False
    assert t["physics_objective"] <= t["decoder_physics_objective"]
    usage_error(cli("invert", "-r", "runs/nd", "--a", "1.5", "--b", "0.5", "--posterior", "laplace"), "differentiable")
