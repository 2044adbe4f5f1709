"""What an amortized posterior (amortized.py) is a posterior of: a space of theta with a prior to draw from, the
curves theta makes at any points, the unnormalized log posterior of theta given an observation (the one mcmc and
laplace sample), and the quantities reported for theta.

- `FormulaSpace`, a family with a formula: its free parameters in natural coordinates (physics.py: log10 of scale
  parameters), the run's prior (prior.py), the formula's chi^2 with yerr.
- `LatentSpace`, a data-only family: the latent code z, the training codes' density as the prior (density.py), the
  decoder's curve linearly interpolated at the observation's points as the likelihood (objective.Problem: the same
  -2 log posterior latent mcmc samples); reported as the data set's parameters through the regressor where it has
  them (as latent mcmc reports them), else as the codes. A flow straight over a data set's parameters would have no
  likelihood to be checked against: only the decoder gives one.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from funcae_cli.config import FamilyConfig
from funcae_cli.data.formulas import CHI2, FORMULAS
from funcae_cli.data.grids import sample_params
from funcae_cli.inversion import seeding
from funcae_cli.inversion.density import CodeDensity
from funcae_cli.inversion.objective import Problem
from funcae_cli.inversion.physics import Bounds, natural_bounds
from funcae_cli.inversion.prior import log_prior
from funcae_cli.inversion.targets import Targets
from funcae_cli.store.trained import Trained

KINDS = ("formula", "latent")  # FlowArgs.space: the space a posterior network was trained over


def _mask(batch: Targets) -> Tensor:
    return batch.mask if batch.mask is not None else torch.ones_like(batch.y, dtype=torch.bool)


@dataclass
class FormulaSpace:
    """The free parameters of a formula family in natural coordinates (module docstring)."""

    fcfg: FamilyConfig
    bounds: Bounds
    log_prior: Callable[[Tensor], Tensor]  # (k, p) natural coordinates -> (k,) (prior.py)
    kind: str = "formula"
    columns: int = 0  # values per draw computed beyond the observation's points (amortized.py sizes chunks by it)

    @classmethod
    def of(cls, trained: Trained) -> FormulaSpace:
        """The run's formula family inside its prior's support, with its prior."""
        return cls(trained.cfg.family, natural_bounds(trained, "prior"), log_prior(trained.cfg.family))

    @property
    def free(self) -> list[bool]:
        return self.bounds.free.tolist()

    def standardization(self) -> tuple[Tensor, Tensor]:
        """(q,) centre and scale of the flow's coordinates: the prior's box (1 where it is unbounded)."""
        lo, hi = self.bounds.low[self.bounds.free], self.bounds.high[self.bounds.free]
        center = torch.where(torch.isfinite(lo + hi), (lo + hi) / 2, 0.0)
        return center, torch.where(torch.isfinite(hi - lo), (hi - lo) / 2, 1.0).clamp_min(1e-6)

    def draw(self, n: int, gen: torch.Generator) -> tuple[Tensor, Tensor]:
        """n draws from the run's prior: (n, q) free natural coordinates and (n, p) what `values` takes (units)."""
        params = sample_params(self.fcfg, n, gen)  # (n, p) family units, float64
        return self.bounds.to_natural(params)[:, self.bounds.free], params

    def values(self, x: Tensor, made: Tensor) -> Tensor:
        """(n, m) float64 curves at points x (n, m) of the parameters `made` (n, p) in the family's units."""
        return FORMULAS[self.fcfg.name](x, made, self.fcfg.options)

    def _full(self, u: Tensor) -> Tensor:
        full = self.bounds.low.to(u.dtype).expand(*u.shape[:-1], -1).clone()
        full[..., self.bounds.free] = u
        return full

    def log_posterior(self, batch: Targets, u: Tensor) -> Tensor:
        """The unnormalized log posterior (n, S) of draws u (n, S, q): the run's prior + -chi^2 / 2 of the
        formula at each target's own points (float32 likelihood, as the samplers')."""
        n, s, q = u.shape
        full = self._full(u.reshape(-1, q))
        lp = self.log_prior(full.double()).reshape(n, s)
        params = self.bounds.to_units(full).float()
        inside = torch.isfinite(lp)  # draws outside the prior: the likelihood skips them
        chi2 = self._fused_chi2(batch, params, s, inside.reshape(-1))
        if chi2 is None:
            x = batch.x.float().repeat_interleave(s, dim=0)
            f = FORMULAS[self.fcfg.name](x, params, self.fcfg.options).reshape(n, s, -1)
            w = _mask(batch).float()
            r = (f - batch.y[:, None, :]) / batch.yerr[:, None, :] * w[:, None, :]
            chi2 = seeding.row_sumsq(r.reshape(n * s, -1)).double()  # the padding's width plays no part
        chi2 = chi2.reshape(n, s)
        return torch.where(inside & torch.isfinite(chi2), lp - 0.5 * chi2, -math.inf)

    def _fused_chi2(self, batch: Targets, params: Tensor, s: int, active: Tensor) -> Tensor | None:
        """chi^2 (n S,) of S draws per target from the family's fused native pass (formulas.CHI2), the padding
        weighted 0 (skipped), the draws not `active` (outside the prior) skipped; or None where it has none that
        serves."""
        fused = CHI2.get(self.fcfg.name)
        if fused is None:
            return None
        n, m = batch.y.shape
        start = (torch.arange(n) * m).repeat_interleave(s)
        w = (_mask(batch).float() / batch.yerr.float()).reshape(-1)
        x, y = batch.x.float().reshape(-1), batch.y.float().reshape(-1)
        return fused(params, start, torch.full_like(start, m), x, y, w, active)

    def units(self, u: Tensor) -> Tensor:
        """(n, S, q) draws -> (n, S, p) the family's parameters in its units."""
        return self.bounds.to_units(self._full(u))

    def coordinates(self, params: Tensor) -> Tensor:
        """(n, p) the family's parameters in its units -> (n, q) the free natural coordinates the flow samples."""
        return self.bounds.to_natural(params.double())[:, self.bounds.free]


