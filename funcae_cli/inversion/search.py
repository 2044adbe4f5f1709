"""Batched optimizers for the latent search: many independent problems as the rows of one tensor.

The caller's objective is the sum of the per-row objectives, so each row's gradient is its own; the
optimizers keep per-row state (step sizes, curvature pairs, convergence) and stop each row on its own.
(The optimizers that train the networks are in optim.py.)
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

LossGrad = Callable[[Tensor, Tensor], tuple[Tensor, Tensor]]  # (z (k, d), rows (k,)) -> f (k,), g (k, d)
Curvature = Callable[[Tensor, Tensor, Tensor], Tensor]  # (z, v, rows) -> v' H v (k,)


@dataclass
class OptResult:
    z: Tensor  # (k, d)
    f: Tensor  # (k,) final objective (sum of squares)
    iterations: Tensor  # (k,) int64
    converged: Tensor  # (k,) bool: stopped by a tolerance, not by max_iter


def lbfgs(
    fg: LossGrad,
    z0: Tensor,
    max_iter: int = 200,
    history: int = 8,
    ftol: float = 1e-6,
    xtol: float = 1e-6,
    gtol: float = 1e-12,
    max_ls: int = 12,
    curvature: Curvature | None = None,
) -> OptResult:
    """Batched L-BFGS: every row is its own problem with its own curvature pairs, line search and stopping.

    Each iteration evaluates only the rows still running. A float32 objective is only known to about
    1e-6 relative, so the Armijo test allows that much noise and a row stops (converged) when its
    objective decreased by less than `ftol` relative, its step was below `xtol` (relative to |z|), its
    gradient's largest entry is below `gtol`, or no step decreased it. A row never ends worse than
    it started. Curvature pairs share one slot counter; a row with no new pair stores zeros, which
    leave the two-loop recursion unchanged. `curvature` (g' H g along the gradient) sizes the first
    step: the minimum of the quadratic model along -g, instead of a blind |step|_1 = 1 that the line
    search then halves several times.
    """
    k, d = z0.shape
    dev = z0.device
    z = z0.clone()
    all_rows = torch.arange(k, device=dev)
    f, g = fg(z, all_rows)
    S = torch.zeros(k, history, d, device=dev, dtype=z0.dtype)  # curvature pairs s = dz, y = dg
    Y = torch.zeros_like(S)
    rho = torch.zeros(k, history, device=dev, dtype=z0.dtype)
    gamma = (1.0 / g.abs().sum(dim=1).clamp_min(1e-12)).clamp(max=1.0)  # first step: |p|_1 <= 1
    if curvature is not None:
        ghg = curvature(z, g, all_rows)
        cauchy = g.square().sum(dim=1) / ghg
        gamma = torch.where(torch.isfinite(cauchy) & (ghg > 0), cauchy, gamma)
    iters = torch.zeros(k, dtype=torch.int64, device=dev)
    done = ~torch.isfinite(f) | (g.abs().amax(dim=1) <= gtol)
    converged = done.clone()
    for it in range(max_iter):
        act = (~done).nonzero().squeeze(1)
        if act.numel() == 0:
            break
        ga, fa, za = g[act], f[act], z[act]
        Sa, Ya, ra = S[act], Y[act], rho[act]
        # two-loop recursion, newest pair first
        slots = [(it - 1 - j) % history for j in range(min(it, history))]
        q, alphas = ga.clone(), []
        for s in slots:
            a = ra[:, s] * (Sa[:, s] * q).sum(dim=1)
            q -= a[:, None] * Ya[:, s]
            alphas.append(a)
        r = gamma[act, None] * q
        for s, a in zip(reversed(slots), reversed(alphas)):
            b = ra[:, s] * (Ya[:, s] * r).sum(dim=1)
            r += Sa[:, s] * (a - b)[:, None]
        p = -r
        gp = (ga * p).sum(dim=1)
        uphill = ~(gp < 0)
        if bool(uphill.any()):  # lost curvature information: fall back to scaled steepest descent
            p[uphill] = -ga[uphill] * gamma[act[uphill], None]
            gp = (ga * p).sum(dim=1)
        # backtracking (Armijo) line search, per row
        t = torch.ones(act.shape[0], device=dev, dtype=z0.dtype)
        pending = torch.ones(act.shape[0], dtype=torch.bool, device=dev)
        z_new, f_new, g_new = za.clone(), fa.clone(), ga.clone()
        for _ in range(max_ls):
            pi = pending.nonzero().squeeze(1)
            if pi.numel() == 0:
                break
            zt = za[pi] + t[pi, None] * p[pi]
            ft, gt = fg(zt, act[pi])
            noise = ftol * fa[pi].abs()
            ok = torch.isfinite(ft) & (ft <= fa[pi] + 1e-4 * t[pi] * gp[pi] + noise)
            acc = pi[ok]
            z_new[acc], f_new[acc], g_new[acc] = zt[ok], ft[ok], gt[ok]
            pending[acc] = False
            t[pi[~ok]] *= 0.5
        worse = ~pending & (f_new > fa)  # accepted within the noise, but no better: stay
        z_new[worse], f_new[worse], g_new[worse] = za[worse], fa[worse], ga[worse]
        moved = ~pending & ~worse
        s_vec, y_vec = z_new - za, g_new - ga
        sy = (s_vec * y_vec).sum(dim=1)
        yy = (y_vec * y_vec).sum(dim=1)
        good = moved & (sy > 1e-12 * s_vec.norm(dim=1) * y_vec.norm(dim=1)) & (yy > 0)
        slot = it % history
        S[act, slot] = torch.where(good[:, None], s_vec, 0.0)
        Y[act, slot] = torch.where(good[:, None], y_vec, 0.0)
        rho[act, slot] = torch.where(good, 1.0 / sy.where(good, torch.ones_like(sy)), 0.0)
        gamma[act] = torch.where(good, sy / yy.where(good, torch.ones_like(yy)), gamma[act])
        z[act], f[act], g[act] = z_new, f_new, g_new
        iters[act] += moved.long()
        small_f = (fa - f_new) <= ftol * fa.abs().clamp_min(1e-30)
        small_x = s_vec.abs().amax(dim=1) <= xtol * (1 + za.abs().amax(dim=1))
        stop = ~moved | small_f | small_x | (g_new.abs().amax(dim=1) <= gtol)
        done[act[stop]] = True
        converged[act[stop]] = True
    return OptResult(z, f, iters, converged)


def adam(
    fg: LossGrad, z0: Tensor, max_iter: int = 200, lr: float = 0.05, ftol: float = 1e-6, betas=(0.9, 0.999)
) -> OptResult:
    """Batched Adam (written out: its update is elementwise, so rows never interact), keeping each row's best.

    Converged: the last tenth of the steps improved the row's best objective by less than ftol (relative).
    """
    k, d = z0.shape
    rows = torch.arange(k, device=z0.device)
    b1, b2 = betas
    z, m, v = z0.clone(), torch.zeros_like(z0), torch.zeros_like(z0)
    best_z, best_f = z0.clone(), torch.full((k,), math.inf, device=z0.device)
    mark_f = best_f.clone()
    check = max(1, max_iter // 10)
    for i in range(max_iter + 1):
        f, g = fg(z, rows)
        better = f < best_f
        best_f = torch.where(better, f, best_f)
        best_z = torch.where(better[:, None], z, best_z)
        if i == max_iter:
            break
        if i == max_iter - check:
            mark_f = best_f.clone()
        m.mul_(b1).add_(g, alpha=1 - b1)
        v.mul_(b2).addcmul_(g, g, value=1 - b2)
        step = lr / (1 - b1 ** (i + 1))
        z = z - step * m / ((v / (1 - b2 ** (i + 1))).sqrt() + 1e-8)
    converged = (mark_f - best_f) <= ftol * best_f.abs().clamp_min(1e-30)
    return OptResult(best_z, best_f, torch.full((k,), max_iter, dtype=torch.int64, device=z0.device), converged)
