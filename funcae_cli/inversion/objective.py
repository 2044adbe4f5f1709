"""The inversion objective: decoded codes against a batch of targets (`Problem`), with the codes' density as
the prior (MAP), so that the search stays where the decoder was trained.

Data term: chi^2 in the family's units when the targets have `yerr`; otherwise the squared L2 norm of
(target - decoded) in the model's training space (normalized, transformed). Targets observed at their own
points x are compared with the decoded curve linearly interpolated onto each target's x (differentiably),
padding masked out.

The minimized objective is -2 log posterior up to a constant:
- chi^2: chi^2 - 2 log p(z);
- L2 (no noise scale given): m log(RSS / m) - 2 log p(z), the Gaussian likelihood with its noise variance
  profiled out (m: the target's number of points), which weighs the data against the prior without
  inventing a noise level; with many points the data dominate wherever the fit is good.
Without a density (prior none) the objective is the data term alone (chi^2, or RSS).
"""

from __future__ import annotations

import torch
from torch import Tensor

from funcae_cli.data.normalize import TRANSFORMS
from funcae_cli.errors import InputError
from funcae_cli.inversion.density import CodeDensity
from funcae_cli.inversion.seeding import invariant_rows, row_sumsq
from funcae_cli.inversion.targets import Targets
from funcae_cli.store.trained import Trained

RSS_FLOOR = 1e-12  # relative to the target's sum of squares: log(RSS) stays finite for an exact fit


def _interp_coords(grid: Tensor, x: Tensor, log_x: bool) -> tuple[Tensor, Tensor]:
    """Left neighbour index and weight of each x (any shape) in the increasing 1-D grid:
    value = c[idx] (1 - w) + c[idx + 1] w."""
    g, q = (grid.log(), x.log()) if log_x else (grid, x)
    idx = (torch.searchsorted(g, q.contiguous(), right=True) - 1).clamp(0, g.shape[0] - 2)
    w = ((q - g[idx]) / (g[idx + 1] - g[idx])).clamp(0.0, 1.0)
    return idx, w


def log_grid(trained: Trained) -> bool:
    """Interpolate in log x on log-spaced grids of families plotted on a log axis (rotation curves)."""
    return bool(trained.family.x_log and float(trained.grid[0]) > 0)


