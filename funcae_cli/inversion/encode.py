"""Encoding target curves with a trained run: curves on the grid, or observed at other points (interpolated onto
the grid), to latent codes: the start of every inversion."""

from __future__ import annotations

import torch
from torch import Tensor

from funcae_cli.errors import InputError
from funcae_cli.inversion.objective import log_grid
from funcae_cli.inversion.seeding import invariant_rows
from funcae_cli.inversion.targets import Targets
from funcae_cli.store.trained import Trained


def merge_repeated(x: Tensor, y: Tensor, mask: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Per row of increasing x (n, m): repeated x values merged into one point at their mean y. Returns
    (x, y, mask) with each row's distinct points first and +inf beyond them."""
    n, m = x.shape
    first = torch.ones_like(mask)
    first[:, 1:] = x[:, 1:] != x[:, :-1]
    first &= mask
    group = (torch.arange(n, device=x.device)[:, None] * m + first.cumsum(dim=1) - 1)[mask]  # flat group of each point
    sums = torch.zeros(n * m, dtype=y.dtype, device=y.device).index_add_(0, group, y[mask])
    counts = torch.zeros(n * m, dtype=y.dtype, device=y.device).index_add_(0, group, torch.ones_like(y[mask]))
    x_out = torch.full((n * m,), torch.inf, dtype=x.dtype, device=x.device)
    x_out[(torch.arange(n, device=x.device)[:, None] * m + first.cumsum(dim=1) - 1)[first]] = x[first]
    kept = counts > 0
    return x_out.reshape(n, m), (sums / counts.clamp_min(1)).reshape(n, m), kept.reshape(n, m)


def targets_on_grid(trained: Trained, targets: Targets) -> Tensor:
    """The targets' values on the run's grid (n, n_points): the encoder's input. Observed points: repeated x
    merged at their mean, linearly interpolated (in log x on log grids), ends held constant."""
    if targets.x is None:
        return targets.y
    mask = targets.mask if targets.mask is not None else torch.ones_like(targets.y, dtype=torch.bool)
    x, y, mask = merge_repeated(targets.x.to(torch.float64), targets.y.double(), mask)
    n, m = x.shape
    last = x.gather(1, (mask.sum(dim=1, keepdim=True) - 1))  # (n, 1)
    q = trained.grid[None, :].expand(n, -1).clamp(x[:, :1], last)
    xs, qs = (x.log(), q.log()) if log_grid(trained) else (x, q)
    idx = (torch.searchsorted(xs, qs.contiguous(), right=True) - 1).clamp(0, m - 2)
    x0, x1 = xs.gather(1, idx), xs.gather(1, idx + 1)
    w = torch.where(torch.isinf(x1), 0.0, (qs - x0) / (x1 - x0)).clamp(0.0, 1.0)
    return (y.gather(1, idx) * (1 - w) + y.gather(1, idx + 1) * w).float()


def encode_curves(trained: Trained, curves: Tensor) -> Tensor:
    """Curves in family units on the grid (n, n_points) -> codes (n, d) on the device (posterior mean for a VAE)."""
    if trained.normalizer.transform == "log" and bool((curves <= 0).any()):
        raise InputError("curve has values <= 0, but this run was trained on log curves (data.transform: log)")
    return invariant_rows(trained.encode, curves)  # a row's code does not depend on its batch


def covers_grid(trained: Trained, targets: Targets) -> Tensor:
    """(n,) whether each target's points span the whole grid (else the encoder sees held end values)."""
    if targets.x is None:
        return torch.ones(targets.n, dtype=torch.bool)
    counts = targets.counts
    first, last = targets.x[:, 0], targets.x.gather(1, (counts - 1)[:, None])[:, 0]
    g0, g1 = float(trained.grid[0]), float(trained.grid[-1])
    if log_grid(trained):  # the span as the grid is drawn: in log x
        first, last, g0, g1 = first.log(), last.log(), float(torch.tensor(g0).log()), float(torch.tensor(g1).log())
    span = g1 - g0
    return ((first - g0) <= 0.02 * span) & ((g1 - last) <= 0.02 * span)
