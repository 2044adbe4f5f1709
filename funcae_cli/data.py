"""Grids, parameter sampling, curve generation, normalization and splits."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor

from funcae_cli.config import Config, FamilyConfig, GridConfig
from funcae_cli.errors import InputError
from funcae_cli.families import Family

GEN_CHUNK = 1024  # curves per float64 chunk: cache-sized (8 MB), 2x faster than large chunks, bounded memory


def make_grid(grid: GridConfig) -> Tensor:
    """The evaluation grid, float64 `(n_points,)`."""
    if grid.kind == "points":
        return torch.tensor(grid.points, dtype=torch.float64)
    if grid.kind == "logspace":
        return torch.logspace(grid.start, grid.stop, grid.num, dtype=torch.float64)
    return torch.linspace(grid.start, grid.stop, grid.num, dtype=torch.float64)


def _open_uniform(n: int, gen: torch.Generator) -> Tensor:
    """Uniform samples in the open interval (0, 1), float64."""
    u = torch.rand(n, generator=gen, dtype=torch.float64)
    return u.clamp_(min=torch.finfo(torch.float64).tiny)


SAMPLERS = {
    "uniform": lambda s, n, g: s.low + (s.high - s.low) * _open_uniform(n, g),
    "loguniform": lambda s, n, g: torch.exp(
        math.log(s.low) + (math.log(s.high) - math.log(s.low)) * _open_uniform(n, g)
    ),
    "normal": lambda s, n, g: s.mean + s.std * torch.randn(n, generator=g, dtype=torch.float64),
    "fixed": lambda s, n, g: torch.full((n,), float(s.value), dtype=torch.float64),
}


def sample_params(fcfg: FamilyConfig, n: int, gen: torch.Generator) -> Tensor:
    """Parameters `(n, n_params)` float64 drawn from the config's prior."""
    fam = fcfg.family
    derived = fam.derived_prior(fcfg.options)
    if derived is not None:
        first = fam.params[0].name
        return derived(SAMPLERS[fcfg.params[first].dist](fcfg.params[first], n, gen), fcfg.options, gen)
    cols = [SAMPLERS[fcfg.params[p.name].dist](fcfg.params[p.name], n, gen) for p in fam.params]
    return torch.stack(cols, dim=1)


def evaluate(fam: Family, grid: Tensor, params: Tensor, options: Any, out: Tensor | None = None) -> Tensor:
    """Curves `(n, n_points)` float32, evaluated in float64 chunks of GEN_CHUNK curves."""
    n = params.shape[0]
    out = torch.empty(n, grid.shape[0], dtype=torch.float32) if out is None else out
    g64 = grid.to(torch.float64)
    for i in range(0, n, GEN_CHUNK):
        out[i : i + GEN_CHUNK] = fam.evaluate(g64, params[i : i + GEN_CHUNK].to(torch.float64), options)
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
    if fam.load is not None:
        return load_data(cfg, n, seed)
    n = cfg.data.n if n is None else n
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
    arrays = fam.load(options)  # validated; InputError names the file and the problem
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


def save_dataset(ds: Dataset, path, fingerprint: str) -> None:
    import io

    from funcae_cli.rundir import atomic_write_bytes

    buf = io.BytesIO()
    arrays = {
        "curves": ds.curves.numpy(),
        "params": ds.params.numpy(),
        "param_names": np.array(ds.param_names, dtype=str),
        "grid": ds.grid.numpy(),
        "fingerprint": np.array(fingerprint),
    }
    if ds.labels is not None:
        arrays["labels"] = ds.labels.numpy()
    np.savez(buf, **arrays)
    atomic_write_bytes(path, buf.getvalue())


