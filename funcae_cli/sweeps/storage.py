"""Optuna storages for sweeps: the embedded SQLite file or any SQLAlchemy URL, with heartbeats; the turn lock.

Why SQLite is the embedded default and not Optuna's journal file: in the installed Optuna (5.0) only the RDB
storage implements heartbeats (`BaseHeartbeat`), and heartbeats are what fail and re-queue the trial of a
worker killed with SIGKILL. SQLite needs no server and opens in optuna-dashboard as `sqlite:///<path>`.

The turn lock: a worker holds it while it counts the study's trials, decides whether one more is needed and
asks Optuna for it, so that K workers never start more than the N trials the study needs. On PostgreSQL it is
a session advisory lock (every machine sharing the database takes turns; the server drops it when a worker
dies); elsewhere a flock on a file in the sweep folder (the workers of one machine take turns).
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import optuna
import sqlalchemy
from optuna.storages import RDBStorage
from optuna.trial import FrozenTrial, TrialState
from sqlalchemy.engine import make_url
from sqlalchemy.pool import NullPool

from funcae_cli.errors import InputError, OptionError
from funcae_cli.sweeps.spec import HeartbeatSpec

CONNECT_TIMEOUT_S = 10
SQLITE_BUSY_TIMEOUT_S = 60  # workers of one machine write the same file: wait for each other's writes


def sqlite_url(path: Path) -> str:
    return f"sqlite:///{path.resolve()}"


def sqlite_file(url: str) -> Path | None:
    """The file of a SQLite URL (None for other databases and in-memory SQLite)."""
    u = make_url(url)
    if u.get_backend_name() != "sqlite" or not u.database or u.database == ":memory:":
        return None
    return Path(u.database)


def normalize_url(url: str) -> str:
    """`postgresql://` -> `postgresql+psycopg://`: psycopg 3 is the PostgreSQL driver funcae installs."""
    try:
        u = make_url(url)
    except sqlalchemy.exc.ArgumentError:
        raise OptionError("storage", f"not a database URL: {url!r} (e.g. postgresql://user:pw@host/db)") from None
    if u.drivername == "postgresql":
        u = u.set(drivername="postgresql+psycopg")
    return u.render_as_string(hide_password=False)


def display_url(url: str) -> str:
    """The URL with its password hidden, for messages; a SQLite file below the working directory relative to
    it (as `optuna-dashboard sqlite:///runs/<study>/study.db` takes it)."""
    try:
        u = make_url(url)
    except sqlalchemy.exc.ArgumentError:
        return url
    if u.get_backend_name() == "sqlite" and u.database and os.path.isabs(u.database):
        rel = os.path.relpath(u.database)
        if not rel.startswith(".."):
            u = u.set(database=rel)
    return u.render_as_string(hide_password=True)


def backend(url: str) -> str:
    return make_url(url).get_backend_name()


ENGINE_KWARGS: dict[str, dict[str, Any]] = {
    "sqlite": {"connect_args": {"timeout": SQLITE_BUSY_TIMEOUT_S}},
    "postgresql": {"connect_args": {"connect_timeout": CONNECT_TIMEOUT_S}, "pool_pre_ping": True},
    "mysql": {"connect_args": {"connect_timeout": CONNECT_TIMEOUT_S}, "pool_pre_ping": True},
}


@contextmanager
def quiet_optuna() -> Iterator[None]:
    """Optuna's own log lines (trials finished, tracebacks of failed trials) and experimental-feature warnings
    off: the sweep reports each trial in one line itself."""
    old = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            warnings.simplefilter("ignore", FutureWarning)
            yield
    finally:
        optuna.logging.set_verbosity(old)


class Requeue:
    """The heartbeat-stale callback (and what an interrupted trial gets): a WAITING copy of the failed trial with
    its parameters and Optuna's retry bookkeeping (system attributes, as RetryFailedTrialCallback keeps them,
    grid_id included), up to `max_retry` times; not its user attributes (where it ran, why it stopped)."""

    def __init__(self, max_retry: int | None):
        self.max_retry = max_retry

    def __call__(self, study: optuna.Study, trial: FrozenTrial) -> None:
        history = [*trial.system_attrs.get("retry_history", []), trial.number]
        if self.max_retry is not None and len(history) > self.max_retry:
            return
        system_attrs = {**trial.system_attrs, "failed_trial": trial.system_attrs.get("failed_trial", trial.number)}
        system_attrs["retry_history"] = history
        study.add_trial(
            optuna.create_trial(
                state=TrialState.WAITING,
                params=trial.params,
                distributions=trial.distributions,
                system_attrs=system_attrs,
            )
        )


def open_storage(url: str, heartbeat: HeartbeatSpec | None) -> RDBStorage:
    """An RDB storage; with `heartbeat`, a trial whose worker stops beating for `grace` seconds is failed and
    re-queued (Requeue, up to `max_retry` times). OptionError (exit 2) when the URL is malformed or cannot
    connect."""
    beats: dict[str, Any] = {}
    if heartbeat is not None:
        beats = {
            "heartbeat_interval": heartbeat.interval,
            "grace_period": heartbeat.grace_seconds,
            "heartbeat_stale_trial_callback": Requeue(heartbeat.max_retry),
        }
    with storage_errors(url), quiet_optuna():
        return RDBStorage(url, engine_kwargs=ENGINE_KWARGS.get(backend(url), {}), **beats)


@contextmanager
def storage_errors(url: str) -> Iterator[None]:
    """SQLAlchemy's errors on opening a storage as OptionError (exit 2): malformed URL, no driver, cannot connect,
    cannot use."""
    shown = display_url(url)
    try:
        yield
    except sqlalchemy.exc.ArgumentError as e:
        raise OptionError("storage", f"not a database URL: {shown} ({e})") from None
    except (ImportError, sqlalchemy.exc.NoSuchModuleError) as e:
        cause = e.__cause__ or e
        raise OptionError("storage", f"no database driver for {shown}: {cause}") from None
    except sqlalchemy.exc.OperationalError as e:
        first = str(e.orig).strip().splitlines()[0] if e.orig is not None else str(e).splitlines()[0]
        raise OptionError("storage", f"cannot connect to {shown}: {first}") from None
    except sqlalchemy.exc.DBAPIError as e:
        raise OptionError("storage", f"cannot use {shown}: {str(e.orig or e).strip().splitlines()[0]}") from None


def study_names(storage: RDBStorage) -> list[str]:
    return [s.study_name for s in storage.get_all_studies()]


def require_study(storage: RDBStorage, name: str, url: str) -> None:
    names = study_names(storage)
    if name not in names:
        have = f"studies there: {', '.join(names)}" if names else "it holds no study"
        raise InputError(f"no study {name!r} in {display_url(url)} ({have})")


# --- the turn lock ------------------------------------------------------------------------------------------


class FileTurn:
    """flock on a file: the workers of one machine take turns."""

    def __init__(self, path: Path):
        self.path = path
        self.fd: int | None = None

    def acquire(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        fcntl.flock(fd, fcntl.LOCK_EX)
        self.fd = fd

    def release(self) -> None:
        if self.fd is not None:
            fcntl.flock(self.fd, fcntl.LOCK_UN)
            os.close(self.fd)
            self.fd = None


class PostgresTurn:
    """A session advisory lock: every worker on every machine sharing the database takes turns; a dead worker's
    connection, and with it its lock, is dropped by the server."""

    def __init__(self, url: str, study: str):
        self.engine = sqlalchemy.create_engine(url, poolclass=NullPool, **_without_pool(ENGINE_KWARGS["postgresql"]))
        self.key = int.from_bytes(hashlib.sha256(f"funcae-sweep:{study}".encode()).digest()[:8], "big", signed=True)
        self.conn: sqlalchemy.Connection | None = None

    def acquire(self) -> None:
        self.conn = self.engine.connect()
        self.conn.execute(sqlalchemy.text("SELECT pg_advisory_lock(:k)"), {"k": self.key})

    def release(self) -> None:
        if self.conn is not None:
            self.conn.close()  # NullPool: the session ends, and the lock with it
            self.conn = None


def _without_pool(kwargs: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in kwargs.items() if k != "pool_pre_ping"}


TURNS: dict[str, Callable[[str, str, Path], FileTurn | PostgresTurn]] = {
    "postgresql": lambda url, study, lock_file: PostgresTurn(url, study),
}


def turn_lock(url: str, study: str, lock_file: Path) -> FileTurn | PostgresTurn:
    """The storage's turn lock (`TURNS`), else a file lock in the sweep folder."""
    make = TURNS.get(backend(url))
    return make(url, study, lock_file) if make else FileTurn(lock_file)
