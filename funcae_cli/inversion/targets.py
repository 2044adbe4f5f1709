"""Targets: the curves to encode or invert, in the family's units, and the inputs they are read from.

Parameter values on the command line (`--mu 2.4 --sigma 1.7`), one observed curve (--curve: CSV of x, y
and optionally yerr), many parameter rows (--targets: CSV with a header) or many curves (--curves: .npz).
Parameters are checked against the family's domain, observation points against the run's grid, and
parameters outside the training ranges give warnings (the decoder is extrapolating there).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from funcae_cli.data.arrays import is_number
from funcae_cli.data.dataset import evaluate
from funcae_cli.data.families import Family
from funcae_cli.errors import InputError
from funcae_cli.inversion.inputs import TargetInputs
from funcae_cli.runs.trained import Trained


@dataclass
class Targets:
    """Curves to encode or invert, in the family's units."""

    y: Tensor  # (n, m) float32
    x: Tensor | None = None  # (m,) float64 observation points; None: the run's grid
    yerr: Tensor | None = None  # (n, m) float32 one-sigma errors -> chi^2 objective
    params: Tensor | None = None  # (n, n_params) float64 true parameters, when known
    names: list[str] = field(default_factory=list)  # one label per target (legends, CSV)
    source: str = ""  # where they came from, for messages and file names

    @property
    def n(self) -> int:
        return int(self.y.shape[0])

    def subset(self, rows: slice) -> Targets:
        return Targets(
            self.y[rows],
            self.x,
            None if self.yerr is None else self.yerr[rows],
            None if self.params is None else self.params[rows],
            self.names[rows],
            self.source,
        )


def _num(text: str, where: str) -> float:
    try:
        v = float(text)
    except ValueError:
        raise InputError(f"{where}: expected a number, got {text!r}") from None
    if not math.isfinite(v):
        raise InputError(f"{where}: must be finite, got {text!r}")
    return v


def check_domain(family: Family, params: Tensor, where: Callable[[int], str] = lambda i: "") -> None:
    """Every value strictly inside its parameter's domain (low, high), else InputError naming the first bad one."""
    for j, p in enumerate(family.params):
        col = params[:, j]
        bad = ~torch.isfinite(col) | (col <= p.low) | (col >= p.high)
        if bool(bad.any()):
            i = int(bad.nonzero()[0, 0])
            allowed = " and ".join(
                s
                for s in (f"> {p.low:g}" if p.low > -math.inf else "", f"< {p.high:g}" if p.high < math.inf else "")
                if s
            )
            raise InputError(
                f"{where(i)}{p.name}={float(col[i]):g} is outside the domain of {family.name}'s "
                f"{p.name} (must be {allowed})"
            )


def training_range_warnings(trained: Trained, params: Tensor) -> list[str]:
    """One message per parameter with values outside the training range: the decoder is extrapolating."""
    lo = torch.tensor(trained.data["param_min"], dtype=torch.float64)
    hi = torch.tensor(trained.data["param_max"], dtype=torch.float64)
    out = []
    for j, name in enumerate(trained.param_names):
        col = params[:, j].double()
        outside = (col < lo[j]) | (col > hi[j])
        k = int(outside.sum())
        if k == 0:
            continue
        rng = f"the training range [{float(lo[j]):.4g}, {float(hi[j]):.4g}]"
        if params.shape[0] == 1:
            out.append(f"{name}={float(col[0]):.6g} is outside {rng}: the decoder is extrapolating")
        else:
            out.append(f"{k} of {params.shape[0]} targets have {name} outside {rng}: the decoder is extrapolating")
    return out


def _fmt_params(names: list[str], row: Tensor) -> str:
    return ", ".join(f"{n}={float(v):.6g}" for n, v in zip(names, row))


