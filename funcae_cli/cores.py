"""The CPU cores this process may run on (its affinity on Linux, else the machine's count): no torch, no numpy,
so that light modules (files.py) can ask."""

from __future__ import annotations

import os


def cpu_count() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1
