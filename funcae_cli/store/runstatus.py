"""A run's status.json: how its training ended, written by the train job, read by `funcae runs` (catalog.py).

`running` is written when the epochs start (with the process's host and pid), then `complete` once metrics.json
is written, `interrupted` on SIGINT/SIGTERM, `diverged` on a non-finite loss. A run killed outright (SIGKILL, a
crash, a power cut) keeps `running` with a pid that no longer lives: the reader calls it interrupted.
"""

from __future__ import annotations

import json
import os
import socket
from datetime import datetime
from typing import Any

from funcae_cli.files import atomic_write_json
from funcae_cli.store.rundir import RunDir

STATES = ("running", "complete", "interrupted", "diverged")


def now() -> str:
    """Local time with its UTC offset, to the second: sorts as text within one time zone."""
    return datetime.now().astimezone().isoformat(timespec="seconds")


def read_status(rd: RunDir) -> dict[str, Any] | None:
    """The record, or None when there is none; ValueError when status.json is not a JSON object."""
    if not rd.status.is_file():
        return None
    record = json.loads(rd.status.read_text())
    if not isinstance(record, dict):
        raise ValueError("not a JSON object")
    return record


def mark_status(rd: RunDir, state: str, **extra: Any) -> None:
    """Write status.json; `created` (when the run first started training) survives resumes."""
    assert state in STATES, state
    try:
        created = (read_status(rd) or {}).get("created")
    except (OSError, ValueError):
        created = None
    record = {
        "status": state,
        "created": created or now(),
        "updated": now(),
        "host": socket.gethostname(),
        "pid": os.getpid(),
        **extra,
    }
    atomic_write_json(rd.status, record)


def process_alive(host: str | None, pid: Any) -> bool | None:
    """Whether the process that wrote `running` still lives: None when it ran on another host (unknowable)."""
    if host != socket.gethostname():
        return None
    if not isinstance(pid, int) or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, owned by another user
        return True
    return True
