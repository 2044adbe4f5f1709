"""`funcae sweep` end to end, with smoke-size trials: the real command (CliRunner in this process, or real
`funcae` processes for signals and SIGKILL), real worker processes, real storages: the embedded SQLite file and
a PostgreSQL server (`.ci/run` starts one; without it those tests skip, saying why). Nothing is mocked."""

from __future__ import annotations

import datetime
import json
import os
import re
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import numpy as np
import optuna
import pytest
import scipy.stats
import torch
import yaml
from optuna.trial import TrialState

from funcae_cli.config import load_config
from funcae_cli.data.grids import sample_params

from .conftest import REPO, ok, usage_error

pytestmark = pytest.mark.slow

FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)
RUN_FILES = ["config.yaml", "metrics.json", "history.json", "history.csv", "checkpoints/best.pt", "checkpoints/last.pt"]

SMOKE_SWEEP = {
    "base": "../smoke.yaml",
    "overrides": {"train.epochs": 4, "data.n": 600},
    "space": {"train.lr": {"log_uniform": [1.0e-3, 1.0e-2]}, "model.hidden": {"choice": [[16, 16], [32, 32]]}},
    "objective": {"metric": "test.sse_mean"},
    "sampler": {"name": "random", "seed": 0},
    "pruner": {"name": "median", "startup_trials": 2, "warmup_epochs": 1},
    "trials": 4,
    "heartbeat": {"interval": 1, "grace": 3},
}


def write_sweep(workdir: Path, name: str, **changes) -> Path:
    doc = {"name": name, **SMOKE_SWEEP, **changes}
    path = workdir / "configs" / "sweeps" / f"{name}.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


def unique(prefix: str) -> str:
    """A study name no other test (or earlier CI run) uses in the shared PostgreSQL database."""
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def sqlite(workdir: Path, study: str) -> str:
    return f"sqlite:///{workdir / 'runs' / study / 'study.db'}"


def load(url: str, study: str) -> optuna.Study:
    return optuna.load_study(study_name=study, storage=url)


def check_sweep(folder: Path, study: optuna.Study, n: int, plots: bool = True) -> list:
    """Exactly n finished trials, none running or queued, and exactly their n run directories, each whole."""
    trials = study.get_trials()
    finished = [t for t in trials if t.state in FINISHED]
    assert len(finished) == n, [(t.number, t.state) for t in trials]
    assert not [t for t in trials if t.state in (TrialState.RUNNING, TrialState.WAITING)]
    dirs = sorted((folder / "trials").iterdir())
    assert [p.name for p in dirs if not p.name.isdigit()] == []  # no partial folder left
    assert sorted(int(p.name) for p in dirs) == sorted(t.number for t in finished)
    for t in finished:
        run = folder / "trials" / str(t.number)
        record = json.loads((run / "trial.json").read_text())
        assert record["trial"] == t.number and record["state"] == t.state.name.lower()
        assert (run / "config.yaml").exists() and (run / "checkpoints" / "best.pt").exists()
        if t.state == TrialState.COMPLETE:
            for name in RUN_FILES:
                assert (run / name).exists(), run / name
            metrics = json.loads((run / "metrics.json").read_text())
            assert metrics["test"]["sse_mean"] == pytest.approx(t.value) == pytest.approx(record["objective"])
            assert bool(list((run / "plots").glob("*.png"))) == plots
        else:
            assert not (run / "metrics.json").exists() and record["epochs"] >= 1
    return finished


def check_results(cli, folder: Path, study: optuna.Study, show_args: list[str]) -> None:
    best = study.best_trial
    cfg = load_config(folder / "best.yaml")  # a valid config: `funcae train best.yaml` retrains it
    assert cfg.to_dict() == load_config(folder / "trials" / str(best.number) / "config.yaml").to_dict()
    for kind in ("optimization_history", "parallel_coordinate", "slice", "intermediate_values"):
        assert (folder / "plots" / f"{kind}.png").stat().st_size > 1000
    result = cli("sweep", "show", *show_args, "--json")
    ok(result)
    board = json.loads(result.stdout)
    assert board["best"]["trial"] == best.number and board["metric"] == "test.sse_mean"
    ranked = [r for r in board["trials"] if r["rank"] is not None]
    assert [r["rank"] for r in ranked] == list(range(1, len(ranked) + 1))
    assert [r["objective"] for r in ranked] == sorted(r["objective"] for r in ranked)
    assert {"rank", "trial", "objective", "params", "seconds", "state"} <= set(board["trials"][0])
    text = cli("sweep", "show", *show_args)
    ok(text)
    assert re.search(rf"^1\s+{best.number}\s", text.stdout, re.M), text.stdout


