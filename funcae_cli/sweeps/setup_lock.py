"""The setup lock: workers that start at the same instant on an empty database take turns to set it up.

Setting up is Optuna's table creation (RDBStorage: `create_all` checks, then creates, so two at once both
create: PostgreSQL answers `duplicate key value violates unique constraint "pg_type_typname_nsp_index"` or
`type "studydirection" already exists`, SQLite `table studies already exists` or `UNIQUE constraint failed:
alembic_version.version_num`) and the study's creation (`create_study(load_if_exists=True)` has the same
check-then-create race, and funcae then writes the study's fingerprint). Measured before this lock, 4 workers
released together (tests/test_sweep_start.py): 6 of 8 failed at start on fresh PostgreSQL databases (2 rounds),
11 of 20 on a new SQLite file (5 rounds); after it, none.

On PostgreSQL the lock is a session advisory lock on one fixed key, in its own connection (the server drops
it when a worker dies), so every machine sharing the server takes turns; on SQLite a flock on a hidden file
next to the database (`.study.db.lock`), so the processes of the one machine that can share the file take
turns. Other databases (MySQL) have no setup lock.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path

import sqlalchemy
from sqlalchemy.pool import NullPool

from funcae_cli.sweeps.storage import ENGINE_KWARGS, FileTurn, backend, sqlite_file, storage_errors

# One key for the whole server: table creation is per database, but a key per database would buy nothing.
# Distinct from the turn locks' keys, which hash "funcae-sweep:<study>" (a study name holds no ':').
SETUP_KEY = int.from_bytes(hashlib.sha256(b"funcae-sweep-setup:").digest()[:8], "big", signed=True)


@contextmanager
def _postgres(url: str) -> Iterator[None]:
    kwargs = {k: v for k, v in ENGINE_KWARGS["postgresql"].items() if k != "pool_pre_ping"}
    engine = sqlalchemy.create_engine(url, poolclass=NullPool, **kwargs)
    try:
        with storage_errors(url):  # a bad URL or password: the same exit-2 message as opening the storage
            conn = engine.connect()
        with conn:  # closing the connection ends the session, and the lock with it
            conn.execute(sqlalchemy.text("SELECT pg_advisory_lock(:k)"), {"k": SETUP_KEY})
            conn.commit()  # the lock is the session's, not the transaction's: end the transaction
            yield
    finally:
        engine.dispose()


@contextmanager
def _sqlite(url: str) -> Iterator[None]:
    db = sqlite_file(url)
    if db is None or not db.parent.is_dir():  # in memory (one process), or a folder SQLite cannot open either
        yield
        return
    lock = FileTurn(lock_file(db))
    lock.acquire()
    try:
        yield
    finally:
        lock.release()


def lock_file(db: Path) -> Path:
    """The file flock'ed while a worker sets up the SQLite database `db`."""
    return db.with_name(f".{db.name}.lock")


@contextmanager
def _none(url: str) -> Iterator[None]:
    yield


SETUP_LOCKS: dict[str, Callable[[str], AbstractContextManager[None]]] = {"postgresql": _postgres, "sqlite": _sqlite}


def setup_lock(url: str) -> AbstractContextManager[None]:
    """Held while a worker opens the storage (creating Optuna's tables) and creates or loads the study."""
    return SETUP_LOCKS.get(backend(url), _none)(url)
