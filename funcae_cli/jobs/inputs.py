"""What a user asked to encode or invert, before anything is read: built by the commands, read by
jobs/targets.py.

Kept free of torch and numpy so that the commands can build and check it before the heavy modules load.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path


@dataclass
class TargetInputs:
    """At most one kind of target: parameter values, curve files, a parameter table, or a file of curves."""

    params: dict[str, float] = field(default_factory=dict)  # one parameter target, e.g. {"mu": 2.4, "sigma": 1.7}
    curve_files: list[Path] = field(default_factory=list)  # one observed curve per file: x, y[, yerr]
    params_table: Path | None = None  # a CSV of parameter rows, a header naming each family parameter
    curves: Path | None = None  # many curves: .npz (one grid), long-format .csv (id,x,y[,yerr]) or a folder
    clip: bool = False  # drop observed points outside the run's grid (with a warning) instead of failing

    def kinds(self) -> list[str]:
        """The kinds given, by field name."""
        return [k for k in ("params", "curve_files", "params_table", "curves") if getattr(self, k)]

    def slug(self) -> str:
        """A default file name for the results."""
        if self.params:
            return "_".join(f"{k}={v:.6g}" for k, v in self.params.items())
        if len(self.curve_files) == 1:
            return self.curve_files[0].stem
        if self.curve_files:
            return f"{self.curve_files[0].stem}_and_{len(self.curve_files) - 1}_more"
        path = self.params_table or self.curves
        return path.stem if path is not None else ""