# --- an objective computed after training -----------------------------------------------------------------------


def test_a_sweep_ranked_on_the_held_out_inversion_residual(cli, workdir):
    """objective invert.residual_median: each trial inverts 200 curves of the family at parameters drawn from the
    prior with the sweep's seed (7) after training; its value is what `funcae invert` reports as the median
    |fit - target| for the same curves with the same options (no density prior, no physics refit)."""
    # plots off: nothing here looks at the trials' figures (the two-worker embedded test checks them)
    path = write_sweep(workdir, "heldout", objective={"metric": "invert.residual_median"}, trials=2,
                       pruner={"name": "none"}, plots=False)  # fmt: skip
    ok(cli("sweep", path, "--device", "cpu"))
    study = load(sqlite(workdir, "heldout"), "heldout")
    runs = [workdir / "runs" / "heldout" / "trials" / str(t.number) for t in study.get_trials()]
    assert len(runs) == 2
    for run, trial in zip(runs, study.get_trials(), strict=True):
        section = json.loads((run / "metrics.json").read_text())["invert"]
        assert section["targets"] == 200 and section["seed"] == 7
        assert section["residual_median"] == pytest.approx(trial.value, rel=1e-12)
    best = runs[study.best_trial.number]
    cfg = load_config(best / "config.yaml")
    params = sample_params(cfg.family, 200, torch.Generator().manual_seed(7)).numpy()
    table = workdir / "heldout.csv"
    np.savetxt(table, params, delimiter=",", header="mu,sigma", comments="", fmt="%.17g")
    result = cli("invert", "--run", best, "--targets", table, "--prior", "none", "--no-physics", "--json", "--no-plot")
    ok(result)
    reported = [t["data_residual"] for t in json.loads(result.stdout)["targets"]]
    assert float(np.median(reported)) == pytest.approx(study.best_value, rel=1e-6)
    grid = np.linspace(-5, 5, 64)  # smoke.yaml's grid; the family is the normal pdf (scipy's, independently)
    curves = scipy.stats.norm.pdf(grid[None], params[:, :1], params[:, 1:])
    assert 0 < study.best_value < float(np.median(np.linalg.norm(curves, axis=1)))  # better than a flat zero


def test_a_held_out_objective_needs_a_formula(cli, workdir):
    data_only = workdir / "configs" / "data_only.yaml"
    rows = np.random.default_rng(0).normal(size=(50, 16))
    np.save(workdir / "rows.npy", rows)
    family = {"name": "dataset", "path": str(workdir / "rows.npy")}
    data_only.write_text(yaml.safe_dump({"name": "rows", "family": family, "train": {"epochs": 1}}))
    path = write_sweep(workdir, "rows", base="../data_only.yaml", overrides={},
                       objective={"metric": "invert.residual_median"})  # fmt: skip
    result = cli("sweep", path)
    usage_error(result, "objective.metric: invert.residual_median")
    assert "has none" in result.output and not (workdir / "runs" / "rows").exists()


# --- N trials, two workers --------------------------------------------------------------------------------------


def test_two_workers_on_the_embedded_storage_run_exactly_n_trials(cli, workdir):
    path = write_sweep(workdir, "embedded")
    ok(cli("sweep", path, "--workers", "2", "--device", "cpu"))
    folder = workdir / "runs" / "embedded"
    study = load(sqlite(workdir, "embedded"), "embedded")
    finished = check_sweep(folder, study, 4)
    assert len({t.user_attrs["funcae.worker"]["pid"] for t in finished}) == 2  # both workers ran trials
    check_results(cli, folder, study, ["runs/embedded"])
    best = folder / "trials" / str(study.best_trial.number)
    ok(cli("sample", "--run", best, "-n", "4"))  # a trial is an ordinary run directory
    # Running the command again resumes the study: complete, so no new trial.
    ok(cli("sweep", path))
    assert len(load(sqlite(workdir, "embedded"), "embedded").get_trials()) == len(study.get_trials())


