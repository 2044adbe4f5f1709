"""`samples` figure of `funcae sample`: sampled curves beside real ones, and the latent marginals.

Drawn by `results.samples_comparison_figure`, the function `funcae plot --kind samples` uses too."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from matplotlib.figure import Figure

from funcae_cli.families import Family
from funcae_cli.plotting.results import samples_comparison_figure


def samples_figure(
    grid: np.ndarray,
    curves: np.ndarray,
    real: np.ndarray,
    family: Family,
    *,
    z: np.ndarray | None = None,
    z_real: np.ndarray | None = None,
    title: str = "",
    note: str = "",
) -> Figure:
    """grid (n_points,); curves (n, n_points) sampled; real (k, n_points) from the family; codes optional."""
    return samples_comparison_figure(
        np.asarray(grid, dtype=float),
        np.asarray(real, dtype=float),
        np.asarray(curves, dtype=float),
        family,
        z_real=z_real,
        z_sampled=z,
        title=title,
        note=note,
    )


def samples_figure_from_npz(path: str | Path, family: Family, title: str = "") -> Figure:
    """Re-draw from `samples.npz` as `funcae sample` writes it (curves, z, grid, real, z_real)."""
    with np.load(path, allow_pickle=False) as f:
        arrays = {k: f[k] for k in f.files}
    return samples_figure(
        arrays["grid"],
        arrays["curves"],
        arrays["real"],
        family,
        z=arrays.get("z"),
        z_real=arrays.get("z_real"),
        title=title,
        note=str(arrays["latent"]) if "latent" in arrays else "",
    )
