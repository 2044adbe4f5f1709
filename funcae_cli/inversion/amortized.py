"""Amortized posteriors: a conditional normalizing flow q(u | observation) trained once from the run's own
simulator, then sampled for any number of observed curves in one batched pass, each checked against the family's
likelihood and the run's prior.

- u (flow_spaces.py): a formula family's free parameters in natural coordinates (physics.py: log10 of scale
  parameters), standardized by the prior's box (the training range where the prior is unbounded); or, for a
  data-only family, the latent code, standardized by the training codes' density, with the decoder as the
  simulator and the likelihood (reported as the parameters through the regressor where the data set has them).
- The observation as a user gives it: points (x, y, yerr) of any number, padded and masked like invert's batch
  (targets.py). A DeepSets encoder (Zaheer et al. 2017) embeds it: per point phi(t, y / s, yerr / s), t the
  point's place in the grid's range (log x on log grids), s the observation's mean |y|; a masked mean and max
  over the points; rho of the pooled features, log10 s and log(number of points). Sums, means and maxima over
  points do not depend on their order: the embedding is permutation invariant.
- The flow: zuko's neural spline flow (NSF: Durkan et al. 2019, rational-quadratic splines), conditioned on the
  embedding; each transform fully autoregressive (`passes` None, as checkpoints before the field) or coupling
  (`passes` 2: its inverse one network evaluation per draw rather than q - 1).
- Sampling (`amortized_posterior`): each target's base normals from its own seed (seeding.py, stream
  "amortized"), pushed through the flow's inverse by flow_sampling.py (the context's share computed once per
  target), so a target's draws are the same alone or in any batch.
- Training (`train_flow`): every step a fresh batch of u from the run's prior (the codes' density) and of
  observations of their curves (`Simulator`: number of points, the range they cover, relative errors and their
  scatter, all drawn, as validate's simulate.py draws them), the flow's negative log likelihood of the true u
  minimized (NPE).
- The check: per target, S draws u_s ~ q with log q(u_s); log weights log p(u_s | data)
  - log q(u_s), p the same unnormalized posterior mcmc and laplace sample (chi^2 with yerr, the run's prior or the
  codes' density: flow_spaces.py),
  Pareto-smoothed (psis.py). Where k-hat < KHAT_MAX the reported draws are resampled by the weights (so the
  quantiles are the posterior's). A target whose draws fail, or pass on fewer than ESS_MIN effective draws, gets
  rounds of population Monte Carlo in the flow's base space (`_adapted_look`). One that still fails gets a second
  look (`_second_look`, where invert passes Laplace's Gaussian at each target's physics fit): its flow draws and as
  many of a Student t at Laplace's Gaussian, weighed under the mixture of the two densities; where that passes, its
  resampled draws; then a third (`_moment_look`). Where all fail the flow's draws are kept and the target flagged
  FLAG. Targets the flow was not trained on (fewer or more points than it saw, points outside the grid's range) are
  flagged OFF_RANGE: sampled, never silently.
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from funcae_cli.config import AmortizedConfig
from funcae_cli.errors import InputError
from funcae_cli.inversion import seeding
from funcae_cli.inversion.assess import NAMED_IN_WARNING
from funcae_cli.inversion.ensemble import Independent
from funcae_cli.inversion.flow_sampling import Conditioned, FlowSampler
from funcae_cli.inversion.flow_spaces import FormulaSpace, LatentSpace
from funcae_cli.inversion.laplace_check import (
    KHAT_MAX,
    PROPOSAL_DF,
    importance_resample,
    student_draws_with_log_q,
    student_log_density,
)
from funcae_cli.inversion.modes import gauss_log
from funcae_cli.inversion.posterior import Posterior, summarize
from funcae_cli.inversion.psis import importance_ess, psis
from funcae_cli.inversion.targets import Targets
from funcae_cli.inversion.threads import chunk_map

FLAG = "amortized_unreliable"
MOMENT_GROW = 4  # _moment_look: flow draws (and as many of its t) per target, in multiples of S
ESS_MIN = 400  # a target whose first S draws pass the check on fewer effective draws gets _adapted_look's rounds
ADAPT_ROUNDS = (1, 1, 1, 2)  # _adapted_look: each round's draws, in multiples of S
ADAPT_INFLATE = 1.2  # its Gaussians: the pool's weighted covariance in the flow's base space, this much wider
ADAPT_PRIOR = 1.0  # and shrunk toward the base's own spread (I) as if by this many draws (a pool of one effective
# draw: still a Gaussian of the flow's width). 2 and 4 passed fewer of the tiny flow made 4x broader (60% and 43%,
# against 80% at 1, before psis counted a NaN weight as none; tests/test_amortized.py)
OFF_RANGE = "amortized_off_range"
MISSED_MODE = "amortized_missed_mode"
MISS_NATS = 10.0  # a target's fit more probable than every one of its first MISS_DRAWS reported draws by this much:
MISS_DRAWS = 100  # its draws lie away from its posterior's mode (a flow on a plateau of the likelihood: weights
# flat there, k-hat small, the answer tens of posterior sd off; tests/test_amortized.py). A calibrated posterior's
# best of 100 draws is within ~1 nat of its mode (4 parameters: chi^2_4's 1% quantile / 2 = 0.15)
CHUNK_ELEMENTS = 1 << 22  # draws x points of one chunk (float32: 16 MiB per likelihood tensor; ~200 targets x 500
# draws of 40 points). The flow blocks its own arithmetic to stay in cache (flow_sampling.BLOCK_DRAWS); what the chunk
# sets is how many targets share each of the check's ~100 small operations per round. Bench row 11's 20,000 curves,
# amortized_posterior alone (best of 3, 2 cores): 2^20 22.6-25.2 s checked and 6.0 s unchecked, 2^22 18.0-19.5 s and
# 5.0 s, 2^23-2^24 the same as 2^22 (peak +40-350 MB), 2^18 38.6 s. Every target's numbers are the same in any chunk


# --- the network ------------------------------------------------------------------------------------------


@dataclass
class FlowArgs:
    """Everything needed to rebuild the network (stored in its checkpoint, nanoGPT-style)."""

    q: int  # free parameters
    free: list[bool]  # per family parameter: sampled (not fixed by the prior)
    center: list[float]  # (q,) natural coordinates' centre and scale: u_std = (u - center) / scale
    scale: list[float]
    x_lo: float  # the grid's range, in log x on log grids: points are placed by t = (x' - x_lo) / (x_hi - x_lo)
    x_hi: float
    log_x: bool
    points: list[int]  # [min, max] points per observation seen in training
    hidden: list[int]
    embed: int
    transforms: int
    passes: int | None = None  # per transform: 2 = coupling; None = fully autoregressive (checkpoints before it)
    space: str = "formula"  # what u is (flow_spaces.KINDS): formula parameters, or a data-only family's codes


def _mlp(sizes: list[int]) -> nn.Sequential:
    layers: list[nn.Module] = []
    for a, b in zip(sizes[:-1], sizes[1:]):
        layers += [nn.Linear(a, b), nn.SiLU()]
    return nn.Sequential(*layers[:-1])


class SetEncoder(nn.Module):
    """DeepSets over the points of padded observations (module docstring): (n, m) x, y, yerr, mask -> (n, embed)."""

    def __init__(self, args: FlowArgs):
        super().__init__()
        self.args = args
        self.phi = _mlp([3, *args.hidden, args.embed])
        self.rho = _mlp([2 * args.embed + 2, *args.hidden, args.embed])

    def forward(self, x: Tensor, y: Tensor, yerr: Tensor, mask: Tensor) -> Tensor:
        a = self.args
        w = mask.to(y.dtype)
        count = w.sum(dim=1).clamp_min(1)
        s = ((y.abs() * w).double().sum(dim=1) / count).to(y.dtype).clamp_min(1e-30)  # (n,) the observation's scale
        # (a float64 sum: a float32 one over a padded row rounds by the padding's width, as `mean` below)
        xx = torch.log(x.clamp_min(1e-300)) if a.log_x else x
        t = ((xx - a.x_lo) / (a.x_hi - a.x_lo)).to(y.dtype)
        feats = torch.stack([2 * t - 1, y / s[:, None], yerr / s[:, None]], dim=2) * w[..., None]
        # phi on the real points only (a padded batch's width is its longest observation's), each row the same
        # whatever the number of points in the call (BLAS rounds few rows apart: seeding.MIN_ROWS)
        h = feats.new_zeros(*y.shape, a.embed).masked_scatter(
            mask[..., None], seeding.invariant_rows(self.phi, feats[mask])
        )
        mean = ((h * w[..., None]).double().sum(dim=1) / count[:, None]).to(h.dtype)  # float64: the padding's width
        # changes the order of the sum, not its float32 rounding
        top = torch.where(mask[..., None], h, -math.inf).amax(dim=1)
        top = torch.where(torch.isfinite(top), top, 0.0)
        glob = torch.stack([torch.log10(s), torch.log(count)], dim=1)
        return seeding.mlp_rows(self.rho, torch.cat([mean, top, glob], dim=1))  # a row alone as in a batch


class PosteriorNet(nn.Module):
    """q(u | observation): the set encoder and a conditional neural spline flow over standardized u."""

    def __init__(self, args: FlowArgs):
        super().__init__()
        try:
            import zuko  # the `amortized` extra: imported only where a flow is built
        except ImportError:
            raise InputError("the amortized posterior needs zuko: pip install 'funcae[amortized]'") from None

        self.args = args
        self.encoder = SetEncoder(args)
        self.flow = zuko.flows.NSF(args.q, args.embed, transforms=args.transforms, passes=args.passes,
                                   hidden_features=tuple(args.hidden))  # fmt: skip
        self.register_buffer("center", torch.tensor(args.center, dtype=torch.float32))
        self.register_buffer("scale", torch.tensor(args.scale, dtype=torch.float32))

    def embed(self, batch: Targets) -> Tensor:
        mask = torch.ones_like(batch.y, dtype=torch.bool) if batch.mask is None else batch.mask
        dtype = self.center.dtype  # float32, or float64 for a copy made .double()
        return self.encoder(batch.x, batch.y.to(dtype), batch.yerr.to(dtype), mask)

    def log_prob(self, u: Tensor, context: Tensor) -> Tensor:
        """log q(u | observation) for u (n, q) natural coordinates and embeddings (n, embed)."""
        return self.flow(context).log_prob((u - self.center) / self.scale) - torch.log(self.scale).sum()

    def log_prob_draws(self, u: Tensor, context: Tensor | Conditioned, sampler: FlowSampler) -> Tensor:
        """log q(u | observation) (n, S) of draws u (n, S, q) in natural coordinates given each target's embedding
        (n, embed): the flow's forward pass in `sampler` (this net's), each context used once; no gradients."""
        return sampler.log_prob(context, (u - self.center) / self.scale) - torch.log(self.scale).sum()

    def sampler(self) -> FlowSampler:
        """The flow's batched inverse (flow_sampling.py) for the weights as they are now."""
        return FlowSampler(self.flow, self.args.q)

    def sample(self, context: Tensor | Conditioned, eps: Tensor, sampler: FlowSampler) -> tuple[Tensor, Tensor]:
        """(n, S, q) natural coordinates at base draws eps (n, S, q) (standard normal) and their log q (n, S)."""
        v, lq = sampler.sample(context, eps)
        return v * self.scale + self.center, lq - torch.log(self.scale).sum()


