"""Posterior uncertainty for every target at once: a Laplace approximation, or MCMC samples.

What is sampled: for a family with a formula, its free parameters in natural coordinates (physics.py: log10 of
scale parameters) with the formula as the likelihood (chi^2 with yerr) and the run's prior (prior.py); for a
data-only family, the latent code with the decoder as the likelihood and the training codes' density as the
prior (objective.py), the parameters then following each sample through the regressor.

- `laplace`: a Gaussian at the optimum whose precision is the Hessian of -log posterior there: Gauss-Newton
  (J'J of the weighted residuals) plus the prior's Hessian (autograd). Without yerr the residuals' scale is
  estimated from the fit (RSS / (m - q)), as for any nonlinear least squares. It ignores the prior's hard bounds:
  its coverage is measured (funcae validate), not assumed.
- `mcmc`: an affine-invariant ensemble sampler (Goodman & Weare 2010, as emcee) on one tensor of walkers
  (targets, walkers, parameters): each step moves one half of every target's walkers given the other half,
  alternating, by one of three well-known moves drawn step by step (SHARES): the stretch move (scale 2),
  differential evolution (emcee's DEMove) and an independence proposal from a Gaussian kernel density of the
  other half (emcee's KDEMove). All adapt their steps to each target's own posterior (scale, correlations,
  curvature) through its ensemble. Seeded: the same command gives the same samples.
  Walkers start around the optimum (Laplace's Gaussian, widened, clipped into the prior's support); the first
  `burn` steps are discarded.

Convergence per target and parameter: split R-hat over walkers (each walker a chain, halved) and the effective
sample size walkers x steps / tau, tau the integrated autocorrelation time of the walker-averaged
autocorrelation with Sokal's window (c = 5), as emcee estimates it. Targets with R-hat > RHAT_MAX or an ESS below
ESS_MIN are named in a warning.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import Tensor

from funcae_cli.inversion.laplace_check import check_laplace
from funcae_cli.inversion.physics import Fitter

POSTERIORS = ("none", "laplace", "mcmc")
RHAT_MAX = 1.01
ESS_MIN = 400
STRETCH = 2.0  # the stretch move's scale a
INIT_WIDEN = 1.5  # walkers start from Laplace's Gaussian with this many times its standard deviations
# The samplers' likelihood of a formula family in float32: chi^2 to ~1e-6 relative, far below what an acceptance
# ratio resolves, and ~1.7x faster than float64 on a CPU (the optimum and Laplace stay in float64).
LIKELIHOOD_DTYPE = torch.float32
QUANTILES = {"q025": 0.025, "q16": 0.16, "median": 0.5, "q84": 0.84, "q975": 0.975}

LogDensity = Callable[[Tensor, Tensor], Tensor]  # (x (k, q), target of each row (k,)) -> log density (k,)


@dataclass
class Posterior:
    """Per target: quantiles of each reported quantity, correlations, convergence, and the samples."""

    kind: str  # laplace | mcmc
    names: list[str]  # the reported quantities: parameters (family units), or latent coordinates
    samples: np.ndarray  # (n, s, p) float32 draws, in the family's units
    quantiles: dict[str, np.ndarray]  # QUANTILES keys -> (n, p)
    corr: np.ndarray  # (n, p, p) correlations of the sampled coordinates (natural: log10 for scale parameters)
    rhat: np.ndarray | None = None  # (n, p) mcmc only
    ess: np.ndarray | None = None  # (n, p)
    acceptance: np.ndarray | None = None  # (n,)
    k_hat: np.ndarray | None = None  # (n,) laplace: Pareto k-hat of its importance weights (laplace_check.py)
    warnings: list[str] = field(default_factory=list)


def quantiles(samples: Tensor) -> dict[str, np.ndarray]:
    """QUANTILES over axis 1 of (n, s, p) samples."""
    q = torch.quantile(samples.double(), torch.tensor(list(QUANTILES.values()), dtype=torch.float64), dim=1)
    return {k: q[i].numpy() for i, k in enumerate(QUANTILES)}


def covariance(points: Tensor) -> Tensor:
    """(n, q, q) sample covariances of (n, k, q) points."""
    x = points - points.mean(dim=1, keepdim=True)
    return x.transpose(1, 2) @ x / max(x.shape[1] - 1, 1)


def correlation(samples: Tensor) -> np.ndarray:
    """(n, p, p) correlation matrices of (n, s, p) samples (NaN where a coordinate does not vary)."""
    cov = covariance(samples.double())
    sd = torch.diagonal(cov, dim1=1, dim2=2).sqrt()
    return (cov / (sd[:, :, None] * sd[:, None, :])).numpy()


# --- diagnostics ---------------------------------------------------------------------------------------


def split_rhat(chains: Tensor) -> Tensor:
    """Split R-hat (Gelman et al. 2013) of (n, chains, steps, q) -> (n, q): each chain halved."""
    half = chains.shape[2] // 2
    c = torch.cat([chains[:, :, :half], chains[:, :, half : 2 * half]], dim=1).double()  # (n, 2W, half, q)
    means, variances = c.mean(dim=2), c.var(dim=2)
    w = variances.mean(dim=1)
    b = half * means.var(dim=1)
    var_plus = (half - 1) / half * w + b / half
    return torch.sqrt(var_plus / w.clamp_min(1e-300))


def integrated_time(chains: Tensor, c: float = 5.0) -> Tensor:
    """tau (n, q) of (n, walkers, steps, q): the walker-averaged autocorrelation, summed up to Sokal's window."""
    x = chains.double() - chains.double().mean(dim=2, keepdim=True)
    steps = x.shape[2]
    size = 1 << (2 * steps - 1).bit_length()
    f = torch.fft.rfft(x, n=size, dim=2)
    acf = torch.fft.irfft(f * f.conj(), n=size, dim=2)[:, :, :steps]  # (n, W, steps, q)
    acf = acf.mean(dim=1)  # averaged over walkers
    acf = acf / acf[:, :1].clamp_min(1e-300)
    taus = 2.0 * torch.cumsum(acf, dim=1) - 1.0  # tau(M) for every window M
    window = torch.arange(steps, dtype=torch.float64)[None, :, None]
    ok = window >= c * taus
    first = torch.where(ok.any(dim=1), ok.float().argmax(dim=1), steps - 1)  # (n, q)
    return taus.gather(1, first[:, None]).squeeze(1).clamp_min(1.0)


