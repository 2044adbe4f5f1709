"""One row of `make bench`: both sides' figures, their ratio, the target and how to rerun it."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class Row:
    name: str
    funcae: str
    baseline: str
    ratio: float | None
    target: str
    command: str
    notes: list[str] = field(default_factory=list)
