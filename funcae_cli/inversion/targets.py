"""Targets: the curves to encode or invert, in the family's units, as one padded batch.

Sources (inputs.TargetInputs): parameter values (the family evaluated on the run's grid), a table of parameter
rows, observed curves (observed.py: CSV files, a long-format CSV, a folder, an .npz). Observed objects each
keep their own points: the batch is padded to the longest, with a mask of the real points, so that every
computation over targets is one tensor operation. Parameters are checked against the family's domain and
parameters outside the training ranges give warnings (the decoder is extrapolating there).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from funcae_cli.data.arrays import is_number
from funcae_cli.data.dataset import evaluate
from funcae_cli.data.families import Family
from funcae_cli.errors import InputError
from funcae_cli.inversion.inputs import TargetInputs
from funcae_cli.inversion.observed import (
    Grid,
    Observation,
    read_curve_file,
    read_curve_folder,
    read_long_csv,
    same_errors,
)
from funcae_cli.runs.trained import Trained


@dataclass
class Targets:
    """Curves to encode or invert, in the family's units, padded to a common length m."""

    y: Tensor  # (n, m) float32; 0 beyond a target's own points
    x: Tensor | None = None  # (n, m) float64 observation points, increasing (padding continues past the last
    # point); None: every target on the run's grid
    yerr: Tensor | None = None  # (n, m) float32 one-sigma errors (padding 1) -> chi^2 objective
    mask: Tensor | None = None  # (n, m) bool, True on a target's own points; None: all are
    params: Tensor | None = None  # (n, n_params) float64 true parameters, when known
    names: list[str] = field(default_factory=list)  # one label per target (legends, CSV)
    source: str = ""  # where they came from, for messages and file names
    warnings: list[str] = field(default_factory=list)  # what reading them changed (e.g. points dropped)

    @property
    def n(self) -> int:
        return int(self.y.shape[0])

    @property
    def counts(self) -> Tensor:
        """(n,) number of real points per target."""
        if self.mask is None:
            return torch.full((self.n,), self.y.shape[1], dtype=torch.int64)
        return self.mask.sum(dim=1)

    def subset(self, rows: slice) -> Targets:
        def cut(t: Tensor | None) -> Tensor | None:
            return None if t is None else t[rows]

        return replace(self, y=self.y[rows], x=cut(self.x), yerr=cut(self.yerr), mask=cut(self.mask),
                       params=cut(self.params), names=self.names[rows])  # fmt: skip

    def points(self, i: int) -> tuple[np.ndarray | None, np.ndarray, np.ndarray | None]:
        """Target i's own (x or None for the grid, y, yerr or None), float64 numpy."""
        keep = slice(None) if self.mask is None else self.mask[i].numpy()
        x = None if self.x is None else self.x[i].numpy()[keep]
        e = None if self.yerr is None else self.yerr[i].double().numpy()[keep]
        return x, self.y[i].double().numpy()[keep], e


def pad(observations: list[Observation], source: str, warnings: list[str] | None = None) -> Targets:
    """Observed objects (each its own points) as one padded batch."""
    same_errors(observations, source)
    n, m = len(observations), max(o.x.size for o in observations)
    x = np.empty((n, m))
    y = np.zeros((n, m), dtype=np.float32)
    yerr = np.ones((n, m), dtype=np.float32) if observations[0].yerr is not None else None
    mask = np.zeros((n, m), dtype=bool)
    for i, o in enumerate(observations):
        k = o.x.size
        x[i, :k], y[i, :k], mask[i, :k] = o.x, o.y, True
        step = max(o.x[-1] - o.x[0], 1.0)  # padding continues past the last point: x stays increasing
        x[i, k:] = o.x[-1] + step * np.arange(1, m - k + 1)
        if yerr is not None:
            yerr[i, :k] = o.yerr
    return Targets(
        torch.from_numpy(y),
        torch.from_numpy(x),
        None if yerr is None else torch.from_numpy(yerr),
        None if mask.all() else torch.from_numpy(mask),
        names=[o.name for o in observations],
        source=source,
        warnings=list(warnings or []),
    )


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
    return Targets(y, params=params, names=names, source=source)


def read_params_csv(trained: Trained, path: str | Path) -> Targets:
    """Many parameter targets: a header naming every family parameter, one row per target."""
    path = Path(path)
    fam = trained.family
    need = f"family {fam.name} needs columns {', '.join(fam.param_names)}"
    if not path.exists():
        raise InputError(f"{path}: file not found")
    try:
        lines = [(k, line.split("#", 1)[0].strip()) for k, line in enumerate(path.read_text().splitlines(), start=1)]
    except (OSError, UnicodeDecodeError) as e:
        raise InputError(f"{path}: cannot read as text ({e.__class__.__name__})") from None
    rows = [(k, [c.strip() for c in (t.split(",") if "," in t else t.split())]) for k, t in lines if t]
    if not rows:
        raise InputError(f"{path}: no data rows")
    header = [c.lower() for c in rows[0][1]]
    if all(is_number(c) for c in header):
        raise InputError(f"{path}: needs a header row; {need}")
    unknown = [h for h in header if h not in fam.param_names]
    missing = [n for n in fam.param_names if n not in header]
    if unknown:
        raise InputError(f"{path}: unknown column(s) {', '.join(unknown)}; {need}")
    if missing:
        raise InputError(f"{path}: missing column(s) {', '.join(missing)}; {need}")
    if len(rows) < 2:
        raise InputError(f"{path}: a header but no data rows")
    values = np.empty((len(rows) - 1, len(header)))
    for r, (k, cells) in enumerate(rows[1:]):
        if len(cells) != len(header):
            raise InputError(f"{path}, line {k}: expected {len(header)} columns, got {len(cells)}")
        for c, cell in enumerate(cells):
            if not is_number(cell) or not math.isfinite(float(cell)):
                raise InputError(f"{path}, line {k}, column {header[c]}: expected a finite number, got {cell!r}")
            values[r, c] = float(cell)
    params = torch.from_numpy(values[:, [header.index(n) for n in fam.param_names]])
    check_domain(fam, params, lambda i: f"{path}, row {i + 1}: ")
    return targets_from_params(trained, params, str(path))