class Problem:
    """The objective of a batch of targets; all tensors on the run's device.

    Row r of a code batch is compared with target `rows[r]` (None: row r with target r), so restarts of one
    target share its data.
    """

    def __init__(self, trained: Trained, targets: Targets, density: CodeDensity | None = None):
        dev = trained.device
        self.model, self.norm, self.device = trained.model, trained.normalizer, dev
        self.chi2 = targets.yerr is not None
        self.n = targets.n
        if targets.x is None:
            self.idx = None
        else:
            idx, w = _interp_coords(trained.grid, targets.x.to(torch.float64), log_grid(trained))
            self.idx, self.w = idx.to(dev), w.to(torch.float32).to(dev)  # (n, m)
        self.mask = None if targets.mask is None else targets.mask.to(dev, torch.float32)  # (n, m)
        self.counts = targets.counts.to(dev, torch.float32)  # (n,)
        self.y = targets.y.to(dev, torch.float32)  # (n, m) family units
        if self.chi2:
            self.inv_err = 1.0 / targets.yerr.to(dev, torch.float32)
        real = self.y if self.mask is None else self.y[self.mask.bool()]
        if self.norm.transform == "log" and not self.chi2 and bool((real <= 0).any()):
            raise InputError(
                f"{targets.source or 'target'}: has values <= 0, but this run was trained on log curves "
                "(data.transform: log); give yerr to fit it by chi^2 in the family's units"
            )
        self.t = self.to_training_space(self.y)  # (n, m); NaN where a chi^2 target is <= 0 on a log run
        if self.mask is not None:
            self.t = torch.where(self.mask.bool(), self.t, 0.0)
        self.density = None if density is None else density.to(dev)
        # Row sums of squares: targets at their own points sum in float64, so a row's value does not depend on the
        # batch's longest target (padded or not: a target alone has no padding); targets on the run's grid all have
        # its width, and a float32 row sum is the same in any batch there (and ~2x cheaper in the search's inner loop).
        own_points = targets.x is not None or self.mask is not None
        self.sumsq = row_sumsq if own_points else (lambda r: r.square().sum(dim=1))
        self.floor = RSS_FLOOR * self.sumsq(self._masked(self.t, None)).clamp_min(1e-30)

    def _rows(self, t: Tensor, rows: Tensor | None) -> Tensor:
        return t if rows is None else t[rows]

    def _masked(self, r: Tensor, rows: Tensor | None) -> Tensor:
        """Zero the padding of (k, m) values of rows `rows`."""
        return r if self.mask is None else r * self._rows(self.mask, rows)

    def at_x(self, c: Tensor, rows: Tensor | None = None) -> Tensor:
        """Curves on the grid -> at each target's points: (n_points,) -> (n, m), or (k, n_points) -> (k, m)
        for rows `rows` (None: row r is target r)."""
        if self.idx is None:
            return c if c.ndim > 1 or rows is None else c.expand(len(rows), -1)
        if c.ndim == 1:
            return c[self.idx] * (1 - self.w) + c[self.idx + 1] * self.w
        idx, w = self._rows(self.idx, rows), self._rows(self.w, rows)
        return c.gather(1, idx) * (1 - w) + c.gather(1, idx + 1) * w

    def to_training_space(self, y: Tensor) -> Tensor:
        """Family units at the observation points -> training space, with mean/std interpolated onto x."""
        mean, std = self.norm.mean, self.norm.std
        if mean.ndim:
            mean, std = self.at_x(mean), self.at_x(std)
        return (TRANSFORMS[self.norm.transform][0](y) - mean) / std

    def decoded(self, z: Tensor) -> Tensor:
        """The decoder's curves of codes z (k, d) on the run's grid, in training space (k, grid)."""
        return invariant_rows(self.model.decode, z)

    def training_residual(self, z: Tensor, rows: Tensor | None, decoded: Tensor | None = None) -> Tensor:
        """(k, m) decoded - target, in training space, padding zeroed (decoded: self.decoded(z), if at hand)."""
        decoded = self.decoded(z) if decoded is None else decoded
        return self._masked(self.at_x(decoded, rows) - self._rows(self.t, rows), rows)

    def fit(self, z: Tensor, rows: Tensor | None = None, decoded: Tensor | None = None) -> Tensor:
        """Decoded curves in family units at the observation points (k, m) (decoded: self.decoded(z), if at
        hand)."""
        return self.at_x(self.norm.decode(self.decoded(z) if decoded is None else decoded), rows)

    def residual(self, z: Tensor, rows: Tensor | None = None, decoded: Tensor | None = None) -> Tensor:
        """(k, m): the data term's residual (training space, or (fit - y) / yerr in family units)."""
        if not self.chi2:
            return self.training_residual(z, rows, decoded)
        fit = self.fit(z, rows, decoded)
        return self._masked((fit - self._rows(self.y, rows)) * self._rows(self.inv_err, rows), rows)

    def data_term(self, z: Tensor, rows: Tensor | None = None, decoded: Tensor | None = None) -> Tensor:
        """(k,) sum of squared residuals: chi^2, or the squared L2 norm in training space."""
        return self.sumsq(self.residual(z, rows, decoded))

    def loss(self, z: Tensor, rows: Tensor | None) -> Tensor:
        """(k,) the objective minimized: -2 log posterior up to a constant (module docstring)."""
        data = self.data_term(z, rows)
        if self.density is None:
            return data
        if not self.chi2:
            m = self._rows(self.counts, rows)
            data = m * torch.log((data + self._rows(self.floor, rows)) / m)
        return data - 2 * self.density.log_prob(z)

    def loss_and_grad(self, z: Tensor, rows: Tensor | None) -> tuple[Tensor, Tensor]:
        """Per-row objective (k,) and its gradient (k, d): one backward pass of the summed objective."""
        with torch.enable_grad():
            zz = z.detach().requires_grad_(True)
            f = self.loss(zz, rows)
            (g,) = torch.autograd.grad(f.sum(), zz)
        return f.detach(), g

    @torch.no_grad()
    def gn_curvature(self, z: Tensor, v: Tensor, rows: Tensor | None, probe: float = 1e-2) -> Tensor:
        """(k,) v' H v with H the Gauss-Newton Hessian of the data term (2 J'J; for the profiled L2 objective
        scaled by m / RSS): sizes the search's first step.

        J v by a secant of the residual over a step of length `probe` along v: two forward passes,
        cheaper here than forward-mode autograd, and a secant over a step's length is what a step needs.
        """
        norm = v.norm(dim=1, keepdim=True).clamp_min(1e-30)
        r0 = self.residual(z, rows)
        jv = (self.residual(z + probe * v / norm, rows) - r0) * (norm / probe)
        curv = 2 * self.sumsq(jv)
        if self.density is not None and not self.chi2:
            m = self._rows(self.counts, rows)
            curv = curv * m / (self.sumsq(r0) + self._rows(self.floor, rows))
        return curv

    @torch.no_grad()
    def metrics(self, z: Tensor, rows: Tensor | None = None) -> dict[str, Tensor]:
        """Per-row figures: fit and rel_l2 (family units), residual_norm (training space L2), chi2, objective
        (the data term reported: residual_norm, or chi2), log_density of the code."""
        decoded = self.decoded(z)  # once for every figure
        fit = self.fit(z, rows, decoded)
        y = self._rows(self.y, rows)
        res_t = self.training_residual(z, rows, decoded)
        data_residual = self.sumsq(self._masked(fit - y, rows)).sqrt()
        out = {
            "fit": fit,
            "residual_norm": self.sumsq(res_t).sqrt(),
            "data_residual": data_residual,
            "rel_l2": data_residual / self.sumsq(self._masked(y, rows)).sqrt().clamp_min(1e-30),
        }
        if self.chi2:
            out["chi2"] = self.data_term(z, rows, decoded)
            out["objective"] = out["chi2"]
        else:
            out["objective"] = out["residual_norm"]
        if self.density is not None:
            out["log_density"] = self.density.log_prob(z)
        return out
