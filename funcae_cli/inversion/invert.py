"""Use a trained decoder: encode curves, invert curves to latent codes, estimate physical parameters.

Inversion finds the code z whose decoded curve best matches a target. The targets of a chunk (and all their
random restarts) are optimized together as ONE tensor problem: the objective (objective.py) is the sum
of the per-target objectives, so each target's gradient is its own, and the optimizers (search.py)
keep per-target state (step sizes, curvature pairs, convergence). A catalogue runs chunk by chunk
(`chunk_targets`), so memory grows with the chunk, not the catalogue; a target's answer does not depend on its
chunk (seeding.py: its own random numbers; row sums and products whose rounding does not depend on the batch's
width or length; powers through data/powers.py, since torch.pow's last bits depend on the array's length on
some CPUs. A user's formula that calls torch.pow may still differ in the last bits between batches).
Methods (`METHODS`):

- `encoder`: the encoder's code, nothing else.
- `lbfgs` (default): from the encoder's code, batched L-BFGS with a per-target backtracking line search.
- `adam`: from the encoder's code, Adam on the batch for `max_iter` steps, keeping each target's best.
- `nelder-mead`: scipy's Nelder-Mead, one target at a time, a numpy round trip per evaluation, as
  notebook 000 did; for comparison (benchmarks/baselines.py's `notebook_nelder_mead` starts from z = 0 as the
  notebook).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, fields
from typing import Any

import numpy as np
import torch
from torch import Tensor

from funcae_cli.config import InvertConfig
from funcae_cli.errors import InputError, OptionError
from funcae_cli.inversion import amortized, seeding
from funcae_cli.inversion.assess import NAMED_IN_WARNING, Assessment, assess
from funcae_cli.inversion.density import CodeDensity
from funcae_cli.inversion.encode import encode_curves, targets_on_grid
from funcae_cli.inversion.ensemble import Independent
from funcae_cli.inversion.flow_spaces import FormulaSpace, LatentSpace
from funcae_cli.inversion.laplace_check import flag_unreliable
from funcae_cli.inversion.objective import Problem
from funcae_cli.inversion.physics import Bounds, Fitter, Observations, PhysicsFit, fit_physics, natural_bounds
from funcae_cli.inversion.posterior import (
    Posterior,
    Sampling,
    flag_multimodal,
    laplace_covariance,
    latent_gaussian,
    latent_posterior,
    physics_posterior,
    with_rows,
)
from funcae_cli.inversion.prior import log_prior
from funcae_cli.inversion.regressor import LatentModel
from funcae_cli.inversion.search import adam, lbfgs
from funcae_cli.inversion.targets import Targets
from funcae_cli.store.trained import Trained

METHODS = ("encoder", "lbfgs", "adam", "nelder-mead")
CHUNK_ROWS = 8192  # optimization rows (targets x starts) per tensor problem: bounds device memory
# The point estimates run in chunks of targets (invert_batch): at most CHUNK_TARGETS targets and CHUNK_POINTS padded
# points per chunk, so their working memory (the physics refit's 1 + 32 candidate starts: ~12 KB per point, ~0.4 GB
# a chunk) is bounded. Measured on two-point curves (50k, 2 CPU cores): 16384 targets a chunk ran 10% faster than
# one batch, 4096 25% slower.
CHUNK_TARGETS = 16384
CHUNK_POINTS = 32768

# --- random starts ------------------------------------------------------------------------------


def random_starts(trained: Trained, lm: LatentModel | None, k: int, seeds: Tensor) -> Tensor:
    """(k, n, d) starting codes from the latent distribution: the prior N(0, I) for a VAE, training codes for an
    AE; target i's from its own seed seeds[i] (seeding.py), so they do not depend on the batch."""
    d, n = trained.model.args.latent_dim, seeds.shape[0]
    if k == 0:
        return torch.empty(0, n, d)
    if trained.model.args.kind == "vae" or lm is None:
        return seeding.normal(seeds, "latent", (k, d)).float().transpose(0, 1)
    return lm.codes[seeding.integers(seeds, "latent", lm.codes.shape[0], (k,)).T]


# --- inversion -------------------------------------------------------------------------------