Space = FormulaSpace | LatentSpace


def flow_args(space: Space, grid: Tensor, log_x: bool, cfg: AmortizedConfig) -> FlowArgs:
    center, scale = space.standardization()
    g = torch.log(grid.double()) if log_x else grid.double()
    return FlowArgs(sum(space.free), space.free, center.tolist(), scale.tolist(), float(g[0]), float(g[-1]), log_x,
                    list(cfg.points), list(cfg.hidden), cfg.embed, cfg.transforms, cfg.passes, space.kind)  # fmt: skip


def net_from_checkpoint(ckpt: dict[str, Any]) -> PosteriorNet:
    net = PosteriorNet(FlowArgs(**ckpt["args"]))
    net.load_state_dict(ckpt["state"])
    return net.eval()


# --- the simulator ------------------------------------------------------------------------------------------


@dataclass
class Simulator:
    """Fresh observations of the space's curves at u drawn from its prior (module docstring)."""

    space: Space
    args: FlowArgs
    cfg: AmortizedConfig

    def __call__(self, n: int, gen: torch.Generator) -> tuple[Targets, Tensor]:
        """A padded batch of n observations and the u (n, q) that made them."""
        c, a = self.cfg, self.args
        u, made = self.space.draw(n, gen)
        lo_pts, hi_pts = c.points
        m = torch.randint(lo_pts, hi_pts + 1, (n,), generator=gen)
        mask = torch.arange(hi_pts)[None, :] < m[:, None]
        span = a.x_hi - a.x_lo
        width = span * (c.min_span + (1 - c.min_span) * torch.rand(n, 1, generator=gen, dtype=torch.float64))
        start = a.x_lo + (span - width) * torch.rand(n, 1, generator=gen, dtype=torch.float64)
        t = torch.rand(n, hi_pts, generator=gen, dtype=torch.float64)
        t = torch.sort(torch.where(mask, t, 2.0), dim=1).values  # the real points first, sorted
        t = torch.where(mask, t, t[:, :1])
        xx = start + width * t
        x = (torch.exp(xx) if a.log_x else xx).clamp(math.exp(a.x_lo) if a.log_x else a.x_lo,
                                                     math.exp(a.x_hi) if a.log_x else a.x_hi)  # fmt: skip
        v = self.space.values(x, made)  # (n, m)
        frac = c.frac[0] + (c.frac[1] - c.frac[0]) * torch.rand(n, 1, generator=gen, dtype=torch.float64)
        jitter = 1 + c.scatter * (2 * torch.rand(v.shape, generator=gen, dtype=torch.float64) - 1)
        peak = torch.where(mask, v.abs(), 0.0).amax(dim=1, keepdim=True)
        err = frac * v.abs() * jitter + c.floor * peak + 1e-12
        y = v + err * torch.randn(v.shape, generator=gen, dtype=torch.float64)
        batch = Targets(torch.where(mask, y, 0.0).float(), x, torch.where(mask, err, 1.0).float(), mask)
        return batch, u


