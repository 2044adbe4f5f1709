"""Draws from a conditional zuko neural spline flow (NSF: masked autoregressive or coupling transforms with
rational-quadratic splines) for many targets at once: each target's base normals from its own seed, its context
used once, every draw through the flow's inverse with only the arithmetic that depends on the draw.

zuko samples a flow by inverting each transform in turn: `passes` evaluations of the transform's hyper network on
[x, context] (one per feature when fully autoregressive), each building every feature's spline on every draw, then
one more evaluation for the log-determinant; the context is repeated on every draw. Here, per transform (last to
first), with the same weights and the same splines:
- per target, once: the hyper network at x = 0. Its units that do not depend on x (MADE's masks say which) have
  their values there, and the features of the first pass (order group 0) depend on the context alone: their
  splines are built once per target;
- group g >= 1, per draw: only the units that depend on x and reach group g's outputs, the other units' share of
  each layer added as a per-target constant; then group g's splines;
- the log-determinant from the same splines at the solved points (no extra pass).
A fully autoregressive transform over q features so costs q - 1 thinned evaluations per draw, a coupling one
(passes=2) one. The numbers are zuko's (`transform.inv`, `log_prob`) to float32 rounding; in float64 to 1e-12
(tests/test_amortized.py).

The splines' element-wise work (~60 eager torch operations per transform, each a pass over the draws) runs in one
call of a compiled kernel (funcae_cli/native/rqs.c, `Splines` below in C, ~10x faster) where it can: float32 on
the CPU with the native kernels built (else `Splines` itself; `FUNCAE_NATIVE=0` turns the kernel off). The two
agree to float32 rounding, not bitwise (tests/test_native_splines.py).

Layout: every per-draw tensor is (quantity, target, draw), contiguous, so that each of the spline's element-wise
operations runs over long contiguous rows (torch's vectorized loops) rather than over a trailing dimension of 2 to
9 (its strided ones, ~5x slower); per-target values are (quantity, target, 1) and broadcast over the draws.

Batch invariance: the per-target products run in float64 rounded to float32 (seeding.linear_rows) and the per-draw
ones on whole targets' draws (hundreds of columns), so a target's draws do not depend on the batch it is sampled in.
"""

from __future__ import annotations

import ctypes
import math
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from funcae_cli.inversion import seeding
from funcae_cli.native import kernels as native

# --- rational-quadratic splines (zuko.transforms.MonotonicRQSTransform, written for the inverse) -----------


def _squash(v: Tensor, scale: float) -> Tensor:
    """exp(v / (1 + |v| scale)): zuko's bounded unconstrained parameters, exponentiated (|.| < 1 / scale before
    exp, so the softmax needs no max subtraction)."""
    return (v / torch.abs(v).mul_(scale).add_(1)).exp_()


