"""The search space: one distribution per dotted config key (`train.lr: {log_uniform: [1e-4, 1e-2]}`).

`DISTRIBUTIONS` maps each kind a sweep file may name to its parser. A parsed `Dist` suggests its value through
an Optuna trial (duck-typed: this module does not import optuna), lists the values that validate the space
before any trial starts (`corners`: both ends of a range, every choice), and its grid points for the grid
sampler. Choices that are not scalars (`model.hidden: {choice: [[64, 64], [128, 128, 128]]}`) are stored in
the study as their YAML flow text ("[64, 64]"), which Optuna's categorical distributions, the dashboard and
the leaderboard can show; `decode` turns them back into values.
"""

from __future__ import annotations

import difflib
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import yaml

SCALARS = (str, int, float, bool, type(None))


def encode_choice(value: Any) -> Any:
    """A choice as Optuna stores it: scalars as they are, lists and mappings as YAML flow text."""
    if isinstance(value, SCALARS):
        return value
    return yaml.safe_dump(value, default_flow_style=True, width=1_000_000).strip()


@dataclass(frozen=True)
class Dist:
    """One key's distribution. `low`/`high` for ranges, `choices` (encoded) for `choice`."""

    kind: str  # a key of DISTRIBUTIONS
    low: float = 0.0
    high: float = 0.0
    step: float | None = None
    choices: tuple[Any, ...] = ()
    raw_choices: tuple[Any, ...] = ()  # the choices as written (lists stay lists)

    @property
    def is_int(self) -> bool:
        return self.kind in ("int", "log_int")

    @property
    def is_log(self) -> bool:
        return self.kind in ("log_uniform", "log_int")

    def suggest(self, trial: Any, name: str) -> Any:
        """The trial's value (encoded for non-scalar choices)."""
        if self.kind == "choice":
            return trial.suggest_categorical(name, list(self.choices))
        if self.is_int:
            return trial.suggest_int(name, int(self.low), int(self.high), step=int(self.step or 1), log=self.is_log)
        return trial.suggest_float(name, self.low, self.high, step=self.step, log=self.is_log)

    def decode(self, stored: Any) -> Any:
        """The config value of a stored value."""
        if self.kind == "choice":
            return self.raw_choices[self.choices.index(stored)] if stored in self.choices else stored
        return int(stored) if self.is_int else float(stored)

    def corners(self) -> list[Any]:
        """Config values that must all be valid for the space to be (both ends; every choice)."""
        if self.kind == "choice":
            return list(self.raw_choices)
        return [int(self.low), int(self.high)] if self.is_int else [self.low, self.high]

    def grid(self) -> list[Any] | None:
        """Every value, for the grid sampler; None for a continuous range without a step."""
        if self.kind == "choice":
            return list(self.choices)
        if self.is_int:
            return list(range(int(self.low), int(self.high) + 1, int(self.step or 1)))
        if self.step is not None and not self.is_log:
            n = int(math.floor((self.high - self.low) / self.step + 1e-9))
            return [self.low + i * self.step for i in range(n + 1)]
        return None


def _bounds(kind: str, args: Any, step: Any, path: str, problems: list[str]) -> Dist | None:
    integer = kind in ("int", "log_int")
    want = "two integers [low, high]" if integer else "two numbers [low, high]"
    if not isinstance(args, (list, tuple)) or len(args) != 2:
        problems.append(f"{path}.{kind}: expected {want}, got {args!r}")
        return None
    values = []
    for v in args:
        if isinstance(v, str):  # PyYAML reads 1e-3 (no dot) as a string
            try:
                v = float(v)
            except ValueError:
                pass
        ok = isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
        if ok and integer and not float(v).is_integer():
            ok = False
        if not ok:
            problems.append(f"{path}.{kind}: expected {want}, got {args!r}")
            return None
        values.append(float(v))
    low, high = values
    if not low < high:
        problems.append(f"{path}.{kind}: low must be < high, got [{args[0]}, {args[1]}]")
        return None
    if kind.startswith("log") and low <= 0:
        problems.append(f"{path}.{kind}: a log scale needs low > 0, got {args[0]}")
        return None
    if step is not None:
        ok = isinstance(step, (int, float)) and not isinstance(step, bool) and step > 0
        if not ok or (integer and not float(step).is_integer()) or kind.startswith("log"):
            allowed = "a positive integer" if integer else "a positive number"
            why = "log scales take no step" if kind.startswith("log") else f"expected {allowed}"
            problems.append(f"{path}.step: {why}, got {step!r}")
            return None
    return Dist(kind, low, high, None if step is None else float(step))


def _choice(kind: str, args: Any, step: Any, path: str, problems: list[str]) -> Dist | None:
    if not isinstance(args, (list, tuple)) or not args:
        problems.append(f"{path}.choice: expected a non-empty list of values, got {args!r}")
        return None
    if step is not None:
        problems.append(f"{path}.step: only for uniform and int ranges")
        return None
    encoded = tuple(encode_choice(v) for v in args)
    if len(set(map(repr, encoded))) != len(encoded):
        problems.append(f"{path}.choice: values must differ, got {args!r}")
        return None
    return Dist("choice", choices=encoded, raw_choices=tuple(args))


DISTRIBUTIONS: dict[str, Callable[[str, Any, Any, str, list[str]], Dist | None]] = {
    "uniform": _bounds,  # [low, high], optional step
    "log_uniform": _bounds,  # [low, high], low > 0
    "int": _bounds,  # [low, high] inclusive, optional integer step
    "log_int": _bounds,  # [low, high] inclusive, low > 0
    "choice": _choice,  # [value, ...]: any YAML values (lists too)
}


def parse_dist(raw: Any, path: str, problems: list[str]) -> Dist | None:
    """`{kind: args}` (plus an optional `step`) -> Dist, or None with the problem recorded."""
    allowed = ", ".join(DISTRIBUTIONS)
    if not isinstance(raw, dict):
        problems.append(f"{path}: expected a mapping {{kind: args}} with kind one of {allowed}, got {raw!r}")
        return None
    kinds = [k for k in raw if k != "step"]
    unknown = [k for k in kinds if k not in DISTRIBUTIONS]
    if unknown:
        close = difflib.get_close_matches(str(unknown[0]), list(DISTRIBUTIONS), n=1, cutoff=0.6)
        hint = f"; did you mean {close[0]}?" if close else ""
        problems.append(f"{path}.{unknown[0]}: unknown distribution{hint} (allowed: {allowed})")
        return None
    if len(kinds) != 1:
        problems.append(f"{path}: give exactly one distribution (one of {allowed}), got {sorted(map(str, kinds))}")
        return None
    kind = kinds[0]
    return DISTRIBUTIONS[kind](kind, raw[kind], raw.get("step"), path, problems)