# --- training -------------------------------------------------------------------------------------------------


@dataclass
class FlowTraining:
    net: PosteriorNet
    history: list[dict[str, float]]  # per epoch: epoch, loss (mean -log q of the true u), seconds
    optimizer: torch.optim.Optimizer


def train_flow(
    simulator: Simulator,
    cfg: AmortizedConfig,
    seed: int,
    state: dict[str, Any] | None = None,
    on_epoch: Callable[[FlowTraining], None] | None = None,
) -> FlowTraining:
    """Train q(u | observation) by NPE on fresh simulations; resume from `state` (a checkpoint's net state,
    optimizer state and history). Epoch e draws from its own generator (seed + e), so a resumed run draws the
    same observations as an uninterrupted one. on_epoch: called after each epoch (checkpoint, progress)."""
    torch.manual_seed(seed)
    net = PosteriorNet(simulator.args)
    opt = torch.optim.Adam(net.parameters(), lr=cfg.lr)
    history: list[dict[str, float]] = []
    if state is not None:
        net.load_state_dict(state["state"])
        opt.load_state_dict(state["optimizer"])
        history = list(state["history"])
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, cfg.epochs * cfg.steps, last_epoch=-1)
    for _ in range(len(history) * cfg.steps):
        sched.step()
    run = FlowTraining(net, history, opt)
    for epoch in range(len(history), cfg.epochs):
        gen = torch.Generator().manual_seed(seed + 1000 * (epoch + 1))
        t0, total = time.perf_counter(), 0.0
        net.train()
        for _ in range(cfg.steps):
            batch, u = simulator(cfg.batch_size, gen)
            loss = -net.log_prob(u.float(), net.embed(batch)).mean()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            nn.utils.clip_grad_norm_(net.parameters(), 5.0)
            opt.step()
            sched.step()
            total += float(loss.detach())
        history.append({"epoch": epoch + 1, "loss": total / cfg.steps, "seconds": time.perf_counter() - t0})
        net.eval()
        if on_epoch:
            on_epoch(run)
    return run


def checkpoint_payload(run: FlowTraining, cfg: AmortizedConfig, done: bool) -> dict[str, Any]:
    return {"args": asdict(run.net.args), "state": run.net.state_dict(), "optimizer": run.optimizer.state_dict(),
            "history": run.history, "config": asdict(cfg), "done": done}  # fmt: skip


