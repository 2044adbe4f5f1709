"""The targets a user gave (jobs.inputs.TargetInputs), read from the command line and files and checked: one
parameter target, observed-curve files, a table of parameters, a file or folder of curves -> inversion.Targets."""

from __future__ import annotations

import math
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from funcae_cli.data.numbers import is_number
from funcae_cli.data.observations import Grid, Observation, read_curve_file, read_curve_folder, read_long_csv
from funcae_cli.errors import InputError
from funcae_cli.inversion.targets import Targets, check_domain, pad, targets_from_params
from funcae_cli.jobs.inputs import TargetInputs
from funcae_cli.store.trained import Trained


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
