"""Physical parameters that fit with the physics: the family's own formula fitted to every target at once.

For families with a formula (normal, beta, rotation_curve) the parameters a decoder suggests are refined by
least squares of the formula itself against each target's points: chi^2 with yerr, else the sum of squares in
the family's units. All targets and all their starts are the rows of ONE problem on the device, in float64:
a batched Levenberg-Marquardt with per-row damping and stopping, over a flat list of every observed point of
every active row (no padding). A Jacobian costs one backward pass: each point's residual depends only on its
own row's parameters, so the gradient of the summed residuals by the per-point copies of the parameters is
every point's own derivative.

Parameters live in their natural scale u (log10 for positive scale parameters such as masses, lengths and
widths, the value otherwise), inside a box: the run's prior support (`prior`, the default) or the family's
domain (`domain`). The bounds are exact: a step is projected onto the box, and a coordinate on a bound whose
gradient points outward is held there for the step (projected Levenberg-Marquardt with an active set), so a
fit can end on a bound, where the data want to go beyond the prior. A parameter the prior fixes is not fitted.

Starts: the decoder's estimate, and the `starts - 1` best (lowest objective) of `CANDIDATES` points spread over
the box (a seeded Latin hypercube, evaluated in one pass); all starts run `SCREEN_ITERATIONS`, then each target
keeps its best and continues. With `alternatives` (for a posterior) the other starts continue too, to their own
ends: with the plateau escapes' ends (and a plateau fit an escape replaced), the distinct ones within
ALTERNATIVE_CHI2 of the best are the target's alternatives (`PhysicsFit.alternatives`, which may be better than
the best when a start that lost the screen ends lower), so a posterior can start its independent ensembles in
other good places. A parameter is reported on a bound when it ends there and the data pull it
outward: moving 1% of the span outward would lower chi^2 by more than 1 (without yerr: the sum of squares by
more than 0.1%); the prior may be too narrow for that target.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from funcae_cli.data.formulas import CHI2, FORMULAS
from funcae_cli.data.powers import exp10
from funcae_cli.errors import OptionError
from funcae_cli.inversion import seeding
from funcae_cli.store.trained import Trained

BOUNDS = ("prior", "domain")
CANDIDATES = 32  # spread points per target where the objective is evaluated; the best become starts
SCREEN_ITERATIONS = 8  # every start runs this many steps before each target keeps its best
FTOL = 1e-10  # a row stops when a step lowers its objective by less than this, relative
XTOL = 1e-10  # ... or moves it less than this (relative to its natural coordinates)
LAMBDA0, LAMBDA_MAX = 1e-3, 1e12  # initial damping; a row whose damping exceeds LAMBDA_MAX cannot progress
ON_BOUND = 1e-6  # a fit within this fraction of the span from a bound is on it
SPAN_CAP = 10.0  # spread starts in an unbounded coordinate: the training range, at most this wide (natural units)
ESCAPES = 6  # plateau escapes: restarts per target whose fit ends with a parameter on a bound
PLATEAU_GAIN = 1e-2  # a coordinate is flat when moving it 1% of its span would lower chi^2 by less than this
LOCAL_MINIMUM_CHI2 = 4.0  # local_minimum: a plateau fit whose restarts end more than this chi^2 apart
ALTERNATIVES = 4  # alternative optima kept per target (the best first)
# an alternative within this chi^2 of the best: a mode 25 worse carries ~e^-12.5 of the best's mass unless it is
# far wider, and an ensemble started there would be spent on it
ALTERNATIVE_CHI2 = 25.0
DISTINCT = 1e-3  # two ends are distinct optima when some coordinate differs by more than this fraction of its span


@dataclass
class Bounds:
    """Per parameter, in natural scale (log10 for log-scale parameters): low, high (may be infinite) and
    whether the prior fixes it (low == high)."""

    low: Tensor  # (p,) float64
    high: Tensor  # (p,)
    log_scale: list[bool]
    kind: str  # "prior" or "domain"

    @property
    def free(self) -> Tensor:
        return self.high > self.low

    def to_units(self, u: Tensor) -> Tensor:
        """Natural scale -> the family's units."""
        return torch.where(torch.tensor(self.log_scale, device=u.device), exp10(u), u)

    def to_natural(self, p: Tensor) -> Tensor:
        logs = torch.tensor(self.log_scale, device=p.device)
        return torch.where(logs, torch.log10(p.clamp_min(1e-300)), p)