def test_two_workers_on_postgresql_run_exactly_n_trials(cli, workdir, postgres_url):
    name = unique("pg")
    # The trials' figures do not depend on the storage: the embedded twin above checks them (plots on, two
    # workers); here they are off (check_sweep: none drawn), which halves this test's time.
    path = write_sweep(workdir, "pg", plots=False)
    ok(cli("sweep", path, "--workers", "2", "--storage", postgres_url, "--study", name))
    folder = workdir / "runs" / name
    study = load(postgres_url, name)
    finished = check_sweep(folder, study, 4, plots=False)
    assert len({t.user_attrs["funcae.worker"]["pid"] for t in finished}) == 2
    check_results(cli, folder, study, ["--storage", postgres_url, "--study", name])


def test_a_wrong_postgresql_password_is_exit_2(cli, workdir, postgres_url):
    bad = re.sub(r"://([^:]+):[^@]*@", r"://\1:wrong@", postgres_url)
    usage_error(cli("sweep", write_sweep(workdir, "pw"), "--storage", bad), "--storage", "cannot connect")
    assert not (workdir / "runs").exists()


# --- pruning ----------------------------------------------------------------------------------------------------


def test_a_clearly_worse_trial_is_pruned_and_its_run_directory_says_so(cli, workdir):
    # Trial n runs point n of the grid shuffled by the seed; with seed 1 (Optuna 5) trial 0 learns (lr 3e-3) and
    # trial 1 barely moves (lr 1e-7). The first assertion says so if another Optuna shuffles otherwise.
    path = write_sweep(
        workdir,
        "prune",
        overrides={"train.epochs": 10, "data.n": 600},
        space={"train.lr": {"choice": [3.0e-3, 1.0e-7]}},
        sampler={"name": "grid", "seed": 1},
        pruner={"name": "median", "startup_trials": 1, "warmup_epochs": 3},
        trials=2,
        plots=False,
    )
    ok(cli("sweep", path))
    study = load(sqlite(workdir, "prune"), "prune")
    good, bad = study.get_trials()
    assert good.state == TrialState.COMPLETE and good.params["train.lr"] == 3.0e-3
    assert bad.state == TrialState.PRUNED and bad.params["train.lr"] == 1.0e-7
    check_sweep(workdir / "runs" / "prune", study, 2, plots=False)
    record = json.loads((workdir / "runs" / "prune" / "trials" / "1" / "trial.json").read_text())
    history = json.loads((workdir / "runs" / "prune" / "trials" / "1" / "history.json").read_text())
    assert record["state"] == "pruned" and record["epochs"] == len(history) < 10
    assert record["epochs"] >= 3  # not before the warm-up
    assert record["val_loss"] > 2 * good.intermediate_values[record["epochs"]]  # clearly worse, when pruned
    board = json.loads(cli("sweep", "show", "runs/prune", "--json").stdout)
    assert [r["state"] for r in board["trials"]] == ["complete", "pruned"]


# --- failed trials: exit 3 after the rest ran; a study holds one sweep ---------------------------------------------


def test_a_failed_trial_is_exit_3_after_the_others_ran(cli, workdir):
    # Each value is valid alone (checked before any trial), but val 0.5 + test 0.45 leaves too little to train.
    space = {"data.val_fraction": {"choice": [0.1, 0.5]}, "data.test_fraction": {"choice": [0.05, 0.45]}}
    path = write_sweep(workdir, "fails", space=space, sampler={"name": "grid"}, trials=None, plots=False)
    result = cli("sweep", path)
    assert result.exit_code == 3, result.stderr
    assert "1 of 4 finished trials failed" in result.stderr and "Traceback" not in result.stderr
    study = load(sqlite(workdir, "fails"), "fails")
    states = sorted(t.state.name for t in study.get_trials())
    assert states == ["COMPLETE", "COMPLETE", "COMPLETE", "FAIL"]
    board = json.loads(cli("sweep", "show", "runs/fails", "--json").stdout)
    failed = [r for r in board["trials"] if r["state"] == "failed"]
    assert len(failed) == 1 and "val_fraction" in failed[0]["note"]
    # The same study name with another space is refused: a study holds one sweep.
    path.write_text(path.read_text().replace("0.45", "0.4"))
    usage_error(cli("sweep", path), "--study", "another base config, space or objective")