@dataclass
class Splines:
    """zuko's monotonic RQS with K bins on [-bound, bound] (identity outside), from raw parameters phi
    (3K - 1, ...): widths, heights (softmax, cumulated) and knot derivatives. The cumulative sums are kept
    unnormalized (their totals last), so that the inverse normalizes only the bin it reads."""

    cum: Tensor  # (2, K + 1, ...): 0, then the cumulative exp-widths (row 0) and exp-heights (row 1)
    deriv: Tensor  # (K + 1, ...): the raw derivative parameters, 0 at both ends (a derivative of exp(0) = 1)
    bound: float
    scale: float  # 1 / |log slope|

    @classmethod
    def of(cls, phi: Tensor, bound: float, slope: float) -> Splines:
        bins = (phi.shape[0] + 1) // 3
        scale = -1.0 / math.log(slope)
        wh = _squash(phi[: 2 * bins], 2 * scale).unflatten(0, (2, bins))
        zero = phi.new_zeros(1, *phi.shape[1:])
        cum = torch.cat([zero.expand(2, 1, *phi.shape[1:]), wh.cumsum(1)], dim=1)
        return cls(cum, torch.cat([zero, phi[2 * bins :], zero]), bound, scale)

    def _bin(self, v: Tensor, axis: int) -> tuple[Tensor, ...]:
        """The bin of each value v (...) on the knots' x (axis 0) or y (axis 1): its edges x0, x1, y0, y1, the knot
        derivatives d0, d1 and the bin's slope s."""
        b, shape = self.bound, v.shape
        total = self.cum[:, -1]  # (2, ...)
        level = (v + b).mul_((0.5 / b) * total[axis])  # v's place on the unnormalized cumulative widths/heights
        k = (self.cum[axis, 1:-1] < level).sum(0)  # its bin, 0 .. K - 1
        idx = torch.stack([k, k + 1])  # (2, ...)
        edges = self.cum.expand(*self.cum.shape[:2], *shape).gather(1, idx.expand(2, 2, *shape))  # (2, 2, ...)
        (x0, x1), (y0, y1) = (2 * b) * (edges / total.expand(2, *shape)[:, None]) - b
        d0, d1 = _squash(self.deriv.expand(-1, *shape).gather(0, idx), self.scale)
        return x0, x1, y0, y1, d0, d1, (y1 - y0) / (x1 - x0)

    @staticmethod
    def _log_derivative(z: Tensor, s: Tensor, d0: Tensor, d1: Tensor, t: Tensor) -> Tensor:
        """log f'(x) at the bin's local coordinate z of x (t = d0 + d1 - 2 s)."""
        zz = z * (1 - z)
        return (s * s * (2 * s * zz + d0 * (1 - z) ** 2 + d1 * z * z) / (s + t * zz) ** 2).log()

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """y = f(x) and log f'(x), for x (...) and splines whose trailing dimensions broadcast to x's (zuko's
        MonotonicRQSTransform.call_and_ladj)."""
        x0, x1, y0, y1, d0, d1, s = self._bin(x, 0)
        z = (x - x0) / (x1 - x0)
        zz, t = z * (1 - z), d0 + d1 - 2 * s
        y = y0 + (y1 - y0) * (s * z * z + d0 * zz) / (s + t * zz)
        inside = x.abs() < self.bound
        return torch.where(inside, y, x), torch.where(inside, self._log_derivative(z, s, d0, d1, t), 0.0)

    def inverse(self, y: Tensor) -> tuple[Tensor, Tensor]:
        """x = f^-1(y) and log f'(x) (the forward's log-derivative at the solution), for y (...) and splines whose
        trailing dimensions broadcast to y's."""
        x0, x1, y0, y1, d0, d1, s = self._bin(y, 1)
        dy, yy, t = y1 - y0, y - y0, d0 + d1 - 2 * s
        qa = dy * (s - d0) + yy * t
        qb = dy * d0 - yy * t
        qc = -s * yy
        z = 2 * qc / (-qb - (qb * qb - 4 * qa * qc).sqrt())  # the root in [0, 1] (Durkan et al. 2019, eq. 29)
        x = x0 + z * (x1 - x0)
        inside = y.abs() < self.bound
        return torch.where(inside, x, y), torch.where(inside, self._log_derivative(z, s, d0, d1, t), 0.0)


MAX_NATIVE_BINS = 64  # rqs.c's MAX_BINS
# Per-draw products and splines run over whole targets' draws, about this many at a time, so that a layer's output
# stays in a core's L2 cache (a (96, 96) x (96, N) product ran at ~90 GFLOP/s in blocks of 4,096 columns, ~43 over
# a whole chunk of 26,000, on 2026-12-07's AMD EPYC; the config's flow, (48, 48) layers, sampled a chunk at 0.97-1.07
# us per draw against 1.05-1.35 us, and the 100,000-curve command showed no difference beyond noise). It also
# bounds the activations' memory by the block, not the chunk.
BLOCK_DRAWS = 4096


