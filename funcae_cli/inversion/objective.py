"""The inversion objective: residuals of decoded codes against a batch of targets (`Problem`).

Objective: the L2 norm of (target - decoded) in the model's training space (normalized, transformed),
or chi^2 in the family's units when `yerr` is given. Targets observed at arbitrary points x inside the
grid's range are compared with the decoded curve linearly interpolated onto x (differentiably).
"""

from __future__ import annotations

import torch
from torch import Tensor

from funcae_cli.data.normalize import TRANSFORMS
from funcae_cli.errors import InputError
from funcae_cli.inversion.targets import Targets
from funcae_cli.runs.trained import Trained


def _interp_coords(grid: Tensor, x: Tensor, log_x: bool) -> tuple[Tensor, Tensor]:
    """Left neighbour index and weight of each x in the grid: value = c[idx] (1 - w) + c[idx + 1] w."""
    g, q = (grid.log(), x.log()) if log_x else (grid, x)
    idx = (torch.searchsorted(g, q, right=True) - 1).clamp(0, g.shape[0] - 2)
    w = ((q - g[idx]) / (g[idx + 1] - g[idx])).clamp(0.0, 1.0)
    return idx, w


def interp_rows(xs: Tensor, ys: Tensor, xq: Tensor, log_x: bool = False) -> Tensor:
    """Linear interpolation of curves (n, m) sampled at increasing xs (m,) onto xq (q,); ends held constant."""
    idx, w = _interp_coords(xs.to(torch.float64), xq.to(torch.float64).clamp(xs[0], xs[-1]), log_x)
    w = w.to(ys.dtype).to(ys.device)
    idx = idx.to(ys.device)
    return ys[..., idx] * (1 - w) + ys[..., idx + 1] * w


class Problem:
    """Residuals of decoded codes against a batch of targets; all tensors on the run's device.

    Row r of a code batch is compared with target `rows[r]`, so restarts of one target share its data.
    """

    def __init__(self, trained: Trained, targets: Targets):
        dev = trained.device
        self.model, self.norm, self.device = trained.model, trained.normalizer, dev
        self.chi2 = targets.yerr is not None
        if targets.x is None:
            self.idx = None
        else:
            idx, w = _interp_coords(trained.grid, targets.x.to(torch.float64), log_grid(trained))
            self.idx, self.w = idx.to(dev), w.to(torch.float32).to(dev)
        self.y = targets.y.to(dev, torch.float32)  # (n, m) family units
        self.m = int(self.y.shape[1])
        if self.chi2:
            self.inv_err = 1.0 / targets.yerr.to(dev, torch.float32)
        if self.norm.transform == "log" and bool((self.y <= 0).any()) and not self.chi2:
            raise InputError(
                f"{targets.source or 'target'}: has values <= 0, but this run was trained on log curves "
                "(data.transform: log); give yerr to fit it by chi^2 in the family's units"
            )
        self.t = self.to_training_space(self.y)  # (n, m); NaN where a chi^2 target is <= 0 on a log run

    def at_x(self, c: Tensor) -> Tensor:
        """Curves on the grid (k, n_points) -> at the observation points (k, m)."""
        if self.idx is None:
            return c
        return c[..., self.idx] * (1 - self.w) + c[..., self.idx + 1] * self.w

    def to_training_space(self, y: Tensor) -> Tensor:
        """Family units at the observation points -> training space, with mean/std interpolated onto x."""
        mean, std = self.norm.mean, self.norm.std
        if mean.ndim:
            mean, std = self.at_x(mean), self.at_x(std)
        return (TRANSFORMS[self.norm.transform][0](y) - mean) / std

    def training_residual(self, z: Tensor, rows: Tensor | None) -> Tensor:
        """(k, m) decoded - target, in training space."""
        t = self.t if rows is None else self.t[rows]
        return self.at_x(self.model.decode(z)) - t

    def residual(self, z: Tensor, rows: Tensor | None = None) -> Tensor:
        """(k, m): the objective's residual (training space, or (fit - y) / yerr in family units)."""
        if not self.chi2:
            return self.training_residual(z, rows)
        fit = self.at_x(self.norm.decode(self.model.decode(z)))
        y, inv = (self.y, self.inv_err) if rows is None else (self.y[rows], self.inv_err[rows])
        return (fit - y) * inv

    def fit(self, z: Tensor) -> Tensor:
        """Decoded curves in family units at the observation points (k, m)."""
        return self.at_x(self.norm.decode(self.model.decode(z)))

    def loss(self, z: Tensor, rows: Tensor | None) -> Tensor:
        """(k,) per-row objective minimized: sum of squared residuals (squared L2 norm, or chi^2)."""
        return self.residual(z, rows).square().sum(dim=1)

    def loss_and_grad(self, z: Tensor, rows: Tensor | None) -> tuple[Tensor, Tensor]:
        """Per-row objective (k,) and its gradient (k, d): one backward pass of the summed objective."""
        with torch.enable_grad():
            zz = z.detach().requires_grad_(True)
            f = self.loss(zz, rows)
            (g,) = torch.autograd.grad(f.sum(), zz)
        return f.detach(), g

    @torch.no_grad()
    def gn_curvature(self, z: Tensor, v: Tensor, rows: Tensor | None, probe: float = 1e-2) -> Tensor:
        """(k,) v' H v with H the Gauss-Newton Hessian 2 J'J of the objective.

        J v by a secant of the residual over a step of length `probe` along v: two forward passes,
        cheaper here than forward-mode autograd, and a secant over a step's length is what a step needs.
        """
        norm = v.norm(dim=1, keepdim=True).clamp_min(1e-30)
        jv = (self.residual(z + probe * v / norm, rows) - self.residual(z, rows)) * (norm / probe)
        return 2 * jv.square().sum(dim=1)

    @torch.no_grad()
    def metrics(self, z: Tensor, rows: Tensor | None = None) -> dict[str, Tensor]:
        """Per-row figures: fit and rel_l2 (family units), residual_norm (training space L2), chi2, objective."""
        fit = self.fit(z)
        y = self.y if rows is None else self.y[rows]
        res_t = self.training_residual(z, rows)
        data_residual = (fit - y).square().sum(dim=1).sqrt()
        out = {
            "fit": fit,
            "residual_norm": res_t.square().sum(dim=1).sqrt(),
            "data_residual": data_residual,
            "rel_l2": data_residual / y.square().sum(dim=1).sqrt().clamp_min(1e-30),
        }
        if self.chi2:
            inv = self.inv_err if rows is None else self.inv_err[rows]
            out["chi2"] = ((fit - y) * inv).square().sum(dim=1)
            out["objective"] = out["chi2"]
        else:
            out["objective"] = out["residual_norm"]
        return out


def log_grid(trained: Trained) -> bool:
    """Interpolate in log x on log-spaced grids of families plotted on a log axis (rotation curves)."""
    return bool(trained.family.x_log and float(trained.grid[0]) > 0)
