"""`invert` figure of `funcae invert`: target and fit (parameters and code in the legend) on the left,
the residual on the right (notebook 000). Drawn by `results.inversions_figure`, the same function
`funcae plot --kind invert` uses on the files, so the command's figure and the re-drawn one agree."""

from __future__ import annotations

from typing import Any

import numpy as np
from matplotlib.figure import Figure

from funcae_cli.families import Family
from funcae_cli.plotting.results import Inversion, inversions_figure

MAX_ROWS = 4  # targets drawn from a batch


def invert_figure(
    x: np.ndarray,
    targets: np.ndarray,
    fits: np.ndarray,
    family: Family,
    *,
    z: np.ndarray | None = None,
    true_params: list[dict[str, float]] | None = None,
    est_params: list[dict[str, float]] | None = None,
    objectives: np.ndarray | None = None,
    rel_l2: np.ndarray | None = None,
    names: list[str] | None = None,
    yerr: list[np.ndarray | None] | None = None,
    title: str = "",
    note: str = "",
) -> Figure:
    """x (m,); targets, fits (k, m) in family units, yerr one (m,) array or None per target; the
    first MAX_ROWS targets, one row each."""
    targets, fits = np.atleast_2d(targets), np.atleast_2d(fits)
    k = min(len(targets), MAX_ROWS)
    rows = [
        Inversion(
            x=np.asarray(x, dtype=float),
            target=np.asarray(targets[i], dtype=float),
            fit=np.asarray(fits[i], dtype=float),
            z=None if z is None else np.asarray(z[i], dtype=float),
            true_params=dict(true_params[i]) if true_params else {},
            est_params=dict(est_params[i]) if est_params else {},
            objective=None if objectives is None else float(objectives[i]),
            rel_l2=None if rel_l2 is None else float(rel_l2[i]),
            source=names[i] if names else "",
            yerr=None if not yerr or yerr[i] is None else np.asarray(yerr[i], dtype=float),
        )
        for i in range(k)
    ]
    if len(targets) > k and not note:
        note = f"first {k} of {len(targets)} targets"
    return inversions_figure(rows, family, title=title, note=note)


def invert_figure_from_record(record: dict[str, Any], family: Family) -> Figure:
    """Re-draw from an `invert/<slug>.json` record as `funcae invert` writes it."""
    rows = [r for r in record["targets"] if "target" in r and "fit" in r]
    if not rows:
        raise ValueError("the record holds no target/fit curves")
    return invert_figure(
        np.asarray(record["x"], dtype=float),
        np.array([r["target"] for r in rows]),
        np.array([r["fit"] for r in rows]),
        family,
        z=np.array([r["z"] for r in rows]),
        true_params=[r.get("true_params", {}) for r in rows],
        est_params=[r.get("estimated_params", {}) for r in rows],
        objectives=np.array([r["objective"] for r in rows]),
        rel_l2=np.array([r["rel_l2"] for r in rows]),
        names=[r.get("name", "") for r in rows],
        yerr=[r.get("yerr") for r in rows],
        title=f"{record.get('run', '')}: {record.get('method', '')}",
    )