def splines_at(
    phi: Tensor, y: Tensor, bound: float, slope: float, forward: bool, lib: ctypes.CDLL | None
) -> tuple[Tensor, Tensor]:
    """A group's splines, raw parameters phi (3K - 1, k, n, S or 1: per draw, or per target), at its values y
    (k, n, S): the image (forward or inverse) and the sum over the k features of the forward's log-derivative
    (n, S). In the native kernel `lib` (rqs.c) where it applies: float32 on the CPU; else Splines."""
    total, k, n, per = phi.shape
    bins = (total + 1) // 3
    usable = lib is not None and y.dtype == phi.dtype == torch.float32 and y.device.type == "cpu"
    if not (usable and bins <= MAX_NATIVE_BINS and per in (1, y.shape[2])):
        splines = Splines.of(phi, bound, slope)
        out, ladj = splines.forward(y) if forward else splines.inverse(y)
        return out, ladj.sum(0)
    phi, y = phi.contiguous(), y.contiguous()
    out, ladj = torch.empty_like(y), torch.empty_like(y)
    scale = -1.0 / math.log(slope)
    lib.fae_rqs(
        int(not forward),
        k * n,
        y.shape[2],
        bins,
        phi.data_ptr(),
        k * n * per,
        int(per == 1),
        y.data_ptr(),
        out.data_ptr(),
        ladj.data_ptr(),
        bound,
        2 * scale,
        scale,
    )
    return out, ladj.sum(0)


# --- the plan of one transform's inverse -------------------------------------------------------------------


@dataclass
class _Layer:
    """One linear layer of a pass: the units it evaluates per draw (rows) from the units it reads per draw (cols);
    its weights on the units that do not depend on x, with the bias, make a per-target constant."""

    weight: Tensor  # (rows, cols)
    cols: Tensor  # (cols,) their indices in the previous layer (the first layer: in x)
    rest: Tensor  # (rows, others)
    others: Tensor  # (others,) indices of those units in the previous layer (the first layer: of [x, context])
    bias: Tensor  # (rows,)


@dataclass
class _Group:
    features: Tensor  # (k,) the features this pass solves
    layers: list[_Layer]  # first (reads x) to output; the output's rows parameter-major: (total, k)


@dataclass
class _Plan:
    hyper: nn.Sequential
    activations: list[nn.Module]
    total: int  # raw spline parameters per feature
    group0: Tensor  # (k0,) features solved from the context alone
    rows0: Tensor  # (total k0,) their parameters' rows of the hyper network's output, parameter-major
    groups: list[_Group]  # the later passes, in order
    autoregressive: bool  # False: zuko's element-wise transform (q = 1), its hyper network on the context alone


def _weights(hyper: nn.Sequential) -> tuple[list[tuple[Tensor, Tensor]], list[nn.Module]]:
    """The hyper network's effective (masked) weights and biases, and its activations, in order."""
    layers, acts = [], []
    for m in hyper:
        layer = seeding.linear_layer(m)
        if layer is None:
            acts.append(m)
        else:
            layers.append((layer[0].detach(), layer[1].detach()))
    if len(acts) != len(layers) - 1:
        raise ValueError(f"expected a hyper network of linear layers and activations, got {hyper}")
    return layers, acts


def _activate(act: nn.Module, h: Tensor) -> Tensor:
    """act(h), in place where it is a ReLU (h is a fresh product: a new tensor as large as h would cost more than the
    ReLU itself)."""
    return h.relu_() if isinstance(act, nn.ReLU) else act(h)


def _rows(features: Tensor, total: int) -> Tensor:
    """The output rows of `features`' spline parameters, parameter-major (parameter j of feature i at j k + i)."""
    return (torch.arange(total)[:, None] + features[None, :] * total).flatten()


