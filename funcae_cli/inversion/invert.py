"""Use a trained decoder: encode curves, invert curves to latent codes, estimate physical parameters.

Inversion finds the code z whose decoded curve best matches a target. All targets (and all their
random restarts) are optimized together as ONE tensor problem: the objective (objective.py) is the sum
of the per-target objectives, so each target's gradient is its own, and the optimizers (search.py)
keep per-target state (step sizes, curvature pairs, convergence). Methods (`METHODS`):

- `encoder`: the encoder's code, nothing else.
- `lbfgs` (default): from the encoder's code, batched L-BFGS with a per-target backtracking line search.
- `adam`: from the encoder's code, Adam on the batch for `max_iter` steps, keeping each target's best.
- `nelder-mead`: scipy's Nelder-Mead, one target at a time, a numpy round trip per evaluation, as
  notebook 000 did; for comparison (`notebook_nelder_mead` starts from z = 0 exactly as the notebook).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from funcae_cli.errors import InputError, OptionError
from funcae_cli.inversion.encode import encode_curves, targets_on_grid
from funcae_cli.inversion.objective import Problem
from funcae_cli.inversion.regressor import LatentModel
from funcae_cli.inversion.search import adam, lbfgs
from funcae_cli.inversion.targets import Targets
from funcae_cli.runs.trained import Trained

METHODS = ("encoder", "lbfgs", "adam", "nelder-mead")
CHUNK_ROWS = 8192  # optimization rows (targets x starts) per tensor problem: bounds device memory

# --- random starts ------------------------------------------------------------------------------


def random_starts(trained: Trained, lm: LatentModel | None, k: int, n: int, gen: torch.Generator) -> Tensor:
    """(k, n, d) starting codes from the latent distribution: the prior N(0, I) for a VAE, training codes for an AE."""
    d = trained.model.args.latent_dim
    if k == 0:
        return torch.empty(0, n, d)
    if trained.model.args.kind == "vae" or lm is None:
        return torch.randn(k, n, d, generator=gen)
    idx = torch.randint(0, lm.codes.shape[0], (k, n), generator=gen)
    return lm.codes[idx]


# --- inversion -------------------------------------------------------------------------------


@dataclass
class InvertResult:
    """Per-target results (arrays over targets), plus the batch's totals."""

    method: str
    objective_kind: str  # "l2" (norm in training space) or "chi2"
    z: np.ndarray  # (n, d)
    objective: np.ndarray  # (n,) L2 norm in training space, or chi^2
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
    chi2: np.ndarray | None = None  # (n,) with yerr
    reduced_chi2: np.ndarray | None = None  # (n,) chi^2 / (m - d)
    params_est: np.ndarray | None = None  # (n, n_params) from the regressor
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


