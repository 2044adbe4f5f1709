"""A user's numbers as text (an option's value, a file's cell): parsed without numpy, so that the commands can
check them before the heavy modules load."""

from __future__ import annotations

import math

from funcae_cli.errors import InputError


def is_number(s: str) -> bool:
    """True when a CSV field parses as a float (header detection)."""
    try:
        float(s)
    except ValueError:
        return False
    return True


def finite_number(text: str, where: str) -> float:
    """A user's number (an option's value, a file's cell): a finite float, or InputError naming `where`."""
    try:
        v = float(text)
    except ValueError:
        raise InputError(f"{where}: expected a number, got {text!r}") from None
    if not math.isfinite(v):
        raise InputError(f"{where}: must be finite, got {text!r}")
    return v