def _group(layers: list[tuple[Tensor, Tensor]], q: int, rows: Tensor, features: Tensor) -> _Group:
    """The pass that solves `features` (output rows `rows`): per layer, the units that depend on x (a path from an
    x input) and reach those rows; the rest of each layer's input is a per-target constant."""
    depends = [torch.arange(layers[0][0].shape[1]) < q]  # layer 0's inputs: [x, context]
    for w, _ in layers[:-1]:
        depends.append((w[:, depends[-1]] != 0).any(dim=1))
    need, out = rows, []
    for i in range(len(layers) - 1, -1, -1):
        w, b = layers[i]
        cols = torch.nonzero((w[need] != 0).any(dim=0) & depends[i]).flatten()
        others = torch.nonzero(~depends[i]).flatten()
        out.append(_Layer(w[need][:, cols], cols, w[need][:, others], others, b[need]))
        need = cols
    return _Group(features, out[::-1])


def _plan(t: nn.Module, q: int) -> _Plan:
    uni = t.univariate
    if getattr(getattr(uni, "func", None), "__name__", "") != "MonotonicRQSTransform":
        raise ValueError(f"flow_sampling samples rational-quadratic spline flows (zuko NSF), not {uni}")
    if not hasattr(t, "order"):  # zuko's ElementWiseTransform (q = 1)
        every = torch.arange(q)
        return _Plan(t.hyper, [], t.total, every, _rows(every, t.total), [], False)
    layers, acts = _weights(t.hyper)
    levels = sorted(set(t.order.tolist()))
    groups = []
    for g in levels[1:]:
        features = torch.nonzero(t.order == g).flatten()
        groups.append(_group(layers, q, _rows(features, t.total), features))
    first = torch.nonzero(t.order == levels[0]).flatten()
    return _Plan(t.hyper, acts, t.total, first, _rows(first, t.total), groups, True)


@dataclass
class Conditioned:
    """Each target's share of a flow's arithmetic that depends on its context alone (FlowSampler.prepare): per
    transform, the splines of its first group and the per-target constant of every later group's layers. Computed
    once for a chunk's targets, it serves every pool drawn for them (indexed by rows: `cond[rows]`)."""

    phi0: list[Tensor]  # per transform: (total, k0, n, 1) raw spline parameters of group 0
    consts: list[list[list[Tensor]]]  # per transform, later group and layer: (rows, n)
    dtype: torch.dtype  # the contexts'

    def __getitem__(self, rows: Tensor) -> Conditioned:
        return Conditioned([p[:, :, rows] for p in self.phi0],
                           [[[c[:, rows] for c in layers] for layers in groups] for groups in self.consts],
                           self.dtype)  # fmt: skip


