"""Simulated observations: a family's curves at irregular points of part of the grid, with heteroscedastic
one-sigma errors and Gaussian noise drawn from them. `funcae validate` inverts these against known parameters;
the benchmarks build realistic observed curves on them.

Per object: a number of points uniform in `points`; a range covering at least `min_span` of the grid (in log
x on log grids), placed at random; points uniform over that range (in log x on log grids), sorted; a relative
error uniform in `frac`, scattered by +-30% from point to point, plus an absolute floor of `floor` times the
curve's peak; values = the curve + noise of that error.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from funcae_cli.config.families import Family
from funcae_cli.data.formulas import FORMULAS
from funcae_cli.data.observations import Observation


@dataclass(frozen=True)
class NoiseModel:
    """How observations are drawn (module docstring)."""

    points: tuple[int, int] = (5, 120)  # points per object, inclusive
    frac: tuple[float, float] = (0.03, 0.2)  # relative one-sigma error per object
    floor: float = 0.01  # absolute error floor, as a fraction of the curve's largest |value|
    min_span: float = 0.3  # fraction of the grid's range an object covers at least
    scatter: float = 0.3  # point-to-point scatter of the errors, relative


def observation_points(
    grid: np.ndarray, log_x: bool, noise: NoiseModel, rng: np.random.Generator, n: int
) -> list[np.ndarray]:
    """n sets of irregular, sorted points inside the grid's range."""
    lo, hi = (np.log(grid[0]), np.log(grid[-1])) if log_x else (grid[0], grid[-1])
    span = hi - lo
    out = []
    for m in rng.integers(noise.points[0], noise.points[1] + 1, n):
        width = span * rng.uniform(noise.min_span, 1.0)
        start = lo + rng.uniform(0.0, span - width)
        t = np.sort(rng.uniform(start, start + width, m))
        out.append(np.clip(np.exp(t) if log_x else t, grid[0], grid[-1]))
    return out


def observe(
    values: list[np.ndarray], xs: list[np.ndarray], noise: NoiseModel, rng: np.random.Generator, names: list[str]
) -> list[Observation]:
    """Errors and noise for true values at points: one Observation per object."""
    out = []
    for name, x, v in zip(names, xs, values):
        frac = rng.uniform(*noise.frac)
        err = frac * np.abs(v) * rng.uniform(1 - noise.scatter, 1 + noise.scatter, v.shape)
        err = err + noise.floor * np.abs(v).max() + 1e-12
        out.append(Observation(name, x, v + err * rng.standard_normal(v.shape), err))
    return out


def family_values(family: Family, options, xs: list[np.ndarray], params: np.ndarray) -> list[np.ndarray]:
    """The family's curves (float64) at each object's own points."""
    formula = FORMULAS[family.name]
    return [
        formula(torch.from_numpy(x), torch.from_numpy(params[i : i + 1]).double(), options)[0].numpy()
        for i, x in enumerate(xs)
    ]


def simulate(
    family: Family,
    options,
    grid: np.ndarray,
    params: np.ndarray,
    noise: NoiseModel,
    seed: int = 0,
    prefix: str = "sim",
) -> list[Observation]:
    """Observations of the family's curves at parameters (n, p): irregular points, errors, noise."""
    log_x = bool(family.x_log and grid[0] > 0)
    return simulate_with(lambda xs: family_values(family, options, xs, params), grid, log_x, params.shape[0], noise,
                         seed, prefix)  # fmt: skip


def simulate_with(
    values_at: Callable[[list[np.ndarray]], list[np.ndarray]],
    grid: np.ndarray,
    log_x: bool,
    n: int,
    noise: NoiseModel,
    seed: int = 0,
    prefix: str = "sim",
) -> list[Observation]:
    """Observations of n curves given by values_at (each object's points -> its true values there)."""
    rng = np.random.default_rng(seed)
    xs = observation_points(grid, log_x, noise, rng, n)
    names = [f"{prefix}{i:05d}" for i in range(n)]
    return observe(values_at(xs), xs, noise, rng, names)