# --- the ensemble sampler ---------------------------------------------------------------------------


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


def _stretch(xs: Tensor, other: Tensor, gen: torch.Generator) -> tuple[Tensor, Tensor]:
    """Goodman & Weare's stretch move toward a random walker of the other half (scale STRETCH)."""
    n, m, q = xs.shape
    z = ((STRETCH - 1) * torch.rand(n, m, generator=gen, dtype=xs.dtype) + 1) ** 2 / STRETCH
    partner = other.gather(1, torch.randint(other.shape[1], (n, m), generator=gen)[:, :, None].expand(-1, -1, q))
    return partner + z[..., None] * (xs - partner), (q - 1) * torch.log(z)


def _differential(xs: Tensor, other: Tensor, gen: torch.Generator) -> tuple[Tensor, Tensor]:
    """Differential evolution (ter Braak 2006, emcee's DEMove): a step along the difference of two walkers of
    the other half, scaled by 2.38 / sqrt(2 q) (times a 10% jitter): symmetric, it follows correlations."""
    n, m, q = xs.shape
    k = other.shape[1]
    a = torch.randint(k, (n, m), generator=gen)
    b = (a + torch.randint(1, k, (n, m), generator=gen)) % k  # a different walker
    pa = other.gather(1, a[:, :, None].expand(-1, -1, q))
    pb = other.gather(1, b[:, :, None].expand(-1, -1, q))
    gamma = 2.38 / math.sqrt(2 * q) * (1 + 0.1 * torch.randn(n, m, 1, generator=gen, dtype=xs.dtype))
    return xs + gamma * (pa - pb), torch.zeros(n, m, dtype=xs.dtype)


