"""Posterior uncertainty for every target at once: a Laplace approximation, or MCMC samples.

What is sampled: for a family with a formula, its free parameters in natural coordinates (physics.py: log10 of
scale parameters) with the formula as the likelihood (chi^2 with yerr) and the run's prior (prior.py); for a
data-only family, the latent code with the decoder as the likelihood and the training codes' density as the
prior (objective.py), the parameters then following each sample through the regressor.

- `laplace`: a Gaussian at the optimum whose precision is the Hessian of -log posterior there: Gauss-Newton
  (J'J of the weighted residuals) plus the prior's Hessian (autograd). Without yerr the residuals' scale is
  estimated from the fit (RSS / (m - q)), as for any nonlinear least squares. It ignores the prior's hard bounds:
  its coverage is measured (funcae validate), not assumed.
- `mcmc`: the affine-invariant ensemble sampler of ensemble.py (stretch, differential-evolution and kernel-density
  moves) on one tensor of walkers, each target's walkers split into `groups` independent ensembles. The ensembles
  start apart (formula families): ensemble 0 around the optimum (Laplace's Gaussian, widened, reflected into the
  prior's support), the others around the refit's other distinct optima (physics.py's alternatives) and, where
  there are fewer of those than ensembles, the last one from the prior's box (the best, by log posterior, of
  BOX_POOL uniform draws per walker that are not next to the optimum), so that a mode the refit missed shows up;
  the first `burn` steps are discarded. Where invert passes one, an independence proposal per target (the run's
  amortized posterior: amortized.flow_proposal) takes half of the ensembles' blocks of steps (ensemble.py).
  Seeded per target: every draw (the walkers' starts, the moves, Laplace's draws and its resample, the modes'
  importance draws) comes from the target's own seed (seeding.py; invert.py's `seeds`), so a target's samples are
  the same alone or in any batch.

Modes (modes.py): after sampling, the ensembles of a target are clustered by where they settled. Where they
settled apart, each mode's mass is estimated by importance sampling, the modes with less than 1% of it are
dropped, and the draws (quantiles, correlations, samples) are those of the mixture of the rest, each mode by its
weight; a target with two or more such modes is `multimodal` (each mode's weight and medians reported, a warning
names it). R-hat is judged within modes: separate, well-sampled modes alone do not make a target unconverged.

Convergence per target and parameter (diagnostics.py): rank-normalized split R-hat across the target's independent
ensembles (of each mode: modes.py), the integrated autocorrelation time tau (emcee's estimator, c = 5) and ESS =
walkers x steps / tau. With `steps="auto"` each target runs until steps >= 50 tau and R-hat < 1.01 for every
parameter, or `max_steps`; the targets that did not get there are `unconverged` and named in a warning.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import torch
from torch import Tensor

from funcae_cli.data.formulas import point_layout
from funcae_cli.inversion import seeding
from funcae_cli.inversion.assess import NAMED_IN_WARNING
from funcae_cli.inversion.diagnostics import RHAT_MAX, TAU_FACTOR
from funcae_cli.inversion.ensemble import CHECK, Cohort, Independent, by_group, covariance, pool_size, sample
from funcae_cli.inversion.laplace_check import check_laplace, gaussian_draws
from funcae_cli.inversion.modes import KHAT_MAX as MODES_KHAT_MAX
from funcae_cli.inversion.modes import MIN_WEIGHT, count, resample, sample_weights, weigh
from funcae_cli.inversion.physics import Fitter
from funcae_cli.inversion.threads import lanes, workers

WALKERS_MIN = 8  # walkers auto: per ensemble at least this many
WALKERS_PER_PARAMETER = 4  # and this many per parameter (Sampling.walkers_for)
INIT_WIDEN = 1.5  # walkers start from Laplace's Gaussian with this many times its standard deviations
BOX_POOL = 8  # the prior's box ensemble starts at the best of this many uniform draws per walker in the box
BOX_AWAY = 5.0  # ... of those more than this many of Laplace's standard deviations from the optimum
MULTIMODAL = "multimodal"  # the flag of a target whose posterior has two or more modes of >= 1% of the mass each
# The samplers' likelihood of a formula family in float32: chi^2 to ~1e-6 relative, far below what an acceptance
# ratio resolves, and ~1.7x faster than float64 on a CPU (the optimum and Laplace stay in float64).
LIKELIHOOD_DTYPE = torch.float32
QUANTILES = {"q025": 0.025, "q16": 0.16, "median": 0.5, "q84": 0.84, "q975": 0.975}


@dataclass
class Posterior:
    """Per target: quantiles of each reported quantity, correlations, convergence, and the samples."""

    kind: str  # laplace | mcmc
    names: list[str]  # the reported quantities: parameters (family units), or latent coordinates
    samples: np.ndarray  # (n, s, p) float32 draws, in the family's units
    quantiles: dict[str, np.ndarray]  # QUANTILES keys -> (n, p)
    corr: np.ndarray  # (n, p, p) correlations of the sampled coordinates (natural: log10 for scale parameters)
    rhat: np.ndarray | None = None  # (n, q) mcmc only, of the sampled coordinates: R-hat across the ensembles of
    # each mode, the worst mode's (modes.within_rhat)
    ess: np.ndarray | None = None  # (n, q) walkers x steps / tau, times the share of the ensembles in kept modes
    tau: np.ndarray | None = None  # (n, q) integrated autocorrelation time, in steps
    steps: np.ndarray | None = None  # (n,) steps run after burn-in
    unconverged: np.ndarray | None = None  # (n,) bool: stopped by the cap (or a fixed --steps) before converging
    acceptance: np.ndarray | None = None  # (n,)
    k_hat: np.ndarray | None = None  # (n,) laplace: Pareto k-hat of its importance weights (laplace_check.py)
    # (n,) laplace, amortized: the effective draws of those weights, 1 / sum(w^2) of the smoothed weights (Kish; of
    # the S weighed draws the reported ones are resampled from); NaN where unchecked
    importance_ess: np.ndarray | None = None
    # (n,) amortized: the flow's evaluations for the target, draws and densities of every pool its check weighed (S
    # unchecked): what its posterior cost
    flow_evaluations: np.ndarray | None = None
    source: np.ndarray | None = None  # (n,) str, posterior auto: which posterior each target got (with_rows)
    proposal: str | None = None  # mcmc of a formula family: its independence proposal (ensemble.Independent.name:
    # "flow", the run's posterior network), or "none" (the local moves alone)
    multimodal: np.ndarray | None = None  # (n,) mcmc: two or more modes carry >= 1% of the mass each (modes.py)
    # (n, groups) mcmc: each mode's share of the mass, modes in the order of their first ensemble, NaN where a target
    # has fewer modes (one mode: [1, NaN...]); a mode below 1% is reported but not in the draws
    mode_weight: np.ndarray | None = None
    mode_median: np.ndarray | None = None  # (n, groups, p) each mode's medians in the family's units, NaN likewise
    warnings: list[str] = field(default_factory=list)


def quantiles(samples: Tensor) -> dict[str, np.ndarray]:
    """QUANTILES over axis 1 of (n, s, p) samples (linear interpolation between order statistics, as
    torch.quantile's default: numpy's partitions where torch sorts, ~2x faster on 500 draws)."""
    q = np.quantile(samples.double().numpy(), list(QUANTILES.values()), axis=1)
    return {k: q[i] for i, k in enumerate(QUANTILES)}


def correlation(samples: Tensor) -> np.ndarray:
    """(n, p, p) correlation matrices of (n, s, p) samples (NaN where a coordinate does not vary)."""
    cov = covariance(samples.double())
    sd = torch.diagonal(cov, dim1=1, dim2=2).sqrt()
    return (cov / (sd[:, :, None] * sd[:, None, :])).numpy()


# --- a posterior from samples --------------------------------------------------------------------------------


def summarize(
    kind: str, names: list[str], natural: Tensor, to_units: Callable[[Tensor], Tensor], keep: int = 2000
) -> Posterior:
    """Quantiles and correlations of draws `natural` (n, s, q) in the sampled coordinates; `to_units` maps them to
    the reported quantities (n, s, p). At most `keep` draws are stored."""
    s = natural.shape[1]
    units = to_units(natural)
    draws = units[:, :: max(1, s // keep)]
    return Posterior(kind, names, draws.float().numpy(), quantiles(units), correlation(natural))


def from_chains(
    cohorts: Iterable[Cohort], n: int, names: list[str], to_units: Callable[[Tensor], Tensor], target_names: list[str],
    keep: int, cap: str, log_density: Callable[[Tensor, Tensor], Tensor], seeds: Tensor, limit: int | None = None,
    least: int | None = None,
) -> Posterior:  # fmt: skip
    """The posterior of n targets from the sampler's cohorts (ensemble.sample): per cohort its quantiles,
    correlations, `keep` draws (evenly spaced; fewer if a chain is shorter) and diagnostics, scattered back to the
    targets' rows; a target whose ensembles settled in separate modes: those of its modes' weighted mixture
    (modes.py; log_density: the sampled log density of rows (r, q) and their targets (r,), seeds (n,) the
    targets' own). cap: how the user raises the cap, for the warning; limit: quantiles from at most this many
    draws (evenly thinned) where to_units is costly; least: the steps every chain stores at least, whatever its
    batch (then `keep` is bounded by it rather than by the batch's shortest chain, so a target's draws are its
    own)."""
    parts: list[dict[str, Any]] = []
    for c in cohorts:  # each cohort's chains summarized, then dropped: memory holds one pool's (ensemble.sample)
        w = c.chain.shape[1]
        if not parts:  # fixed steps: every chain stores as many steps
            keep = min(keep, c.chain.shape[2] * w if least is None else least * w)
        mix = _Mixture.of(c, to_units, log_density, seeds)
        pick = torch.linspace(0, mix.draws.shape[1] - 1, keep).round().long()
        some = mix.draws if limit is None else mix.draws[:, :: max(1, mix.draws.shape[1] // limit)]
        post = summarize("mcmc", names, some, to_units, keep)
        parts.append({
            "targets": c.targets, "draws": to_units(mix.draws[:, pick]).float(), "corr": post.corr,
            **{f"q{k}": post.quantiles[k] for k in QUANTILES}, "rhat": c.rhat, "tau": c.tau,
            "ess": c.ess * mix.share[:, None], "steps": torch.full((len(c.targets),), c.steps),
            "unconverged": ~c.converged, "acceptance": c.acceptance, "multimodal": mix.multimodal,
            "mode_weight": mix.weight, "mode_median": mix.median, "k_hat": mix.k_hat,
        })  # fmt: skip
        del c, mix
    order = torch.cat([p["targets"] for p in parts]).argsort()

    def stack(key: str) -> np.ndarray:
        return torch.cat([torch.as_tensor(np.asarray(p[key])) for p in parts])[order].numpy()

    out = Posterior(
        "mcmc",
        names,
        stack("draws"),
        {k: stack(f"q{k}") for k in QUANTILES},
        stack("corr"),
        rhat=stack("rhat"),
        ess=stack("ess"),
        tau=stack("tau"),
        steps=stack("steps"),
        unconverged=stack("unconverged"),
        acceptance=stack("acceptance"),
        multimodal=stack("multimodal"),
        mode_weight=stack("mode_weight"),
        mode_median=stack("mode_median"),
    )
    hit = [target_names[i] for i in np.nonzero(out.unconverged)[0]]
    if hit:
        more = f" and {len(hit) - 5} more" if len(hit) > 5 else ""
        out.warnings.append(
            f"the MCMC chains of {', '.join(hit[:5])}{more} stopped at {cap} before converging (R-hat >= {RHAT_MAX} "
            f"across the independent ensembles of a mode, or fewer than {TAU_FACTOR} autocorrelation times): their "
            "intervals may be wrong; raise the cap, or the walkers (--walkers: each ensemble's moves propose from its "
            "other walkers, and more of them cross curved or L-shaped posteriors sooner), or (formula families) train "
            "the run's posterior network (`funcae amortize RUN`): mcmc then also proposes from it"
        )
    out.warnings.extend(_mode_warnings(out, stack("k_hat"), target_names))
    return out


@dataclass
class _Mixture:
    """A cohort's modes (modes.py), per target."""

    draws: Tensor  # (k, S, q) the chains' draws flattened walker-major; several modes: their weighted mixture's
    multimodal: Tensor  # (k,) bool
    weight: Tensor  # (k, groups) each mode's weight (Posterior.mode_weight)
    median: Tensor  # (k, groups, p) each mode's medians in units
    share: Tensor  # (k,) the share of the ensembles in kept modes (the ESS of the draws scales with it)
    k_hat: Tensor  # (k,) Pareto k-hat of the modes' importance weights, NaN for one mode

    @classmethod
    def of(
        cls, c: Cohort, to_units: Callable[[Tensor], Tensor], log_density: Callable[[Tensor, Tensor], Tensor],
        seeds: Tensor,
    ) -> _Mixture:  # fmt: skip
        """Targets of one mode take none of this (their draws are the chains' own); the few of several modes are
        weighed, resampled and their modes' medians taken (a per-target loop)."""
        k, w, s, q = c.chain.shape
        flat = c.chain.double().reshape(k, w * s, q)
        groups = c.labels.shape[1]
        p = to_units(flat[:1, :1]).shape[2]
        weight = torch.full((k, groups), math.nan, dtype=torch.float64)
        weight[:, 0] = 1.0
        nan = torch.full((k, groups, p), math.nan, dtype=torch.float64)
        out = cls(flat, torch.zeros(k, dtype=torch.bool), weight, nan, torch.ones(k, dtype=torch.float64),
                  torch.full((k,), math.nan, dtype=torch.float64))  # fmt: skip
        several = torch.nonzero(count(c.labels) > 1).squeeze(1)
        if several.numel() == 0:
            return out
        grouped, labels, own = by_group(c.chain[several], groups), c.labels[several], seeds[c.targets[several]]
        found = weigh(grouped, labels, log_density, c.targets[several], own)
        out.weight[several], out.k_hat[several] = found.weight, found.k_hat
        out.multimodal[several] = found.multimodal()
        out.draws = flat.clone()
        out.draws[several] = resample(flat[several], sample_weights(labels, found.weight, w // groups, s), own)
        out.share[several] = found.kept().gather(1, labels).double().mean(dim=1)
        for j, i in enumerate(several.tolist()):  # each mode's medians (natural coordinates -> units)
            for mode in labels[j].unique().tolist():
                draws = grouped[j, labels[j] == mode].reshape(-1, q).double()
                out.median[i, mode] = to_units(draws.median(dim=0).values[None, None])[0, 0]
        return out


def flag_multimodal(flags: list[list[str]], multimodal: np.ndarray | None) -> None:
    """Add MULTIMODAL to the flags (per target) of the multimodal targets."""
    if multimodal is None:
        return
    for i in np.nonzero(multimodal)[0]:
        flags[i].append(MULTIMODAL)


def _mode_warnings(post: Posterior, k_hat: np.ndarray, names: list[str]) -> list[str]:
    """A warning naming the multimodal targets (with their modes' weights); one naming those whose modes' weights
    rest on importance weights with k-hat >= modes.KHAT_MAX."""
    out = []
    hit = np.nonzero(post.multimodal)[0]
    if hit.size:
        shown = []
        for i in hit[:NAMED_IN_WARNING]:
            w = post.mode_weight[i][post.mode_weight[i] >= MIN_WEIGHT]
            shown.append(f"{names[i]} ({' / '.join(f'{v:.0%}' for v in sorted(w, reverse=True))})")
        more = f" and {hit.size - NAMED_IN_WARNING} more" if hit.size > NAMED_IN_WARNING else ""
        out.append(
            f"the posteriors of {', '.join(shown)}{more} have separate modes, each with >= {MIN_WEIGHT:.0%} of the "
            f"mass ({MULTIMODAL}): their intervals span the modes; each mode's weight and medians are in the "
            "per-target record (posterior_modes)"
        )
    shaky = np.nonzero(k_hat >= MODES_KHAT_MAX)[0]
    if shaky.size:
        shown_k = ", ".join(f"{names[i]} (k-hat {k_hat[i]:.2g})" for i in shaky[:NAMED_IN_WARNING])
        more = f" and {shaky.size - NAMED_IN_WARNING} more" if shaky.size > NAMED_IN_WARNING else ""
        out.append(
            f"the weights of the posterior modes of {shown_k}{more} are uncertain (their importance weights have "
            f"Pareto k-hat >= {MODES_KHAT_MAX}: a mode is not Gaussian enough for its estimate)"
        )
    return out


def with_rows(base: Posterior, rows: np.ndarray, other: Posterior, kind: str) -> Posterior:
    """`base` with its targets `rows` (m,) replaced by `other`'s m targets (in that order), as posterior `kind`;
    `source` says per target which posterior it got (base.kind or other.kind). Both keep the same number of
    draws per target, evenly thinned to the smaller; a diagnostic one of them lacks is NaN (or 0 steps, not
    unconverged) for its targets; base's k_hat and importance_ess are kept for every target (why the rows were
    replaced)."""
    n = base.samples.shape[0]
    s = min(base.samples.shape[1], other.samples.shape[1])

    def thin(x: np.ndarray) -> np.ndarray:
        return x[:, np.linspace(0, x.shape[1] - 1, s).round().astype(np.int64)]

    def merged(b: np.ndarray | None, o: np.ndarray | None, fill: Any) -> np.ndarray | None:
        if b is None and o is None:
            return None
        ref = b if b is not None else o
        out = np.full((n, *ref.shape[1:]), fill, dtype=ref.dtype) if b is None else b.copy()
        if o is not None:
            out[rows] = o
        else:
            out[rows] = fill
        return out

    samples = thin(base.samples).copy()
    samples[rows] = thin(other.samples)
    source = np.full(n, base.kind, dtype=object) if base.source is None else base.source.copy()
    source[rows] = other.kind
    return Posterior(
        kind, base.names, samples, {k: merged(base.quantiles[k], other.quantiles[k], np.nan) for k in QUANTILES},
        merged(base.corr, other.corr, np.nan), rhat=merged(base.rhat, other.rhat, np.nan),
        ess=merged(base.ess, other.ess, np.nan), tau=merged(base.tau, other.tau, np.nan),
        steps=merged(base.steps, other.steps, 0), unconverged=merged(base.unconverged, other.unconverged, False),
        acceptance=merged(base.acceptance, other.acceptance, np.nan), k_hat=base.k_hat,
        importance_ess=base.importance_ess, flow_evaluations=base.flow_evaluations, source=source,
        multimodal=merged(base.multimodal, other.multimodal, False),
        mode_weight=merged(base.mode_weight, other.mode_weight, np.nan),
        mode_median=merged(base.mode_median, other.mode_median, np.nan),
        warnings=base.warnings + other.warnings,
    )  # fmt: skip


def precision_to_cov(h: Tensor) -> Tensor:
    """Covariances (n, q, q) from precisions, through the pseudo-inverse where a direction is not constrained."""
    return torch.linalg.pinv(0.5 * (h + h.transpose(1, 2)), hermitian=True)


def row_hessians(f: Callable[[Tensor], Tensor], u: Tensor) -> Tensor:
    """d^2 f_i / du_i^2 (n, q, q) at u (n, q), by autograd, for f: (n, q) -> (n,) whose row i depends on u_i
    alone; non-finite values count as constants, and a function constant in u has zero Hessians."""
    with torch.enable_grad():
        uu = u.detach().requires_grad_(True)
        values = f(uu)
        total = torch.where(torch.isfinite(values), values, 0.0).sum()
        if not total.requires_grad:
            return torch.zeros(u.shape[0], u.shape[1], u.shape[1], dtype=u.dtype, device=u.device)
        (g,) = torch.autograd.grad(total, uu, create_graph=True)
        rows = []
        for j in range(u.shape[1]):
            hj = (
                torch.autograd.grad(g[:, j].sum(), uu, retain_graph=True, allow_unused=True)[0]
                if g.requires_grad
                else None
            )
            rows.append(torch.zeros_like(u) if hj is None else hj)
    return torch.stack(rows, dim=1).detach()


def prior_hessian(log_prior: Callable[[Tensor], Tensor], u: Tensor) -> Tensor:
    """-d^2 log prior / du^2 (n, q, q) at u (n, q) (the prior is a sum over rows)."""
    return -row_hessians(log_prior, u)


# --- posteriors of a batch of targets ------------------------------------------------------------------


def _batched_log_prob(n: int, per_row: Callable[[Tensor, Tensor], Tensor]) -> Callable[[Tensor], Tensor]:
    """Draws (n, m, q) -> (n, m) from a log density of rows (k, q) with the target of each row (k,)."""

    def log_prob(x: Tensor) -> Tensor:
        m = x.shape[1]
        rows = torch.arange(n, device=x.device).repeat_interleave(m)
        return per_row(x.reshape(n * m, -1), rows).reshape(n, m)

    return log_prob


@dataclass
class Sampling:
    """How to sample: the invert record's fields (config.InvertConfig: walkers, steps, burn, max_steps, groups, whose
    defaults and rules live there), plus the draws kept per target."""

    walkers: int | str  # per target, a multiple of 2 x groups, or auto (walkers_for)
    steps: int | str  # kept per walker, or auto: until converged (diagnostics.converged) or max_steps
    burn: int  # discarded first
    max_steps: int  # auto: the cap
    groups: int  # independent ensembles per target (R-hat across them)
    draws: int = 2000  # draws per target stored (samples.npz, figures); Laplace: also those of its quantiles
    progress: Callable[[int, int], None] | None = field(default=None, repr=False, compare=False)  # (sampled, of)

    @classmethod
    def of(cls, o: Any, progress: Callable[[int, int], None] | None = None) -> Sampling:
        """How an invert record (config.InvertConfig) samples."""
        return cls(o.walkers, o.steps, o.burn, o.max_steps, o.groups, progress=progress)

    def walkers_for(self, q: int) -> int:
        """Walkers per target for q parameters: as asked, or auto: groups ensembles of max(WALKERS_MIN,
        WALKERS_PER_PARAMETER q) walkers each (rounded up to even). An affine-invariant ensemble mixes slowly with few
        walkers per dimension: on 4-parameter rotation curves, 8 per ensemble left 17 of 60 `validate` targets
        unconverged at the 5000-step cap and 16 per ensemble none, in less time (the notes of issue 22)."""
        if self.walkers != "auto":
            return int(self.walkers)
        per = max(WALKERS_MIN, WALKERS_PER_PARAMETER * q)
        return self.groups * (per + per % 2)

    def run(
        self, per_row: Callable[[Tensor, Tensor], Tensor], x0: Tensor, seeds: Tensor,
        proposal: Independent | None = None,
    ) -> Iterator[Cohort]:  # fmt: skip
        n, w, q = x0.shape
        if self.steps == "auto":  # one lane: in lanes each runs until its own slowest target, and those tails (a
            # few targets, each step's cost torch's per-operation overhead, which the lanes share under the GIL) add
            # up where one lane's stragglers continue together (ensemble.sample): 30 rotation curves 1.7x slower
            cohorts = sample(per_row, x0, self.groups, None, self.burn, self.max_steps, seeds, proposal)
        else:  # fixed steps: every target costs the same, the lanes finish together
            steps = int(self.steps)
            pool = max(1, pool_size(w, q) // workers(x0.device))  # the lanes' pools together hold one pool's

            def lane(lo: int, hi: int) -> Iterator[Cohort]:  # targets [lo, hi)
                lane_row, lane_proposal = _in_lane(per_row, proposal, lo)
                for c in sample(lane_row, x0[lo:hi], self.groups, steps, self.burn, self.max_steps, seeds[lo:hi],
                                lane_proposal, pool):  # fmt: skip
                    yield replace(c, targets=c.targets + lo)

            cohorts = (c for _, c in lanes(lane, n, x0.device))  # each lane on its own thread (threads.py)
        return cohorts if self.progress is None else _reported(cohorts, self.progress, n)

    @property
    def least_stored(self) -> int | None:
        """auto: the steps every target's chain stores at least (it runs to the first check), so the draws kept
        per target do not depend on which other targets share its batch; fixed steps: None (all alike)."""
        return min(CHECK, self.max_steps) if self.steps == "auto" else None

    @property
    def cap(self) -> str:
        if self.steps == "auto":
            return f"the cap of {self.max_steps} steps (invert.max_steps, --max-steps)"
        return f"the {self.steps} steps asked (--steps)"


def _in_lane(
    per_row: Callable[[Tensor, Tensor], Tensor], proposal: Independent | None, lo: int
) -> tuple[Callable[[Tensor, Tensor], Tensor], Independent | None]:
    """per_row and the proposal of a lane of targets from `lo` on, whose sampler counts their rows from 0."""
    if lo == 0:
        return per_row, proposal

    def lane_row(u: Tensor, rows: Tensor) -> Tensor:
        return per_row(u, rows + lo)

    if proposal is None:
        return lane_row, None
    p = proposal
    return lane_row, Independent(lambda t, eps: p.draw(t + lo, eps), lambda x, t: p.log_q(x, t + lo), p.name)


def _reported(cohorts: Iterator[Cohort], progress: Callable[[int, int], None], n: int) -> Iterator[Cohort]:
    """The cohorts as they come, calling progress(targets finished, n) once each has been summarized."""
    done = 0
    for c in cohorts:
        yield c
        done += c.targets.numel()
        progress(done, n)


def _start_walkers(mean: Tensor, cov: Tensor, walkers: int, lo: Tensor, hi: Tensor, seeds: Tensor) -> Tensor:
    """Walkers around the optimum: Laplace's Gaussian widened by INIT_WIDEN, reflected into [lo, hi]. Never
    clipped: walkers piled on one value of a coordinate span a lower-dimensional ensemble, which the ensemble's
    moves (affine combinations of walkers) could never leave. Stream "walkers" of each target's seed: normals
    (uniform counters [0, 2 W q)), then the box's uniforms (from 2 W q)."""
    q = mean.shape[1]
    x = gaussian_draws(mean, INIT_WIDEN**2 * cov, walkers, seeds, "walkers")
    for _ in range(2):
        x = torch.where(x < lo, 2 * lo - x, x)
        x = torch.where(x > hi, 2 * hi - x, x)
    inside = (x >= lo) & (x <= hi)
    box = lo + (hi - lo) * seeding.uniform(seeds, "walkers", (walkers, q), 2 * walkers * q).to(x.dtype)
    return torch.where(inside, x, box)


def _reflect(x: Tensor, lo: Tensor, hi: Tensor) -> Tensor:
    for _ in range(2):
        x = torch.where(x < lo, 2 * lo - x, x)
        x = torch.where(x > hi, 2 * hi - x, x)
    return torch.where((x >= lo) & (x <= hi), x, 0.5 * (lo + hi))


def _spread_groups(
    x: Tensor, mean: Tensor, cov: Tensor, alternatives: Tensor | None, groups: int, lo: Tensor, hi: Tensor,
    per_row: Callable[[Tensor, Tensor], Tensor], seeds: Tensor,
) -> Tensor:  # fmt: skip
    """The walkers x (n, W, q) around the optimum mean (n, q) (_start_walkers), their groups moved apart, each
    with its offsets from the optimum (reflected into the box lo, hi (n, 1, q)) so that all its walkers start in
    one place: group 0 stays; group j >= 1 goes to the target's j-th alternative optimum (alternatives (n, A, q),
    NaN where a target has fewer), except that where a target has fewer than groups - 1 alternatives its last
    group goes to the best (log posterior per_row) of BOX_POOL x W uniform draws in the box (stream "walkers"
    from 3 W q) that lie more than BOX_AWAY of Laplace's standard deviations (cov (n, q, q)) from the optimum,
    which group 0 covers already (the best of all where none does); the rest stay around the optimum."""
    n, w, q = x.shape
    wg = w // groups
    have = torch.zeros(n, dtype=torch.int64) if alternatives is None else torch.isfinite(alternatives).all(2).sum(1)
    short = have < groups - 1
    centre = mean[:, None].expand(n, groups, q).clone()  # (n, groups, q) where each group starts
    for j in range(1, groups if alternatives is not None else 1):
        use = (have >= j) & ~(short & (j == groups - 1))
        centre[use, j] = alternatives[use, j - 1]
    rows = torch.nonzero(short).squeeze(1)
    if rows.numel() and groups > 1:
        pool = BOX_POOL * w
        u = seeding.uniform(seeds[rows], "walkers", (pool, q), 3 * w * q).to(x.dtype)
        cand = lo[rows] + (hi[rows] - lo[rows]) * u  # (r, pool, q)
        lp = per_row(cand.reshape(-1, q), rows.repeat_interleave(pool)).reshape(-1, pool)
        lp = torch.where(torch.isnan(lp), -math.inf, lp)
        chol, _ = torch.linalg.cholesky_ex(cov[rows])
        d = torch.linalg.solve_triangular(chol, (cand - mean[rows, None]).transpose(1, 2), upper=False)
        far = torch.where(d.square().sum(dim=1) > BOX_AWAY**2, lp, -math.inf)
        best = torch.where(torch.isfinite(far).any(dim=1, keepdim=True), far, lp).argmax(dim=1)  # ties: the first
        centre[rows, groups - 1] = cand[torch.arange(rows.shape[0]), best]
    moved = x - mean[:, None] + centre.repeat_interleave(wg, dim=1)
    return torch.where((centre == mean[:, None]).all(dim=2).repeat_interleave(wg, dim=1)[..., None], x,
                       _reflect(moved, lo, hi))  # fmt: skip


def laplace_covariance(fitter: Fitter, u_opt: Tensor, log_prior: Callable[[Tensor], Tensor]) -> Tensor:
    """Laplace's covariance (n, q, q) of a formula family's free parameters at the optima u_opt (n, q) (natural
    coordinates): the inverse of the Gauss-Newton Hessian of the chi^2 / 2 (J'J of the weighted residuals; without
    yerr, scaled by the residuals' variance as nonlinear least squares does), the prior's Hessian and a weak
    Gaussian of half the box's width (10 natural units where unbounded) that keeps directions the data and the
    prior leave flat from a zero or infinite variance (and spreads mcmc's walkers along them)."""
    obs = fitter.obs
    n, q = u_opt.shape
    all_points = torch.arange(obs.x.shape[0], device=obs.x.device)
    _, _, jac = fitter.gradient(u_opt, obs.target, all_points)
    a = torch.zeros(n, q, q, dtype=u_opt.dtype).index_add_(0, obs.target, jac[:, :, None] * jac[:, None, :])
    if not obs.chi2:  # no errors: their scale from the residuals, as nonlinear least squares does
        r = fitter.residual(u_opt, obs.target, all_points)
        dof = (torch.bincount(obs.target, minlength=n) - q).clamp_min(1)
        a = a / (fitter.sums(r, obs.target, n) / dof).clamp_min(1e-300)[:, None, None]
    width = torch.where(torch.isfinite(fitter.hi - fitter.lo), (fitter.hi - fitter.lo) / 2, 10.0).double()
    floor = torch.diag_embed((1.0 / width.square()).expand(n, -1))
    return precision_to_cov(a + prior_hessian(lambda u: log_prior(fitter.full(u)), u_opt) + floor)


def physics_posterior(
    fitter: Fitter, u_opt: Tensor, log_prior: Callable[[Tensor], Tensor], kind: str, sampling: Sampling,
    names: list[str], target_names: list[str], seeds: Tensor, alternatives: Tensor | None = None,
    proposal: Independent | None = None,
) -> Posterior:  # fmt: skip
    """The posterior of a formula family's free parameters (natural coordinates u, (n, q) at the optimum): the
    formula's chi^2 as -2 log likelihood (fitter: physics.Fitter), the run's prior (prior.log_prior of the full
    natural vector). Reported in the family's units. seeds (n,): the targets' own (seeding.py). alternatives
    (n, A, q): other optima of the refit (physics.PhysicsFit.alternatives, free coordinates, NaN where none),
    where mcmc's other ensembles start. proposal: mcmc's independence proposal per target (the run's amortized
    posterior: amortized.flow_proposal), or None."""
    obs = fitter.obs
    n, q = u_opt.shape

    def log_prior_free(u: Tensor) -> Tensor:
        return log_prior(fitter.full(u))

    cov = laplace_covariance(fitter, u_opt, log_prior)
    units = lambda u: fitter.units(u.reshape(-1, q)).reshape(u.shape[0], u.shape[1], -1)  # noqa: E731
    fast = Fitter(fitter.trained, obs, fitter.bounds, dtype=LIKELIHOOD_DTYPE)  # the samplers' likelihood
    counts = torch.bincount(obs.target, minlength=n)
    first_point = torch.cumsum(counts, 0) - counts
    cache = threading.local()  # per thread (mcmc's lanes): points_of's layout of `rows`, the same every step until
    # the batch shrinks

    def points_of(rows: Tensor) -> list[Tensor]:
        """Each row's (a walker of target t) points, t's: their start and count per row, and point by point the
        row of each and its place in obs."""
        layout = getattr(cache, "layout", None)
        if layout is None or not torch.equal(layout[0], rows):
            start, reps = first_point[rows], counts[rows]
            layout = cache.layout = [rows, start, reps, *point_layout(start, reps)]
        return layout[1:]

    def per_row(u: Tensor, rows: Tensor) -> Tensor:
        lp = log_prior_free(u)
        inside = torch.isfinite(lp)
        chi2 = fast.chi2(u.to(LIKELIHOOD_DTYPE), *points_of(rows), active=inside)
        return torch.where(inside, lp - 0.5 * chi2, -math.inf)

    if kind == "laplace":  # checked against the posterior (with yerr) and reweighted where it can be trusted
        check = check_laplace(u_opt, cov, _batched_log_prob(n, per_row) if obs.chi2 else None, sampling.draws, seeds,
                              target_names)  # fmt: skip
        return check.into(summarize("laplace", names, check.draws, units))
    lo, hi = fitter.lo, fitter.hi
    lo = torch.where(torch.isfinite(lo), lo, u_opt - 10)[:, None]  # (n, 1, q): a target's own box
    hi = torch.where(torch.isfinite(hi), hi, u_opt + 10)[:, None]
    x0 = _start_walkers(u_opt, cov, sampling.walkers_for(q), lo, hi, seeds)
    x0 = _spread_groups(x0, u_opt, cov, alternatives, sampling.groups, lo, hi, per_row, seeds)
    cohorts = sampling.run(per_row, x0, seeds, proposal)
    post = from_chains(cohorts, n, names, units, target_names, sampling.draws, sampling.cap, per_row, seeds,
                       least=sampling.least_stored)  # fmt: skip
    post.proposal = "none" if proposal is None else proposal.name
    return post


def latent_gaussian(problem: Any, z_opt: Tensor) -> tuple[Tensor, Tensor]:
    """Laplace's Gaussian of latent codes at their optima z_opt (n, d) (problem: objective.Problem with its
    density): means (n, d) and covariances (n, d, d), float64 on the CPU."""
    z0 = z_opt.detach().to(torch.float32)
    h = row_hessians(lambda z: problem.loss(z, None), z0)
    return z0.double().cpu(), precision_to_cov(0.25 * (h + h.transpose(1, 2)).double().cpu())  # -log p = loss / 2


def latent_posterior(
    problem: Any, z_opt: Tensor, kind: str, sampling: Sampling, predict: Callable[[Tensor], Tensor] | None,
    names: list[str], target_names: list[str], seeds: Tensor, proposal: Independent | None = None,
) -> Posterior:  # fmt: skip
    """The posterior of the latent codes (n, d) of a data-only family: the decoder's chi^2 as -2 log likelihood,
    the training codes' density as the prior (problem: objective.Problem with its density). The parameters
    (names) follow each draw through `predict` (the regressor); without parameters the codes are reported.
    seeds (n,): the targets' own (seeding.py). proposal: mcmc's independence proposal (the run's latent flow)."""
    n, d = z_opt.shape
    mean, cov = latent_gaussian(problem, z_opt)

    def units(z: Tensor) -> Tensor:
        if predict is None:
            return z
        return predict(z.reshape(-1, d)).reshape(z.shape[0], z.shape[1], -1)

    def per_row(z: Tensor, rows: Tensor) -> Tensor:
        with torch.no_grad():
            return -0.5 * problem.loss(z.to(torch.float32).to(problem.device), rows).double().cpu()

    if kind == "laplace":  # checked against the posterior and reweighted where it can be trusted
        check = check_laplace(mean, cov, _batched_log_prob(n, per_row), sampling.draws, seeds, target_names)
        return check.into(summarize("laplace", names, check.draws, units))

    big = torch.full((d,), math.inf, dtype=torch.float64)
    x0 = _start_walkers(mean, cov, sampling.walkers_for(d), -big, big, seeds)
    cohorts = sampling.run(per_row, x0, seeds, proposal)
    post = from_chains(cohorts, n, names, units, target_names, sampling.draws, sampling.cap, per_row, seeds,
                       sampling.draws, sampling.least_stored)  # fmt: skip
    post.proposal = "none" if proposal is None else proposal.name
    return post
