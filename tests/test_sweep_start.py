"""Sweep workers that start at the same instant on an empty database: real `funcae sweep` processes released
together by a barrier, against a fresh PostgreSQL database each round (the CI's server; without it that part
skips, saying why) and against the embedded SQLite file that does not exist yet. Every worker must exit 0 and
the study must end with its N trials. Before the setup lock (sweeps/setup_lock.py), 6 of 8 PostgreSQL workers
failed at start (`duplicate key value violates unique constraint "pg_type_typname_nsp_index"`), and 11 of 20
SQLite ones (`table studies already exists`, `UNIQUE constraint failed: alembic_version.version_num`)."""

from __future__ import annotations

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
ROUNDS = 5
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

# Each process imports everything the sweep needs, says it is ready, waits for the start line, then runs the
# real command line (funcae_cli.cli.entry): the processes reach the storage within a millisecond or so.
BARRIER = """
import sys, time
from pathlib import Path
import funcae_cli.sweeps.workers  # torch, optuna, sqlalchemy, psycopg: loaded before the start
from funcae_cli.cli import entry
ready, go = Path(sys.argv[1]), Path(sys.argv[2])
ready.touch()
while not go.exists():
    time.sleep(0.0005)
sys.argv = ["funcae", *sys.argv[3:]]
entry()
"""


def start_together(cwds: list[Path], args: list[str], tmp: Path) -> list[tuple[int, str]]:
    """Run `funcae *args` in each folder of `cwds`, all released at once; (exit code, stderr) of each."""
    go = tmp / f"go-{uuid.uuid4().hex[:8]}"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    procs, readies, logs = [], [], []
    for i, cwd in enumerate(cwds):
        ready, log = tmp / f"{go.name}.ready{i}", tmp / f"{go.name}.log{i}"
        with log.open("w") as err:
            procs.append(
                subprocess.Popen(
                    [sys.executable, "-c", BARRIER, str(ready), str(go), *args],
                    cwd=cwd,
                    env=env,
                    stdout=subprocess.DEVNULL,
                    stderr=err,
                )
            )
        readies.append(ready)
        logs.append(log)
    try:
        end = time.monotonic() + 120
        while not all(r.exists() for r in readies):
            assert time.monotonic() < end and all(p.poll() is None for p in procs), "a worker never got ready"
            time.sleep(0.01)
        go.touch()
        codes = [p.wait(timeout=300) for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    return [(code, log.read_text()) for code, log in zip(codes, logs)]


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
    bad, shortfalls = [], []
    for r in range(ROUNDS):
        cwd = workdir / f"round{r}"
        cwd.mkdir()
        path = write_sweep(workdir, f"race{r}")
        results = start_together([cwd] * WORKERS, ["sweep", str(path), "--device", "cpu"], workdir)
        bad += failures(results, r)
        url = f"sqlite:///{cwd / 'runs' / f'race{r}' / 'study.db'}"
        done = finished_numbers(url, f"race{r}")
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
    """WORKERS machines (processes each in its own folder) start on a database with no table yet."""
    admin = _admin(postgres_url)
    bad, shortfalls = [], []
    for r in range(ROUNDS):
        db = f"funcae_race_{uuid.uuid4().hex[:10]}"
        url = make_url(postgres_url).set(database=db).render_as_string(hide_password=False)
        _create_database(admin, db)
        try:
            cwds = []
            for w in range(WORKERS):
                cwd = workdir / f"round{r}" / f"machine{w}"
                cwd.mkdir(parents=True)
                cwds.append(cwd)
            args = ["sweep", str(write_sweep(workdir, "race")), "--storage", url, "--device", "cpu"]
            results = start_together(cwds, args, workdir)
            bad += failures(results, r)
            done = finished_numbers(url, "race")
            if len(done) != TRIALS or trial_dirs(cwds, "race") != done:
                shortfalls.append(f"round {r}: trials {done}, run directories {trial_dirs(cwds, 'race')}")
        finally:
            _drop_database(admin, db)
    admin.dispose()
    assert not bad and not shortfalls, f"{len(bad)} of {ROUNDS * WORKERS} workers failed\n" + "\n".join(
        bad + shortfalls
    )
