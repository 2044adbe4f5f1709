"""A command's figures drawn in a process forked before the numbers they show exist.

The process imports the drawing code (matplotlib: ~0.45 s of `funcae invert`'s wall on its own) while the command
computes, then waits for the record: the parent sends it as JSON through a pipe (the figures are drawn from the
record, as `funcae plot` draws them from the written file, so the round trip changes nothing they show), and the
process draws and renders every figure (side by side: files.save_figures) while the parent writes its tables.

Where a process cannot be forked safely (not Linux, one core, another Python thread running), `start` returns
None and the caller draws in its own process as before; a process that fails leaves its figures to the caller too,
who then draws them again and so raises the error where it would have been raised without a process. A record of
more than MAX_TARGETS targets is not sent (JSON of a catalogue costs more than the import saves): `close` ends the
process unused.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import threading
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from funcae_cli.cores import cpu_count
from funcae_cli.files import json_default, save_figures

MAX_TARGETS = 5_000  # a larger record is drawn by the caller: its JSON would cost more than the ~0.45 s import saved

Draw = Callable[[dict[str, Any]], dict[str, Any]]  # record -> {kind: a Figure, or a function that builds it}


@dataclass(frozen=True)
class Figures:
    """What draws a command's figures, given by the command, which defers matplotlib's import to them: `load()` the
    function from a record (and the family) to {kind: a Figure or a function that builds it}; `warm_up()` readies
    matplotlib in a process that draws later (plotting.base.warm_up)."""

    load: Callable[[], Callable[..., dict[str, Any]]]
    warm_up: Callable[[], None]


def _read_all(fd: int) -> bytes:
    chunks = []
    while chunk := os.read(fd, 1 << 20):
        chunks.append(chunk)
    return b"".join(chunks)


class FigureProcess:
    """A forked process that draws a record's figures into paths(kind) (module docstring)."""

    def __init__(self, pid: int, send: int, result: int):
        self.pid = pid
        self._send: int | None = send  # the record's pipe, None once closed
        self._result: int | None = result  # the kinds drawn, None once the process is reaped

    @classmethod
    def start(
        cls, load: Callable[[], Draw], warm_up: Callable[[], None], paths: Callable[[str], Path]
    ) -> FigureProcess | None:
        """Fork the process: it calls load() and warm_up() at once (matplotlib's first figure costs ~0.5 s more than
        the next: spent while the parent computes) and then draws the record it is sent into paths(kind). None where
        forking is not safe (module docstring)."""
        if not sys.platform.startswith("linux") or cpu_count() < 2 or threading.active_count() > 1:
            return None
        send_r, send_w = os.pipe()
        result_r, result_w = os.pipe()
        with warnings.catch_warnings():  # 3.12+: torch's idle OpenMP workers count as threads; the child uses none
            warnings.simplefilter("ignore", DeprecationWarning)
            pid = os.fork()
        if pid == 0:  # the child: leave without the parent's exit handlers or buffered output, whatever happens
            code = 1
            try:
                os.close(send_w)
                os.close(result_r)
                os.nice(10)  # the parent's work first: it is what the figures wait for
                draw = load()
                warm_up()
                data = _read_all(send_r)
                if data:  # nothing: the parent drew nothing here (it failed, or draws itself)
                    drawn = draw(json.loads(data))
                    save_figures({paths(kind): fig for kind, fig in drawn.items()})
                    os.write(result_w, json.dumps(list(drawn)).encode())
                code = 0
            finally:
                os._exit(code)
        os.close(send_r)
        os.close(result_w)
        return cls(pid, send_w, result_r)

    def send(self, record: dict[str, Any]) -> bool:
        """Send the record (JSON-safe) to be drawn; False where it is too large to send (the process is ended, the
        caller draws)."""
        if len(record.get("targets", ())) > MAX_TARGETS:
            self.close()
            return False
        try:
            view = memoryview(json.dumps(record, default=json_default).encode())
            while view:
                view = view[os.write(self._send, view) :]
        except BrokenPipeError:  # the process ended early (it failed): result() says so
            pass
        finally:
            self._close_send()
        return True

    def result(self) -> list[str] | None:
        """Wait for the process: the kinds of figure it wrote, None where it failed (the caller draws them then)."""
        kinds = _read_all(self._result)
        ok = self._reap() == 0
        return json.loads(kinds) if ok and kinds else None

    def close(self) -> None:
        """End the process if it is still there (idempotent): unsent, it is stopped at once (it writes nothing
        before it has a record); sent, it is waited for."""
        if self._send is not None:
            self._close_send()
            os.kill(self.pid, signal.SIGKILL)
        if self._result is not None:
            self._reap()

    def _close_send(self) -> None:
        if self._send is not None:
            os.close(self._send)
            self._send = None

    def _reap(self) -> int:
        os.close(self._result)
        self._result = None
        return os.waitstatus_to_exitcode(os.waitpid(self.pid, 0)[1])
