"""`invert` figure of `funcae invert`: target and fit (parameters and code in the legend) on the left,
the residual on the right (notebook 000). The record's rows are read by `results.parse_inversion` and
drawn by `results.inversions_figure`, as `funcae plot --kind invert` does from the files, so the
command's figure and the re-drawn one agree."""

from __future__ import annotations

from typing import Any

from matplotlib.figure import Figure

from funcae_cli.families import Family
from funcae_cli.plotting.results import inversions_figure, parse_inversion

MAX_ROWS = 4  # targets drawn from a batch


def invert_figure_from_record(record: dict[str, Any], family: Family) -> Figure:
    """Draw the first MAX_ROWS targets of an `invert/<slug>.json` record as `funcae invert` writes it."""
    rows = [
        inv
        for r in record.get("targets", [])
        if isinstance(r, dict) and (inv := parse_inversion(r, str(r.get("name", "")), record.get("x"))) is not None
    ]
    if not rows:
        raise ValueError("the record holds no target/fit curves")
    k = min(len(rows), MAX_ROWS)
    note = f"first {k} of {len(rows)} targets" if len(rows) > k else ""
    return inversions_figure(rows[:k], family, title=f"{record.get('run', '')}: {record.get('method', '')}", note=note)
