"""Learning-rate schedules as pure functions of the global step: nothing to save, exact resume."""

from __future__ import annotations

import math
from collections.abc import Callable

from funcae_cli.config import SchedulerConfig

# (cfg, peak_lr, step, epoch, total_steps) -> lr
Schedule = Callable[[SchedulerConfig, float, int, int, int], float]


def _constant(s: SchedulerConfig, lr: float, step: int, epoch: int, total: int) -> float:
    return lr


def _exponential(s: SchedulerConfig, lr: float, step: int, epoch: int, total: int) -> float:
    return lr * s.gamma**epoch  # per epoch, as torch's ExponentialLR in the notebooks


def _cosine(s: SchedulerConfig, lr: float, step: int, epoch: int, total: int) -> float:
    final = lr / s.final_div_factor
    t = min(step / max(total - 1, 1), 1.0)
    return final + (lr - final) * 0.5 * (1 + math.cos(math.pi * t))


def _onecycle(s: SchedulerConfig, lr: float, step: int, epoch: int, total: int) -> float:
    """Cosine warm-up from lr/div_factor to lr, then cosine decay to lr/(div_factor*final_div_factor)."""
    start = lr / s.div_factor
    final = start / s.final_div_factor
    warm = max(int(s.pct_start * total), 1)
    if step < warm:
        t = step / warm
        return start + (lr - start) * 0.5 * (1 - math.cos(math.pi * t))
    t = min((step - warm) / max(total - warm - 1, 1), 1.0)
    return final + (lr - final) * 0.5 * (1 + math.cos(math.pi * t))


SCHEDULES: dict[str, Schedule] = {
    "constant": _constant,
    "exponential": _exponential,
    "cosine": _cosine,
    "onecycle": _onecycle,
}
