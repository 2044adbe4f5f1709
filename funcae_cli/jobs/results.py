"""Reading what `funcae invert` and `funcae sample` wrote, for their figures (and `funcae plot`).

The readers are tolerant: a result file without the arrays a panel needs is left out (and said so), never a
crash; the jobs that write these files (runs/invert.py, runs/sample.py) own their exact layout.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.figure import Figure

from funcae_cli.config.families import Family
from funcae_cli.plotting.base import warm_up_figure  # noqa: F401  (re-exported: `funcae invert`'s figure process)
from funcae_cli.plotting.inversion import Inversion, inversion_page_figure, inversion_summary_figure, inversions_figure

MAX_ROWS = 4  # targets drawn from a batch in the figure `funcae invert` writes

# Accepted spellings of each field, first match wins.
_TARGET_KEYS = ("target", "target_curve", "y")
_FIT_KEYS = ("fit", "fit_curve", "decoded", "recon")
_X_KEYS = ("x", "grid")
_TRUE_PARAM_KEYS = ("true_params", "target_params", "parameters")
_EST_PARAM_KEYS = ("params", "estimated_params", "params_estimate", "estimate", "params_est", "physical")
_OBJECTIVE_KEYS = ("objective", "residual_norm", "loss")
_LIST_KEYS = ("results", "targets", "inversions")


def _first(d: dict[str, Any], keys: tuple[str, ...]) -> Any:
    for k in keys:
        if k in d and d[k] is not None:
            return d[k]
    return None


def _array(v: Any) -> np.ndarray | None:
    try:
        a = np.asarray(v, dtype=float)
    except (TypeError, ValueError):
        return None
    return a if a.ndim >= 1 and a.size else None


def _params(v: Any) -> dict[str, float]:
    if not isinstance(v, dict):
        return {}
    out = {}
    for k, val in v.items():
        if isinstance(val, (int, float)) and not isinstance(val, bool):
            out[str(k)] = float(val)
    return out


def _scalar(v: Any) -> float | None:
    if isinstance(v, dict):  # e.g. {"refined": 0.01, "encoder": 0.2}
        v = _first(v, ("refined", "value", "final"))
    return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else None


def parse_inversion(d: dict[str, Any], source: str, x_default: Any = None, grid: Any = None) -> Inversion | None:
    """One inversion from a record's row, or None without usable target/fit/x curves (malformed yerr is dropped;
    curves on the grid of another length than `grid` are left out)."""
    target, fit = _array(_first(d, _TARGET_KEYS)), _array(_first(d, _FIT_KEYS))
    x = _array(_first(d, _X_KEYS))
    if x is None:
        x = _array(x_default)
    if target is None or fit is None or x is None or not (x.shape == target.shape == fit.shape) or x.ndim != 1:
        return None
    z = _array(d.get("z"))
    yerr = _array(d.get("yerr"))
    if yerr is not None and (yerr.shape != target.shape or not bool(np.all(yerr > 0))):
        yerr = None  # malformed errors are not drawn rather than failing the figure
    return Inversion(
        x=x,
        target=target,
        fit=fit,
        z=None if z is None else z.ravel(),
        true_params=_params(_first(d, _TRUE_PARAM_KEYS)),
        est_params=_params(_first(d, _EST_PARAM_KEYS)),
        objective=_scalar(_first(d, _OBJECTIVE_KEYS)),
        rel_l2=_scalar(d.get("rel_l2")),
        source=source,
        yerr=yerr,
        **_on_grid(d, _array(grid)),
        family_fit=fit_ if (fit_ := _array(d.get("family_fit"))) is not None and fit_.shape == target.shape else None,
        reduced_chi2=_scalar(d.get("reduced_chi2")),
        flags=[str(f) for f in d.get("flags", []) if isinstance(f, str)] if isinstance(d.get("flags"), list) else [],
        params_source=str(d.get("params_source", "")),
    )


def _on_grid(d: dict[str, Any], grid: np.ndarray | None) -> dict[str, Any]:
    """The row's curves on the run's grid (decoded, family), where their lengths match it."""
    if grid is None or grid.ndim != 1:
        return {}
    out: dict[str, Any] = {"grid": grid}
    for key in ("decoded", "family"):
        a = _array(d.get(key))
        out[key] = a if a is not None and a.shape == grid.shape else None
    return out


def read_inversions(paths: list[Path], limit: int | None = None) -> tuple[list[Inversion], list[str]]:
    """Inversions from invert/*.json (one target per file, or a list under `results`/`targets`),
    reading files in the given order until `limit` inversions are found. Returns (parsed,
    problems): unreadable files and files without any target/fit/x arrays are reported."""
    found: list[Inversion] = []
    problems: list[str] = []
    for path in paths:
        if limit is not None and len(found) >= limit:
            break
        try:
            obj = json.loads(Path(path).read_text())
        except (OSError, ValueError) as e:
            problems.append(f"{Path(path).name}: unreadable ({e})")
            continue
        entries: list[Any]
        x_default = grid = None
        if isinstance(obj, list):
            entries = obj
        elif isinstance(obj, dict) and isinstance(_first(obj, _LIST_KEYS), list):
            entries = _first(obj, _LIST_KEYS)
            x_default, grid = _first(obj, _X_KEYS), obj.get("grid")
        else:
            entries = [obj]
        n_ok = 0
        for e in entries:
            inv = parse_inversion(e, Path(path).name, x_default, grid) if isinstance(e, dict) else None
            if inv is not None:
                if isinstance(e.get("name"), str) and e["name"] and len(entries) > 1:
                    inv.source = f"{inv.source}: {e['name']}"
                found.append(inv)
                n_ok += 1
        if n_ok == 0:  # a batch stores curves for its first targets only: that is not a problem
            problems.append(f"{Path(path).name}: no entry with target, fit and x arrays")
    return found, problems


@dataclass
class Samples:
    curves: np.ndarray  # (n, n_points)
    z: np.ndarray | None  # (n, latent_dim)
    grid: np.ndarray | None  # (n_points,)
    real: np.ndarray | None = None  # (k, n_points) real curves stored beside the samples
    z_real: np.ndarray | None = None  # codes of the data the latent distribution came from
    latent: str = ""  # how the codes were drawn (prior, empirical, gaussian)


@dataclass
class PosteriorSamples:
    samples: np.ndarray  # (n, s, p) in the family's units
    names: list[str]
    ids: list[str]
    kind: str
    truth: np.ndarray | None  # (n, p)


def read_posterior_samples(path: Path) -> PosteriorSamples:
    """invert/<slug>_samples.npz as `funcae invert --posterior` writes it."""
    with np.load(path, allow_pickle=False) as f:
        samples = np.asarray(f["samples"], dtype=float)
        out = PosteriorSamples(
            samples, [str(s) for s in f["names"]], [str(s) for s in f["ids"]], str(f["kind"]),
            np.asarray(f["truth"], dtype=float) if "truth" in f.files else None,
        )  # fmt: skip
    if samples.ndim != 3 or samples.shape[2] != len(out.names) or samples.shape[0] != len(out.ids):
        raise ValueError(f"samples has shape {samples.shape} for {len(out.ids)} targets and {len(out.names)} names")
    return out


def read_samples(path: Path) -> Samples:
    """samples.npz as `funcae sample` writes it (curves; z, grid, real, z_real, latent when present)."""

    def opt(f, key: str, ndim: int) -> np.ndarray | None:
        if key not in f.files:
            return None
        a = np.asarray(f[key], dtype=float)
        return a if a.ndim == ndim and a.size else None

    with np.load(path, allow_pickle=False) as f:
        curves = np.asarray(f["curves"], dtype=float)
        out = Samples(
            curves,
            opt(f, "z", 2),
            opt(f, "grid", 1),
            opt(f, "real", 2),
            opt(f, "z_real", 2),
            str(f["latent"]) if "latent" in f.files else "",
        )
    if curves.ndim != 2:
        raise ValueError(f"curves has shape {curves.shape}, expected (n, n_points)")
    return out


PAGE = 12  # targets on the page figure of a batch


def record_inversions(record: dict[str, Any]) -> list[Inversion]:
    """The targets of an `invert/<slug>.json` record that carry their curves (the first 16), parsed as
    `funcae plot --kind invert` parses the files, so both draw the same."""
    return [
        inv
        for r in record.get("targets", [])
        if isinstance(r, dict)
        and (inv := parse_inversion(r, str(r.get("name", "")), record.get("x"), record.get("grid"))) is not None
    ]


def invert_figures(record: dict[str, Any], family: Family) -> dict[str, Figure]:
    """The figures `funcae invert` writes: `png` the first MAX_ROWS targets in detail; for a batch also `page`
    (the first PAGE targets in small panels) and `summary` (reduced chi^2, flags, family against decoder)."""
    return {kind: make() for kind, make in invert_figure_makers(record, family).items()}


def invert_figure_makers(record: dict[str, Any], family: Family) -> dict[str, Callable[[], Figure]]:
    """invert_figures, each figure built when its function is called: files.save_figures builds each in the
    process that renders it."""
    rows = record_inversions(record)
    if not rows:
        raise ValueError("the record holds no target/fit curves")
    n = int(record.get("n_targets", len(rows)))
    k = min(len(rows), MAX_ROWS)
    what = f"{record.get('run', '')}: {record.get('method', '')}, parameters from {record.get('params_source', '')}"
    shown = f"first {k} of {n} targets" if n > k else ""
    out = {"png": partial(inversions_figure, rows[:k], family, title=what, note=shown)}
    if n > 1:
        page = rows[:PAGE]
        out["page"] = partial(
            inversion_page_figure, page, family, title=f"{what}: the first {len(page)} of {n} targets"
        )
        out["summary"] = partial(_summary_figure, record, what, n)
    return out


def _summary_figure(record: dict[str, Any], what: str, n: int) -> Figure:
    targets = record.get("targets", [])

    def column(key: str) -> np.ndarray | None:
        values = [t.get(key) for t in targets]
        return None if all(v is None for v in values) else np.array([np.nan if v is None else v for v in values])

    flags = {f: sum(f in t.get("flags", []) for t in targets) for f in ("model_mismatch", "on_bound", "off_manifold")}
    return inversion_summary_figure(
        column("reduced_chi2"), flags, column("physics_objective"), column("decoder_physics_objective"),
        str(record.get("physics_measure") or ""), title=f"{what}: {n} targets",
    )  # fmt: skip