class FlowSampler:
    """Draws of a zuko NSF `flow` over q features given contexts, each target's from its own seed."""

    def __init__(self, flow: nn.Module, q: int):
        self.flow = flow
        self.q = q
        self.plans = [_plan(t, q) for t in flow.transform.transforms]
        uni = flow.transform.transforms[0].univariate
        self.bound, self.slope = uni.keywords.get("bound", 5.0), uni.keywords.get("slope", 1e-3)
        self.native = native.kernels_or_none()  # here, not on the chunks' threads: a first use compiles them once

    def base_draws(self, seeds: Tensor, draws: int) -> Tensor:
        """(n, draws, q) float32 standard normals, row i from stream "amortized" of seeds[i] (draw c from its own
        counters: the first d of any number of draws are the same)."""
        return seeding.paired_normal(seeds, "amortized", (draws, self.q)).float()

    @torch.no_grad()
    def prepare(self, context: Tensor) -> Conditioned:
        """What every draw of targets with contexts (n, C) shares: sample and log_prob take it in place of the
        contexts (a chunk's rounds of draws then compute it once)."""
        n, phi0, consts = context.shape[0], [], []
        for plan in self.plans:
            acts = self._per_target(plan, context)
            phi0.append(acts[-1][:, plan.rows0].T.reshape(plan.total, len(plan.group0), n, 1))
            consts.append([[seeding.linear_rows(acts[i][:, layer.others], layer.rest, layer.bias).T  # (rows, n)
                            for i, layer in enumerate(grp.layers)] for grp in plan.groups])  # fmt: skip
        return Conditioned(phi0, consts, context.dtype)

    @torch.no_grad()
    def sample(self, context: Tensor | Conditioned, eps: Tensor) -> tuple[Tensor, Tensor]:
        """x (n, S, q): the flow's inverse at base draws eps (n, S, q) (standard normal) given contexts (n, C)
        (or what `prepare` made of them), and log q(x) (n, S)."""
        cond = context if isinstance(context, Conditioned) else self.prepare(context)
        eps = eps.to(cond.dtype)
        log_q = self.flow.base().log_prob(eps)  # (n, S): the base's log density
        x = eps.permute(2, 0, 1).contiguous()  # (q, n, S)
        for i in reversed(range(len(self.plans))):
            x, ladj = self._transform(self.plans[i], cond.phi0[i], cond.consts[i], x, forward=False)
            log_q += ladj  # log q(x) = log N(z) + sum over transforms of log |dy/dx|
        return x.permute(1, 2, 0), log_q

    @torch.no_grad()
    def log_prob(self, context: Tensor | Conditioned, x: Tensor) -> Tensor:
        """log q(x) (n, S) of points x (n, S, q) given contexts (n, C) (or what `prepare` made of them): the flow's
        forward pass, each target's context used once (zuko's log_prob repeats it on every point and evaluates
        every pass)."""
        cond = context if isinstance(context, Conditioned) else self.prepare(context)
        y = x.to(cond.dtype).permute(2, 0, 1).contiguous()  # (q, n, S)
        log_q = y.new_zeros(y.shape[1:])
        for i, plan in enumerate(self.plans):
            y, ladj = self._transform(plan, cond.phi0[i], cond.consts[i], y, forward=True)
            log_q += ladj
        return log_q + self.flow.base().log_prob(y.permute(1, 2, 0))

    def _per_target(self, plan: _Plan, c: Tensor) -> list[Tensor]:
        """The hyper network at x = 0 for each target (n rows): its input, every activation, its output last."""
        if not plan.autoregressive:
            return [seeding.mlp_rows(plan.hyper, c)]
        acts = [torch.cat([c.new_zeros(c.shape[0], self.q), c], dim=1)]
        h = acts[0]
        for i, m in enumerate(plan.hyper):
            h = seeding.mlp_rows(nn.Sequential(m), h)
            if seeding.linear_layer(m) is None or i == len(plan.hyper) - 1:
                acts.append(h)
        return acts

    def _transform(
        self, plan: _Plan, phi0: Tensor, consts: list[list[Tensor]], y: Tensor, forward: bool
    ) -> tuple[Tensor, Tensor]:
        """One transform, its inverse (y -> x) or forward (x in `y` -> its image), and the sum over features of its
        log-derivative at x (n, S). Either way the splines of a group come from x: the solved features (inverse)
        or the given ones (forward). phi0, consts: the targets' share (Conditioned)."""
        q, n, s = y.shape
        out = torch.empty_like(y)
        x = y if forward else out  # where the hyper network reads x
        out[plan.group0], ladj = splines_at(phi0, y[plan.group0], self.bound, self.slope, forward, self.native)
        block = max(1, BLOCK_DRAWS // s)  # targets per block
        for grp, const in zip(plan.groups, consts):
            reads, solves = x[grp.layers[0].cols], y[grp.features]  # (cols, n, S), (k, n, S)
            image, part = torch.empty_like(solves), y.new_empty(n, s)
            for a in range(0, n, block):  # a few targets' draws at a time: the activations stay in the cache
                b = min(n, a + block)
                h = reads[:, a:b].reshape(-1, (b - a) * s)
                for i, layer in enumerate(grp.layers):
                    if i > 0:
                        h = _activate(plan.activations[i - 1], h)
                    h = (layer.weight @ h).view(-1, b - a, s).add_(const[i][:, a:b, None]).view(-1, (b - a) * s)
                phi = h.view(plan.total, len(grp.features), b - a, s)
                image[:, a:b], part[a:b] = splines_at(phi, solves[:, a:b], self.bound, self.slope, forward, self.native)
            out[grp.features] = image
            ladj += part
        return out, ladj