def natural_bounds(trained: Trained, kind: str) -> Bounds:
    """The box a fit stays in: the run's prior support (uniform and log-uniform laws: their range; fixed: the
    value; normal laws and parameters a structured prior derives: the range of the training set) or the
    family's domain."""
    if kind not in BOUNDS:
        raise OptionError("bounds", f"expected one of {', '.join(BOUNDS)}, got {kind!r}")
    fam = trained.family
    specs = trained.cfg.family.params
    lo_train, hi_train = trained.data["param_min"], trained.data["param_max"]
    low, high, logs = [], [], []
    for j, p in enumerate(fam.params):
        to_nat = (lambda v: math.log10(v) if v > 0 else -math.inf) if p.log_scale else (lambda v: v)
        logs.append(p.log_scale)
        spec = specs.get(p.name)
        if kind == "domain":
            a, b = to_nat(p.low), to_nat(p.high)
        elif spec is not None and spec.dist in ("uniform", "loguniform"):
            a, b = to_nat(max(spec.low, p.low)), to_nat(spec.high)
        elif spec is not None and spec.dist == "fixed":
            a = b = to_nat(spec.value)
        else:
            a, b = to_nat(lo_train[j]), to_nat(hi_train[j])
        low.append(a)
        high.append(b)
    return Bounds(torch.tensor(low, dtype=torch.float64), torch.tensor(high, dtype=torch.float64), logs, kind)


@dataclass
class Observations:
    """Every observed point of a batch as flat float64 arrays on the device."""

    target: Tensor  # (N,) int64: the target each point belongs to
    x: Tensor  # (N,)
    y: Tensor  # (N,)
    weight: Tensor  # (N,) 1 / yerr, or 1
    n: int  # targets
    chi2: bool

    @classmethod
    def of(cls, x: Tensor, y: Tensor, yerr: Tensor | None, mask: Tensor | None, device: torch.device) -> Observations:
        """x, y, yerr, mask: (n, m) (x may be (m,): one grid for all)."""
        n, m = y.shape
        x = x.expand(n, m) if x.ndim == 1 else x
        keep = torch.ones(n, m, dtype=torch.bool) if mask is None else mask
        target = torch.arange(n)[:, None].expand(n, m)[keep]
        w = (1.0 / yerr.double())[keep] if yerr is not None else torch.ones(int(keep.sum()), dtype=torch.float64)
        return cls(*(t.to(device) for t in (target, x.double()[keep], y.double()[keep], w)), n, yerr is not None)


@dataclass
class PhysicsFit:
    """The best fit per target (arrays over targets, CPU)."""

    params: np.ndarray  # (n, p) in the family's units
    objective: np.ndarray  # (n,) chi^2, or the sum of squares in the family's units
    iterations: np.ndarray  # (n,) of the winning start
    converged: np.ndarray  # (n,) bool
    start: np.ndarray  # (n,) winning start: 0 = the decoder's estimate, k = the k-th spread candidate
    on_bound: np.ndarray  # (n, p) int8: -1 at the low bound, +1 at the high one, 0 inside
    bounds: Bounds
    escaped: np.ndarray | None = None  # (n,) bool: a plateau restart found a lower chi^2 than the starts
    local_minimum: np.ndarray | None = None  # (n,) bool: a plateau fit whose restarts disagree (_escape_plateaus)
    # other optima the starts and restarts ended in, distinct from the best and from each other, within
    # ALTERNATIVE_CHI2 of it (chi^2 only), best first: (n, ALTERNATIVES, p) all natural coordinates, NaN where a
    # target has fewer; and their chi^2 (n, ALTERNATIVES), inf where none
    alternatives: np.ndarray | None = None
    alternative_objective: np.ndarray | None = None