def targets_from_params(trained: Trained, params: Tensor, source: str = "params") -> Targets:
    """Evaluate the family on the run's grid at each parameter row (n, n_params)."""
    params = params.to(torch.float64).reshape(-1, len(trained.param_names))
    y = evaluate(trained.family, trained.grid, params, trained.cfg.family.options)
    bad = ~torch.isfinite(y).all(dim=1)
    if bool(bad.any()):
        i = int(bad.nonzero()[0, 0])
        raise InputError(f"the curve for {_fmt_params(trained.param_names, params[i])} has non-finite values")
    names = [_fmt_params(trained.param_names, r) for r in params]
    return Targets(y, None, None, params, names, source)


def _read_table(path: Path) -> tuple[list[str] | None, np.ndarray]:
    """A comma (or whitespace) separated numeric table with an optional header; '#' starts a comment."""
    if not path.exists():
        raise InputError(f"{path}: file not found")
    try:
        lines = path.read_text().splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise InputError(f"{path}: cannot read as text ({e.__class__.__name__})") from None
    rows: list[tuple[int, list[str]]] = []
    for k, line in enumerate(lines, start=1):
        line = line.split("#", 1)[0].strip()
        if line:
            cells = [c.strip() for c in (line.split(",") if "," in line else line.split())]
            rows.append((k, cells))
    if not rows:
        raise InputError(f"{path}: no data rows")
    header = None
    first = rows[0][1]
    if any(not is_number(c) for c in first):
        header = [c.lower() for c in first]
        rows = rows[1:]
        if not rows:
            raise InputError(f"{path}: a header but no data rows")
    width = len(header) if header else len(rows[0][1])
    values = np.empty((len(rows), width), dtype=np.float64)
    for r, (k, cells) in enumerate(rows):
        if len(cells) != width:
            raise InputError(f"{path}, line {k}: expected {width} columns, got {len(cells)}")
        for c, cell in enumerate(cells):
            values[r, c] = _num(cell, f"{path}, line {k}, column {c + 1}")
    return header, values


def _check_x(trained: Trained, x: Tensor, where: str) -> None:
    g0, g1 = float(trained.grid[0]), float(trained.grid[-1])
    tol = 1e-9 * max(abs(g0), abs(g1), g1 - g0)
    bad = (x < g0 - tol) | (x > g1 + tol)
    if bool(bad.any()):
        v = float(x[bad][0])
        raise InputError(
            f"{where}: x={v:g} is outside the run's grid range [{g0:g}, {g1:g}]; the decoder has no values there"
        )


def read_curve_csv(trained: Trained, path: str | Path) -> Targets:
    """One observed curve: columns `x,y` and optionally `yerr` (header optional; without one, in that order)."""
    path = Path(path)
    header, v = _read_table(path)
    if header is not None:
        unknown = [h for h in header if h not in ("x", "y", "yerr")]
        if unknown or "x" not in header or "y" not in header:
            raise InputError(f"{path}: header must name columns x, y and optionally yerr; got {', '.join(header)}")
        col = {h: v[:, i] for i, h in enumerate(header)}
    else:
        if v.shape[1] not in (2, 3):
            raise InputError(f"{path}: expected 2 columns (x, y) or 3 (x, y, yerr), got {v.shape[1]}")
        col = dict(zip(("x", "y", "yerr"), v.T))
    if len(col["x"]) < 2:
        raise InputError(f"{path}: needs at least 2 points")
    order = np.argsort(col["x"], kind="stable")
    x = torch.from_numpy(col["x"][order].copy())
    _check_x(trained, x, str(path))
    y = torch.from_numpy(col["y"][order].astype(np.float32))[None]
    yerr = None
    if "yerr" in col:
        yerr = torch.from_numpy(col["yerr"][order].astype(np.float32))[None]
        if bool((yerr <= 0).any()):
            raise InputError(f"{path}: yerr must be > 0 everywhere")
    return Targets(y, x, yerr, None, [path.stem], str(path))


