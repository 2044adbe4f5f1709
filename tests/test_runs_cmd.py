"""`funcae runs` and `funcae runs compare` on real run directories: runs trained by the real command (complete,
diverged, a sweep's complete and pruned trials), damaged ones (truncated metrics.json, a config alone), and runs
stopped by real signals (SIGINT, SIGKILL) while `funcae runs` watches them. Every expected value is read from
the run's own files (metrics.json, history.json, trial.json) by the test, not by the code under test."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import matplotlib.image
import numpy as np
import pytest
import yaml
from typer.testing import CliRunner

from funcae_cli.cli import app
from funcae_cli.plotting.training import loss_overlay_figure

from .conftest import CONFIGS, REPO, ok, usage_error
from .test_sweep import write_sweep

TINY = ["-q", "--no-plots", "--set", "data.n=600"]


def _train(*args: str) -> int:
    return CliRunner().invoke(app, ["train", "configs/smoke.yaml", *TINY, *args], catch_exceptions=False).exit_code


@pytest.fixture(scope="module")
def tree(smoke_run: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A working directory whose runs/ holds every kind of run directory, each made for real."""
    root = tmp_path_factory.mktemp("runs-tree")
    shutil.copytree(CONFIGS, root / "configs")
    runs = root / "runs"
    shutil.copytree(smoke_run, runs / "smoke", symlinks=True)
    cwd = os.getcwd()
    os.chdir(root)
    try:
        assert _train("--run-dir", "runs/wide", "--set", "model.latent_dim=3", "--set", "train.epochs=3") == 0
        assert _train("--run-dir", "runs/div", "--set", "train.optimizer=sgd", "--set", "train.lr=1e4") == 4
        # a real sweep: runs/prune/trials/{0,1}, one complete, one pruned (the sweep tests' pruning study)
        sweep = write_sweep(
            root, "prune", overrides={"train.epochs": 10, "data.n": 600}, space={"train.lr": {"choice": [3e-3, 1e-7]}},
            sampler={"name": "grid", "seed": 1}, pruner={"name": "median", "startup_trials": 1, "warmup_epochs": 3},
            trials=2, plots=False,
        )  # fmt: skip
        ok(CliRunner().invoke(app, ["sweep", str(sweep)], catch_exceptions=False))
    finally:
        os.chdir(cwd)
    shutil.copytree(smoke_run, runs / "garbage", symlinks=True)
    text = (runs / "garbage" / "metrics.json").read_text()
    (runs / "garbage" / "metrics.json").write_text(text[: len(text) // 2])  # truncated mid-write
    (runs / "cfgonly").mkdir()
    shutil.copy(smoke_run / "config.yaml", runs / "cfgonly" / "config.yaml")
    (runs / "prune" / "trials" / ".7.partial").mkdir()  # a trial in training: hidden, not listed
    shutil.copy(smoke_run / "config.yaml", runs / "prune" / "trials" / ".7.partial" / "config.yaml")
    (runs / "latest").unlink(missing_ok=True)
    (runs / "latest").symlink_to("wide")  # not listed twice
    return root


@pytest.fixture
def at_tree(tree: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.chdir(tree)
    return tree / "runs"


def _json(path: Path):
    return json.loads(path.read_text())


def _rows(cli, *args: str) -> list[dict]:
    r = cli("runs", *args, "--json")
    ok(r)
    return json.loads(r.stdout)


EXPECTED_STATUS = {
    "smoke": "complete",
    "wide": "complete",
    "div": "diverged",
    "garbage": "damaged",
    "cfgonly": "untrained",
}


def test_runs_lists_every_run_with_its_status_and_metrics(at_tree: Path, cli) -> None:
    rows = {r["name"]: r for r in _rows(cli)}
    trials = {f"prune/trials/{p.name}": _json(p / "trial.json") for p in (at_tree / "prune" / "trials").glob("[0-9]*")}
    assert len(trials) == 2
    assert set(rows) == set(EXPECTED_STATUS) | set(trials)  # no latest, no hidden partial trial
    assert {n: rows[n]["status"] for n in EXPECTED_STATUS} == EXPECTED_STATUS
    assert {n: rows[n]["status"] for n in trials} == {n: t["state"] for n, t in trials.items()}
    for name in ("smoke", "wide", *[n for n, t in trials.items() if t["state"] == "complete"]):
        m, hist = _json(at_tree / name / "metrics.json"), _json(at_tree / name / "history.json")
        cfg = yaml.safe_load((at_tree / name / "config.yaml").read_text())
        row = rows[name]
        assert (row["family"], row["model"], row["latent_dim"]) == (
            cfg["family"]["name"], cfg["model"]["kind"], cfg["model"]["latent_dim"],
        )  # fmt: skip
        assert row["epochs"] == len(hist)
        assert row["best_val_loss"] == min(h["val_loss"] for h in hist)
        assert row["test_sse"] == m["test"]["sse_mean"]
        assert row["pca_ratio"] == pytest.approx(m["test"]["sse_mean"] / m["test"]["pca"]["sse_mean"], rel=1e-12)
        assert row["wall_seconds"] == pytest.approx(sum(h["seconds"] for h in hist), rel=1e-9)
        assert row["problem"] is None
    assert rows["wide"]["latent_dim"] == 3 and rows["wide"]["epochs"] == 3
    # a pruned trial: its epochs and losses from history.json (no metrics.json)
    for name in [n for n, t in trials.items() if t["state"] == "pruned"]:
        hist = _json(at_tree / name / "history.json")
        assert rows[name]["epochs"] == trials[name]["epochs"] == len(hist)
        assert rows[name]["best_val_loss"] == min(h["val_loss"] for h in hist) and rows[name]["test_sse"] is None
    # diverged: the epochs it saved before (none or a few), and the reason kept in status.json
    div_hist = _json(at_tree / "div" / "history.json") if (at_tree / "div" / "history.json").exists() else []
    assert rows["div"]["epochs"] == len(div_hist) and rows["div"]["test_sse"] is None
    assert "diverged" in _json(at_tree / "div" / "status.json")["error"]
    assert "metrics.json" in rows["garbage"]["problem"] and rows["garbage"]["test_sse"] is None
    assert rows["cfgonly"]["family"] == "normal" and rows["cfgonly"]["best_val_loss"] is None


def test_runs_table_shows_missing_values_as_dashes_and_warns_of_damage(at_tree: Path, cli) -> None:
    r = cli("runs")
    ok(r)
    lines = r.stdout.splitlines()
    assert lines[0].split() == ["name", "family", "model", "latent_dim", "epochs", "best_val_loss", "test_sse",
                                "pca_ratio", "wall_seconds", "created", "status"]  # fmt: skip
    by_name = {line.split()[0]: line.split() for line in lines[1:]}
    assert by_name["cfgonly"][5:9] == ["-", "-", "-", "-"] and by_name["cfgonly"][-1] == "untrained"
    assert by_name["garbage"][-1] == "damaged"
    assert "garbage: metrics.json: unreadable" in r.stderr and "Traceback" not in r.stderr


def test_runs_of_a_sweep_folder_lists_its_trials(at_tree: Path, cli) -> None:
    names = [r["name"] for r in _rows(cli, "runs/prune")]
    assert names == sorted(f"trials/{p.name}" for p in (at_tree / "prune" / "trials").glob("[0-9]*"))
    one = _rows(cli, "runs/wide")  # a run directory itself
    assert [r["name"] for r in one] == ["wide"]


def test_sort_and_filter(at_tree: Path, cli) -> None:
    rows = _rows(cli, "--sort", "test_sse")
    with_sse = [r for r in rows if r["test_sse"] is not None]
    assert [r["test_sse"] for r in with_sse] == sorted(r["test_sse"] for r in with_sse)
    assert rows[: len(with_sse)] == with_sse  # missing values last
    down = _rows(cli, "--sort", "test_sse", "--reverse")
    assert [r["name"] for r in down[: len(with_sse)]] == [r["name"] for r in reversed(with_sse)]
    assert all(r["test_sse"] is None for r in down[len(with_sse) :])
    complete = {r["name"] for r in rows if r["status"] == "complete"}
    assert {r["name"] for r in _rows(cli, "--filter", "status=complete", "--filter", "family=normal")} == complete
    assert [r["name"] for r in _rows(cli, "--filter", "latent_dim=3")] == ["wide"]
    assert _rows(cli, "--filter", "family=rotation_curve") == []


def test_unknown_sort_or_filter_key_exits_2_naming_the_keys(at_tree: Path, cli) -> None:
    usage_error(cli("runs", "--sort", "bogus"), "--sort", "'bogus'", "test_sse", "status")
    usage_error(cli("runs", "--filter", "colour=red"), "--filter", "'colour'", "family")
    usage_error(cli("runs", "--filter", "family"), "--filter", "KEY=VALUE")
    usage_error(cli("runs", "runs/nothing"), "runs/nothing", "not a directory")


def test_compare_names_exactly_the_keys_set_and_draws_the_curves(at_tree: Path, cli, tmp_path: Path) -> None:
    out = tmp_path / "cmp.png"
    r = cli("runs", "compare", "smoke", "wide", "div", "--out", out, "--json")
    ok(r)
    result = json.loads(r.stdout)
    smoke = yaml.safe_load((CONFIGS / "smoke.yaml").read_text())
    assert result["differences"] == {
        "data.n": [smoke["data"]["n"], 600, 600],
        "model.latent_dim": [smoke["model"]["latent_dim"], 3, smoke["model"]["latent_dim"]],
        "train.epochs": [smoke["train"]["epochs"], 3, smoke["train"]["epochs"]],
        "train.lr": [smoke["train"]["lr"], smoke["train"]["lr"], 1e4],
        "train.optimizer": ["adam", "adam", "sgd"],
    }
    assert [row["status"] for row in result["runs"]] == ["complete", "complete", "diverged"]
    drawn = [n for n in ("smoke", "wide", "div") if (at_tree / n / "history.json").exists()]
    assert {"smoke", "wide"} <= set(drawn)
    assert result["without_curves"] == [n for n in ("smoke", "wide", "div") if n not in drawn]
    assert result["figure"] == str(out)
    image = matplotlib.image.imread(out)  # a PNG matplotlib reads back
    assert image.ndim == 3 and image.shape[0] > 100
    text = cli("runs", "compare", "smoke", "runs/wide")  # names under runs/ or paths; default figure
    ok(text)
    assert "train.epochs: smoke=20, runs/wide=3" in text.stdout
    assert (at_tree / "smoke" / "plots" / "compare.png").is_file()


def test_compare_of_damaged_runs_and_bad_arguments(at_tree: Path, cli, tmp_path: Path) -> None:
    r = cli("runs", "compare", "garbage", "cfgonly", "--json", "--out", tmp_path / "c.svg")
    ok(r)
    result = json.loads(r.stdout)
    assert [row["status"] for row in result["runs"]] == ["damaged", "untrained"]
    assert result["differences"] == {} and result["without_curves"] == ["cfgonly"]
    assert (tmp_path / "c.svg").read_text().lstrip().startswith("<?xml")
    usage_error(cli("runs", "compare", "smoke"), "at least two")
    usage_error(cli("runs", "compare", "smoke", "nothere"), "nothere", "not a run directory")
    usage_error(cli("runs", "compare", "smoke", "wide", "--out", tmp_path / "c.txt"), "--out", ".txt", ".png")


def test_listing_loads_neither_torch_nor_matplotlib(at_tree: Path) -> None:
    code = (
        "import sys; from funcae_cli.cli import main; code = main(['runs']); "
        "print(sorted(m for m in ('torch', 'matplotlib', 'numpy', 'optuna') if m in sys.modules)); sys.exit(code)"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=at_tree.parent,
                       env={**os.environ, "PYTHONPATH": str(REPO)})  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip().splitlines()[-1] == "[]"


# --- runs stopped by real signals, seen while they run ---------------------------------------------------------

LONG = ["--set", "train.epochs=400", "--set", "data.n=3000", "--no-plots", "-q"]


def _start(run: str, cwd: Path) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "funcae_cli", "train", str(CONFIGS / "smoke.yaml"), "--run-dir", run, *LONG],
        cwd=cwd, env={**os.environ, "PYTHONPATH": str(REPO)}, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )  # fmt: skip


@pytest.mark.slow
def test_running_then_sigint_and_sigkill_are_interrupted(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, cli):
    monkeypatch.chdir(tmp_path)
    procs = {"sigint": _start("runs/sigint", tmp_path), "sigkill": _start("runs/sigkill", tmp_path)}
    try:
        end = time.monotonic() + 180
        while not all((tmp_path / "runs" / n / "history.json").exists() for n in procs):  # an epoch saved
            assert all(p.poll() is None for p in procs.values()) and time.monotonic() < end
            time.sleep(0.05)
        assert {r["name"]: r["status"] for r in _rows(cli)} == {"sigint": "running", "sigkill": "running"}
        procs["sigint"].send_signal(signal.SIGINT)
        procs["sigkill"].send_signal(signal.SIGKILL)
        _, err = procs["sigint"].communicate(timeout=60)
        procs["sigkill"].wait(timeout=60)
    finally:
        for p in procs.values():
            if p.poll() is None:
                p.kill()
                p.wait()
    assert procs["sigint"].returncode == 130, err.decode()
    assert procs["sigkill"].returncode == -signal.SIGKILL
    rows = {r["name"]: r for r in _rows(cli)}
    assert {n: r["status"] for n, r in rows.items()} == {"sigint": "interrupted", "sigkill": "interrupted"}
    assert "SIGINT" in _json(tmp_path / "runs/sigint/status.json")["error"]
    assert _json(tmp_path / "runs/sigkill/status.json")["status"] == "running"  # what the killed process left
    for n, row in rows.items():
        hist = _json(tmp_path / "runs" / n / "history.json")
        assert 0 < row["epochs"] == len(hist) < 400 and row["best_val_loss"] == min(h["val_loss"] for h in hist)


def test_overlay_figure_draws_each_runs_history(at_tree: Path) -> None:
    hists = {n: _json(at_tree / n / "history.json") for n in ("smoke", "wide")}
    keys = ("epoch", "train_loss", "val_loss")
    curves = {n: tuple(np.array([r[k] for r in h]) for k in keys) for n, h in hists.items()}
    ax = loss_overlay_figure(curves).axes[0]
    drawn = {line.get_label(): line.get_ydata() for line in ax.lines}
    for n, h in hists.items():
        assert list(drawn[f"{n} (validation)"]) == [r["val_loss"] for r in h]
        assert list(drawn[f"{n} (training)"]) == [r["train_loss"] for r in h]
    assert ax.get_yscale() == "log"
