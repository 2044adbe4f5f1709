"""The `runs compare` job: two or more run directories side by side (the config keys that differ, their metrics)
and one figure overlaying their loss curves."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from funcae_cli.errors import InputError, OptionError
from funcae_cli.files import save_figure
from funcae_cli.jobs.catalog import RunRecord, config_differences, open_run, read_run
from funcae_cli.plotting.training import loss_overlay_figure

FORMATS = (".png", ".pdf", ".svg")


@dataclass
class Comparison:
    runs: list[RunRecord]
    differences: dict[str, list[Any]]  # dotted config key -> its value in each run (None: absent)
    figure: Path | None  # None when no run has a loss history
    without_curves: list[str]  # runs with no history.json rows to draw

    def to_dict(self) -> dict[str, Any]:
        return {
            "runs": [r.row() for r in self.runs],
            "differences": self.differences,
            "figure": None if self.figure is None else str(self.figure),
            "without_curves": self.without_curves,
        }


def _curve(rows: list[dict[str, Any]]) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
    keys = ("epoch", "train_loss", "val_loss")
    rows = [r for r in rows if all(isinstance(r.get(k), (int, float)) for k in keys)]
    if not rows:
        return None
    epochs, train, val = (np.array([r[k] for r in rows], dtype=float) for k in keys)
    return epochs, train, val


def compare_runs(paths: list[Path], out: Path | None = None) -> Comparison:
    """Read the runs (a path, or a name under runs/), diff their configs and write the loss overlay to `out`
    (default: the first run's plots/compare.png)."""
    if out is not None and out.suffix.lower() not in FORMATS:
        raise OptionError("out", f"{out}: unknown figure format {out.suffix!r}; allowed: {', '.join(FORMATS)}")
    if out is not None and out.is_dir():
        raise OptionError("out", f"{out} is a directory; give a file name, e.g. {out / 'compare.png'}")
    if len(paths) < 2:
        raise InputError(f"runs compare: give at least two run directories, got {len(paths)}")
    dirs = [open_run(p) for p in paths]
    labels = [str(p) for p in paths]
    if len(set(labels)) < len(labels):
        raise InputError(f"runs compare: a run is named twice ({', '.join(labels)})")
    records = [read_run(rd, label) for rd, label in zip(dirs, labels)]
    curves = {r.name: c for r in records if (c := _curve(r.history)) is not None}
    figure = None
    if curves:
        figure = save_figure(loss_overlay_figure(curves), out if out is not None else dirs[0].compare_png)
    return Comparison(
        runs=records,
        differences=config_differences([r.config for r in records]),
        figure=figure,
        without_curves=[r.name for r in records if r.name not in curves],
    )