# --- faults: SIGKILL of a worker, Ctrl-C -------------------------------------------------------------------------


def _funcae(*args: str, cwd: Path, stderr) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.Popen(
        [sys.executable, "-m", "funcae_cli", *args], cwd=cwd, env=env, stdout=subprocess.DEVNULL, stderr=stderr
    )


def _wait_for(predicate, what: str, procs: list[subprocess.Popen], timeout: float = 120) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if predicate():
            return
        if any(p.poll() is not None for p in procs):
            raise AssertionError(f"a process ended while waiting for {what}")
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def _mid_trial(folder: Path, log: Path, procs: list[subprocess.Popen], worker: str = "") -> int:
    """Wait until the process logging to `log` (its worker tagged `worker`, e.g. "[w0] ") is training a trial
    (one epoch saved); return the trial's number."""
    started: list[int] = []

    def training() -> bool:
        started[:] = [int(n) for n in re.findall(rf"^{re.escape(worker)}trial (\d+) started", log.read_text(), re.M)]
        return bool(started) and (folder / "trials" / f".{started[-1]}.partial" / "checkpoints" / "last.pt").exists()

    _wait_for(training, "a trial in progress", procs)
    return started[-1]


def _kill_all(procs: list[subprocess.Popen]) -> None:
    for p in procs:
        if p.poll() is None:
            p.kill()
            p.wait()


LONG = {"overrides": {"train.epochs": 60, "data.n": 2000}, "plots": False, "trials": 2, "pruner": {"name": "none"}}


def test_sigkill_of_a_worker_mid_trial_on_postgresql(cli, workdir, postgres_url):
    """Two machines' worth of workers (two `funcae sweep` processes) share the database; one is killed with
    SIGKILL mid-trial: its trial is failed by heartbeat and re-queued, and the other completes N trials."""
    name = unique("kill")
    path = write_sweep(workdir, "kill", **LONG)
    args = ["sweep", str(path), "--storage", postgres_url, "--study", name]
    victim_log, survivor_log = workdir / "victim.log", workdir / "survivor.log"
    with victim_log.open("w") as v, survivor_log.open("w") as s:
        victim = _funcae(*args, cwd=workdir, stderr=v)
        survivor = _funcae(*args, cwd=workdir, stderr=s)
        procs = [victim, survivor]
        try:
            killed = _mid_trial(workdir / "runs" / name, victim_log, procs)
            victim.kill()
            assert victim.wait(timeout=30) == -signal.SIGKILL
            assert survivor.wait(timeout=300) == 0, survivor_log.read_text()
        finally:
            _kill_all(procs)
    study = load(postgres_url, name)
    check_sweep(workdir / "runs" / name, study, 2, plots=False)
    lost = study.get_trials()[killed]
    assert lost.state == TrialState.FAIL and "funcae.error" not in lost.user_attrs
    retry = [t for t in study.get_trials() if t.system_attrs.get("failed_trial") == killed]
    assert len(retry) == 1 and retry[0].state == TrialState.COMPLETE and retry[0].params == lost.params
    # Running the command again resumes the study: it is complete, nothing new runs. (In this process, as the
    # embedded test's resume: no signal to send, so no new interpreter and imports to pay for.)
    ok(cli(*args))
    assert len(load(postgres_url, name).get_trials()) == len(study.get_trials())


def test_sigkill_of_one_of_two_workers_on_the_embedded_storage(workdir):
    path = write_sweep(workdir, "kill2", **LONG)
    log = workdir / "sweep.log"
    with log.open("w") as err:
        proc = _funcae("sweep", str(path), "--workers", "2", cwd=workdir, stderr=err)
        try:
            _wait_for(lambda: "workers (pids" in log.read_text(), "the workers", [proc])
            pids = [int(p) for p in re.search(r"pids ([\d, ]+)\)", log.read_text()).group(1).split(", ")]
            killed = _mid_trial(workdir / "runs" / "kill2", log, [proc], worker="[w0] ")
            os.kill(pids[0], signal.SIGKILL)
            assert proc.wait(timeout=300) == 0, log.read_text()
        finally:
            _kill_all([proc])
    study = load(sqlite(workdir, "kill2"), "kill2")
    check_sweep(workdir / "runs" / "kill2", study, 2, plots=False)
    lost = study.get_trials()[killed]
    assert lost.state == TrialState.FAIL and "funcae.error" not in lost.user_attrs
    retry = [t for t in study.get_trials() if t.system_attrs.get("failed_trial") == killed]
    assert len(retry) == 1 and retry[0].state == TrialState.COMPLETE and retry[0].params == lost.params