def _kernel_density(xs: Tensor, other: Tensor, gen: torch.Generator) -> tuple[Tensor, Tensor]:
    """An independence proposal from a Gaussian kernel density of the other half (emcee's KDEMove)."""
    n, m, q = xs.shape
    chol, log_norm = _kde(other)
    pick = torch.randint(other.shape[1], (n, m), generator=gen)
    eps = torch.randn(n, m, q, generator=gen, dtype=xs.dtype)
    y = other.gather(1, pick[:, :, None].expand(-1, -1, q)) + (chol[:, None] @ eps[..., None])[..., 0]
    return y, _kde_log(xs, other, chol, log_norm) - _kde_log(y, other, chol, log_norm)


MOVES = (_stretch, _differential, _kernel_density)
SHARES = torch.tensor([0.2, 0.4, 0.4])  # how often each move is used, step by step


def ensemble(
    log_prob: Callable[[Tensor], Tensor], x0: Tensor, steps: int, burn: int, gen: torch.Generator
) -> tuple[Tensor, Tensor]:
    """Run the batched ensemble sampler. log_prob: walkers (n, m, q) -> log density (n, m) (-inf outside the
    support); x0 (n, W, q), W even. Returns the kept chain (n, W, steps, q) and the acceptance rate (n,)."""
    n, w, q = x0.shape
    half = w // 2
    x, lp = x0.clone(), log_prob(x0)
    chain = torch.empty(n, w, steps, q, dtype=x0.dtype)
    accepted = torch.zeros(n, dtype=torch.float64)
    for t in range(burn + steps):
        move = MOVES[int(torch.multinomial(SHARES, 1, generator=gen))]
        for first in (True, False):
            mine = slice(0, half) if first else slice(half, w)
            other = x[:, half:] if first else x[:, :half]
            xs, lps = x[:, mine], lp[:, mine]
            y, log_extra = move(xs, other, gen)
            lp_y = log_prob(y)
            log_u = torch.log(torch.rand(n, xs.shape[1], generator=gen, dtype=x.dtype))
            accept = torch.isfinite(lp_y) & (log_u < lp_y - lps + log_extra)
            x[:, mine] = torch.where(accept[..., None], y, xs)
            lp[:, mine] = torch.where(accept, lp_y, lps)
            if t >= burn:
                accepted += accept.double().sum(dim=1)
        if t >= burn:
            chain[:, :, t - burn] = x
    return chain, accepted / max(steps * w, 1)


# --- a posterior from samples --------------------------------------------------------------------------------