def load_dataset(path) -> tuple[Dataset, str]:
    try:
        with np.load(path, allow_pickle=False) as z:
            ds = Dataset(
                curves=torch.from_numpy(np.ascontiguousarray(z["curves"], dtype=np.float32)),
                params=torch.from_numpy(z["params"].astype(np.float64)),
                param_names=[str(s) for s in z["param_names"]],
                grid=torch.from_numpy(z["grid"].astype(np.float64)),
                labels=torch.from_numpy(z["labels"].astype(np.int64)) if "labels" in z else None,
            )
            fingerprint = str(z["fingerprint"]) if "fingerprint" in z else ""
    except (OSError, ValueError, KeyError) as e:
        raise InputError(f"{path}: not a funcae data file ({e})") from None
    return ds, fingerprint


# --- splits and normalization ---------------------------------------------------------------


@dataclass
class Splits:
    train: slice
    val: slice
    test: slice


def split_sizes(n: int, val_fraction: float, test_fraction: float) -> Splits:
    """Contiguous splits. Generated curves are i.i.d. draws, so contiguous slices are random splits."""
    n_test = int(round(n * test_fraction))
    n_val = max(1, int(round(n * val_fraction)))
    n_train = n - n_val - n_test
    if n_train < 1:
        raise InputError(f"data.n={n} leaves no training curves after val/test splits")
    return Splits(slice(0, n_train), slice(n_train, n_train + n_val), slice(n_train + n_val, n))


STATS_CHUNK = 4096  # rows per float64 chunk when computing statistics: no float64 copy of the data


def moments(x: Tensor, transform=lambda t: t, per_point: bool = False) -> tuple[Tensor, Tensor]:
    """Mean and (unbiased) std of transform(x), float64, over all values or per column, in row chunks."""
    n, d = x.shape
    s = torch.zeros(d, dtype=torch.float64, device=x.device)
    ss = torch.zeros(d, dtype=torch.float64, device=x.device)
    for i in range(0, n, STATS_CHUNK):
        t = transform(x[i : i + STATS_CHUNK].to(torch.float64))
        s += t.sum(dim=0)
        ss += t.square().sum(dim=0)
    if per_point:
        mean = s / n
        var = (ss - n * mean.square()) / max(n - 1, 1)
    else:
        m = n * d
        mean = s.sum() / m
        var = (ss.sum() - m * mean.square()) / max(m - 1, 1)
    return mean, var.clamp_min(0).sqrt()


TRANSFORMS = {
    "none": (lambda x: x, lambda y: y),
    "log": (torch.log, torch.exp),
}


class Normalizer:
    """Maps curves in the family's units to the model's training space and back.

    forward: y = (T(x) - mean) / std, with T the pointwise transform; mean/std are scalars
    (global) or `(n_points,)` (per point), fitted on the training split only.
    """

    def __init__(self, transform: str, mean: Tensor, std: Tensor):
        self.transform = transform
        self.mean = mean.to(torch.float32)
        self.std = std.to(torch.float32)

    @classmethod
    def fit(cls, x: Tensor, transform: str, normalize: str) -> Normalizer:
        if transform == "log" and bool((x <= 0).any()):
            raise InputError("data.transform: log needs strictly positive curves; this data has values <= 0")
        if normalize == "none":
            return cls(transform, torch.zeros(()), torch.ones(()))
        mean, std = moments(x, TRANSFORMS[transform][0], per_point=normalize == "per_point")
        std = torch.where(std > 0, std, torch.ones_like(std))
        return cls(transform, mean, std)

    def to(self, device) -> Normalizer:
        return Normalizer(self.transform, self.mean.to(device), self.std.to(device))

    def encode_(self, x: Tensor) -> Tensor:
        """In place: family units -> training space (no copy of a large tensor)."""
        if self.transform == "log":
            x.log_()
        return x.sub_(self.mean).div_(self.std)

    def encode(self, x: Tensor) -> Tensor:
        return (TRANSFORMS[self.transform][0](x) - self.mean) / self.std

    def decode(self, y: Tensor) -> Tensor:
        return TRANSFORMS[self.transform][1](y * self.std + self.mean)

    def state(self) -> dict[str, Any]:
        return {"transform": self.transform, "mean": self.mean.cpu(), "std": self.std.cpu()}

    @classmethod
    def from_state(cls, s: dict[str, Any]) -> Normalizer:
        return cls(s["transform"], s["mean"], s["std"])