def test_ctrl_c_stops_the_trial_cleanly_and_the_sweep_resumes(workdir):
    path = write_sweep(workdir, "ctrlc", overrides={"train.epochs": 300, "data.n": 600}, plots=False, trials=1,
                       pruner={"name": "none"})  # fmt: skip
    log = workdir / "sweep.log"
    with log.open("w") as err:
        proc = _funcae("sweep", str(path), cwd=workdir, stderr=err)
        try:
            number = _mid_trial(workdir / "runs" / "ctrlc", log, [proc])
            proc.send_signal(signal.SIGINT)
            assert proc.wait(timeout=60) == 130
        finally:
            _kill_all([proc])
    text = log.read_text()
    assert "interrupted by SIGINT" in text and "run the same command again" in text and "Traceback" not in text
    study = load(sqlite(workdir, "ctrlc"), "ctrlc")
    stopped, queued = study.get_trials()
    assert stopped.number == number and stopped.state == TrialState.FAIL and stopped.user_attrs["funcae.interrupted"]
    assert queued.state == TrialState.WAITING and queued.params == stopped.params
    assert list((workdir / "runs" / "ctrlc" / "trials").iterdir()) == []  # no half-written run directory
    # Resume: the re-queued trial runs first, with the interrupted trial's parameters.
    again = subprocess.run(
        [sys.executable, "-m", "funcae_cli", "sweep", str(path)], cwd=workdir, capture_output=True, text=True,
        timeout=300, env={**os.environ, "PYTHONPATH": str(REPO)},
    )  # fmt: skip
    assert again.returncode == 0, again.stderr
    study = load(sqlite(workdir, "ctrlc"), "ctrlc")
    check_sweep(workdir / "runs" / "ctrlc", study, 1, plots=False)
    assert study.get_trials()[1].state == TrialState.COMPLETE and study.get_trials()[1].params == stopped.params


def test_a_trial_whose_worker_died_before_its_first_heartbeat_is_re_queued(cli, workdir):
    """A worker killed between Optuna's `ask` and the first heartbeat leaves a RUNNING trial that Optuna's
    stale check never sees (no heartbeat at all): the next worker fails and re-queues it instead of waiting for
    it forever."""
    path = write_sweep(workdir, "orphan", plots=False, trials=2, pruner={"name": "none"})
    ok(cli("sweep", path, "--trials", "1"))
    url = sqlite(workdir, "orphan")
    study = load(url, "orphan")
    done = study.get_trials()[0]
    hour_ago = datetime.datetime.now() - datetime.timedelta(hours=1)
    orphan = optuna.trial.FrozenTrial(
        number=0, state=TrialState.RUNNING, value=None, datetime_start=hour_ago, datetime_complete=None,
        params=done.params, distributions=done.distributions, user_attrs={}, system_attrs={},
        intermediate_values={}, trial_id=0,
    )  # fmt: skip
    study.add_trial(orphan)
    # finished 1 + running 1 = 2: without the check the worker would wait for the orphan forever (here: until
    # the timeout, and the assertions below fail)
    ok(cli("sweep", path, "--timeout", "120"))
    trials = load(url, "orphan").get_trials()
    assert [t.state for t in trials] == [TrialState.COMPLETE, TrialState.FAIL, TrialState.COMPLETE]
    assert trials[2].system_attrs["failed_trial"] == 1 and trials[2].params == done.params


def test_timeout_starts_no_trial_after_it_and_exits_0(cli, workdir):
    path = write_sweep(workdir, "timeout", plots=False, trials=50, pruner={"name": "none"})
    result = cli("sweep", path, "--timeout", "0.5")
    ok(result)
    assert "--timeout reached" in result.stderr
    finished = [t for t in load(sqlite(workdir, "timeout"), "timeout").get_trials() if t.state in FINISHED]
    assert 1 <= len(finished) < 50
    check_sweep(workdir / "runs" / "timeout", load(sqlite(workdir, "timeout"), "timeout"), len(finished), plots=False)
