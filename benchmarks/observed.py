"""Realistic observed rotation curves, and a float64 scipy fit of the family to compare `funcae invert` with.

`galaxies(n, seed, bounds)` draws objects of three kinds:
- `family` (80%): parameters log-uniform inside the run's prior;
- `outside` (10%): one parameter pushed 0.3-1 dex beyond a bound of the prior (a dwarf with a lighter halo
  than the prior allows, a disc heavier than it allows, ...);
- `extra` (10%): a component the family lacks, a compact central Hernquist bulge (v^2 += G M_b r / (r + a)^2,
  M_b 1 to 4 times the disc mass, a 0.05 to 0.3 disc scale lengths): with enough points the family cannot fit it.
Each is observed at 5 to 120 irregular radii over part of 0.1-80 kpc, with 3-20% heteroscedastic errors (at
least 1% of the curve's peak) and Gaussian noise from them (funcae_cli.inversion.simulate).

`scipy_fit` fits the family to one object with scipy.optimize.least_squares (trf, float64) inside the same
bounds in the same natural scale (log10 of each parameter), from `SCIPY_STARTS` starts (the bounds' centre and
a Latin hypercube), with its own numpy/scipy.special implementation of the formula: an independent reference.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy import optimize, special

from funcae_cli.config.families import FAMILIES, RotationOptions
from funcae_cli.data.observations import Observation
from funcae_cli.inversion.simulate import NoiseModel, family_values, observation_points, observe

G_KPC, G_DISC, HUBBLE, DELTA_C = 4.301e-9, 4.301e-6, 70.0, 200.0  # as notebook 004 (funcae_cli/data/formulas)
GRID = np.logspace(-1, math.log10(80.0), 64)  # configs/rotation_curve_observed.yaml
NOISE = NoiseModel(points=(5, 120), frac=(0.03, 0.2), floor=0.01, min_span=0.3)
KINDS = {"family": 0.8, "outside": 0.1, "extra": 0.1}
SCIPY_STARTS = 10


@dataclass
class Galaxy:
    obs: Observation
    kind: str  # family | outside | extra
    params: np.ndarray  # (4,) md, rd, mh, c of the disc + halo (without the bulge)


def rotation_curve_np(r: np.ndarray, md: float, rd: float, mh: float, c: float) -> np.ndarray:
    """Exponential disc + NFW halo, km/s, in numpy and scipy.special (the reference, written independently)."""
    y = r / (2 * rd)
    disc2 = 2 * G_DISC * md / rd * y**2 * (special.i0e(y) * special.k0e(y) - special.i1e(y) * special.k1e(y))
    r_vir = 1e3 * (mh / (0.5 * DELTA_C * HUBBLE**2 / G_KPC)) ** (1 / 3)
    v_vir2 = (DELTA_C * HUBBLE**2 / 2) ** (1 / 3) * (G_KPC * mh) ** (2 / 3)

    def fc(x: np.ndarray) -> np.ndarray:
        return np.log1p(x) - x / (1 + x)

    halo2 = v_vir2 * r_vir / r * fc(c * r / r_vir) / fc(c)
    return np.sqrt(np.clip(disc2, 0, None) + halo2)


def galaxies(n: int, seed: int, low: np.ndarray, high: np.ndarray) -> list[Galaxy]:
    """n observed galaxies (module docstring); low, high: the prior's bounds in log10 of md, rd, mh, c."""
    rng = np.random.default_rng(seed)
    kinds = rng.choice(list(KINDS), size=n, p=list(KINDS.values()))
    logp = rng.uniform(low, high, (n, 4))
    for i in np.nonzero(kinds == "outside")[0]:
        j = rng.integers(4)
        beyond = rng.uniform(0.3, 1.0)
        logp[i, j] = low[j] - beyond if rng.random() < 0.5 else high[j] + beyond
    params = 10.0**logp
    xs = observation_points(GRID, True, NOISE, rng, n)
    family = FAMILIES["rotation_curve"]
    values = family_values(family, RotationOptions(prior="independent"), xs, params)
    for i in np.nonzero(kinds == "extra")[0]:
        mb, a = params[i, 0] * rng.uniform(1.0, 4.0), params[i, 1] * rng.uniform(0.05, 0.3)
        values[i] = np.sqrt(values[i] ** 2 + G_DISC * mb * xs[i] / (xs[i] + a) ** 2)
    observations = observe(values, xs, NOISE, rng, [f"g{i:04d}" for i in range(n)])
    return [Galaxy(o, k, p) for o, k, p in zip(observations, kinds, params)]


def _latin(k: int, p: int, rng: np.random.Generator) -> np.ndarray:
    cuts = (rng.random((k, p)) + np.arange(k)[:, None]) / k
    return np.stack([rng.permutation(cuts[:, j]) for j in range(p)], axis=1)


def scipy_fit(obs: Observation, low: np.ndarray, high: np.ndarray, seed: int = 0) -> tuple[np.ndarray, float]:
    """Best (log10 parameters, chi^2) over SCIPY_STARTS starts of least_squares inside [low, high]."""
    rng = np.random.default_rng(seed)
    starts = np.vstack([(low + high) / 2, low + (high - low) * _latin(SCIPY_STARTS - 1, 4, rng)])

    def residual(u: np.ndarray) -> np.ndarray:
        return (rotation_curve_np(obs.x, *(10.0**u)) - obs.y) / obs.yerr

    best_u, best = starts[0], math.inf
    for u0 in starts:
        res = optimize.least_squares(residual, u0, bounds=(low, high), method="trf", x_scale="jac")
        chi2 = float(np.sum(res.fun**2))
        if chi2 < best:
            best_u, best = res.x, chi2
    return best_u, best


def write_long_csv(items: list[Galaxy], path) -> None:
    """The long format `funcae invert --curves` reads: id, x (kpc), y (km/s), yerr (km/s)."""
    lines = ["id,x,y,yerr"]
    for g in items:
        o = g.obs
        lines += [f"{o.name},{x:.6g},{y:.6g},{e:.4g}" for x, y, e in zip(o.x, o.y, o.yerr)]
    Path(path).write_text("\n".join(lines) + "\n")


EXAMPLE = Path(__file__).resolve().parents[1] / "configs" / "data" / "observed_rotation_curves.csv"
EXAMPLE_SEED, EXAMPLE_N = 2024, 24


def write_example(path: Path = EXAMPLE) -> None:
    """The README's worked example: EXAMPLE_N synthetic observed galaxies for configs/rotation_curve_observed.yaml
    (python -m benchmarks.observed writes it; tests/test_observed.py checks the shipped file is this)."""
    low, high = np.log10([1e6, 0.2, 1e9, 2.0]), np.log10([5e11, 15.0, 5e13, 40.0])
    write_long_csv(galaxies(EXAMPLE_N, EXAMPLE_SEED, low, high), path)


if __name__ == "__main__":
    write_example()
    print(f"wrote {EXAMPLE}")
