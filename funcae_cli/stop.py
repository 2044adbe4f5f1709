"""StopFlag: set by a signal handler, polled by long-running library loops, which stop cleanly at a boundary."""

from __future__ import annotations


class StopFlag:
    """Set by a signal handler; the training loop saves and stops at the next step boundary."""

    def __init__(self) -> None:
        self.signum: int | None = None

    def request(self, signum: int) -> None:
        self.signum = signum