@dataclass
class LatentSpace:
    """The latent code of a data-only family's run (module docstring)."""

    trained: Trained
    density: CodeDensity
    predict: Callable[[Tensor], Tensor] | None  # codes (k, d) -> parameters (k, p) (the regressor), or None
    kind: str = "latent"

    @property
    def columns(self) -> int:
        """Values per draw beyond the observation's points: the decoded curve on the run's grid, and the decoder's
        widest layer."""
        m = self.trained.cfg.model
        return max(int(self.trained.grid.shape[0]), *(m.decoder_hidden or m.hidden))

    @property
    def free(self) -> list[bool]:
        return [True] * int(self.density.means.shape[1])

    def standardization(self) -> tuple[Tensor, Tensor]:
        """(d,) the training codes' density's mean and standard deviation."""
        mean, sd = self.density.moments()
        return mean, sd.clamp_min(1e-6)

    def draw(self, n: int, gen: torch.Generator) -> tuple[Tensor, Tensor]:
        """n codes from the training codes' density, (n, d) float64, twice (they are also what `values` takes)."""
        z = self.density.sample(n, gen)
        return z, z

    def values(self, x: Tensor, z: Tensor) -> Tensor:
        """(n, m) float64: the decoded curves of codes z (n, d) at points x (n, m), as the likelihood sees them."""
        at = Targets(torch.ones(x.shape, dtype=torch.float32), x, None, None)  # y unused (ones: valid on log runs)
        with torch.no_grad():
            return Problem(self.trained, at).fit(z.float().to(self.trained.device)).double().cpu()

    def log_posterior(self, batch: Targets, z: Tensor) -> Tensor:
        """The unnormalized log posterior (n, S) of codes z (n, S, d): -1/2 the latent search's objective (chi^2 of
        the decoded curve at the points, -2 log density), as latent mcmc samples it."""
        n, s, d = z.shape
        problem = Problem(self.trained, batch, self.density)
        rows = torch.arange(n, device=problem.device).repeat_interleave(s)
        with torch.no_grad():
            loss = problem.loss(z.reshape(-1, d).to(problem.device, torch.float32), rows)
        lp = -0.5 * loss.double().cpu().reshape(n, s)
        return torch.where(torch.isfinite(lp), lp, -math.inf)

    def coordinates(self, z: Tensor) -> Tensor:
        """(n, d) codes: already what the flow samples."""
        return z.double()

    def units(self, z: Tensor) -> Tensor:
        """(n, S, d) codes -> (n, S, p) parameters through the regressor, or the codes without parameters."""
        if self.predict is None:
            return z
        return self.predict(z.reshape(-1, z.shape[2])).reshape(z.shape[0], z.shape[1], -1).to(z.dtype)
