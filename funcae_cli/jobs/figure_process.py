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
import struct
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from funcae_cli.files import figure_bytes, fork_child, helpers_run_beside, json_default, save_figures, waited_ok

MAX_TARGETS = 5_000  # a larger record is drawn by the caller: its JSON would cost more than the ~0.45 s import saved

Draw = Callable[[dict[str, Any]], dict[str, Any]]  # record -> {kind: a Figure, or a function that builds it}


@dataclass(frozen=True)
class Figures:
    """What draws a command's figures, given by the command, which defers matplotlib's import to them: `load()` the
    function from a record (and the family) to {kind: a Figure or a function that builds it}; `warm_up()` a
    throw-away figure whose rendering readies matplotlib in a process that draws later
    (plotting.base.warm_up_figure)."""

    load: Callable[[], Callable[..., dict[str, Any]]]
    warm_up: Callable[[], Any]


def _read_all(fd: int, size: int | None = None) -> bytes:
    """Until the end of the pipe, or `size` bytes (fewer where it ends first)."""
    chunks, got = [], 0
    while size is None or got < size:
        chunk = os.read(fd, 1 << 20 if size is None else min(1 << 20, size - got))
        if not chunk:
            break
        chunks.append(chunk)
        got += len(chunk)
    return b"".join(chunks)


class FigureProcess:
    """A forked process that draws a record's figures into paths(kind) (module docstring)."""

    def __init__(self, pid: int, send: int, result: int):
        self.pid = pid
        self._send: int | None = send  # the record's pipe, None once closed
        self._result: int | None = result  # the kinds drawn, None once the process is reaped

    @classmethod
    def start(
        cls, load: Callable[[], Draw], warm_up: Callable[[], Any], paths: Callable[[str], Path]
    ) -> FigureProcess | None:
        """Fork the process: it calls load() and renders warm_up()'s figure at once (matplotlib's first figure costs
        ~0.5 s more than the next: spent while the parent computes), then draws the record it is sent into
        paths(kind). None where forking is not safe (module docstring)."""
        if not helpers_run_beside():
            return None
        send_r, send_w = os.pipe()
        result_r, result_w = os.pipe()

        def child() -> None:
            os.close(send_w)
            os.close(result_r)
            os.nice(10)  # the parent's work first: it is what the figures wait for
            draw = load()
            figure_bytes(warm_up())
            # the record's length first, so that its end is not awaited (another process forked from the parent
            # may hold the pipe's write end); none: the parent ended without sending one
            head = _read_all(send_r, 8)
            if len(head) == 8:
                drawn = draw(json.loads(_read_all(send_r, struct.unpack("<Q", head)[0])))
                save_figures({paths(kind): fig for kind, fig in drawn.items()})
                os.write(result_w, json.dumps(list(drawn)).encode())

        pid = fork_child(child)
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
            data = json.dumps(record, default=json_default).encode()
            view = memoryview(struct.pack("<Q", len(data)) + data)
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
        ok = self._reap()
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

    def _reap(self) -> bool:
        os.close(self._result)
        self._result = None
        return waited_ok(self.pid)