@dataclass
class InvertResult:
    """Per-target results (arrays over targets), plus the batch's totals."""

    method: str
    objective_kind: str  # "l2" (norm in training space) or "chi2"
    z: np.ndarray  # (n, d)
    objective: np.ndarray  # (n,) the decoder's fit: L2 norm in training space, or chi^2
    residual_norm: np.ndarray  # (n,) L2 norm of (target - fit) in training space
    data_residual: np.ndarray  # (n,) ||fit - target|| in the family's units
    rel_l2: np.ndarray  # (n,) ||fit - target|| / ||target|| in the family's units
    encoder_z: np.ndarray  # (n, d) the encoder's code
    encoder_objective: np.ndarray  # (n,) objective at the encoder's code
    encoder_rel_l2: np.ndarray  # (n,)
    iterations: np.ndarray  # (n,) of the winning start
    converged: np.ndarray  # (n,) bool
    start: np.ndarray  # (n,) winning start: 0 = the encoder's code, k = k-th random start
    seconds: np.ndarray  # (n,) per target; amortized (batch time / n) for the batched methods
    fit: np.ndarray  # (n, m) decoded curve in family units at the observation points
    total_seconds: float
    chi2: np.ndarray | None = None  # (n,) the decoder's chi^2, with yerr
    reduced_chi2: np.ndarray | None = None  # (n,) at the reported parameters (physics), else the decoder's
    params_est: np.ndarray | None = None  # (n, n_params) the reported parameters (see params_source)
    params_source: str = "none"  # "physics" (the family's formula fitted), "regressor" (from the code), "none"
    regressor_params: np.ndarray | None = None  # (n, n_params) the regressor's estimate from the code
    physics: PhysicsFit | None = None  # the refit, for families with a formula
    physics_objective: np.ndarray | None = None  # (n,) chi^2, or L2 norm in the family's units, at params_est
    decoder_physics_objective: np.ndarray | None = None  # (n,) the decoder's fit in the same measure
    p_value: np.ndarray | None = None  # (n,) of reduced_chi2
    log_density: np.ndarray | None = None  # (n,) of the code under the training codes' density
    density_percentile: np.ndarray | None = None  # (n,) fraction of training codes less dense
    assessment: Assessment | None = None  # flags and warnings
    posterior: Posterior | None = None  # with posterior laplace or mcmc
    prior: str = "none"  # the latent prior used: density or none
    starts: int = 0

    @property
    def n(self) -> int:
        return int(self.z.shape[0])

    @property
    def targets_per_second(self) -> float:
        return self.n / max(self.total_seconds, 1e-12)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _as_targets(targets: Targets | Tensor | np.ndarray) -> Targets:
    """Curves (n, m) (or one curve (m,)) in family units on the run's grid, as Targets; Targets as they are."""
    if isinstance(targets, Targets):
        return targets
    y = torch.as_tensor(np.asarray(targets) if not isinstance(targets, Tensor) else targets, dtype=torch.float32)
    y = y.reshape(-1, y.shape[-1])
    return Targets(y, names=[f"target {i}" for i in range(y.shape[0])], source="array")


def _np(t: Tensor) -> np.ndarray:
    return t.detach().cpu().numpy()


