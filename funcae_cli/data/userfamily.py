"""Checks of a user's formula family before any data is made: one-line errors naming the family and what is wrong.

On DRAWS parameter rows from the config's prior (random draws, plus the lower and upper ends of every uniform or
log-uniform law) and the config's grid, the function must: run; return a tensor of shape (rows, points); give
finite values; give each point's value from that point and its row alone (the physics refit evaluates one point at
a time); and, unless its declaration says `differentiable=False`, have finite, not identically zero derivatives
by every parameter the prior does not fix (torch.autograd, as the physics refit takes them).
"""

from __future__ import annotations

import torch
from torch import Tensor

from funcae_cli.config import Config
from funcae_cli.config.families import Family
from funcae_cli.data.formulas import rows
from funcae_cli.data.grids import make_grid, sample_params
from funcae_cli.errors import ConfigError

DRAWS = 64  # random prior draws the function is checked on
CHECK_SEED = 12345  # the draws do not depend on the run's seed: the same config, the same verdict
POINTWISE_RTOL = 1e-6  # per-point and whole-grid evaluations agree to this (float64; both are the same formula)


def _bad(fam: Family, what: str) -> ConfigError:
    return ConfigError([f"family {fam.name!r} ({fam.origin}): {what}"])


def _row(fam: Family, params: Tensor, i: int) -> str:
    return ", ".join(f"{n}={float(v):.6g}" for n, v in zip(fam.param_names, params[i]))


def _call(fam: Family, x: Tensor, params: Tensor) -> Tensor:
    try:
        return fam.function(rows(x), *params[:, :, None].unbind(dim=1))
    except Exception as e:  # the user's code: any error is theirs, reported in one line
        text = (str(e).strip().splitlines() or [""])[0]
        raise _bad(fam, f"the function raised {type(e).__name__}: {text} (at {_row(fam, params, 0)})") from None


def check_points(cfg: Config) -> Tensor:
    """The rows the family is checked on: DRAWS prior draws, then each law's lower and upper ends (n, p)."""
    gen = torch.Generator().manual_seed(CHECK_SEED)
    draws = sample_params(cfg.family, DRAWS, gen)
    ends = []
    for side in ("low", "high"):
        row = draws[0].clone()
        for j, p in enumerate(cfg.family.family.params):
            spec = cfg.family.params[p.name]
            if spec.dist in ("uniform", "loguniform"):
                row[j] = getattr(spec, side)
        ends.append(row)
    return torch.cat([draws, torch.stack(ends)])


def check_user_family(cfg: Config) -> None:
    """Raise a ConfigError (exit 2) naming the family and the problem; nothing for a built-in family."""
    fam = cfg.family.family
    if fam.function is None:
        return
    grid = make_grid(cfg.grid).to(torch.float64)
    params = check_points(cfg)
    n, m = params.shape[0], grid.shape[0]
    out = _call(fam, grid, params)
    if not isinstance(out, Tensor):
        raise _bad(fam, f"the function returned a {type(out).__name__}, expected a torch tensor of shape ({n}, {m})")
    if tuple(out.shape) != (n, m):
        raise _bad(
            fam,
            f"the function returned shape {tuple(out.shape)} for {n} parameter rows on {m} grid points, expected "
            f"({n}, {m}): x arrives as (1, {m}), each parameter as ({n}, 1)",
        )
    finite = torch.isfinite(out)
    if not finite.all():
        i, k = (int(v) for v in torch.nonzero(~finite)[0])
        raise _bad(
            fam,
            f"{float(out[i, k])} at x={float(grid[k]):.6g} with {_row(fam, params, i)}, inside the prior: narrow the "
            "priors (family.params) or the grid, or fix the function",
        )
    per_point = _call(fam, grid.repeat(n)[:, None], params.repeat_interleave(m, dim=0))  # (n m, 1)
    if tuple(per_point.shape) != (n * m, 1) or not torch.allclose(
        per_point.reshape(n, m), out, rtol=POINTWISE_RTOL, atol=POINTWISE_RTOL * float(out.abs().max())
    ):
        raise _bad(
            fam,
            "each value must depend only on its own x and its row's parameters (no sums, sorts or shapes over the "
            "grid): the physics refit evaluates one point at a time",
        )
    if fam.differentiable:
        _check_derivatives(fam, cfg, grid, params)


def _check_derivatives(fam: Family, cfg: Config, grid: Tensor, params: Tensor) -> None:
    hint = "; or declare UserFamily(differentiable=False) to invert without the refit's derivatives"
    p = params.clone().requires_grad_(True)
    weights = torch.rand(params.shape[0], grid.shape[0], generator=torch.Generator().manual_seed(CHECK_SEED))
    try:
        out = _call(fam, grid, p)
        (grad,) = torch.autograd.grad((out * weights.to(out.dtype)).sum(), p, allow_unused=True)
    except RuntimeError as e:
        text = (str(e).strip().splitlines() or [""])[0]
        raise _bad(fam, f"no derivatives by its parameters (torch.autograd: {text}){hint}") from None
    grad = torch.zeros_like(p) if grad is None else grad
    for j, name in enumerate(fam.param_names):
        if cfg.family.params[name].dist == "fixed":
            continue
        if not torch.isfinite(grad[:, j]).all():
            i = int(torch.nonzero(~torch.isfinite(grad[:, j]))[0])
            raise _bad(fam, f"non-finite derivative by {name} at {_row(fam, params, i)}{hint}")
        if not grad[:, j].any():
            raise _bad(fam, f"derivative by {name} is zero on every prior draw (not differentiable by torch?){hint}")