def invert_batch(
    trained: Trained,
    targets: Targets | Tensor | np.ndarray,
    method: str = "lbfgs",
    starts: int = 0,
    max_iter: int = 200,
    lr: float = 0.05,
    seed: int = 0,
    latent_model: LatentModel | None = None,
    x: Tensor | np.ndarray | None = None,
    yerr: Tensor | np.ndarray | None = None,
) -> InvertResult:
    """Invert many targets at once; usable without the CLI.

    targets: a Targets, or curves (n, m) in family units on the run's grid (or at `x`, with optional `yerr`).
    starts: random restarts per target from the latent distribution (AE: the training codes, which
    need `latent_model`; VAE: the prior); the best of the encoder's code and the restarts is kept.
    latent_model: used for the parameter estimates (and AE restarts); None: no estimates (and
    AE restarts fall back to the prior N(0, I)).
    """
    if method not in METHODS:
        raise OptionError("method", f"unknown method {method!r}; choose one of {', '.join(METHODS)}")
    if not isinstance(targets, Targets):
        y = torch.as_tensor(np.asarray(targets) if not isinstance(targets, Tensor) else targets, dtype=torch.float32)
        y = y.reshape(-1, y.shape[-1])
        xt = None if x is None else torch.as_tensor(x, dtype=torch.float64)
        et = None if yerr is None else torch.as_tensor(yerr, dtype=torch.float32).expand_as(y).clone()
        targets = Targets(y, xt, et, None, [f"target {i}" for i in range(y.shape[0])], "array")
    if targets.x is None and targets.y.shape[1] != trained.grid.shape[0]:
        raise InputError(f"targets have {targets.y.shape[1]} points but the run's grid has {trained.grid.shape[0]}")
    dev = trained.device
    _sync(dev)
    t0 = time.perf_counter()
    problem = Problem(trained, targets)
    n, d = targets.n, trained.model.args.latent_dim
    y_grid = targets_on_grid(trained, targets)
    if trained.normalizer.transform == "log" and problem.chi2:  # noisy data may dip <= 0; only the start needs log
        positive = y_grid[y_grid > 0]
        y_grid = y_grid.clamp_min(float(positive.min()) if positive.numel() else 1e-30)
    z_enc = encode_curves(trained, y_grid)  # (n, d)
    gen = torch.Generator().manual_seed(seed)
    zs = torch.cat([z_enc[None], random_starts(trained, latent_model, starts, n, gen).to(dev)])  # (1+K, n, d)
    seconds = None
    if method == "encoder":
        z_best = z_enc
        iters = torch.zeros(n, dtype=torch.int64)
        conv = torch.ones(n, dtype=torch.bool)
        start = torch.zeros(n, dtype=torch.int64)
    elif method == "nelder-mead":
        z_best, iters, conv, start, seconds = _nelder_mead_all(problem, zs, max_iter)
    else:
        z_best, iters, conv, start = _batched(problem, zs, method, max_iter, lr)
    m_enc = problem.metrics(z_enc)
    m = problem.metrics(z_best)
    fit = m["fit"]
    _sync(dev)
    total = time.perf_counter() - t0
    params_est = None
    if latent_model is not None:
        params_est = latent_model.predict(z_best).numpy()

    def np_(t: Tensor) -> np.ndarray:
        return t.detach().cpu().numpy()

    chi2 = reduced = None
    if problem.chi2:
        chi2 = np_(m["chi2"]).astype(np.float64)
        dof = problem.m - d
        reduced = chi2 / dof if dof > 0 else np.full_like(chi2, np.nan)
    return InvertResult(
        method=method,
        objective_kind="chi2" if problem.chi2 else "l2",
        z=np_(z_best).astype(np.float64),
        objective=np_(m["objective"]).astype(np.float64),
        residual_norm=np_(m["residual_norm"]).astype(np.float64),
        data_residual=np_(m["data_residual"]).astype(np.float64),
        rel_l2=np_(m["rel_l2"]).astype(np.float64),
        encoder_z=np_(z_enc).astype(np.float64),
        encoder_objective=np_(m_enc["objective"]).astype(np.float64),
        encoder_rel_l2=np_(m_enc["rel_l2"]).astype(np.float64),
        iterations=np_(iters),
        converged=np_(conv),
        start=np_(start),
        seconds=np.full(n, total / max(n, 1)) if seconds is None else seconds,
        fit=np_(fit),
        total_seconds=total,
        chi2=chi2,
        reduced_chi2=reduced,
        params_est=params_est,
        starts=starts,
    )


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

    Minimizes the objective's norm (sqrt of the sum of squares), as the notebook did.
    Returns (z, objective norm, iterations, success, seconds).
    """
    from scipy.optimize import minimize

    row = torch.tensor([i], device=problem.device)

    def func(zv: np.ndarray) -> float:
        with torch.no_grad():
            zt = torch.as_tensor(zv, dtype=torch.float32, device=problem.device)[None]
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


def notebook_nelder_mead(trained: Trained, curves: Tensor | np.ndarray) -> InvertResult:
    """The notebook-000 baseline: per target, Nelder-Mead from z = 0 with scipy's default options.

    curves: (n, n_points) in family units on the run's grid.
    """
    y = torch.as_tensor(np.asarray(curves) if not isinstance(curves, Tensor) else curves, dtype=torch.float32)
    targets = Targets(y.reshape(-1, y.shape[-1]), names=[], source="array")
    problem = Problem(trained, targets)
    n, d = targets.n, trained.model.args.latent_dim
    t0 = time.perf_counter()
    z_out = np.zeros((n, d))
    it, conv, secs = np.zeros(n, np.int64), np.zeros(n, bool), np.zeros(n)
    for i in range(n):
        z_out[i], _, it[i], conv[i], secs[i] = nelder_mead_target(problem, i, np.zeros(d))
    total = time.perf_counter() - t0
    z = torch.as_tensor(z_out, dtype=torch.float32, device=trained.device)
    m = problem.metrics(z)
    z_enc = encode_curves(trained, targets.y)
    m_enc = problem.metrics(z_enc)
    return InvertResult(
        method="nelder-mead (notebook, z0 = 0)",
        objective_kind="l2",
        z=z_out,
        objective=m["objective"].cpu().double().numpy(),
        residual_norm=m["residual_norm"].cpu().double().numpy(),
        data_residual=m["data_residual"].cpu().double().numpy(),
        rel_l2=m["rel_l2"].cpu().double().numpy(),
        encoder_z=z_enc.cpu().double().numpy(),
        encoder_objective=m_enc["objective"].cpu().double().numpy(),
        encoder_rel_l2=m_enc["rel_l2"].cpu().double().numpy(),
        iterations=it,
        converged=conv,
        start=np.zeros(n, np.int64),
        seconds=secs,
        fit=problem.fit(z).cpu().numpy(),
        total_seconds=total,
    )