def invert_batch(
    trained: Trained,
    targets: Targets | Tensor | np.ndarray,
    options: InvertConfig | None = None,
    latent_model: LatentModel | None = None,
    flow: amortized.PosteriorNet | None = None,
    chunk: int | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> InvertResult:
    """Invert many targets at once.

    targets: a Targets (observed points, errors, masks), or curves (n, m) in family units on the run's grid.
    options: how to invert, a checked record (config.override; default: the run's `invert` section); its seed
    None is the run's seed. `starts`: random restarts per target from the latent distribution (AE: the training
    codes, which need `latent_model`; VAE: the prior); the best of the encoder's code and the restarts is kept.
    `physics`: for families with a formula, refit the parameters with the formula itself (physics.py) from the
    regressor's estimate, inside `bounds`; the reported parameters are the refit's. `posterior`: laplace or mcmc
    (posterior.py) adds each target's posterior.
    latent_model: the run's latent model (jobs.fitted.latent_model_for): the parameter estimates, AE restarts and,
    with prior "density", the codes' density as the latent search's prior. None: none of them.
    flow: the run's posterior network (posterior "amortized"; jobs.amortize.load_flow).
    chunk: targets solved together (default: `chunk_targets`, CHUNK_POINTS padded points): the point estimates
    (encoder, latent search, physics refit) run chunk by chunk, so their working memory grows with the chunk, not
    the catalogue; every target's numbers are its own (seeding.py), the same in any chunking (the latent search bit
    for bit, the regressor, density and refit to rounding: module docstring). The flags and warnings, and a
    posterior, see every target (mcmc samples them in pools that bound its memory: ensemble.sample).
    progress: called with (targets sampled, targets) as mcmc's targets finish; None: not called.
    """
    o = options or trained.cfg.invert
    seed = trained.cfg.seed if o.seed is None else o.seed
    posterior = o.posterior
    sampling = Sampling.of(o, progress)
    targets = _as_targets(targets)
    if targets.x is None and targets.y.shape[1] != trained.grid.shape[0]:
        raise InputError(f"targets have {targets.y.shape[1]} points but the run's grid has {trained.grid.shape[0]}")
    density = latent_model.density if latent_model is not None and o.prior == "density" else None
    bounds_ = natural_bounds(trained, o.bounds) if o.physics and trained.family.has_formula else None
    if posterior != "none" and bounds_ is not None and not trained.family.differentiable:
        raise OptionError(
            "posterior",
            f"{posterior} needs the formula's derivatives; family {trained.family.name} declares "
            "differentiable=False (use none, or --no-physics for the decoder's posterior)",
        )
    if posterior in ("mcmc", "amortized", "auto") and targets.yerr is None:  # checked before any work
        raise OptionError("posterior", f"{posterior} needs one-sigma errors (yerr) for its likelihood; give curves "
                          "with yerr")  # fmt: skip
    # what a posterior samples (flow_spaces.KINDS): the formula's parameters where the refit runs, and an amortized
    # one wherever the family has a formula (the refit only gives its second look a centre); else the codes
    formula = trained.family.has_formula and bool(trained.family.params)
    space = "formula" if bounds_ is not None or (formula and posterior in ("amortized", "auto")) else "latent"
    if posterior != "none" and space == "latent" and density is None:
        raise OptionError("posterior", "a latent posterior needs the codes' density as its prior (prior: density)")
    if posterior in ("amortized", "auto") and flow is None:
        raise OptionError("posterior", f"{posterior} needs the run's posterior network (train it with "
                          "`funcae amortize RUN`)")  # fmt: skip
    if posterior in ("amortized", "auto") and flow.args.space != space:
        raise OptionError("posterior", f"{posterior}: the run's posterior network is over the {flow.args.space} "
                          f"space, the posterior over the {space} one: train it again (`funcae amortize RUN "
                          "--force`)")  # fmt: skip
    if flow is not None and flow.args.space != space:
        flow = None  # not mcmc's proposal either: it proposes in another space
    dev = trained.device
    _sync(dev)
    t0 = time.perf_counter()
    n = targets.n
    step = chunk_targets(targets.y.shape[1]) if chunk is None else max(1, int(chunk))
    parts = [
        _point_estimates(trained, targets.subset(slice(a, a + step)), o, seed, latent_model, density, bounds_)
        for a in range(0, n, step)
    ]
    out = _concat([p for p, _ in parts])
    seeds = None if parts[0][1] is None else torch.cat([s for _, s in parts])
    _assess(trained, targets, out, density)
    if posterior != "none":
        proposer = None if o.proposal == "none" else flow  # mcmc's independence proposal, where it samples
        if posterior in ("amortized", "auto"):  # the flow's draws, importance-checked (inversion/amortized.py)
            if space == "formula":  # --no-physics: no fit to centre the second look's Laplace on
                fspace: amortized.Space = FormulaSpace.of(trained)
                laplace = _laplace_at_fits(trained, targets, out.params_est, dev) if out.physics is not None else None
            else:
                fspace = LatentSpace(trained, density, _predictor(trained, latent_model))
                laplace = _latent_laplace(trained, targets, out.z, density)
            out.posterior, check = amortized.amortized_posterior(
                flow,
                fspace,
                targets,
                o.draws,
                o.check or posterior == "auto",
                seeds,
                _names(trained, out, space),
                laplace,
                _fits(fspace, out, space),
            )
            amortized.flag(out.assessment.flags, check)
            if posterior == "auto":
                _mcmc_where_flagged(trained, targets, out, sampling, seeds, dev, space, proposer, density, latent_model)
                flag_multimodal(out.assessment.flags, out.posterior.multimodal)
            else:
                out.posterior.warnings.extend(check.warnings)
        else:
            proposal = _flow_proposal(proposer, targets, out, posterior)
            out.posterior = _posterior(trained, targets, out, density, latent_model, posterior, sampling, seeds,
                                       proposal)  # fmt: skip
            flag_unreliable(out.assessment.flags, out.posterior.k_hat)
            flag_multimodal(out.assessment.flags, out.posterior.multimodal)
        out.assessment.warnings.extend(out.posterior.warnings)
    _sync(dev)
    out.total_seconds = time.perf_counter() - t0
    if out.method != "nelder-mead":  # nelder-mead times each target; the batched methods share the batch's time
        out.seconds = np.full(n, out.total_seconds / max(n, 1))
    return out


def chunk_targets(width: int) -> int:
    """Targets per chunk of the point estimates for targets padded to `width` points: CHUNK_POINTS padded points,
    at most CHUNK_TARGETS targets (jobs.sizing estimates their working set)."""
    return max(1, min(CHUNK_TARGETS, CHUNK_POINTS // max(width, 1)))


def _raise_nonpositive(trained: Trained, targets: Targets, y_grid: Tensor) -> Tensor:
    """On a log run with chi^2 targets, each target's values on the grid that are <= 0 (noisy data may dip there;
    only the encoder's start needs log) raised to that target's own smallest positive value on the grid (1e-30
    where it has none): a target's start never depends on the other targets of its batch."""
    if trained.normalizer.transform != "log" or targets.yerr is None:
        return y_grid
    positive = y_grid > 0
    if bool(positive.all()):
        return y_grid
    low = torch.where(positive, y_grid, torch.full_like(y_grid, math.inf)).amin(dim=1, keepdim=True)
    low = torch.where(torch.isfinite(low), low, torch.full_like(low, 1e-30))
    return torch.where(positive, y_grid, low)


def _point_estimates(
    trained: Trained, targets: Targets, o: InvertConfig, seed: int, latent_model: LatentModel | None,
    density: CodeDensity | None, bounds: Bounds | None,
) -> tuple[InvertResult, Tensor | None]:  # fmt: skip
    """One chunk's codes, fits and parameters (no flags, no posterior), and its targets' seeds (None when nothing
    is drawn)."""
    method, starts, dev = o.method, o.starts, trained.device
    problem = Problem(trained, targets, density)
    n = targets.n
    y_grid = _raise_nonpositive(trained, targets, targets_on_grid(trained, targets))
    z_enc = encode_curves(trained, y_grid)  # (n, d)
    draws = starts > 0 or bounds is not None or o.posterior != "none"  # the hash costs ~0.1 ms per 1000-point target
    seeds = seeding.seeds_of_curves(seed, targets.y, targets.x, targets.yerr, targets.mask) if draws else None
    starts_z = random_starts(trained, latent_model, starts, seeds) if starts else z_enc.new_empty(0, n, z_enc.shape[1])
    zs = torch.cat([z_enc[None], starts_z.to(dev)])  # (1+K, n, d); seeds: (n,) per target, from its own data
    seconds = np.zeros(n)
    if method == "encoder":
        z_best = z_enc
        iters = torch.zeros(n, dtype=torch.int64)
        conv = torch.ones(n, dtype=torch.bool)
        start = torch.zeros(n, dtype=torch.int64)
    elif method == "nelder-mead":
        z_best, iters, conv, start, seconds = _nelder_mead_all(problem, zs, o.max_iter)
    else:
        z_best, iters, conv, start = _batched(problem, zs, method, o.max_iter, o.lr)
    m_enc = problem.metrics(z_enc)
    m = m_enc if z_best is z_enc else problem.metrics(z_best)  # method encoder: the same codes, measured once
    out = InvertResult(
        method=method,
        objective_kind="chi2" if problem.chi2 else "l2",
        z=_np(z_best).astype(np.float64),
        objective=_np(m["objective"]).astype(np.float64),
        residual_norm=_np(m["residual_norm"]).astype(np.float64),
        data_residual=_np(m["data_residual"]).astype(np.float64),
        rel_l2=_np(m["rel_l2"]).astype(np.float64),
        encoder_z=_np(z_enc).astype(np.float64),
        encoder_objective=_np(m_enc["objective"]).astype(np.float64),
        encoder_rel_l2=_np(m_enc["rel_l2"]).astype(np.float64),
        iterations=_np(iters),
        converged=_np(conv),
        start=_np(start),
        seconds=seconds,
        fit=_np(m["fit"]),
        total_seconds=0.0,
        chi2=_np(m["chi2"]).astype(np.float64) if problem.chi2 else None,
        prior=o.prior if density is not None else "none",
        starts=starts,
    )
    if latent_model is not None:
        out.regressor_params = latent_model.predict(z_best).numpy()
        out.params_est, out.params_source = out.regressor_params, "regressor"
    if density is not None:
        logp = density.log_prob(z_best.double())
        out.log_density, out.density_percentile = _np(logp), _np(density.percentile(logp))
    _estimate_physics(trained, targets, out, bounds, o.physics_starts, o.physics_max_iter, seeds, dev,
                      alternatives=o.posterior in ("mcmc", "auto"))  # fmt: skip
    return out, seeds


def _concat(parts: list[Any]) -> Any:
    """The chunks' results (InvertResult, or their PhysicsFit) as one: arrays over targets concatenated, the rest
    from the first chunk."""
    first = parts[0]
    if len(parts) == 1:
        return first
    merged = {}
    for f in fields(first):
        v = getattr(first, f.name)
        if isinstance(v, np.ndarray):
            v = np.concatenate([getattr(p, f.name) for p in parts])
        elif isinstance(v, PhysicsFit):
            v = _concat([getattr(p, f.name) for p in parts])
        merged[f.name] = v
    return type(first)(**merged)


def _estimate_physics(
    trained: Trained, targets: Targets, out: InvertResult, bounds: Bounds | None, starts: int, max_iter: int,
    seeds: Tensor, dev: torch.device, alternatives: bool = False,
) -> None:  # fmt: skip
    """The family's formula fitted to every target from the regressor's estimate (when there is a formula).
    alternatives: the refit's other starts run to their ends too (for mcmc, whose ensembles start there)."""
    if bounds is None:
        return
    obs = Observations.of(
        targets.x if targets.x is not None else trained.grid, targets.y, targets.yerr, targets.mask, dev
    )
    estimate = out.regressor_params if out.regressor_params is not None else None
    if estimate is None:  # no latent model: start in the middle of the bounds
        estimate = bounds.to_units(torch.where(torch.isfinite(bounds.low + bounds.high), (bounds.low + bounds.high) / 2,
                                               0.0))[None].expand(targets.n, -1).numpy()  # fmt: skip
    fit = fit_physics(trained, obs, torch.as_tensor(estimate), bounds, starts, max_iter, seeds=seeds,
                      alternatives=alternatives)  # fmt: skip
    out.physics, out.params_est, out.params_source = fit, fit.params, "physics"
    out.physics_objective = fit.objective if obs.chi2 else np.sqrt(fit.objective)
    decoder = torch.as_tensor(out.fit, dtype=torch.float64)
    keep = torch.ones_like(targets.y, dtype=torch.bool) if targets.mask is None else targets.mask
    resid = (decoder - targets.y.double())[keep] * obs.weight.cpu()
    sums = torch.zeros(targets.n, dtype=torch.float64).index_add_(0, obs.target.cpu(), resid.square()).numpy()
    out.decoder_physics_objective = sums if obs.chi2 else np.sqrt(sums)


def _flow_proposal(
    flow: amortized.PosteriorNet | None, targets: Targets, out: InvertResult, kind: str
) -> Independent | None:
    """mcmc's independence proposal (ensemble.Independent): the run's posterior network where it was given (and
    invert.proposal is not none) over the space mcmc samples (the formula's parameters, or the codes); else None."""
    if flow is None or kind != "mcmc":
        return None
    return amortized.flow_proposal(flow, targets)


def _mcmc_where_flagged(
    trained: Trained, targets: Targets, out: InvertResult, sampling: Sampling, seeds: Tensor, dev: torch.device,
    space: str, flow: amortized.PosteriorNet | None = None, density: CodeDensity | None = None,
    latent_model: LatentModel | None = None,
) -> None:  # fmt: skip
    """posterior auto: the targets whose amortized posterior is flagged (k-hat >= KHAT_MAX, draws that miss the
    mode, off the flow's training range, off_manifold: amortized.flag) get mcmc instead, in place of their rows;
    their amortized flags are dropped (their intervals are mcmc's). Each target's chains come from its own seed,
    so a target's answer is the one mcmc gives it alone. space: what the amortized posterior sampled (the
    formula's parameters, their walkers starting at the refit's, or the regressor's estimates under --no-physics;
    or the codes)."""
    sent = {amortized.FLAG, amortized.OFF_RANGE, amortized.MISSED_MODE}
    rows = np.array([i for i, f in enumerate(out.assessment.flags) if sent & set(f)], dtype=np.int64)
    if rows.size == 0:
        return
    idx = torch.as_tensor(rows)
    sub = targets.subset(idx)
    proposal = None if flow is None else amortized.flow_proposal(flow, sub)
    if space == "formula":
        obs = Observations.of(sub.x if sub.x is not None else trained.grid, sub.y, sub.yerr, sub.mask, dev)
        alt = out.physics.alternatives if out.physics is not None else None
        mc = _physics_posterior(trained, obs, out.params_est[rows], None if alt is None else alt[rows], "mcmc",
                                sampling, sub.names, seeds[idx], proposal)  # fmt: skip
    else:
        z = torch.as_tensor(out.z[rows], dtype=torch.float32, device=dev)
        mc = latent_posterior(Problem(trained, sub, density), z, "mcmc", sampling, _predictor(trained, latent_model),
                              _names(trained, out, space), sub.names, seeds[idx], proposal)  # fmt: skip
    out.posterior = with_rows(out.posterior, rows, mc, "auto")
    out.posterior.proposal = mc.proposal
    for i in rows:
        out.assessment.flags[i] = [f for f in out.assessment.flags[i] if f not in sent]
    shown = ", ".join(targets.names[i] for i in rows[:NAMED_IN_WARNING])
    more = f" and {rows.size - NAMED_IN_WARNING} more" if rows.size > NAMED_IN_WARNING else ""
    out.posterior.warnings.append(
        f"posterior auto: {rows.size} of {targets.n} targets ({shown}{more}) were sampled by mcmc: the amortized "
        f"posterior's check flagged them (Pareto k-hat >= {amortized.KHAT_MAX}, off its training range, or "
        "off_manifold); their rows say posterior_source mcmc"
    )


def _fitter_at(trained: Trained, obs: Observations, params: np.ndarray) -> tuple[Fitter, Tensor]:
    """The formula's fitter of `obs` inside the prior's support (where the walkers start) and the fits `params`
    (n, p) in the family's units as its free natural coordinates (n, q), inside its box."""
    bounds = natural_bounds(trained, "prior")
    fitter = Fitter(trained, obs, bounds)
    u = bounds.to_natural(torch.as_tensor(params)).to(obs.x.device)[:, fitter.free]
    return fitter, torch.maximum(torch.minimum(u, fitter.hi), fitter.lo)


def _fits(fspace: amortized.Space, out: InvertResult, space: str) -> Tensor | None:
    """Each target's point estimate in the flow's coordinates (the amortized check's MISSED_MODE test): the reported
    parameters (the physics fit, or the regressor's), or for a data-only family the latent search's code."""
    est = out.params_est if space == "formula" else out.z
    return None if est is None else fspace.coordinates(torch.as_tensor(np.asarray(est, dtype=np.float64)))


def _laplace_at_fits(
    trained: Trained, targets: Targets, params: np.ndarray, dev: torch.device
) -> Callable[[Tensor], tuple[Tensor, Tensor]]:
    """rows (r,) of targets -> Laplace's Gaussian at their fits: means (r, q) and covariances (r, q, q) in free
    natural coordinates (the amortized check's second proposal: amortized.py)."""

    def gaussian(rows: Tensor) -> tuple[Tensor, Tensor]:
        sub = targets.subset(rows)
        obs = Observations.of(sub.x if sub.x is not None else trained.grid, sub.y, sub.yerr, sub.mask, dev)
        fitter, u = _fitter_at(trained, obs, params[rows.numpy()])
        return u, laplace_covariance(fitter, u, log_prior(trained.cfg.family))

    return gaussian


def _physics_posterior(
    trained: Trained, obs: Observations, params: np.ndarray, alternatives: np.ndarray | None, kind: str,
    sampling: Sampling, names: list[str], seeds: Tensor, proposal: Independent | None = None,
) -> Posterior:  # fmt: skip
    """The posterior of the formula's parameters of the targets of `obs`, from their fits `params` (n, p) in the
    family's units and the refit's other optima (n, k, p) natural, or None; inside the prior's support. proposal:
    mcmc's independence proposal (the run's flow), or None."""
    fitter, u = _fitter_at(trained, obs, params)
    alt = None if alternatives is None else torch.as_tensor(alternatives)[:, :, fitter.free].to(obs.x.device)
    return physics_posterior(fitter, u, log_prior(trained.cfg.family), kind, sampling, trained.param_names, names,
                             seeds, alt, proposal)  # fmt: skip


def _posterior(
    trained: Trained, targets: Targets, out: InvertResult, density: CodeDensity | None,
    latent_model: LatentModel | None, kind: str, sampling: Sampling, seeds: Tensor,
    proposal: Independent | None = None,
) -> Posterior:  # fmt: skip
    """The posterior of the formula's parameters (families with one), else of the latent codes; every draw of
    target i from seeds[i] (seeding.py). proposal: mcmc's independence proposal of the formula's parameters."""
    dev = trained.device
    if out.physics is not None:
        obs = Observations.of(targets.x if targets.x is not None else trained.grid, targets.y, targets.yerr,
                              targets.mask, dev)  # fmt: skip
        return _physics_posterior(trained, obs, out.params_est, out.physics.alternatives, kind, sampling,
                                  targets.names, seeds, proposal)  # fmt: skip
    z = torch.as_tensor(out.z, dtype=torch.float32, device=dev)
    return latent_posterior(Problem(trained, targets, density), z, kind, sampling, _predictor(trained, latent_model),
                            _names(trained, out, "latent"), targets.names, seeds, proposal)  # fmt: skip


def _predictor(trained: Trained, latent_model: LatentModel | None) -> Callable[[Tensor], Tensor] | None:
    """Codes -> the data set's parameters (the regressor), where the run has parameters; else None (codes reported)."""
    return latent_model.predict if latent_model is not None and trained.param_names else None


def _names(trained: Trained, out: InvertResult, space: str) -> list[str]:
    """The quantities a posterior reports: the family's parameters, or a data-only family's codes (z1, z2, ...)."""
    if space == "formula":
        return trained.param_names
    return trained.param_names or [f"z{j + 1}" for j in range(out.z.shape[1])]


def _latent_laplace(
    trained: Trained, targets: Targets, z: np.ndarray, density: CodeDensity | None
) -> Callable[[Tensor], tuple[Tensor, Tensor]]:
    """rows (r,) of targets -> Laplace's Gaussian of their codes at the latent search's optima: means (r, d) and
    covariances (r, d, d) (the amortized check's second proposal: amortized.py)."""

    def gaussian(rows: Tensor) -> tuple[Tensor, Tensor]:
        zr = torch.as_tensor(z[rows.numpy()], dtype=torch.float32, device=trained.device)
        return latent_gaussian(Problem(trained, targets.subset(rows), density), zr)

    return gaussian


def _assess(trained: Trained, targets: Targets, out: InvertResult, density: CodeDensity | None) -> None:
    counts = targets.counts.numpy()
    if out.physics is not None:
        chi2 = out.physics.objective if targets.yerr is not None else None
        dof = counts - int(out.physics.bounds.free.sum())
    else:
        chi2, dof = out.chi2, counts - out.z.shape[1]
    out.assessment = assess(
        targets.names,
        chi2,
        dof,
        None if out.physics is None else out.physics.on_bound,
        trained.param_names,
        out.log_density,
        None if density is None else density.off_manifold_below,
        None if out.physics is None else out.physics.local_minimum,
    )
    out.reduced_chi2, out.p_value = out.assessment.reduced_chi2, out.assessment.p_value


def _batched(
    problem: Problem, zs: Tensor, method: str, max_iter: int, lr: float
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Optimize every (start, target) pair as rows of one problem, in chunks of targets; keep each target's best."""
    n_starts, n, d = zs.shape
    per_chunk = max(1, CHUNK_ROWS // n_starts)
    dev = zs.device
    out_z, out_it, out_conv, out_start = [], [], [], []
    for a in range(0, n, per_chunk):
        b = min(n, a + per_chunk)
        k = b - a
        rows = torch.arange(a, b, device=dev).repeat(n_starts)  # row -> target; start-major
        z0 = zs[:, a:b].reshape(-1, d)

        def fg(z: Tensor, r: Tensor, rows: Tensor = rows) -> tuple[Tensor, Tensor]:
            return problem.loss_and_grad(z, rows[r])

        def curv(z: Tensor, v: Tensor, r: Tensor, rows: Tensor = rows) -> Tensor:
            return problem.gn_curvature(z, v, rows[r])

        res = lbfgs(fg, z0, max_iter, curvature=curv) if method == "lbfgs" else adam(fg, z0, max_iter, lr)
        f = torch.where(torch.isfinite(res.f), res.f, math.inf).reshape(n_starts, k)
        best = f.argmin(dim=0)  # (k,) winning start per target; ties go to the encoder's code
        pick = best * k + torch.arange(k, device=dev)
        out_z.append(res.z[pick])
        out_it.append(res.iterations[pick].cpu())
        out_conv.append(res.converged[pick].cpu())
        out_start.append(best.cpu())
    return torch.cat(out_z), torch.cat(out_it), torch.cat(out_conv), torch.cat(out_start)


def nelder_mead_target(
    problem: Problem, i: int, z0: np.ndarray, max_iter: int | None = None
) -> tuple[np.ndarray, float, int, bool, float]:
    """scipy Nelder-Mead on target i, one decoder call and numpy round trip per evaluation (notebook 000).

    Minimizes the objective's norm (sqrt of the sum of squares), as the notebook did; with a latent prior,
    the MAP objective.
    Returns (z, objective norm, iterations, success, seconds).
    """
    from scipy.optimize import minimize

    row = torch.tensor([i], device=problem.device)

    def func(zv: np.ndarray) -> float:
        with torch.no_grad():
            zt = torch.as_tensor(zv, dtype=torch.float32, device=problem.device)[None]
            if problem.density is not None:  # the MAP objective
                return float(problem.loss(zt, row))
            return float(problem.residual(zt, row).square().sum().sqrt())

    options = {} if max_iter is None else {"maxiter": max_iter}
    t0 = time.perf_counter()
    res = minimize(func, np.asarray(z0, dtype=np.float64), method="Nelder-Mead", options=options)
    return np.asarray(res.x), float(res.fun), int(res.nit), bool(res.success), time.perf_counter() - t0


def _nelder_mead_all(problem: Problem, zs: Tensor, max_iter: int) -> tuple[Tensor, Tensor, Tensor, Tensor, np.ndarray]:
    """Nelder-Mead per target and per start (a Python loop: this is the baseline, not the fast path)."""
    n_starts, n, d = zs.shape
    z0s = zs.cpu().double().numpy()
    z_out = np.zeros((n, d))
    it, conv, start = np.zeros(n, np.int64), np.zeros(n, bool), np.zeros(n, np.int64)
    secs = np.zeros(n)
    for i in range(n):
        best = math.inf
        for s in range(n_starts):
            z, fun, nit, ok, sec = nelder_mead_target(problem, i, z0s[s, i], max_iter * d)
            secs[i] += sec
            if fun < best:
                best, z_out[i], it[i], conv[i], start[i] = fun, z, nit, ok, s
    dev = problem.device
    return (
        torch.as_tensor(z_out, dtype=torch.float32, device=dev),
        torch.from_numpy(it),
        torch.from_numpy(conv),
        torch.from_numpy(start),
        secs,
    )
