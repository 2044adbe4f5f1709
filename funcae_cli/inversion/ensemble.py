"""An affine-invariant ensemble sampler for many independent targets at once (torch and seeding.py only).

One tensor of walkers (ensembles, walkers, parameters): each step moves one half of every ensemble's walkers given
the other half of the same ensemble, alternating, by one of three well-known moves drawn step by step (SHARES): the
stretch move (Goodman & Weare 2010, scale 2), differential evolution (ter Braak 2006, emcee's DEMove) and an
independence proposal from a Gaussian kernel density of the other half (emcee's KDEMove). All adapt their steps to
each ensemble's own density (scale, correlations, curvature). Optionally, an independence proposal of each
target's own (`Independent`: the run's amortized posterior given the target's observation), used in blocks of
BLOCK steps beside the local moves (`_Proposing`): it crosses at once what the local moves cross slowly.

`sample` runs each target as `groups` independent ensembles (their walkers never meet), so that R-hat across the
ensembles is a convergence test (diagnostics.py); R-hat across the walkers of one ensemble is not (its walkers are
not independent chains: emcee's documentation, ArviZ issues 977 and 2156). R-hat is judged within modes
(modes.py): ensembles that settled in separate modes are clustered apart, and each mode's ensembles must agree;
so a target whose ensembles sit in two well-sampled modes converges, and one whose ensembles disagree without
settling does not. With `steps=None` each target runs in batches until every parameter has steps >= 50 tau and
R-hat < 1.01, or until `max_steps`; a target that is done leaves the batch (the tensors are compacted), so it
costs nothing more. Targets are sampled in pools (`pool_size`: their recorded chains within POOL_BYTES, so memory
grows with the pool, not the catalogue); with `steps=None`, a pool's targets still running at `pause_step` (the
check at a quarter of the cap) wait there, and the waiting targets of several pools continue as one batch: the
slow few of each pool do not run nearly alone, each pool's tail after the other.

Randomness is per ensemble: each draws from its own seed (its target's seed and its index, seeding.child), by
counters laid out step by step (`Draws`), and picks its own move each half-step; so a target's chain is the same
alone or in any batch (rows grouped by move: one tensor call per move and half-step, no loop over targets).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Generator, Iterator
from dataclasses import dataclass

import torch
from torch import Tensor

from funcae_cli.inversion import seeding
from funcae_cli.inversion.diagnostics import converged, integrated_time, long_enough
from funcae_cli.inversion.modes import cluster, within_rhat

STRETCH = 2.0  # the stretch move's scale a
CHECK = 100  # auto: the first convergence check after this many steps, then every max(CHECK, steps / 4)
STORE = 2048  # recorded steps per walker kept at most: beyond, every other one is dropped (the chain thinned x2)

RowLogDensity = Callable[[Tensor, Tensor], Tensor]  # (x (k, q), target of each row (k,)) -> log density (k,)


def covariance(points: Tensor) -> Tensor:
    """(n, q, q) sample covariances of (n, k, q) points."""
    x = points - points.mean(dim=1, keepdim=True)
    return x.transpose(1, 2) @ x / max(x.shape[1] - 1, 1)


def _kde(other: Tensor) -> tuple[Tensor, Tensor]:
    """Per target, a Gaussian kernel density of the other half's walkers (n, K, q): its kernel's Cholesky factor
    (bandwidth by Scott's rule times the walkers' covariance) and the log normalizing constant."""
    n, k, q = other.shape
    cov = covariance(other)
    cov = cov + 1e-12 * torch.eye(q, dtype=cov.dtype) * torch.diagonal(cov, dim1=1, dim2=2).mean(dim=1)[:, None, None]
    h2 = k ** (-2.0 / (q + 4))
    chol, _ = torch.linalg.cholesky_ex(h2 * cov + 1e-300 * torch.eye(q, dtype=cov.dtype))
    log_norm = -torch.log(torch.diagonal(chol, dim1=1, dim2=2)).sum(dim=1) - 0.5 * q * math.log(2 * math.pi)
    return chol, log_norm - math.log(k)


def _kde_log(y: Tensor, other: Tensor, chol: Tensor, log_norm: Tensor) -> Tensor:
    """log q(y) (n, m) of points y (n, m, q) under the kernel density of other (n, K, q)."""
    d = y[:, :, None, :] - other[:, None, :, :]  # (n, m, K, q)
    n, m, k, q = d.shape
    sol = torch.linalg.solve_triangular(chol[:, None], d.reshape(n, m * k, q).transpose(1, 2)[:, None], upper=False)
    maha = sol.squeeze(1).square().sum(dim=1).reshape(n, m, k)
    return torch.logsumexp(-0.5 * maha, dim=2) + log_norm[:, None]


CHUNK = 32  # steps whose random numbers are drawn in one call (fewer, larger hashing calls)


@dataclass
class Draws:
    """The random numbers of one half-step of a batch of ensembles: counter-based (seeding.py), from each
    ensemble's own seed, so an ensemble's draws do not depend on its batch.

    Layout. Half-step k (= 2 t + h: step t counted from the first burn-in step, half h) of an ensemble with m
    walkers moving and q parameters owns uniforms [k U, (k + 1) U) of its stream "moves", U = 1 + 3 m: [0] the
    move, [1, 1 + m) the accept test, [1 + m, 1 + 2 m) and [1 + 2 m, 1 + 3 m) the move's first and second
    per-walker draws; and normals [k m q, (k + 1) m q) of its stream "kernel" (seeding.paired_normal; the kernel
    density's offsets, differential evolution's jitter takes the first m). No two draws share a counter; a move
    that does not use a slot leaves it unused. `drawn` makes CHUNK steps' numbers at once: the same numbers."""

    u: Tensor  # (b, U) float64
    z: Tensor  # (b, m q) float64

    @property
    def m(self) -> int:
        return (self.u.shape[1] - 1) // 3

    def subset(self, rows: Tensor) -> Draws:
        return Draws(self.u[rows], self.z[rows])

    def uniform(self, slot: int, dtype: torch.dtype) -> Tensor:
        """(b, m) uniforms of slot 1 (accept), 2 or 3 (the move's own)."""
        m = self.m
        return self.u[:, 1 + (slot - 1) * m : 1 + slot * m].to(dtype)

    def choice(self) -> Tensor:
        """(b,) the move of each ensemble: index into MOVES, with probabilities SHARES."""
        return torch.searchsorted(CUMULATIVE, self.u[:, 0].contiguous(), right=True).clamp_max(len(MOVES) - 1)

    def integers(self, slot: int, high: int) -> Tensor:
        return (self.uniform(slot, torch.float64) * high).long().clamp_max(high - 1)

    def normal(self, per_walker: int, dtype: torch.dtype) -> Tensor:
        """(b, m, per_walker) normals, per_walker <= q."""
        m = self.m
        return self.z.reshape(-1, m, self.z.shape[1] // m)[:, :, :per_walker].to(dtype)


def drawn(seeds: Tensor, start: int, steps: int, m: int, q: int) -> tuple[Tensor, Tensor]:
    """The numbers of steps [start, start + steps) of ensembles with seeds (b,): uniforms (b, steps, 2, U) and
    normals (b, steps, 2, m q), half-steps laid out as Draws says."""
    u = 1 + 3 * m
    uni = seeding.uniform(seeds, "moves", (steps, 2, u), 2 * start * u)
    return uni, seeding.paired_normal(seeds, "kernel", (steps, 2, m * q), 2 * start * m * q)


def _stretch(xs: Tensor, other: Tensor, draw: Draws) -> tuple[Tensor, Tensor]:
    """Goodman & Weare's stretch move toward a random walker of the other half (scale STRETCH)."""
    q = xs.shape[2]
    z = ((STRETCH - 1) * draw.uniform(2, xs.dtype) + 1) ** 2 / STRETCH
    partner = other.gather(1, draw.integers(3, other.shape[1])[:, :, None].expand(-1, -1, q))
    return partner + z[..., None] * (xs - partner), (q - 1) * torch.log(z)


def _differential(xs: Tensor, other: Tensor, draw: Draws) -> tuple[Tensor, Tensor]:
    """Differential evolution (ter Braak 2006, emcee's DEMove): a step along the difference of two walkers of
    the other half, scaled by 2.38 / sqrt(2 q) (times a 10% jitter): symmetric, it follows correlations."""
    n, m, q = xs.shape
    k = other.shape[1]
    a = draw.integers(2, k)
    b = (a + 1 + draw.integers(3, max(k - 1, 1))) % k  # a different walker
    pa = other.gather(1, a[:, :, None].expand(-1, -1, q))
    pb = other.gather(1, b[:, :, None].expand(-1, -1, q))
    gamma = 2.38 / math.sqrt(2 * q) * (1 + 0.1 * draw.normal(1, xs.dtype))
    return xs + gamma * (pa - pb), torch.zeros(n, m, dtype=xs.dtype)


def _kernel_density(xs: Tensor, other: Tensor, draw: Draws) -> tuple[Tensor, Tensor]:
    """An independence proposal from a Gaussian kernel density of the other half (emcee's KDEMove)."""
    q = xs.shape[2]
    chol, log_norm = _kde(other)
    pick = draw.integers(2, other.shape[1])
    eps = draw.normal(q, xs.dtype)
    y = other.gather(1, pick[:, :, None].expand(-1, -1, q)) + (chol[:, None] @ eps[..., None])[..., 0]
    return y, _kde_log(xs, other, chol, log_norm) - _kde_log(y, other, chol, log_norm)


MOVES = (_stretch, _differential, _kernel_density)
SHARES = torch.tensor([0.2, 0.4, 0.4])  # how often each move is used: each ensemble draws one per half-step
CUMULATIVE = torch.cumsum(SHARES.double(), 0)


def _propose(xs: Tensor, other: Tensor, draw: Draws) -> tuple[Tensor, Tensor]:
    """Every ensemble's proposal by its own move (rows grouped by move: one tensor call per move)."""
    choice = draw.choice()
    y, extra = torch.empty_like(xs), torch.zeros(xs.shape[:2], dtype=xs.dtype)
    for j, move in enumerate(MOVES):
        rows = torch.nonzero(choice == j).squeeze(1)
        if rows.numel() == xs.shape[0]:
            return move(xs, other, draw)
        if rows.numel():
            y[rows], extra[rows] = move(xs[rows], other[rows], draw.subset(rows))
    return y, extra


@dataclass
class Independent:
    """An independence proposal of each target's own, the same for every walker and step (for instance the run's
    amortized posterior given the target's observation): `draw(targets (b,), normals (b, k, q))` -> proposals
    (b, k, q) and their log densities (b, k); `log_q(x (r, q), targets (r,))` -> (r,). Metropolis-Hastings with
    q(x) / q(y) keeps each target's posterior exact whatever q is; a q close to it mixes in a few steps across
    shapes that the local moves cross slowly (the L-shaped disc-halo posteriors of rotation curves)."""

    draw: Callable[[Tensor, Tensor], tuple[Tensor, Tensor]]
    log_q: Callable[[Tensor, Tensor], Tensor]
    name: str = "independent"  # what it is, for the reports (the run's flow: "flow")


PROPOSAL_SHARE = 0.5  # with an Independent proposal: the chance that an ensemble's next BLOCK steps use it alone
BLOCK = 8  # steps of a block (a divisor of CHUNK)
PREPARE_ROWS = 128  # ensembles whose proposals are drawn in one call (128 x 512 draws: ~30 MB of working memory)


class _Proposing:
    """An Independent proposal at work in a batch of ensembles (one target per row, `targets` (b,)). Each ensemble
    spends each block of BLOCK steps either on the proposal alone (with chance PROPOSAL_SHARE, from its own stream
    "blocks") or on the local moves: a mixture of kernels chosen independently of the state, each leaving the
    posterior invariant. A block's proposals are drawn in one batched call from its steps' own normals (Draws:
    the kernel stream), and the walkers' log q are computed once at its start (after local moves) and then follow
    the accepted proposals: two calls of the proposal per block, not two per step."""

    def __init__(self, proposal: Independent, targets: Tensor, walkers: int):
        self.proposal, self.targets = proposal, targets
        b = targets.shape[0]
        self.log_q = torch.zeros(b, walkers, dtype=torch.float64)
        self.known = torch.zeros(b, dtype=torch.bool)  # log_q holds the walkers' own (their last block used it)
        self.using = torch.zeros(b, dtype=torch.bool)  # the current block uses the proposal
        self.y = self.log_q_y = torch.empty(0)

    def subset(self, rows: Tensor) -> _Proposing:
        out = _Proposing(self.proposal, self.targets[rows], self.log_q.shape[1])
        out.log_q, out.known = self.log_q[rows], self.known[rows]
        return out

    @staticmethod
    def join(parts: list[_Proposing]) -> _Proposing:
        """Batches of ensembles between blocks (their state: the walkers' log q and whether it is known) as one."""
        out = _Proposing(parts[0].proposal, torch.cat([p.targets for p in parts]), parts[0].log_q.shape[1])
        out.log_q, out.known = torch.cat([p.log_q for p in parts]), torch.cat([p.known for p in parts])
        return out

    def begin(self, x: Tensor, seeds: Tensor, step: int, normals: Tensor) -> None:
        """A block from step `step` (counted from the first burn-in step) with the steps' normals (b, steps, 2, m q)
        (drawn): which ensembles use the proposal, their proposals and log q, their walkers' log q (x (b, W, q))."""
        b, c, _, mq = normals.shape
        w, q = x.shape[1], x.shape[2]
        m = w // 2
        self.using = seeding.uniform(seeds, "blocks", (1,), step)[:, 0] < PROPOSAL_SHARE
        rows = torch.nonzero(self.using).squeeze(1)
        self.y = torch.empty(b, c, 2, m, q, dtype=x.dtype)
        self.log_q_y = torch.empty(b, c, 2, m, dtype=torch.float64)
        eps = normals.reshape(b, c * 2 * m, q).double()
        for a in range(0, rows.numel(), PREPARE_ROWS):  # the proposal's working memory bounded
            r = rows[a : a + PREPARE_ROWS]
            y, lq = self.proposal.draw(self.targets[r], eps[r])
            self.y[r], self.log_q_y[r] = y.to(x.dtype).reshape(-1, c, 2, m, q), lq.double().reshape(-1, c, 2, m)
        fresh = torch.nonzero(self.using & ~self.known).squeeze(1)
        if fresh.numel():
            lq = self.proposal.log_q(x[fresh].reshape(-1, q), self.targets[fresh].repeat_interleave(w))
            self.log_q[fresh] = lq.double().reshape(-1, w)
        self.known = self.using.clone()

    def propose(self, xs: Tensor, other: Tensor, draw: Draws, t: int, h: int, mine: slice) -> tuple[Tensor, Tensor]:
        """The half-step's proposals (b, m, q) and log ratios (b, m): the proposal's where the block uses it, the
        local moves' elsewhere."""
        other_rows = torch.nonzero(~self.using).squeeze(1)
        if other_rows.numel() == xs.shape[0]:
            return _propose(xs, other, draw)
        y = self.y[:, t, h].clone()
        extra = (self.log_q[:, mine] - self.log_q_y[:, t, h]).to(xs.dtype)
        if other_rows.numel():
            y[other_rows], extra[other_rows] = _propose(xs[other_rows], other[other_rows], draw.subset(other_rows))
        return y, extra

    def moved(self, accept: Tensor, t: int, h: int, mine: slice) -> None:
        """After a half-step: the accepted proposals' log q."""
        own = self.using[:, None] & accept
        cache = self.log_q[:, mine]
        cache[own] = self.log_q_y[:, t, h][own]
        self.log_q[:, mine] = cache


def advance(
    log_prob: Callable[[Tensor], Tensor], x: Tensor, lp: Tensor, steps: int, seeds: Tensor, start: int = 0,
    proposing: _Proposing | None = None, every: int = 1, phase: int = 0,
) -> tuple[Tensor, Tensor]:  # fmt: skip
    """Move the ensembles x (b, W, q) with log densities lp (b, W) `steps` steps, in place, steps start,
    start + 1... of each ensemble's own random numbers (seeds (b,): Draws). log_prob: walkers (b, m, q) -> (b, m)
    (-inf outside the support). proposing: an Independent proposal's blocks (_Proposing), or None.
    Returns the positions after the recorded steps (b, W, r, q): step t (from 0) where (phase + t + 1) % every == 0
    (every 0: none; by default all), and the accepted moves per ensemble (b,)."""
    b, w, q = x.shape
    half = w // 2
    slot = {t: i for i, t in enumerate(t for t in range(steps) if every and (phase + t + 1) % every == 0)}
    chain = torch.empty(b, w, len(slot), q, dtype=x.dtype)
    accepted = torch.zeros(b, dtype=torch.float64)
    for t in range(steps):
        if t % CHUNK == 0:
            uni, nor = drawn(seeds, start + t, min(CHUNK, steps - t), half, q)
        if proposing is not None and t % BLOCK == 0:
            proposing.begin(x, seeds, start + t, nor[:, t % CHUNK : t % CHUNK + BLOCK])
        for h, first in enumerate((True, False)):
            mine = slice(0, half) if first else slice(half, w)
            other = x[:, half:] if first else x[:, :half]
            xs, lps = x[:, mine], lp[:, mine]
            draw = Draws(uni[:, t % CHUNK, h], nor[:, t % CHUNK, h])
            if proposing is None:
                y, log_extra = _propose(xs, other, draw)
            else:
                y, log_extra = proposing.propose(xs, other, draw, t % BLOCK, h, mine)
            lp_y = log_prob(y)
            log_u = torch.log(draw.uniform(1, x.dtype))
            accept = torch.isfinite(lp_y) & (log_u < lp_y - lps + log_extra)
            x[:, mine] = torch.where(accept[..., None], y, xs)
            lp[:, mine] = torch.where(accept, lp_y, lps)
            accepted += accept.double().sum(dim=1)
            if proposing is not None:
                proposing.moved(accept, t % BLOCK, h, mine)
        if t in slot:
            chain[:, :, slot[t]] = x
    return chain, accepted


def ensemble(
    log_prob: Callable[[Tensor], Tensor], x0: Tensor, steps: int, burn: int, seeds: Tensor
) -> tuple[Tensor, Tensor]:
    """One ensemble per row of x0 (n, W, q), W even, row i drawing from seeds[i]: `burn` steps discarded, then
    `steps` kept. Returns the kept chain (n, W, steps, q) and the acceptance rate over the kept steps (n,)."""
    x = x0.clone()
    lp = log_prob(x)
    advance(log_prob, x, lp, burn, seeds, every=0)
    chain, accepted = advance(log_prob, x, lp, steps, seeds, start=burn)
    return chain, accepted / max(steps * x0.shape[1], 1)


@dataclass
class Cohort:
    """Targets that stopped at the same step, with their chains and diagnostics."""

    targets: Tensor  # (k,) their rows in the batch
    chain: Tensor  # (k, W, s, q) float32: every `thin`-th step after burn-in, walkers group-major
    thin: int
    steps: int  # steps run after burn-in
    acceptance: Tensor  # (k,)
    tau: Tensor  # (k, q) integrated autocorrelation time, in steps
    rhat: Tensor  # (k, q) rank-normalized split R-hat across the groups of each mode, the worst mode's
    ess: Tensor  # (k, q) walkers x steps / tau
    converged: Tensor  # (k,) steps >= 50 tau and R-hat < 1.01 for every parameter
    labels: Tensor  # (k, groups) the mode of each group (modes.cluster: the first group of its mode)


def by_group(chain: Tensor, groups: int) -> Tensor:
    """(k, W, s, q) walkers of `groups` ensembles -> (k, groups, s * W / groups, q) chains, time-major (a split in
    half splits each ensemble's run in time)."""
    k, w, s, q = chain.shape
    return chain.reshape(k, groups, w // groups, s, q).transpose(2, 3).reshape(k, groups, -1, q)


def diagnose(
    chain: Tensor, thin: int, steps: int, groups: int, everyone: bool = True
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """tau (in steps), R-hat across the groups of each mode, ESS, convergence and the groups' modes (k, groups) of
    chains (k, W, s, q) recorded every thin-th step over `steps` steps. everyone False: R-hat and the modes only
    for the targets whose chains are long enough already (steps >= 50 tau for every parameter), the others get NaN
    and mode 0 (they cannot have converged; R-hat's rank normalization sorts every draw and was half of mcmc's
    time when computed at every check)."""
    tau = integrated_time(chain) * thin
    k = chain.shape[0]
    labels = torch.zeros(k, groups, dtype=torch.int64)
    rhat = torch.full_like(tau, math.nan)
    if groups > 1:
        rows = torch.arange(k) if everyone else torch.nonzero(long_enough(steps, tau)).squeeze(1)
        if rows.numel():
            grouped = by_group(chain if rows.numel() == k else chain[rows], groups)
            labels[rows] = cluster(grouped)
            rhat[rows] = within_rhat(grouped, labels[rows])
    ess = chain.shape[1] * steps / tau
    return tau, rhat, ess, converged(steps, tau, rhat), labels


POOL_BYTES = 1 << 29  # the recorded chains of the targets sampled together, float32, at most (512 MiB)


def pool_size(walkers: int, q: int) -> int:
    """Targets sampled together: as many as POOL_BYTES of recorded chains (walkers x STORE steps x q) hold."""
    return max(1, POOL_BYTES // (walkers * STORE * q * 4))


def chain_bytes(n: int, walkers: int, q: int) -> int:
    """The most bytes `sample` holds in chains for n targets: a running pool's recorded chains, the waiting
    targets' (fewer than a pool) and a batch's newly recorded steps (float64, fewer than a pool's record)."""
    return 3 * min(n, pool_size(walkers, q)) * walkers * STORE * q * 4


def pause_step(cap: int) -> int:
    """steps auto: the check (of the schedule every target follows, `_next_batch`) at which the targets still
    running leave their pool to wait for others: the first at or after a quarter of the cap."""
    done = 0
    while done < cap // 4:
        done += _next_batch(done, cap, None)
    return done


def _next_batch(done: int, cap: int, steps: int | None) -> int:
    """Steps until the next check: fixed steps, all at once; auto, CHECK, then a quarter of those done."""
    return cap if steps is not None else min(cap, done + max(CHECK, done // 4)) - done


@dataclass
class _Pool:
    """Targets sampled together, all at the same step: their ensembles' walkers (b * groups, W / groups, q), log
    densities, seeds and proposal state, and per target the recorded chain (b, W, s, q) and accepted moves."""

    active: Tensor  # (b,) the targets' rows in the caller's batch
    x: Tensor
    lp: Tensor
    row_seeds: Tensor  # (b * groups,)
    proposing: _Proposing | None
    kept: Tensor
    accepted: Tensor
    done: int = 0  # steps run after burn-in
    thin: int = 1

    def take(self, keep: Tensor, groups: int) -> _Pool:
        """The targets where keep (b,) bool (their seeds and proposal state follow them)."""
        rows = keep.repeat_interleave(groups)
        proposing = None if self.proposing is None else self.proposing.subset(rows)
        return _Pool(self.active[keep], self.x[rows], self.lp[rows], self.row_seeds[rows], proposing,
                     self.kept[keep], self.accepted[keep], self.done, self.thin)  # fmt: skip

    @staticmethod
    def join(pools: list[_Pool]) -> _Pool:
        """Pools paused at the same step (and so with the same thinning) as one."""
        first = pools[0]
        proposing = None if first.proposing is None else _Proposing.join([p.proposing for p in pools])
        cat = lambda name: torch.cat([getattr(p, name) for p in pools])  # noqa: E731
        return _Pool(cat("active"), cat("x"), cat("lp"), cat("row_seeds"), proposing, cat("kept"), cat("accepted"),
                     first.done, first.thin)  # fmt: skip


def sample(
    per_row: RowLogDensity, x0: Tensor, groups: int, steps: int | None, burn: int, max_steps: int,
    seeds: Tensor, proposal: Independent | None = None, pool: int | None = None,
) -> Iterator[Cohort]:  # fmt: skip
    """Sample n targets, each as `groups` independent ensembles of W / groups walkers (x0 (n, W, q), W / groups
    even; walkers [g W/groups, (g+1) W/groups) form ensemble g). steps: a fixed count after `burn`, or None: until
    converged (diagnostics.converged) or `max_steps`, checked in batches. Ensemble g of target i draws from
    seeding.child(seeds[i], g) (seeds (n,): the targets' own), so its chain does not depend on the batch; the
    seeds follow their rows when finished targets leave. proposal: an independence proposal per target, used in
    blocks of steps beside the local moves (_Proposing), burn-in included; None: the local moves alone. Yields the
    cohorts of targets that stopped together.

    Memory and stragglers: targets are sampled in pools of `pool` (default `pool_size`: the recorded chains within
    POOL_BYTES), so the chains held grow with the pool, not the catalogue (a consumer that drops each cohort's
    chains once summarized holds one pool's). With steps auto, a pool's targets still running at `pause_step`
    wait there, and the waiting targets of several pools continue together: the few slow targets of each pool
    run in one full batch instead of each pool's tail running nearly alone. A target's chain, its checks and its
    stopping step are the same in any pool (the check schedule depends on its own step count alone).
    """
    n, w, q = x0.shape
    size = pool_size(w, q) if pool is None else max(1, int(pool))
    cap = max_steps if steps is None else steps
    pause = cap if steps is not None or n <= size else pause_step(cap)
    run = _Runner(per_row, groups, steps, burn, cap, w, q)
    waiting: list[_Pool] = []
    for a in range(0, n, size):
        last = a + size >= n
        rest = yield from run(run.start(x0[a : a + size], torch.arange(a, min(n, a + size)), seeds[a : a + size],
                                        proposal), pause)  # fmt: skip
        waiting += [] if rest is None else [rest]
        if waiting and (last or sum(p.active.numel() for p in waiting) >= size):
            joined = _Pool.join(waiting)
            waiting = []
            while joined.active.numel() >= size or (last and joined.active.numel()):
                head = torch.arange(joined.active.numel()) < size
                yield from run(joined.take(head, groups), cap)
                joined = joined.take(~head, groups)
            waiting += [joined] if joined.active.numel() else []


@dataclass
class _Runner:
    """Runs pools of `sample`: their burn-in, then batches of steps with a check after each (module docstring)."""

    per_row: RowLogDensity
    groups: int
    steps: int | None
    burn: int
    cap: int
    w: int
    q: int

    def log_prob_of(self, active: Tensor) -> Callable[[Tensor], Tensor]:
        target = active.repeat_interleave(self.groups)

        def log_prob(y: Tensor) -> Tensor:
            b, m, _ = y.shape
            return self.per_row(y.reshape(b * m, self.q), target.repeat_interleave(m)).reshape(b, m)

        return log_prob

    def start(self, x0: Tensor, active: Tensor, seeds: Tensor, proposal: Independent | None) -> _Pool:
        """A pool of the targets `active` from walkers x0 (b, W, q), after its burn-in."""
        b, g = active.numel(), self.groups
        x = x0.reshape(b * g, self.w // g, self.q).clone()
        row_seeds = seeding.child(seeds.repeat_interleave(g), torch.arange(g).repeat(b))  # (b * groups,)
        proposing = None if proposal is None else _Proposing(proposal, active.repeat_interleave(g), self.w // g)
        log_prob = self.log_prob_of(active)
        lp = log_prob(x)
        advance(log_prob, x, lp, self.burn, row_seeds, proposing=proposing, every=0)
        kept = torch.empty(b, self.w, 0, self.q, dtype=torch.float32)
        return _Pool(active, x, lp, row_seeds, proposing, kept, torch.zeros(b, dtype=torch.float64))

    def __call__(self, p: _Pool, until: int) -> Generator[Cohort, None, _Pool | None]:
        """Run pool p until its targets stop, or until the check at step `until`: yields the cohorts that stopped,
        returns the pool of those still running (None when none)."""
        g, w, q = self.groups, self.w, self.q
        log_prob = self.log_prob_of(p.active)
        while p.active.numel():
            if p.done >= until:
                return p
            batch = _next_batch(p.done, self.cap, self.steps)
            start, proposing = self.burn + p.done, p.proposing
            # only the steps kept (every thin-th): not every step's positions in float64
            chain, acc = advance(log_prob, p.x, p.lp, batch, p.row_seeds, start, proposing, every=p.thin, phase=p.done)
            p.kept = torch.cat([p.kept, chain.reshape(-1, w, chain.shape[2], q).float()], dim=2)
            del chain
            p.accepted += acc.reshape(-1, g).sum(dim=1)
            p.done += batch
            while p.kept.shape[2] > STORE:
                p.kept, p.thin = p.kept[:, :, 1::2], 2 * p.thin
            tau, rhat, ess, ok, labels = diagnose(p.kept, p.thin, p.done, g, everyone=p.done >= self.cap)
            stop = ok | (p.done >= self.cap)
            if bool(stop.any()):
                yield Cohort(p.active[stop], p.kept[stop], p.thin, p.done, p.accepted[stop] / (p.done * w), tau[stop],
                             rhat[stop], ess[stop], ok[stop], labels[stop])  # fmt: skip
                if bool(stop.all()):
                    return None
                p = p.take(~stop, g)
                log_prob = self.log_prob_of(p.active)
        return None
