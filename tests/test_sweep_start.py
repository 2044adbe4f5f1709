"""Sweep workers that start at the same instant on an empty database: real `funcae sweep` processes released
together by a barrier, against a fresh PostgreSQL database each round (the CI's server; without it that part
skips, saying why) and against the embedded SQLite file that does not exist yet. Every worker must exit 0 and
the study must end with its N trials. Before the setup lock (sweeps/setup_lock.py), 6 of 8 PostgreSQL workers
failed at start (`duplicate key value violates unique constraint "pg_type_typname_nsp_index"`), and 11 of 20
SQLite ones (`table studies already exists`, `UNIQUE constraint failed: alembic_version.version_num`)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import uuid
from pathlib import Path

import optuna
import pytest
import sqlalchemy
import yaml
from optuna.trial import TrialState
from sqlalchemy.engine import make_url

from .conftest import REPO

pytestmark = pytest.mark.slow

WORKERS = 4
ROUNDS = 3  # 12 starts together: the race this guards against failed 5 of 16 starts (issue 25)
TRIALS = 4
SWEEP = {
    "base": "../smoke.yaml",
    "overrides": {"train.epochs": 1, "data.n": 300},
    "space": {"train.lr": {"log_uniform": [1.0e-3, 1.0e-2]}},
    "sampler": {"name": "random", "seed": 0},
    "pruner": {"name": "none"},
    "trials": TRIALS,
    "plots": False,
}

# WORKERS processes import everything the sweep needs once, then for each round: say they are ready, wait for the
# round's start line, run the real command line (funcae_cli.cli.entry) in that round's folder, write its exit code.
# So the processes reach the storage within a millisecond or so of each other, and the rounds do not pay for
# WORKERS x ROUNDS interpreter starts (the imports were most of this test's time).
BARRIER = """
import json, os, sys, time
from pathlib import Path
import funcae_cli.sweeps.workers  # torch, optuna, sqlalchemy, psycopg: loaded before the start
from funcae_cli.cli import entry
base, me = Path(sys.argv[1]), sys.argv[2]
for r, (cwd, args) in enumerate(json.loads(sys.argv[3])):
    os.chdir(cwd)
    (base / f"ready{r}.{me}").touch()
    while not (base / f"go{r}").exists():
        time.sleep(0.0005)
    sys.argv = ["funcae", *args]
    try:
        entry()
        code = 0
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else 1
    print(f"--- round {r}: exit {code}", file=sys.stderr, flush=True)
    (base / f"code{r}.{me}.tmp").write_text(str(code))  # then renamed: the parent never reads a half-written file
    os.replace(base / f"code{r}.{me}.tmp", base / f"code{r}.{me}")