def read_curves_npz(trained: Trained, path: Path, grid: Grid, warnings: list[str]) -> Targets:
    """Many curves: `curves` (n, m); optional `x` (m,) (default: the run's grid), `yerr` (n, m) or (m,), `params`."""
    try:
        with np.load(path, allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
    except (OSError, ValueError) as e:
        raise InputError(f"{path}: not an .npz file ({str(e).splitlines()[0][:120]})") from None
    if "curves" not in arrays:
        raise InputError(f"{path}: needs an array `curves` (n, m); has {', '.join(arrays) or 'nothing'}")
    y = np.asarray(arrays["curves"], dtype=np.float64)
    y = y[None] if y.ndim == 1 else y
    if y.ndim != 2 or y.shape[0] == 0:
        raise InputError(f"{path}: `curves` must be (n, m), got shape {tuple(y.shape)}")
    n, m = y.shape
    if not np.isfinite(y).all():
        i, j = np.argwhere(~np.isfinite(y))[0]
        raise InputError(f"{path}: `curves` has a non-finite value at row {i}, column {j}")
    yerr = None
    if "yerr" in arrays:
        try:
            yerr = np.broadcast_to(np.asarray(arrays["yerr"], dtype=np.float64), y.shape).copy()
        except ValueError:
            raise InputError(
                f"{path}: `yerr` of shape {arrays['yerr'].shape} does not fit `curves` {y.shape}"
            ) from None
        if not (yerr > 0).all():
            raise InputError(f"{path}: `yerr` must be > 0 everywhere (finite, positive)")
    params = None
    if "params" in arrays:
        p = np.asarray(arrays["params"], dtype=np.float64)
        if p.shape == (n, len(trained.param_names)):
            params = torch.from_numpy(p)
    names = [f"{path.stem}[{i}]" for i in range(n)]
    if "x" not in arrays:
        if m != trained.grid.shape[0]:
            raise InputError(
                f"{path}: {m} columns but the run's grid has {trained.grid.shape[0]} points; "
                "add an array `x` with the observation points"
            )
        e = None if yerr is None else torch.from_numpy(yerr.astype(np.float32))
        return Targets(torch.from_numpy(y.astype(np.float32)), None, e, params=params, names=names, source=str(path))
    xs = np.asarray(arrays["x"], dtype=np.float64).reshape(-1)
    if xs.shape[0] != m:
        raise InputError(f"{path}: `x` has {xs.shape[0]} points but `curves` has {m} columns")
    observations = [
        grid.restrict(Observation(names[i], xs, y[i], None if yerr is None else yerr[i]), f"{path}, row {i}", warnings)
        for i in range(n)
    ]
    order = [np.argsort(o.x, kind="stable") for o in observations]
    observations = [
        Observation(o.name, o.x[k], o.y[k], None if o.yerr is None else o.yerr[k]) for o, k in zip(observations, order)
    ]
    return replace(pad(observations, str(path), warnings), params=params)


def read_targets(trained: Trained, inputs: TargetInputs) -> Targets | None:
    """The targets a user gave (see inputs.TargetInputs), read and checked; None when none was given."""
    fam = trained.family
    grid = Grid(float(trained.grid[0]), float(trained.grid[-1]), clip=inputs.clip)
    warnings: list[str] = []
    if inputs.params:
        params = torch.tensor([[inputs.params[n] for n in fam.param_names]], dtype=torch.float64)
        check_domain(fam, params, lambda i: "")
        return targets_from_params(trained, params, "parameters")
    if inputs.curve_files:
        observations = [read_curve_file(Path(p), grid, warnings) for p in inputs.curve_files]
        return pad(observations, ", ".join(str(p) for p in inputs.curve_files[:3]), warnings)
    if inputs.params_table is not None:
        return read_params_csv(trained, inputs.params_table)
    if inputs.curves is not None:
        path = Path(inputs.curves)
        if path.is_dir():
            return pad(read_curve_folder(path, grid, warnings), str(path), warnings)
        if not path.exists():
            raise InputError(f"{path}: file not found")
        if path.suffix.lower() == ".npz":
            return read_curves_npz(trained, path, grid, warnings)
        if path.suffix.lower() == ".csv":
            return pad(read_long_csv(path, grid, warnings), str(path), warnings)
        raise InputError(f"{path}: expected a long-format .csv (id,x,y[,yerr]), an .npz or a folder of .csv files")
    return None
