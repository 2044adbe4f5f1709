"""The run's prior over a formula family's parameters, as a log density in natural coordinates.

Natural coordinates u are those of the physics refit (physics.py): log10 of a positive scale parameter, the
value otherwise. A law's density in u includes the Jacobian of that change of variables:
- uniform(low, high): constant in the parameter; for a log-scale parameter p = 10^u the density in u is
  proportional to 10^u (log p(u) = u ln 10 + const);
- loguniform(low, high): constant in log p, so constant in u (zero for a parameter not in log scale would be
  1/p: -ln p);
- normal(mean, std): Gaussian in the parameter (only for parameters whose domain is the real line);
- fixed: the parameter is not free (the refit and the samplers leave it out);
- a structured prior (rotation curves' scaling relations): the first parameter's own law times the density
  of the others given it (formulas.DERIVED_LOG_PRIORS), Gaussian in log10.
Outside a law's support the log density is -inf. Constants are dropped: only differences matter.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor

from funcae_cli.config import FamilyConfig, ParamSpec
from funcae_cli.data.formulas import DERIVED_LOG_PRIORS
from funcae_cli.errors import OptionError

LN10 = math.log(10.0)


def _law(spec: ParamSpec, log_scale: bool) -> Callable[[Tensor], Tensor]:
    """log density of one parameter's law in its natural coordinate u (constants dropped)."""

    def support(u: Tensor, low: float, high: float) -> Tensor:
        lo, hi = (math.log10(low) if low > 0 else -math.inf, math.log10(high)) if log_scale else (low, high)
        return torch.where((u >= lo) & (u <= hi), 0.0, -math.inf)

    if spec.dist == "uniform":
        return lambda u: support(u, spec.low, spec.high) + (LN10 * u if log_scale else 0.0)
    if spec.dist == "loguniform":
        return lambda u: support(u, spec.low, spec.high) - (0.0 if log_scale else torch.log(u.clamp_min(1e-300)))
    if spec.dist == "normal":
        return lambda u: -0.5 * ((u - spec.mean) / spec.std) ** 2
    return lambda u: torch.zeros_like(u)  # fixed: not sampled


def log_prior(fcfg: FamilyConfig) -> Callable[[Tensor], Tensor]:
    """The run's prior as log p(u) for natural coordinates u (k, n_params) -> (k,)."""
    fam = fcfg.family
    if not fam.params:
        raise OptionError("posterior", f"the {fam.name} family has no parameters with a prior: nothing to sample")
    if fam.derives_params(fcfg.options):
        first = _law(fcfg.params[fam.params[0].name], fam.params[0].log_scale)
        rest = DERIVED_LOG_PRIORS[fam.name]
        logs = torch.tensor(fam.log_scale())

        def derived(u: Tensor) -> Tensor:
            log10 = torch.where(logs.to(u.device), u, torch.log10(u.abs().clamp_min(1e-300)))
            return first(u[:, 0]) + rest(log10, fcfg.options)

        return derived
    laws = [_law(fcfg.params[p.name], p.log_scale) for p in fam.params]
    return lambda u: sum(law(u[:, j]) for j, law in enumerate(laws))