"""


def start_together(
    plans: list[list[tuple[Path, list[str]]]], tmp: Path, before_round=None
) -> list[list[tuple[int, str]]]:
    """plans[w][r]: the folder and `funcae` arguments of worker w in round r. Rounds run one after the other, the
    workers of a round released at once (before_round(r) runs first, e.g. to create a database). Returns per round
    the (exit code, stderr so far) of each worker."""
    base = tmp / f"barrier-{uuid.uuid4().hex[:8]}"
    base.mkdir()
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    procs, logs = [], []
    for w, plan in enumerate(plans):
        log = base / f"log{w}"
        with log.open("w") as err:
            rounds = json.dumps([[str(cwd), args] for cwd, args in plan])
            procs.append(subprocess.Popen([sys.executable, "-c", BARRIER, str(base), str(w), rounds], env=env,
                                          stdout=subprocess.DEVNULL, stderr=err))  # fmt: skip
        logs.append(log)
    out = []
    try:
        for r in range(len(plans[0])):
            if before_round is not None:
                before_round(r)
            end = time.monotonic() + 300
            while not all((base / f"ready{r}.{w}").exists() for w in range(len(plans))):
                dead = [w for w, p in enumerate(procs) if p.poll() is not None]
                assert time.monotonic() < end and not dead, (
                    f"round {r}: worker(s) {dead} never got ready: "
                    + " | ".join(logs[w].read_text()[-800:] for w in dead)
                )
                time.sleep(0.01)
            (base / f"go{r}").touch()
            while not all((base / f"code{r}.{w}").exists() for w in range(len(plans))):
                dead = [w for w, p in enumerate(procs) if p.poll() is not None and not (base / f"code{r}.{w}").exists()]
                assert time.monotonic() < end and not dead, f"round {r}: worker(s) {dead} died: " + " | ".join(
                    logs[w].read_text()[-800:] for w in dead
                )
                time.sleep(0.02)
            out.append([(int((base / f"code{r}.{w}").read_text()), logs[w].read_text()) for w in range(len(plans))])
        for p in procs:
            p.wait(timeout=60)
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    return out


def write_sweep(folder: Path, name: str) -> Path:
    path = folder / "configs" / "sweeps" / f"{name}.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump({"name": name, **SWEEP}, sort_keys=False))
    return path


def finished_numbers(url: str, study: str) -> list[int]:
    trials = optuna.load_study(study_name=study, storage=url).get_trials()
    assert not [t.number for t in trials if t.state in (TrialState.RUNNING, TrialState.WAITING)]
    return sorted(t.number for t in trials if t.state in (TrialState.COMPLETE, TrialState.PRUNED))


def trial_dirs(cwds: list[Path], study: str) -> list[int]:
    """The trial run directories the workers wrote, over all their folders (machines)."""
    folders = [cwd / "runs" / study / "trials" for cwd in set(cwds)]
    return sorted(int(p.name) for f in folders if f.is_dir() for p in f.iterdir())


def failures(results: list[tuple[int, str]], round_: int) -> list[str]:
    return [f"round {round_} worker {i}: exit {code}: {err.strip()[-300:]}" for i, (code, err) in
            enumerate(results) if code != 0]  # fmt: skip


def test_workers_started_together_on_a_new_sqlite_file(workdir):
    """One machine: WORKERS processes in one folder, the embedded storage runs/<study>/study.db not there yet."""
    for r in range(ROUNDS):
        (workdir / f"round{r}").mkdir()
    rounds = [(workdir / f"round{r}", ["sweep", str(write_sweep(workdir, f"race{r}")), "--device", "cpu"])
              for r in range(ROUNDS)]  # fmt: skip
    results = start_together([rounds] * WORKERS, workdir)
    bad, shortfalls = [], []
    for r, res in enumerate(results):
        bad += failures(res, r)
        cwd = workdir / f"round{r}"
        done = finished_numbers(f"sqlite:///{cwd / 'runs' / f'race{r}' / 'study.db'}", f"race{r}")
        if len(done) != TRIALS or trial_dirs([cwd], f"race{r}") != done:
            shortfalls.append(f"round {r}: trials {done}, run directories {trial_dirs([cwd], f'race{r}')}")
    assert not bad and not shortfalls, f"{len(bad)} of {ROUNDS * WORKERS} workers failed\n" + "\n".join(
        bad + shortfalls
    )


def _admin(postgres_url: str) -> sqlalchemy.Engine:
    return sqlalchemy.create_engine(postgres_url, isolation_level="AUTOCOMMIT", poolclass=sqlalchemy.pool.NullPool)


def _create_database(engine: sqlalchemy.Engine, name: str) -> None:
    with engine.connect() as c:
        can = c.execute(sqlalchemy.text("SELECT rolcreatedb FROM pg_roles WHERE rolname = current_user")).scalar()
        if not can:
            pytest.fail("the test user cannot create databases: grant it CREATEDB (.ci/postgres.sh does)")
        c.execute(sqlalchemy.text(f'CREATE DATABASE "{name}"'))


def _drop_database(engine: sqlalchemy.Engine, name: str) -> None:
    with engine.connect() as c:
        c.execute(sqlalchemy.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


def test_workers_started_together_on_a_new_postgresql_database(workdir, postgres_url):
    """WORKERS machines (processes each in its own folder) start on a database with no table yet, each round."""
    admin = _admin(postgres_url)
    dbs = [f"funcae_race_{uuid.uuid4().hex[:10]}" for _ in range(ROUNDS)]
    urls = [make_url(postgres_url).set(database=db).render_as_string(hide_password=False) for db in dbs]
    sweep = str(write_sweep(workdir, "race"))
    plans = []
    for w in range(WORKERS):
        plan = []
        for r in range(ROUNDS):
            cwd = workdir / f"round{r}" / f"machine{w}"
            cwd.mkdir(parents=True)
            plan.append((cwd, ["sweep", sweep, "--storage", urls[r], "--device", "cpu"]))
        plans.append(plan)
    try:
        results = start_together(plans, workdir, before_round=lambda r: _create_database(admin, dbs[r]))
        bad, shortfalls = [], []
        for r, res in enumerate(results):
            bad += failures(res, r)
            cwds = [plans[w][r][0] for w in range(WORKERS)]
            done = finished_numbers(urls[r], "race")
            if len(done) != TRIALS or trial_dirs(cwds, "race") != done:
                shortfalls.append(f"round {r}: trials {done}, run directories {trial_dirs(cwds, 'race')}")
    finally:
        for db in dbs:
            _drop_database(admin, db)
        admin.dispose()
    assert not bad and not shortfalls, f"{len(bad)} of {ROUNDS * WORKERS} workers failed\n" + "\n".join(
        bad + shortfalls
    )