def read_params_csv(trained: Trained, path: str | Path) -> Targets:
    """Many parameter targets: a header naming every family parameter, one row per target."""
    path = Path(path)
    fam = trained.family
    header, v = _read_table(path)
    need = f"family {fam.name} needs columns {', '.join(fam.param_names)}"
    if header is None:
        raise InputError(f"{path}: needs a header row; {need}")
    unknown = [h for h in header if h not in fam.param_names]
    missing = [n for n in fam.param_names if n not in header]
    if unknown:
        raise InputError(f"{path}: unknown column(s) {', '.join(unknown)}; {need}")
    if missing:
        raise InputError(f"{path}: missing column(s) {', '.join(missing)}; {need}")
    params = torch.from_numpy(v[:, [header.index(n) for n in fam.param_names]])
    check_domain(fam, params, lambda i: f"{path}, row {i + 1}: ")
    return targets_from_params(trained, params, str(path))


def read_curves_npz(trained: Trained, path: str | Path) -> Targets:
    """Many curves: `curves` (n, m); optional `x` (m,) (default: the run's grid), `yerr` (n, m) or (m,), `params`."""
    path = Path(path)
    if not path.exists():
        raise InputError(f"{path}: file not found")
    try:
        with np.load(path, allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
    except (OSError, ValueError) as e:
        raise InputError(f"{path}: not an .npz file ({str(e).splitlines()[0][:120]})") from None
    if "curves" not in arrays:
        raise InputError(f"{path}: needs an array `curves` (n, m); has {', '.join(arrays) or 'nothing'}")
    y = np.asarray(arrays["curves"], dtype=np.float64)
    if y.ndim == 1:
        y = y[None]
    if y.ndim != 2 or y.shape[0] == 0:
        raise InputError(f"{path}: `curves` must be (n, m), got shape {tuple(y.shape)}")
    m = y.shape[1]
    if "x" in arrays:
        xs = np.asarray(arrays["x"], dtype=np.float64).reshape(-1)
        if xs.shape[0] != m:
            raise InputError(f"{path}: `x` has {xs.shape[0]} points but `curves` has {m} columns")
        x = torch.from_numpy(xs)
        _check_x(trained, x, str(path))
        order = torch.argsort(x, stable=True)
        x, y = x[order], y[:, order.numpy()]
    else:
        if m != trained.grid.shape[0]:
            raise InputError(
                f"{path}: {m} columns but the run's grid has {trained.grid.shape[0]} points; "
                "add an array `x` with the observation points"
            )
        x, order = None, None
    if not np.isfinite(y).all():
        raise InputError(f"{path}: `curves` has non-finite values")
    yerr = None
    if "yerr" in arrays:
        e = np.broadcast_to(np.asarray(arrays["yerr"], dtype=np.float64), y.shape).copy()
        if order is not None:
            e = e[:, order.numpy()]
        if not (e > 0).all():
            raise InputError(f"{path}: `yerr` must be > 0 everywhere")
        yerr = torch.from_numpy(e.astype(np.float32))
    params = None
    if "params" in arrays:
        p = np.asarray(arrays["params"], dtype=np.float64)
        if p.shape == (y.shape[0], len(trained.param_names)):
            params = torch.from_numpy(p)
    names = [f"{path.stem}[{i}]" for i in range(y.shape[0])]
    return Targets(torch.from_numpy(y.astype(np.float32)), x, yerr, params, names, str(path))


def read_targets(trained: Trained, inputs: TargetInputs) -> Targets | None:
    """The targets a user gave (see inputs.TargetInputs), read and checked; None when none was given."""
    fam = trained.family
    if inputs.params:
        params = torch.tensor([[inputs.params[n] for n in fam.param_names]], dtype=torch.float64)
        check_domain(fam, params, lambda i: "")
        return targets_from_params(trained, params, "parameters")
    if inputs.curve_files:
        if len(inputs.curve_files) > 1:
            raise InputError("one curve file at a time")
        return read_curve_csv(trained, inputs.curve_files[0])
    if inputs.params_table is not None:
        return read_params_csv(trained, inputs.params_table)
    if inputs.curves is not None:
        return read_curves_npz(trained, inputs.curves)
    return None