# --- the posterior of observed targets ---------------------------------------------------------------------


def off_range(net: PosteriorNet, targets: Targets) -> np.ndarray:
    """(n,) bool: observations unlike those the flow was trained on (fewer or more points, points outside the
    grid's range)."""
    a = net.args
    counts = targets.counts
    mask = torch.ones_like(targets.y, dtype=torch.bool) if targets.mask is None else targets.mask
    xx = torch.log(targets.x.clamp_min(1e-300)) if a.log_x else targets.x
    tol = 1e-9 * (a.x_hi - a.x_lo)
    outside = (mask & ((xx < a.x_lo - tol) | (xx > a.x_hi + tol))).any(dim=1)
    return ((counts < a.points[0]) | (counts > a.points[1]) | outside).numpy()


@dataclass
class AmortizedCheck:
    k_hat: np.ndarray  # (n,) NaN when the check is off
    unreliable: np.ndarray  # (n,) bool
    off_range: np.ndarray  # (n,) bool
    missed: np.ndarray  # (n,) bool: MISSED_MODE (checked, with fits; else all False)
    warnings: list[str]


def amortized_posterior(
    net: PosteriorNet,
    space: Space,
    targets: Targets,
    draws: int,
    check: bool,
    seeds: Tensor,
    names: list[str],
    laplace: Callable[[Tensor], tuple[Tensor, Tensor]] | None = None,
    fits: Tensor | None = None,
) -> tuple[Posterior, AmortizedCheck]:
    """Every target's posterior from the flow, in chunks that bound memory, each checked by importance weights
    against the likelihood and the prior when `check` (module docstring). Reported as `space.units` (the family's
    parameters in its units, or a data-only family's codes). laplace: rows (r,) -> Laplace's means (r, q) and
    covariances (r, q, q) at the targets' fits (in u): the second proposal of the targets the flow alone fails
    (_second_look); None: none. fits: (n, q) each target's point estimate in u, or None: checked, a target whose fit
    is more probable than every one of its first MISS_DRAWS reported draws by MISS_NATS is flagged MISSED_MODE."""
    if net.args.space != space.kind:
        raise InputError(f"the posterior network was trained over {net.args.space} coordinates, not {space.kind}: "
                         "train it again with `funcae amortize RUN --force`")  # fmt: skip
    m = targets.y.shape[1]
    chunk = max(1, CHUNK_ELEMENTS // (draws * max(m, 8, space.columns)))
    sampler = net.sampler()
    order, widths = _by_width(targets)  # chunks of alike widths: the likelihood runs over little padding

    def one(a: int) -> tuple[np.ndarray, Posterior, Tensor, Tensor]:
        rows = order[a : a + chunk]
        batch, own = _rows(targets, rows, int(widths[rows].max())), seeds[rows]
        with torch.no_grad():  # (thread-local: this runs on chunk_map's threads)
            context = sampler.prepare(net.embed(batch))  # the targets' share of the flow: once for all their pools
            evals = torch.full((batch.n,), draws, dtype=torch.int64)  # the flow's evaluations per target
            if not check:  # each target's draws from its own seed
                u, _ = net.sample(context, sampler.base_draws(own, draws), sampler)
                k = torch.full((batch.n,), math.nan, dtype=torch.float64)
                ess = torch.full((batch.n,), math.nan, dtype=torch.float64)
            else:
                eps = sampler.base_draws(own, draws)  # the first pool's base points (also _adapted_look's)
                u, lq, log_p, smoothed, k = _flow_pool(net, sampler, space, batch, context, own, draws, eps=eps)
                ess = importance_ess(smoothed)
                ready = (k < KHAT_MAX) & (ess >= ESS_MIN)  # the others: _adapted_look's rounds
                if bool(ready.any()):
                    u[ready] = importance_resample(u[ready], smoothed[ready].to(u.dtype), own[ready])
                if not bool(ready.all()):
                    _adapted_look(net, sampler, space, batch, context, own, eps, u, lq, log_p, smoothed, k, ess,
                                  evals, torch.nonzero(~ready).squeeze(1))  # fmt: skip
                if laplace is not None and not bool((k < KHAT_MAX).all()):
                    _second_look(net, sampler, space, batch, context, rows, own, u, lq, log_p, k, ess, evals,
                                 laplace)  # fmt: skip
                if not bool((k < KHAT_MAX).all()):
                    _moment_look(net, sampler, space, batch, context, own, u, lq, log_p, k, ess, evals)
            missed = torch.zeros(batch.n, dtype=torch.bool)
            if check and fits is not None:
                missed = _missed_mode(space, batch, u, fits[rows]) & (k < KHAT_MAX)  # the failing: flagged anyway
            part = summarize("amortized", names, u.double(), space.units, keep=draws)
            return rows.numpy(), part, k, ess, evals, missed

    post: Posterior | None = None  # every target's row filled in place, chunk by chunk (no copies of the draws)
    k_hat, esses = np.full(targets.n, math.nan), np.full(targets.n, math.nan)
    evaluations = np.zeros(targets.n, dtype=np.int64)
    missed = np.zeros(targets.n, dtype=bool)
    for rows, part, k, ess, evals, miss in chunk_map(one, range(0, targets.n, chunk), targets.y.device):
        post = post or _empty(part, targets.n)
        _put(post, part, rows)
        k_hat[rows], esses[rows], evaluations[rows], missed[rows] = k.numpy(), ess.numpy(), evals.numpy(), miss.numpy()
    post.k_hat, post.importance_ess, post.flow_evaluations = k_hat, esses, evaluations
    bad = k_hat >= KHAT_MAX
    outside = off_range(net, targets)
    return post, AmortizedCheck(k_hat, bad, outside, missed, _warnings(targets.names, k_hat, bad, outside, missed))


def _missed_mode(space: Space, batch: Targets, u: Tensor, fits: Tensor) -> Tensor:
    """(c,) bool: the targets' fits (c, q) more probable than each of their first MISS_DRAWS reported draws u
    (c, S, q) by MISS_NATS (a fit that failed, NaN, never counts)."""
    best = space.log_posterior(batch, u[:, :MISS_DRAWS].double()).amax(dim=1)
    at_fit = space.log_posterior(batch, fits[:, None, :].to(torch.float64))[:, 0]
    at_fit = torch.where(torch.isnan(at_fit), -math.inf, at_fit)
    return at_fit - best > MISS_NATS


def _adapted_look(
    net: PosteriorNet, sampler: FlowSampler, space: Space, batch: Targets, context: Conditioned, own: Tensor,
    eps: Tensor, u: Tensor, lq: Tensor, log_p: Tensor, smoothed: Tensor, k: Tensor, ess: Tensor, evals: Tensor,
    rows: Tensor,
) -> None:  # fmt: skip
    """Targets `rows` (of the chunk) whose first S flow draws fail the check or pass it on fewer than ESS_MIN
    effective draws: rounds of population Monte Carlo (Cappe et al. 2004) in the flow's base space. The flow has
    already made the posterior's shape nearly Gaussian there; what is left is mostly a shift and a scale. Each round
    places a Gaussian at the weighted mean and covariance (ADAPT_INFLATE wider) of the pool's base points, draws
    ADAPT_ROUNDS[r] x S of it through the flow's inverse (each draw's log-determinant as a flow draw's), and weighs
    the whole pool under the mixture of the standard base and every round's Gaussian, each in proportion to its
    draws (the balance heuristic; a draw's density under each is the same log-determinant times a base density,
    so no extra pass of the flow). A target leaves when its pool passes with ESS_MIN effective draws. After the
    last round a pool that passes on fewer counts too (k-hat < KHAT_MAX: a larger pool than the first), else a first
    pool that passed; else all stays (the looks that follow try it). Where a target passes, u gets S draws resampled
    from its pool, k and ess the pool's. On rotation_curve_observed.yaml's network, bench row 11's curves: the
    first pool's effective draws are ~22% of its draws (median), a round's pool ~50% (a Gaussian fitted to 8,000
    of the flow's weighed draws: ~59%; the base-space posterior is not quite Gaussian); on 100,000 of them the
    flow's evaluations per target fell from ~2,830 to 1,271 (mean; larger pools of the flow's own draws before),
    the flagged from 2,792 to 65, those below ESS_MIN from 28,188 to 773. Each point's mixture density is kept
    from round to round (a round adds its Gaussian at the pool's points and every proposal at its own draws), not
    computed again over the whole pool. In place; eps, u, lq, log_p: the first pool's base points (c, S, q), draws,
    their log q and log posterior (c, S); evals (c,): the flow's evaluations, counted."""
    s, q = u.shape[1], u.shape[2]
    first = k[rows] < KHAT_MAX  # the first pool passed (on too few effective draws)
    eps = eps[rows].double()  # (r, P, q): the pool's base points (float32 values)
    base = _log_normal(eps)
    ladj = lq[rows].double() - base  # log |d base / d u| of each draw
    mix = math.log(s) + base  # (r, P): log sum over the proposals of their draws x their density at each point
    pool, pool_lp, lw = u[rows], log_p[rows], smoothed[rows]
    means: list[Tensor] = []  # per round: its Gaussian's mean (r, q) and root (r, q, q), and its draws
    roots: list[Tensor] = []
    counts: list[float] = []
    at = 0  # the rounds' draws so far: where the next round's normals start in the stream
    for r, mult in enumerate(ADAPT_ROUNDS):
        mean, root = _base_gaussian(eps, lw)
        b = mult * s
        z = seeding.paired_normal(own[rows], "amortized_adapted", (b, q), at)
        at += b
        e = (mean[:, None, :] + z @ root.transpose(1, 2)).float()  # float32, as the flow's base draws
        v, lq_v = net.sample(context[rows], e, sampler)
        evals[rows] += b
        e = e.double()
        means.append(mean)
        roots.append(root)
        counts.append(math.log(b))
        # the mixture's sums, kept from round to round: the new Gaussian at the pool's points, every proposal at
        # the new ones
        mix = torch.logaddexp(mix, gauss_log(eps, mean[:, None], root[:, None])[..., 0] + counts[-1])
        base = _log_normal(e)
        each = gauss_log(e, torch.stack(means, 1), torch.stack(roots, 1)) + torch.tensor(counts, dtype=e.dtype)
        mix = torch.cat([mix, torch.logsumexp(torch.cat([(math.log(s) + base)[..., None], each], dim=2), dim=2)], 1)
        eps, pool = torch.cat([eps, e], 1), torch.cat([pool, v], 1)
        ladj = torch.cat([ladj, lq_v.double() - base], 1)
        pool_lp = torch.cat([pool_lp, space.log_posterior(batch.subset(rows), v)], 1)
        log_mix = ladj + mix - math.log(eps.shape[1])
        lw, k2 = psis(pool_lp - log_mix)  # NaN: no weight (psis)
        ess2 = importance_ess(lw)
        last = r == len(ADAPT_ROUNDS) - 1
        done = (k2 < KHAT_MAX) & ((ess2 >= ESS_MIN) | last)
        if bool(done.any()):
            u[rows[done]] = importance_resample(pool[done], lw[done].to(u.dtype), own[rows[done]], s)
            k[rows[done]], ess[rows[done]] = k2[done], ess2[done]
        if last:
            back = ~done & first  # the rounds' pool failed, the first passed: its draws
            if bool(back.any()):
                u[rows[back]] = importance_resample(u[rows[back]], smoothed[rows[back]].to(u.dtype), own[rows[back]])
            break
        keep = torch.nonzero(~done).squeeze(1)
        if keep.numel() == 0:
            break
        rows, first, eps, ladj, mix, pool, pool_lp, lw = rows[keep], first[keep], eps[keep], ladj[keep], mix[keep], \
            pool[keep], pool_lp[keep], lw[keep]  # fmt: skip
        means, roots = [m[keep] for m in means], [g[keep] for g in roots]


def _log_normal(e: Tensor) -> Tensor:
    """log N(e; 0, I) (..., q) -> (...)."""
    return -0.5 * e.square().sum(dim=-1) - 0.5 * e.shape[-1] * math.log(2 * math.pi)


def _base_gaussian(eps: Tensor, log_w: Tensor) -> tuple[Tensor, Tensor]:
    """The Gaussian of _adapted_look's next round: mean (r, q) and Cholesky root (r, q, q) of the normalized weights
    log_w's (r, P) mean and covariance of base points eps (r, P, q), the covariance ADAPT_INFLATE wider and shrunk
    toward I as if by ADAPT_PRIOR draws (a pool of one effective draw: a Gaussian of the flow's own width at it);
    where no draw has weight, the standard base. Row by row: batch-free."""
    q = eps.shape[2]
    w = torch.exp(log_w)
    fine = torch.isfinite(w).all(dim=1) & (w.sum(dim=1) > 0.5)
    w = torch.where(fine[:, None], w, 0.0)
    mean = torch.bmm(w[:, None, :], eps)[:, 0]
    d = eps - mean[:, None, :]
    cov = ADAPT_INFLATE * torch.bmm((d * w[..., None]).transpose(1, 2), d)
    n = 1 / w.square().sum(dim=1).clamp_min(1e-300)  # the pool's effective draws
    eye = torch.eye(q, dtype=eps.dtype)
    shrunk = (n[:, None, None] * cov + ADAPT_PRIOR * eye) / (n + ADAPT_PRIOR)[:, None, None]
    cov = torch.where(fine[:, None, None], shrunk, eye)
    return mean, torch.linalg.cholesky(cov)


def _moment_look(
    net: PosteriorNet, sampler: FlowSampler, space: Space, batch: Targets, context: Conditioned,
    own: Tensor, u: Tensor, lq: Tensor, log_p: Tensor, k: Tensor, ess: Tensor, evals: Tensor,
) -> None:  # fmt: skip
    """The targets of a chunk that still fail the check (k >= KHAT_MAX) get one step of adaptive importance sampling
    (population Monte Carlo: Cappe et al. 2004): MOMENT_GROW x S flow draws are weighed, a Student t is placed at
    their weighted mean and covariance, and as many of its draws join the flow's, all weighed under the half-and-half
    mixture of the two densities (as _second_look). Where the flow is broader than a sharp posterior, or off to one
    side, its few well-weighted draws still say where the posterior is, and the t there is a proposal that fits;
    it needs no physics fit (so it also serves --no-physics and data-only families). validate --n 2000 on
    rotation_curve_observed.yaml: it passed 83% of the 184 targets that failed both earlier looks (a prototype on
    their rows). Where the mixture passes, u gets S draws resampled from the pool, k and ess the pool's; elsewhere
    all stay (flagged). u, lq, log_p: as _more_draws's (the failing targets' u still the flow's first S draws). In
    place; in slices of targets so the pool's memory stays bounded."""
    s = u.shape[1]
    big = MOMENT_GROW * s
    bad = torch.nonzero(k >= KHAT_MAX).squeeze(1)
    step = max(1, u.shape[0] // (2 * MOMENT_GROW))
    for a in range(0, bad.numel(), step):
        rows = bad[a : a + step]
        sub, c = batch.subset(rows), context[rows]
        v, lq_b, log_p_b, smoothed, _ = _flow_pool(net, sampler, space, sub, c, own[rows], big,
                                                   (u[rows], lq[rows], log_p[rows]))  # fmt: skip
        evals[rows] += big - s
        w = torch.exp(smoothed)  # (r, B) normalized weights
        fine = torch.isfinite(w).all(dim=1) & (w.sum(dim=1) > 0.5)  # a target none of whose draws has mass: no look
        if not bool(fine.any()):
            continue
        rows, sub, c, v, lq_b, log_p_b, w = rows[fine], sub.subset(torch.nonzero(fine).squeeze(1)), c[fine], \
            v[fine], lq_b[fine], log_p_b[fine], w[fine]  # fmt: skip
        vd = v.double()
        mean = (w[..., None] * vd).sum(dim=1)
        diff = vd - mean[:, None, :]
        cov = (w[..., None, None] * diff[..., :, None] * diff[..., None, :]).sum(dim=1)  # row by row: batch-free
        floor = (1e-6 * net.scale.double().square()).diag_embed()  # a pool of one effective draw: still a t
        cov = cov + floor
        ok, k2, ess2, drawn = _with_t(net, sampler, space, sub, c, own[rows], v, lq_b, log_p_b, mean, cov,
                                      "amortized_moments", s)  # fmt: skip
        evals[rows] += big  # the flow's density at the t draws
        if bool(ok.any()):
            u[rows[ok]] = drawn.to(u.dtype)
            k[rows[ok]], ess[rows[ok]] = k2[ok], ess2[ok]


def _second_look(
    net: PosteriorNet, sampler: FlowSampler, space: Space, batch: Targets, context: Conditioned, rows: Tensor,
    own: Tensor, u: Tensor, lq: Tensor, log_p: Tensor, k: Tensor, ess: Tensor, evals: Tensor,
    laplace: Callable[[Tensor], tuple[Tensor, Tensor]],
) -> None:  # fmt: skip
    """The targets of a chunk whose flow draws failed the check (k >= KHAT_MAX) are weighed again, from a pool of
    their flow draws and as many of a Student t at Laplace's Gaussian (laplace_check.py's proposal), under the
    mixture's density (half each: Owen & Zhou 2000's deterministic mixture). The two fail apart: the flow where a
    posterior is sharper than it resolves, Laplace where one is curved or bounded. `validate --n 2000`: on
    normal.yaml 58% of the curves passed the flow alone, 99.6% with this; on rotation_curve_observed.yaml (n 1000)
    44% and 74% (flows trained ~80 s at the defaults; the prototype: t alone 35%). Where the mixture passes, u (rows
    of the chunk) gets its resampled draws, k its k-hat and ess its effective draws (of the pool of 2 S); elsewhere
    all stay (the flow's draws, flagged). In place. net, sampler: the flow and its batched sampler; batch, context,
    rows, own: the chunk's targets, their embeddings, their rows in the call and their seeds; u (c, S, q), lq and
    log_p (c, S) the flow's draws, their log densities under the flow and their unnormalized log posterior, k and
    ess (c,); evals (c,) the flow's evaluations per target, counted."""
    bad = torch.nonzero(k >= KHAT_MAX).squeeze(1)
    draws = u.shape[1]
    mean, cov = laplace(rows[bad])
    fine = torch.isfinite(mean).all(dim=1) & torch.isfinite(cov).flatten(1).all(dim=1)  # a failed fit: no look
    if not bool(fine.any()):
        return
    bad, mean, cov = bad[fine], mean[fine].double(), cov[fine].double()
    ok, k2, ess2, drawn = _with_t(net, sampler, space, batch.subset(bad), context[bad], own[bad], u[bad], lq[bad],
                                  log_p[bad], mean, cov, "amortized_t", draws)  # fmt: skip
    evals[bad] += draws  # the flow's density at the t draws
    if bool(ok.any()):
        u[bad[ok]] = drawn.to(u.dtype)
    k[bad] = torch.where(ok, k2, k[bad])
    ess[bad] = torch.where(ok, ess2, ess[bad])


def _flow_pool(
    net: PosteriorNet,
    sampler: FlowSampler,
    space: Space,
    batch: Targets,
    context: Conditioned,
    own: Tensor,
    draws: int,
    first: tuple[Tensor, Tensor, Tensor] | None = None,
    eps: Tensor | None = None,
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """`draws` flow draws per target (its own base normals: the first S of any number the same) weighed against the
    posterior: the draws (r, B, q), their log q and log posterior (r, B), the Pareto-smoothed log weights (r, B)
    and k-hat (r,). first: the first S of those draws with their log q and log posterior, already computed: only the
    rest are drawn (each draw is computed on its own: the same numbers either way). eps: the targets' base draws
    (sampler.base_draws(own, draws)), where the caller has them."""
    eps = sampler.base_draws(own, draws) if eps is None else eps
    if first is None:
        v, lq = net.sample(context, eps, sampler)
        log_p = space.log_posterior(batch, v)
    else:
        v, lq = net.sample(context, eps[:, first[0].shape[1] :], sampler)
        log_p = torch.cat([first[2], space.log_posterior(batch, v)], dim=1)
        v, lq = torch.cat([first[0], v], dim=1), torch.cat([first[1], lq], dim=1)
    smoothed, k = psis(log_p - lq.double())  # NaN: no weight (psis)
    return v, lq, log_p, smoothed, k


def _with_t(
    net: PosteriorNet,
    sampler: FlowSampler,
    space: Space,
    batch: Targets,
    context: Conditioned,
    own: Tensor,
    v: Tensor,
    lq: Tensor,
    log_p: Tensor,
    mean: Tensor,
    cov: Tensor,
    stream: str,
    keep: int,
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """The looks' pool: flow draws v (r, B, q) (their log q and log posterior (r, B)) and as many draws of a Student
    t at (mean, cov) (stream `stream` of each target's seed `own`), weighed under the half-and-half mixture of the two
    densities (Owen & Zhou 2000's deterministic mixture; the flow's density at the t draws by the sampler's forward
    pass, in the net's float32 like its draws: a target's the same in any batch, as they are). Returns per target
    whether the pool passes (k-hat < KHAT_MAX), its k-hat and effective draws (r,), and `keep` draws resampled from
    the pool of those that pass."""
    b = v.shape[1]
    _, t, lq_t = student_draws_with_log_q(mean, cov, b, own, PROPOSAL_DF, stream)
    lq_flow_t = net.log_prob_draws(t.to(context.dtype), context, sampler).double()
    vd = v.double()
    lq_t_flow = student_log_density(vd, mean, cov, PROPOSAL_DF)
    log_mix = torch.logaddexp(torch.cat([lq.double(), lq_flow_t], 1), torch.cat([lq_t_flow, lq_t], 1))
    log_w = torch.cat([log_p, space.log_posterior(batch, t)], 1) - (log_mix - math.log(2.0))  # log p - log mixture
    smoothed, k = psis(log_w)  # NaN: no weight (psis)
    ok = k < KHAT_MAX
    pool = torch.cat([vd, t], 1)[ok]
    drawn = importance_resample(pool, smoothed[ok], own[ok], keep) if bool(ok.any()) else pool[:, :keep]
    return ok, k, importance_ess(smoothed), drawn


def flow_proposal(net: PosteriorNet, targets: Targets) -> Independent:
    """The flow q(u | observation) of each target as mcmc's independence proposal (ensemble.Independent), in free
    natural coordinates like the samplers' walkers. In float64 (a copy of the net), the proposals rounded to float32
    (their log q that of the unrounded point: ~1e-6 apart, far below what an accept test resolves): a target's
    proposals are then the same in any batch (float64's batch-dependent last bits vanish in the rounding) and its
    log q the same to ~1e-16, so its chain does not depend on its batch. Targets off the flow's training range get
    it too: Metropolis-Hastings keeps the posterior exact whatever the proposal, a poor one is only rejected more
    often."""
    net64 = copy.deepcopy(net).double()
    sampler = net64.sampler()
    with torch.no_grad():
        order, widths = _by_width(targets)
        context = torch.empty(targets.n, net.args.embed, dtype=torch.float64)
        for a in range(0, targets.n, 4096):  # the encoder's working memory bounded
            rows = order[a : a + 4096]
            context[rows] = net64.embed(_rows(targets, rows, int(widths[rows].max())))

    @torch.no_grad()
    def draw(rows: Tensor, eps: Tensor) -> tuple[Tensor, Tensor]:
        u, lq = net64.sample(context[rows], eps.double(), sampler)
        return u.float().double(), lq  # rounded to float32: free of float64's batch-dependent last bits

    @torch.no_grad()
    def log_q(x: Tensor, rows: Tensor) -> Tensor:
        return net64.log_prob(x.double(), context[rows])

    return Independent(draw, log_q, "flow")


def _by_width(targets: Targets) -> tuple[Tensor, Tensor]:
    """The targets ordered by their width (1 + the place of their last real point; stable), and the widths (n,)."""
    m = targets.y.shape[1]
    if targets.mask is None:
        return torch.arange(targets.n), torch.full((targets.n,), m)
    widths = (targets.mask * torch.arange(1, m + 1)).amax(dim=1)
    return torch.argsort(widths, stable=True), widths


def _rows(targets: Targets, rows: Tensor, width: int) -> Targets:
    """Targets `rows` (a tensor of indices) with their padding cut to `width` points."""

    def cut(t: Tensor | None) -> Tensor | None:
        return None if t is None else t[rows, :width]

    return replace(targets, y=cut(targets.y), x=cut(targets.x), yerr=cut(targets.yerr), mask=cut(targets.mask),
                   params=None if targets.params is None else targets.params[rows],
                   names=[targets.names[i] for i in rows.tolist()] if targets.names else [])  # fmt: skip


def _empty(part: Posterior, n: int) -> Posterior:
    """A posterior of n targets shaped like chunk `part`, its arrays allocated, not filled (_put fills them)."""

    def like(a: np.ndarray) -> np.ndarray:
        return np.empty((n, *a.shape[1:]), a.dtype)

    return Posterior(
        part.kind, part.names, like(part.samples), {k: like(v) for k, v in part.quantiles.items()}, like(part.corr)
    )


def _put(post: Posterior, part: Posterior, rows: np.ndarray) -> None:
    """Chunk `part`'s targets into rows `rows` of `post`."""
    post.samples[rows] = part.samples
    post.corr[rows] = part.corr
    for k, v in part.quantiles.items():
        post.quantiles[k][rows] = v


def _named(names: list[str], hit: np.ndarray, note: Callable[[int], str]) -> str:
    shown = ", ".join(f"{names[i] if names else f'target {i}'}{note(i)}" for i in hit[:NAMED_IN_WARNING])  # unnamed:
    # a library caller's batch
    return shown + (f" and {hit.size - NAMED_IN_WARNING} more" if hit.size > NAMED_IN_WARNING else "")


def _warnings(names: list[str], k: np.ndarray, bad: np.ndarray, outside: np.ndarray, missed: np.ndarray) -> list[str]:
    out = []
    if missed.any():
        out.append(f"the amortized posterior's draws of {_named(names, np.nonzero(missed)[0], lambda i: '')} are all "
                   f"far less probable than their own fits (by > {MISS_NATS:g} in log posterior): they miss the "
                   f"posterior's mode ({MISSED_MODE}); use --posterior mcmc for their intervals")  # fmt: skip
    if bad.any():
        hit = np.nonzero(bad)[0]
        shown = _named(names, hit, lambda i: f" (k-hat {k[i]:.2g})")
        out.append(f"the amortized posterior misses posterior mass for {shown} (Pareto k-hat >= {KHAT_MAX}: "
                   f"{FLAG}): use --posterior mcmc for their intervals")  # fmt: skip
    if outside.any():
        hit = np.nonzero(outside)[0]
        out.append(f"{_named(names, hit, lambda i: '')} lie outside what the amortized posterior was trained on "
                   f"(number of points or radii: {OFF_RANGE}): trust their intervals only where k-hat < {KHAT_MAX}, "
                   "or use --posterior mcmc")  # fmt: skip
    return out


def flag(flags: list[list[str]], chk: AmortizedCheck) -> None:
    """Add FLAG and OFF_RANGE to the per-target flags (off_manifold targets, curves unlike the run's training
    curves, are off the flow's range too)."""
    for i in np.nonzero(chk.unreliable)[0]:
        flags[i].append(FLAG)
    for i in np.nonzero(chk.missed)[0]:
        flags[i].append(MISSED_MODE)
    for i, f in enumerate(flags):
        if chk.off_range[i] or "off_manifold" in f:
            f.append(OFF_RANGE)
