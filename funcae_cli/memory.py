"""Estimate before allocating: a request that cannot fit is a one-line error, not the allocator's traceback.

`check_fits(nbytes, what, change)` compares an estimate with the memory this process can still take on a
device (the host's available memory for the CPU, free memory for CUDA) and raises `InputError` naming the
estimate, the memory there is and what to change. Callers estimate the arrays they are about to make
(`dataset.curve_bytes`: float32 curves and float64 parameters), with `HEADROOM` left for everything else.
"""

from __future__ import annotations

import os
from typing import Any

from funcae_cli.errors import InputError, OptionError

HEADROOM = 0.8  # an allocation may use at most this fraction of the memory available to it


def fmt_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB", "PiB"):
        if abs(n) < 1024 or unit == "PiB":
            return f"{n:.3g} {unit}" if unit != "B" else f"{int(n)} B"
        n /= 1024
    raise AssertionError("unreachable")


def host_available() -> int:
    """Bytes this machine can still give a process: MemAvailable (Linux), else physical memory."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return 1 << 62  # unknown: do not refuse


def available(device: Any = None) -> tuple[int, str]:
    """(bytes available, where) on a torch device (None or CPU: the host)."""
    if device is not None and getattr(device, "type", "cpu") == "cuda":
        import torch  # only for a CUDA device, which torch made

        free, _ = torch.cuda.mem_get_info(device)
        return int(free), f"free on {device}"
    return host_available(), "available on this machine"


def check_fits(nbytes: float, what: str, change: str, device: Any = None, option: str | None = None) -> None:
    """Raise InputError when `nbytes` exceed HEADROOM of what is available; `change` says what to lower (a
    config key), or `option` names the function argument to lower (an OptionError)."""
    have, where = available(device)
    if nbytes > HEADROOM * have:
        message = f"{what} need about {fmt_bytes(nbytes)} but {fmt_bytes(have)} is {where}; {change}"
        raise OptionError(option, message) if option else InputError(message)
