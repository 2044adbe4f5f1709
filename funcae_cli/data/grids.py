"""The evaluation grid and the parameter prior: points a family is evaluated on, parameters it is drawn with."""

from __future__ import annotations

import math

import torch
from torch import Tensor

from funcae_cli.config import FamilyConfig, GridConfig
from funcae_cli.data.formulas import DERIVED_PRIORS


def grid_size(grid: GridConfig) -> int | None:
    """Number of points of a grid config, without making it (None for `index`: the data's width)."""
    if grid.kind == "points":
        return len(grid.points or [])
    return grid.num


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
    if fam.derives_params(fcfg.options):
        first = fcfg.params[fam.params[0].name]
        return DERIVED_PRIORS[fam.name](SAMPLERS[first.dist](first, n, gen), fcfg.options, gen)
    cols = [SAMPLERS[fcfg.params[p.name].dist](fcfg.params[p.name], n, gen) for p in fam.params]
    return torch.stack(cols, dim=1)
