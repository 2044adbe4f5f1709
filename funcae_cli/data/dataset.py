"""A data set of curves: generated from a formula family's prior, or read from an array family's file.

`generate(cfg)` is the one way a run gets its data: same config and seed, same bytes. Before any large
array is made, its size is estimated against the memory there is (`memory.check_fits`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from funcae_cli.config import Config
from funcae_cli.config.families import Family
from funcae_cli.data.arrays import LOADERS
from funcae_cli.data.formulas import FORMULAS
from funcae_cli.data.grids import grid_size, make_grid, sample_params
from funcae_cli.data.userfamily import check_user_family
from funcae_cli.errors import InputError
from funcae_cli.memory import check_fits

GEN_CHUNK = 1024  # curves per float64 chunk: cache-sized (8 MB), 2x faster than large chunks, bounded memory


def curve_bytes(n: int, n_points: int, n_params: int = 0) -> int:
    """Memory of n float32 curves of n_points and their float64 parameters."""
    return n * (4 * n_points + 8 * n_params)


def evaluate(fam: Family, grid: Tensor, params: Tensor, options, out: Tensor | None = None) -> Tensor:
    """Curves `(n, n_points)` float32, evaluated in float64 chunks of GEN_CHUNK curves."""
    n = params.shape[0]
    out = torch.empty(n, grid.shape[0], dtype=torch.float32) if out is None else out
    g64 = grid.to(torch.float64)
    formula = FORMULAS[fam.name]
    for i in range(0, n, GEN_CHUNK):
        out[i : i + GEN_CHUNK] = formula(g64, params[i : i + GEN_CHUNK].to(torch.float64), options, in_place=True)
    return out


@dataclass
class Dataset:
    """Curves in the family's own units, with their parameters and grid."""

    curves: Tensor  # (n, n_points) float32
    params: Tensor  # (n, n_params) float64
    param_names: list[str]
    grid: Tensor  # (n_points,) float64
    labels: Tensor | None = None  # (n,) int64, image/tabular data only

    def check_finite(self) -> None:
        # One pass, no copy: a row whose sum is finite has only finite values; check the others exactly
        # (a float32 sum can overflow to inf although every value is finite).
        suspect = (~torch.isfinite(self.curves.sum(dim=1))).nonzero().flatten()
        bad = suspect[~torch.isfinite(self.curves[suspect]).all(dim=1)]
        if bad.numel():
            i = int(bad[0])
            vals = ", ".join(f"{k}={float(v):.6g}" for k, v in zip(self.param_names, self.params[i]))
            raise InputError(f"non-finite curve values at row {i} ({vals}): narrow the parameter ranges")


def generate(cfg: Config, n: int | None = None, seed: int | None = None) -> Dataset:
    """Sample parameters and evaluate the family: same config and seed, same bytes.

    Array families (`dataset`, `digits`) load their rows instead: see `load_data`.
    """
    fam = cfg.family.family
    if not fam.has_formula:
        return load_data(cfg, n, seed)
    check_user_family(cfg)  # a user's formula: one-line errors before any data (nothing for the built-ins)
    n = cfg.data.n if n is None else n
    n_points = grid_size(cfg.grid)
    check_fits(
        curve_bytes(n, n_points, len(fam.params)) + 2 * curve_bytes(min(n, GEN_CHUNK), n_points),
        f"{n:,} curves (data.n) of {n_points:,} points (grid.num)",
        "lower data.n or grid.num",
    )
    gen = torch.Generator().manual_seed(cfg.seed if seed is None else seed)
    params = sample_params(cfg.family, n, gen)
    grid = make_grid(cfg.grid)
    curves = evaluate(fam, grid, params, cfg.family.options)
    ds = Dataset(curves, params, fam.param_names, grid)
    ds.check_finite()
    return ds


def load_data(cfg: Config, n: int | None = None, seed: int | None = None) -> Dataset:
    """An array family's rows, shuffled by the seed so that the contiguous splits are random.

    All rows are used (data.n does not apply); `family.max_rows` or an explicit `n` keeps that
    many of the shuffled rows. The grid is the feature index 0..d-1 unless the config gives one
    with d points. Labels and file parameters ride along in the same order.
    """
    fam, options = cfg.family.family, cfg.family.options
    arrays = LOADERS[fam.name](options)  # validated; InputError names the file and the problem
    rows, d = arrays.x.shape
    gen = torch.Generator().manual_seed(cfg.seed if seed is None else seed)
    order = torch.randperm(rows, generator=gen)
    keep = min(x for x in (n, getattr(options, "max_rows", None), rows) if x is not None)
    order = order[:keep]
    if cfg.grid is None or cfg.grid.kind == "index":
        grid = torch.arange(d, dtype=torch.float64)
    else:
        grid = make_grid(cfg.grid)
        if grid.shape[0] != d:
            where = getattr(options, "path", None) or fam.name
            raise InputError(f"{where}: {d} features per row but the config's grid has {grid.shape[0]} points")
    idx = order.numpy()
    params = torch.from_numpy(arrays.params[idx]) if arrays.params is not None else torch.zeros(keep, 0)
    return Dataset(
        curves=torch.from_numpy(np.ascontiguousarray(arrays.x[idx])),
        params=params.to(torch.float64),
        param_names=list(arrays.param_names),
        grid=grid,
        labels=torch.from_numpy(arrays.labels[idx]) if arrays.labels is not None else None,
    )