def summarize(
    kind: str,
    names: list[str],
    natural: Tensor,
    to_units: Callable[[Tensor], Tensor],
    target_names: list[str],
    chain: Tensor | None = None,
    acceptance: Tensor | None = None,
    keep: int = 2000,
) -> Posterior:
    """Quantiles, correlations and (for chains) convergence of draws `natural` (n, s, q) in the sampled
    coordinates; `to_units` maps them to the reported quantities (n, s, p). At most `keep` draws are stored."""
    n, s, _ = natural.shape
    thin = max(1, s // keep)
    draws = to_units(natural[:, ::thin])
    out = Posterior(kind, names, draws.float().numpy(), quantiles(to_units(natural)), correlation(natural))
    if chain is not None:
        rhat, tau = split_rhat(chain), integrated_time(chain)
        out.rhat, out.ess = rhat.numpy(), (chain.shape[1] * chain.shape[2] / tau).numpy()
        out.acceptance = acceptance.numpy()
        bad = (out.rhat > RHAT_MAX).any(axis=1) | (out.ess < ESS_MIN).any(axis=1)
        hit = [target_names[i] for i in np.nonzero(bad)[0]]
        if hit:
            more = f" and {len(hit) - 5} more" if len(hit) > 5 else ""
            out.warnings.append(
                f"the MCMC chains of {', '.join(hit[:5])}{more} have not converged (R-hat > {RHAT_MAX} or effective "
                f"sample size < {ESS_MIN} for a parameter): run longer (--steps) before trusting their intervals"
            )
    return out


def gaussian_draws(mean: Tensor, cov: Tensor, draws: int, gen: torch.Generator) -> Tensor:
    """(n, draws, q) from N(mean (n, q), cov (n, q, q)); a covariance that is not positive definite is floored."""
    evals, evecs = torch.linalg.eigh(cov)
    root = evecs * evals.clamp_min(1e-300).sqrt()[:, None, :]
    eps = torch.randn(mean.shape[0], draws, mean.shape[1], generator=gen, dtype=mean.dtype)
    return mean[:, None, :] + eps @ root.transpose(1, 2)


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


@dataclass
class Sampling:
    """How to sample (funcae invert --walkers/--steps/--burn)."""

    walkers: int = 32  # per target, even
    steps: int = 800  # kept per walker: enough for R-hat <= 1.01 on the normal family (8 of 2000 flagged in
    # validate); rotation curves' 4 correlated parameters need more (1913 of 2000 flagged, though calibrated)
    burn: int = 200  # discarded first
    seed: int = 0
    draws: int = 2000  # Laplace: draws per target for quantiles, figures and samples.npz


def _batched_log_prob(n: int, per_row: Callable[[Tensor, Tensor], Tensor]) -> Callable[[Tensor], Tensor]:
    """Walkers (n, m, q) -> (n, m) from a log density of rows (k, q) with the target of each row (k,)."""

    def log_prob(x: Tensor) -> Tensor:
        m = x.shape[1]
        rows = torch.arange(n, device=x.device).repeat_interleave(m)
        return per_row(x.reshape(n * m, -1), rows).reshape(n, m)

    return log_prob


def _start_walkers(mean: Tensor, cov: Tensor, walkers: int, lo: Tensor, hi: Tensor, gen: torch.Generator) -> Tensor:
    """Walkers around the optimum: Laplace's Gaussian widened by INIT_WIDEN, reflected into [lo, hi]. Never
    clipped: walkers piled on one value of a coordinate span a lower-dimensional ensemble, which the ensemble's
    moves (affine combinations of walkers) could never leave."""
    x = gaussian_draws(mean, INIT_WIDEN**2 * cov, walkers, gen)
    for _ in range(2):
        x = torch.where(x < lo, 2 * lo - x, x)
        x = torch.where(x > hi, 2 * hi - x, x)
    inside = (x >= lo) & (x <= hi)
    box = lo + (hi - lo) * torch.rand(x.shape, generator=gen, dtype=x.dtype)
    return torch.where(inside, x, box)


def physics_posterior(
    fitter: Fitter, u_opt: Tensor, log_prior: Callable[[Tensor], Tensor], kind: str, sampling: Sampling,
    names: list[str], target_names: list[str],
) -> Posterior:  # fmt: skip
    """The posterior of a formula family's free parameters (natural coordinates u, (n, q) at the optimum): the
    formula's chi^2 as -2 log likelihood (fitter: physics.Fitter), the run's prior (prior.log_prior of the full
    natural vector). Reported in the family's units."""
    obs = fitter.obs
    n, q = u_opt.shape
    all_points = torch.arange(obs.x.shape[0], device=obs.x.device)
    _, g, jac = fitter.gradient(u_opt, obs.target, all_points)
    a = torch.zeros(n, q, q, dtype=u_opt.dtype).index_add_(0, obs.target, jac[:, :, None] * jac[:, None, :])
    if not obs.chi2:  # no errors: their scale from the residuals, as nonlinear least squares does
        r = fitter.residual(u_opt, obs.target, all_points)
        dof = (torch.bincount(obs.target, minlength=n) - q).clamp_min(1)
        a = a / (fitter.sums(r, obs.target, n) / dof).clamp_min(1e-300)[:, None, None]

    def log_prior_free(u: Tensor) -> Tensor:
        return log_prior(fitter.full(u))

    # A weak Gaussian of half the box's width (10 natural units where unbounded) keeps directions the data and the
    # prior leave flat from a zero or infinite variance (Laplace) and spreads the walkers along them (mcmc).
    width = torch.where(torch.isfinite(fitter.hi - fitter.lo), (fitter.hi - fitter.lo) / 2, 10.0).double()
    floor = torch.diag_embed((1.0 / width.square()).expand(n, -1))
    cov = precision_to_cov(a + prior_hessian(log_prior_free, u_opt) + floor)
    gen = torch.Generator().manual_seed(sampling.seed)
    units = lambda u: fitter.units(u.reshape(-1, q)).reshape(u.shape[0], u.shape[1], -1)  # noqa: E731
    fast = Fitter(fitter.trained, obs, fitter.bounds, dtype=LIKELIHOOD_DTYPE)  # the samplers' likelihood
    counts = torch.bincount(obs.target, minlength=n)
    first_point = torch.cumsum(counts, 0) - counts
    layout: dict[int, tuple[Tensor, Tensor]] = {}  # rows -> (row of each point, point): the same every step

    def points_of(rows: Tensor) -> tuple[Tensor, Tensor]:
        key = rows.shape[0]
        if key not in layout:  # each row (a walker of target t) owns a copy of t's points
            reps = counts[rows]
            row_of_point = torch.arange(key).repeat_interleave(reps)
            offset = torch.arange(int(reps.sum())) - torch.repeat_interleave(torch.cumsum(reps, 0) - reps, reps)
            layout[key] = (row_of_point, first_point[rows].repeat_interleave(reps) + offset)
        return layout[key]

    def per_row(u: Tensor, rows: Tensor) -> Tensor:
        lp = log_prior_free(u)
        row_of_point, point = points_of(rows)
        u32 = u.to(LIKELIHOOD_DTYPE)
        chi2 = fast.sums(fast.residual(u32, row_of_point, point), row_of_point, rows.shape[0]).double()
        return torch.where(torch.isfinite(lp), lp - 0.5 * chi2, -math.inf)

    if kind == "laplace":  # checked against the posterior (with yerr) and reweighted where it can be trusted
        check = check_laplace(u_opt, cov, _batched_log_prob(n, per_row) if obs.chi2 else None, sampling.draws, gen,
                              target_names)  # fmt: skip
        return check.into(summarize("laplace", names, check.draws, units, target_names))
    lo, hi = fitter.lo, fitter.hi
    lo = torch.where(torch.isfinite(lo), lo, u_opt.min(dim=0).values - 10)
    hi = torch.where(torch.isfinite(hi), hi, u_opt.max(dim=0).values + 10)
    x0 = _start_walkers(u_opt, cov, sampling.walkers, lo, hi, gen)
    chain, acc = ensemble(_batched_log_prob(n, per_row), x0, sampling.steps, sampling.burn, gen)
    flat = chain.reshape(n, -1, q)
    return summarize("mcmc", names, flat, units, target_names, chain, acc)


def latent_posterior(
    problem: Any, z_opt: Tensor, kind: str, sampling: Sampling, predict: Callable[[Tensor], Tensor] | None,
    names: list[str], target_names: list[str],
) -> Posterior:  # fmt: skip
    """The posterior of the latent codes (n, d) of a data-only family: the decoder's chi^2 as -2 log likelihood,
    the training codes' density as the prior (problem: objective.Problem with its density). The parameters
    (names) follow each draw through `predict` (the regressor); without parameters the codes are reported."""
    n, d = z_opt.shape
    z0 = z_opt.detach().to(torch.float32)
    h = row_hessians(lambda z: problem.loss(z, None), z0)
    cov = precision_to_cov(0.25 * (h + h.transpose(1, 2)).double().cpu())  # -log posterior = loss / 2
    gen = torch.Generator().manual_seed(sampling.seed)
    mean = z0.double().cpu()

    def units(z: Tensor) -> Tensor:
        if predict is None:
            return z
        return predict(z.reshape(-1, d)).reshape(z.shape[0], z.shape[1], -1)

    def per_row(z: Tensor, rows: Tensor) -> Tensor:
        with torch.no_grad():
            return -0.5 * problem.loss(z.to(torch.float32).to(problem.device), rows).double().cpu()

    if kind == "laplace":  # checked against the posterior and reweighted where it can be trusted
        check = check_laplace(mean, cov, _batched_log_prob(n, per_row), sampling.draws, gen, target_names)
        return check.into(summarize("laplace", names, check.draws, units, target_names))

    big = torch.full((d,), math.inf, dtype=torch.float64)
    x0 = _start_walkers(mean, cov, sampling.walkers, -big, big, gen)
    chain, acc = ensemble(_batched_log_prob(n, per_row), x0, sampling.steps, sampling.burn, gen)
    flat = chain.reshape(n, -1, d)
    thinned = flat[:, :: max(1, flat.shape[1] // sampling.draws)]
    return summarize("mcmc", names, thinned, units, target_names, chain, acc)
