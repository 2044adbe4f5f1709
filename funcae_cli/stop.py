"""StopFlag: set by a signal handler, polled by long-running library loops, which stop cleanly at a boundary."""

from __future__ import annotations

import signal
from collections.abc import Iterator
from contextlib import contextmanager


class StopFlag:
    """Set by a signal handler; the training loop saves and stops at the next step boundary."""

    def __init__(self) -> None:
        self.signum: int | None = None

    def request(self, signum: int) -> None:
        self.signum = signum


@contextmanager
def graceful_stop() -> Iterator[StopFlag]:
    """SIGINT/SIGTERM set a flag; the trainer saves at the next step boundary. A second SIGINT aborts."""
    flag = StopFlag()

    def handler(signum, frame):
        if flag.signum is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt
        flag.request(signum)

    old = {s: signal.signal(s, handler) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield flag
    finally:
        for s, h in old.items():
            signal.signal(s, h)