class Fitter:
    """Residuals, objectives and Jacobians of the family's formula on a batch of observations, as functions of
    the free natural coordinates u (k, p_free) of k rows."""

    def __init__(self, trained: Trained, obs: Observations, bounds: Bounds, dtype: torch.dtype = torch.float64):
        """dtype: of every computation (float64 for the fit; the samplers may take float32, ~1.7x faster)."""
        dev = obs.x.device
        self.trained = trained
        self.formula = FORMULAS[trained.family.name]
        self.options = trained.cfg.family.options
        self.obs = Observations(obs.target, obs.x.to(dtype), obs.y.to(dtype), obs.weight.to(dtype), obs.n, obs.chi2)
        self.bounds = bounds
        self.free = bounds.free.to(dev)
        low, high = bounds.low.to(dev, dtype), bounds.high.to(dev, dtype)
        self.lo, self.hi = low[self.free], high[self.free]  # (p_free,)
        self.span = torch.where(torch.isfinite(self.hi - self.lo), self.hi - self.lo, 1.0)
        self.fixed_u = torch.where(self.free, 0.0, low)
        self.logs = torch.tensor(bounds.log_scale, device=dev)
        self.embedding = torch.eye(self.free.shape[0], dtype=dtype, device=dev)[self.free]  # (p_free, p)

    def full(self, u: Tensor) -> Tensor:
        """Free natural coordinates (k, p_free) -> all of them (k, p), the fixed ones at their value."""
        return torch.where(self.free, u @ self.embedding, self.fixed_u)

    def units(self, u: Tensor) -> Tensor:
        """Free natural coordinates (k, p_free) -> parameters in the family's units (k, p)."""
        full = self.full(u)
        return torch.where(self.logs, exp10(full), full)

    def _residual(self, params: Tensor, point: Tensor) -> Tensor:
        """Weighted residuals (N,) of the points `point` (indices into obs) at per-point parameters (N, p)."""
        f = self.formula(self.obs.x[point, None], params, self.options)[:, 0]
        return (f - self.obs.y[point]) * self.obs.weight[point]

    def residual(self, u: Tensor, row_of_point: Tensor, point: Tensor) -> Tensor:
        """Weighted residuals (N,) of the points `point`; row_of_point: their rows of u."""
        return self._residual(self.units(u)[row_of_point], point)

    def sums(self, r: Tensor, row_of_point: Tensor, k: int) -> Tensor:
        return torch.zeros(k, dtype=r.dtype, device=r.device).index_add_(0, row_of_point, r.square())

    def chi2(
        self, u: Tensor, start: Tensor, count: Tensor, row_of_point: Tensor, point: Tensor, active: Tensor | None = None
    ) -> Tensor:
        """Sums of squared weighted residuals (k,) float64 of rows u (k, p_free), row i over the points [start[i],
        start[i] + count[i]) of obs (row_of_point, point: the same layout point by point): the family's fused
        native pass (formulas.CHI2) where it has one that serves this dtype and device, else the formula's.
        active (k,) bool: the rows whose value is needed (the others may be anything; the fused pass skips them)."""
        fused = CHI2.get(self.trained.family.name)
        o = self.obs
        out = None if fused is None else fused(self.units(u), start, count, o.x, o.y, o.weight, active)
        if out is None:
            out = self.sums(self.residual(u, row_of_point, point), row_of_point, u.shape[0]).double()
        return out

    def jacobian(self, u: Tensor, row_of_point: Tensor, point: Tensor) -> tuple[Tensor, Tensor]:
        """(r (N,), J (N, p_free)): residuals and their derivatives by their own row's free coordinates, from one
        forward and one backward pass."""
        params = self.units(u)
        with torch.enable_grad():
            pp = params[row_of_point].detach().requires_grad_(True)
            r = self._residual(pp, point)
            (grad,) = torch.autograd.grad(r.sum(), pp)  # r_n depends on row n of pp alone: d r_n / d pp_n
        dp_du = torch.where(self.logs, math.log(10.0) * params, 1.0)[:, self.free]  # coordinate-wise map
        return r.detach(), grad[:, self.free] * dp_du[row_of_point]

    def gradient(self, u: Tensor, row_of_point: Tensor, point: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """(f (k,), g (k, p_free) = d f / d u, J) of k rows: objective, gradient, Jacobian."""
        k = u.shape[0]
        r, jac = self.jacobian(u, row_of_point, point)
        g = torch.zeros(k, jac.shape[1], dtype=u.dtype, device=u.device).index_add_(
            0, row_of_point, 2 * jac * r[:, None]
        )
        return self.sums(r, row_of_point, k), g, jac


def latin_hypercubes(seeds: Tensor, k: int, p: int) -> Tensor:
    """(n, k, p): per target (its seed), k points in [0, 1]^p, one in each of k slices of every coordinate."""
    cuts = (seeding.uniform(seeds, "physics", (k, p)) + torch.arange(k, dtype=torch.float64)[:, None]) / k
    return cuts.gather(1, seeding.permutations(seeds, "physics", k, p, offset=k * p))


def start_points(trained: Trained, bounds: Bounds, estimate: Tensor, starts: int, seeds: Tensor) -> Tensor:
    """(starts, n, p) natural-scale starts: the estimate (clamped into the box), then spread ones (a Latin
    hypercube over the box, target i's from its seed seeds[i]; an unbounded coordinate over the training range,
    at most SPAN_CAP wide)."""
    n, p = estimate.shape
    lo_t = bounds.to_natural(torch.tensor(trained.data["param_min"], dtype=torch.float64))
    hi_t = bounds.to_natural(torch.tensor(trained.data["param_max"], dtype=torch.float64))
    lo = torch.where(torch.isfinite(bounds.low), bounds.low, torch.minimum(lo_t, hi_t - SPAN_CAP))
    hi = torch.where(torch.isfinite(bounds.high), bounds.high, torch.maximum(hi_t, lo))
    finite = torch.isfinite(bounds.low) & torch.isfinite(bounds.high)
    hi = torch.minimum(hi, lo + torch.where(finite, hi - lo, SPAN_CAP))
    u0 = bounds.to_natural(estimate.double())
    u0 = torch.where(torch.isfinite(u0), u0, (lo + hi) / 2).clamp(bounds.low, bounds.high)
    spread = lo + (hi - lo) * latin_hypercubes(seeds, max(starts - 1, 0), p).transpose(0, 1)
    return torch.cat([u0[None], spread])


class _Rows:
    """Levenberg-Marquardt state of the rows of one batched fit."""

    def __init__(self, u: Tensor, f: Tensor, iters: Tensor | None = None):
        self.u, self.f = u, f
        self.lam = torch.full_like(f, LAMBDA0)
        self.done = ~torch.isfinite(f)
        self.converged = torch.zeros_like(self.done)
        self.iters = torch.zeros(f.shape[0], dtype=torch.int64, device=f.device) if iters is None else iters


def _held(fitter: Fitter, u: Tensor, g: Tensor) -> Tensor:
    """(k, p_free) coordinates on a bound whose gradient points outward: held there this step."""
    eps = ON_BOUND * fitter.span
    return ((u <= fitter.lo + eps) & (g > 0)) | ((u >= fitter.hi - eps) & (g < 0))


def _step(fitter: Fitter, st: _Rows, point_row: Tensor, act: Tensor) -> None:
    """One projected Levenberg-Marquardt step of the active rows `act` (indices into st)."""
    n_points = fitter.obs.x.shape[0]
    local = torch.full((st.u.shape[0],), -1, dtype=torch.int64, device=st.u.device)
    local[act] = torch.arange(act.shape[0], device=act.device)
    on = local[point_row] >= 0  # the points of active rows
    point = torch.nonzero(on).squeeze(1) % n_points
    rows = local[point_row[on]]
    k = act.shape[0]
    u, f = st.u[act], st.f[act]
    _, g, jac = fitter.gradient(u, rows, point)
    q = u.shape[1]
    a = torch.zeros(k, q, q, dtype=u.dtype, device=u.device).index_add_(0, rows, jac[:, :, None] * jac[:, None, :])
    free = ~_held(fitter, u, g)
    mask2 = free[:, :, None] & free[:, None, :]
    eye = torch.eye(q, dtype=u.dtype, device=u.device)
    diag = torch.diagonal(a, dim1=1, dim2=2)
    damp = st.lam[act, None] * (diag + 1e-12 * diag.amax(dim=1, keepdim=True) + 1e-30)
    system = torch.where(mask2, a + torch.diag_embed(damp), eye)  # held coordinates: delta 0
    delta, info = torch.linalg.solve_ex(system, torch.where(free, -0.5 * g, 0.0))
    ok = (info == 0) & torch.isfinite(delta).all(dim=1)
    u_try = torch.where(ok[:, None], u + delta, u).clamp(fitter.lo, fitter.hi)  # projected onto the box
    f_try = fitter.sums(fitter.residual(u_try, rows, point), rows, k)
    better = ok & torch.isfinite(f_try) & (f_try < f)
    st.u[act] = torch.where(better[:, None], u_try, u)
    st.f[act] = torch.where(better, f_try, f)
    st.lam[act] = torch.where(better, (st.lam[act] * 0.3).clamp_min(1e-12), st.lam[act] * 8.0)
    st.iters[act] += better.long()
    moved = (u_try - u).abs().amax(dim=1)
    small = (better & ((f - f_try) <= FTOL * f)) | (moved <= XTOL * (1 + u.abs().amax(dim=1)))
    stop = small | (st.lam[act] > LAMBDA_MAX) | (st.f[act] <= 1e-300)
    st.done[act] |= stop
    st.converged[act] |= small | (st.f[act] <= 1e-300)


def _run(fitter: Fitter, st: _Rows, point_row: Tensor, iterations: int) -> None:
    for _ in range(iterations):
        act = torch.nonzero(~st.done).squeeze(1)
        if act.numel() == 0:
            break
        _step(fitter, st, point_row, act)


def fit_physics(
    trained: Trained,
    obs: Observations,
    estimate: Tensor,
    bounds: Bounds,
    starts: int = 4,
    max_iter: int = 50,
    seed: int = 0,
    seeds: Tensor | None = None,
    alternatives: bool = False,
) -> PhysicsFit:
    """Fit the family's formula to every target: estimate (n, p) in the family's units is the first start.
    seeds: (n,) the targets' own seeds (seeding.py; None: from `seed` and each target's points). alternatives:
    continue the other starts to their ends too (~1.4x the refit's time), so that `PhysicsFit.alternatives` holds
    their optima beside the plateau escapes' (which it always holds): what a posterior's ensembles start from."""
    dev = obs.x.device
    if seeds is None:
        seeds = seeding.seeds_of_points(seed, obs.target, obs.n, [obs.x, obs.y, obs.weight])
    fitter = Fitter(trained, obs, bounds)
    n = estimate.shape[0]
    n_points = obs.x.shape[0]

    def rows_of(k: int) -> tuple[Tensor, Tensor]:  # k starts per target: each owns a copy of its target's points
        point_row = (obs.target[None, :] + n * torch.arange(k, device=dev)[:, None]).reshape(-1)
        return point_row, torch.arange(k * n_points, device=dev) % n_points

    candidates = start_points(trained, bounds, estimate.cpu(), 1 + CANDIDATES, seeds).to(dev)  # (1 + C, n, p)
    u_cand = candidates[:, :, fitter.free].reshape((1 + CANDIDATES) * n, -1)  # rows start-major
    point_row, point = rows_of(1 + CANDIDATES)
    f_cand = fitter.sums(fitter.residual(u_cand, point_row, point), point_row, (1 + CANDIDATES) * n).reshape(-1, n)
    f_cand = torch.where(torch.isfinite(f_cand), f_cand, math.inf)
    if not trained.family.differentiable:  # a user's family declared without derivatives: the best start
        return _best_start(fitter, u_cand, f_cand, bounds)
    keep = torch.cat([torch.zeros(1, n, dtype=torch.int64, device=dev),  # the estimate, and the best spread ones
                      1 + f_cand[1:].argsort(dim=0)[: starts - 1]])  # fmt: skip
    n_starts = keep.shape[0]
    q = u_cand.shape[1]
    u_all = u_cand.reshape(1 + CANDIDATES, n, q).gather(0, keep[:, :, None].expand(-1, -1, q)).reshape(-1, q)
    f0 = f_cand.gather(0, keep).reshape(-1)
    point_row, _ = rows_of(n_starts)
    st = _Rows(u_all.clone(), f0.clone())
    _run(fitter, st, point_row, min(SCREEN_ITERATIONS, max_iter) if n_starts > 1 else max_iter)
    best_row = torch.where(torch.isfinite(st.f), st.f, math.inf).reshape(n_starts, n).argmin(dim=0)  # ties: estimate
    best = keep.gather(0, best_row[None])[0]  # which start won: 0 the estimate, k the k-th spread candidate
    pick = best_row * n + torch.arange(n, device=dev)
    ends_u, ends_f = [], []  # the other starts' ends and the escapes': candidate alternatives (k, n, q), (k, n)
    if n_starts > 1 and alternatives:  # the other starts continue apart, to their own ends
        j = torch.arange(n_starts - 1, device=dev)[:, None]
        rest = ((j + (j >= best_row[None]).long()) * n + torch.arange(n, device=dev)).reshape(-1)  # start-major
        alt = _Rows(st.u[rest].clone(), st.f[rest].clone(), st.iters[rest])
        _run(fitter, alt, rows_of(n_starts - 1)[0], max_iter - SCREEN_ITERATIONS)
        ends_u.append(alt.u.reshape(n_starts - 1, n, q))
        ends_f.append(alt.f.reshape(n_starts - 1, n))
    if n_starts > 1:  # each target continues from its best start alone
        st = _Rows(st.u[pick].clone(), st.f[pick].clone(), st.iters[pick])
        _run(fitter, st, obs.target, max_iter - SCREEN_ITERATIONS)
    escaped, local_minimum, esc_u, esc_f = _escape_plateaus(fitter, st, seeds, max_iter)
    alt_u, alt_f = _alternatives(fitter, st, torch.cat([*ends_u, esc_u]), torch.cat([*ends_f, esc_f]))
    return PhysicsFit(
        params=fitter.units(st.u).cpu().numpy(),
        objective=st.f.cpu().numpy(),
        iterations=st.iters.cpu().numpy(),
        converged=st.converged.cpu().numpy(),
        start=best.cpu().numpy(),
        on_bound=_on_bound(fitter, st.u).cpu().numpy(),
        bounds=bounds,
        escaped=escaped.cpu().numpy(),
        local_minimum=local_minimum.cpu().numpy(),
        alternatives=alt_u.cpu().numpy(),
        alternative_objective=alt_f.cpu().numpy(),
    )


def _alternatives(fitter: Fitter, st: _Rows, u: Tensor, f: Tensor) -> tuple[Tensor, Tensor]:
    """Per target, the candidate ends u (k, n, q) with objectives f (k, n) that are distinct optima: within
    ALTERNATIVE_CHI2 of the best fit st (chi^2 only: without yerr none), more than DISTINCT of a span from it and
    from every better one kept; at most ALTERNATIVES, best first. Returns (n, ALTERNATIVES, p) all natural
    coordinates (NaN padded) and their objectives (n, ALTERNATIVES) (inf padded). Row by row: the same in any
    batch."""
    n, q = st.u.shape
    out_u = torch.full((n, ALTERNATIVES, q), math.nan, dtype=st.u.dtype, device=st.u.device)
    out_f = torch.full((n, ALTERNATIVES), math.inf, dtype=st.f.dtype, device=st.u.device)
    if u.shape[0] == 0 or not fitter.obs.chi2:
        return _full_natural(fitter, out_u), out_f
    f = torch.where(torch.isfinite(f), f, math.inf)
    order = f.argsort(dim=0, stable=True)  # (k, n) best first
    u = u.gather(0, order[:, :, None].expand(-1, -1, q))
    f = f.gather(0, order)
    good = f <= st.f[None] + ALTERNATIVE_CHI2
    kept = torch.zeros(n, dtype=torch.int64, device=st.u.device)
    rows = torch.arange(n, device=st.u.device)
    for c in range(u.shape[0]):  # a handful of candidates, every target at once
        taken = torch.cat([st.u[:, None], out_u], dim=1)  # (n, 1 + A, q): the best and those kept so far
        apart = ((u[c][:, None] - taken).abs() / fitter.span > DISTINCT).any(dim=2)  # NaN rows compare False
        filled = torch.cat([torch.ones(n, 1, dtype=torch.bool, device=st.u.device), torch.isfinite(out_f)], dim=1)
        new = good[c] & (apart | ~filled).all(dim=1) & (kept < ALTERNATIVES)
        slot = kept.clamp_max(ALTERNATIVES - 1)
        out_u[rows[new], slot[new]] = u[c][new]
        out_f[rows[new], slot[new]] = f[c][new]
        kept += new.long()
    return _full_natural(fitter, out_u), out_f


def _full_natural(fitter: Fitter, u: Tensor) -> Tensor:
    """Free natural coordinates (n, A, q) -> all natural coordinates (n, A, p), the fixed ones at their value."""
    n, a, _ = u.shape
    return fitter.full(u.reshape(n * a, -1)).reshape(n, a, -1)


def _best_start(fitter: Fitter, u_cand: Tensor, f_cand: Tensor, bounds: Bounds) -> PhysicsFit:
    """Derivative-free: each target's lowest-objective start (the estimate or a spread candidate), unrefined."""
    n = f_cand.shape[1]
    best = f_cand.argmin(dim=0)  # (n,) ties: the estimate
    u = u_cand.reshape(f_cand.shape[0], n, -1)[best, torch.arange(n, device=best.device)]
    zeros = np.zeros(n, dtype=np.int64)
    return PhysicsFit(
        params=fitter.units(u).cpu().numpy(),
        objective=f_cand.gather(0, best[None])[0].cpu().numpy(),
        iterations=zeros,
        converged=np.zeros(n, dtype=bool),
        start=best.cpu().numpy(),
        on_bound=np.zeros((n, len(bounds.log_scale)), dtype=np.int8),
        bounds=bounds,
    )


def _escape_plateaus(fitter: Fitter, st: _Rows, seeds: Tensor, max_iter: int) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Restart the fits that end on a plateau, in place; returns (escaped, local_minimum), (n,) bool, and the
    ends other than the one kept, as candidate alternatives: u (ESCAPES + 1, n, q) and objectives (ESCAPES + 1, n)
    (inf for targets that were not stuck; the fit before the restarts where one replaced it).

    A fit is stuck when a parameter ends on a bound: there the parameters it governs may no longer matter (a
    vanished disc leaves its scale length free), so the fit can stop where the gradient is ~0 while a massive
    disc fits far better. Every stuck target gets ESCAPES restarts: its fit with the bound coordinates and the
    flat ones (moving 1% of the span changes chi^2 by < PLATEAU_GAIN) re-drawn over the box (its own Latin
    hypercube), the rest kept; each runs max_iter steps and the best end is kept. `local_minimum`: the
    restarts and the fit end more than LOCAL_MINIMUM_CHI2 apart (chi^2; without yerr: 1% of the objective) and
    only one of them reached the best end (within a quarter of that): the answer rests on a single start."""
    obs = fitter.obs
    n, q = st.u.shape
    dev = st.u.device
    none = torch.zeros(n, dtype=torch.bool, device=dev)
    ends_u = torch.zeros(ESCAPES + 1, n, q, dtype=st.u.dtype, device=dev)
    ends_f = torch.full((ESCAPES + 1, n), math.inf, dtype=st.f.dtype, device=dev)
    _, g, _ = fitter.gradient(st.u, obs.target, torch.arange(obs.x.shape[0], device=dev))
    eps = ON_BOUND * fitter.span
    at_bound = (st.u <= fitter.lo + eps) | (st.u >= fitter.hi - eps)
    threshold = PLATEAU_GAIN if obs.chi2 else 1e-5 * st.f[:, None]
    flat = g.abs() * 0.01 * fitter.span < threshold
    stuck = torch.nonzero(at_bound.any(dim=1) & torch.isfinite(st.f)).squeeze(1)
    if stuck.numel() == 0 or not torch.isfinite(fitter.hi - fitter.lo).all():
        return none, none, ends_u, ends_f
    redraw = (at_bound | flat)[stuck]  # (s, q)
    box = latin_hypercubes(seeds[stuck.cpu()], ESCAPES, q).to(dev).transpose(0, 1)  # (E, s, q) in [0, 1]
    u0 = torch.where(redraw, fitter.lo + (fitter.hi - fitter.lo) * box, st.u[stuck])  # (E, s, q)
    s_n = stuck.shape[0]
    sel = torch.zeros(n, dtype=torch.bool, device=dev)
    sel[stuck] = True
    local = torch.cumsum(sel.long(), 0) - 1  # target -> its index among the stuck
    own = sel[obs.target]
    point = torch.nonzero(own).squeeze(1)
    row = local[obs.target[point]]
    point_row = (row[None, :] + s_n * torch.arange(ESCAPES, device=dev)[:, None]).reshape(-1)
    points = point.repeat(ESCAPES)
    u_all = u0.reshape(-1, q)
    f0 = fitter.sums(fitter.residual(u_all, point_row, points), point_row, ESCAPES * s_n)
    f0 = torch.where(torch.isfinite(f0), f0, math.inf)
    esc = _Rows(u_all.clone(), f0.clone())
    sub = Fitter.__new__(Fitter)
    sub.__dict__.update(fitter.__dict__)
    sub.obs = Observations(obs.target[points], obs.x[points], obs.y[points], obs.weight[points], obs.n, obs.chi2)
    _run(sub, esc, point_row, max_iter)
    ends = torch.where(torch.isfinite(esc.f), esc.f, math.inf).reshape(ESCAPES, s_n)
    best_e = ends.argmin(dim=0)
    best_f = ends.gather(0, best_e[None])[0]
    first = st.f[stuck].clone()
    ends_u[:ESCAPES, stuck], ends_f[:ESCAPES, stuck] = esc.u.reshape(ESCAPES, s_n, q), ends
    ends_u[ESCAPES, stuck], ends_f[ESCAPES, stuck] = st.u[stuck], first  # the fit before the restarts
    better = best_f < first * (1 - 1e-9)
    take = stuck[better]
    pick = (best_e * s_n + torch.arange(s_n, device=dev))[better]
    st.u[take], st.f[take], st.iters[take] = esc.u[pick], esc.f[pick], esc.iters[pick]
    st.converged[take] = esc.converged[pick]
    escaped = none.clone()
    escaped[take] = True
    all_f = torch.cat([ends, first[None]])  # the restarts' ends and the fit before them
    tol = LOCAL_MINIMUM_CHI2 if obs.chi2 else 1e-2 * st.f[stuck]
    lowest = all_f.amin(dim=0)
    agree = (all_f <= lowest + tol / 4).sum(dim=0)  # runs that reached the best end
    apart = (all_f.amax(dim=0).clamp_max(1e300) - lowest) > tol
    local_minimum = none.clone()
    local_minimum[stuck[apart & (agree < 2)]] = True
    return escaped, local_minimum, ends_u, ends_f


def _on_bound(fitter: Fitter, u: Tensor) -> Tensor:
    """(n, p) -1/+1 where a parameter ends on its low/high bound and the data pull it outward, else 0."""
    obs = fitter.obs
    f, g, _ = fitter.gradient(u, obs.target, torch.arange(obs.x.shape[0], device=obs.x.device))
    eps = ON_BOUND * fitter.span
    gain = g.abs() * 0.01 * fitter.span  # objective decrease moving 1% of the span outward (first order)
    enough = gain > (1.0 if obs.chi2 else 1e-3 * f[:, None])
    free_out = torch.zeros(u.shape, dtype=torch.int8, device=u.device)
    free_out[(u <= fitter.lo + eps) & (g > 0) & enough] = -1
    free_out[(u >= fitter.hi - eps) & (g < 0) & enough] = 1
    out = torch.zeros(u.shape[0], fitter.free.shape[0], dtype=torch.int8, device=u.device)
    out[:, fitter.free] = free_out
    return out
