"""Modes of a posterior, from its independent ensembles: which ensembles settled together, and each mode's mass.

A target's walkers run as `groups` independent ensembles (ensemble.py) started in different places
(posterior.py). Where they settle says whether the posterior has more than one mode:

- `cluster`: two ensembles are in one mode when their medians are within SEPARATION pooled within-ensemble
  standard deviations of each other in every coordinate; modes are the connected sets of that relation (an
  ensemble whose walkers straddle two modes is wide, so it joins both, and they are judged as one).
- `within_rhat`: convergence judged within modes: rank-normalized split R-hat across the ensembles of each mode
  (a mode of one ensemble: its run's halves), the worst mode's per parameter. Two ensembles settled in two
  separate modes are not, by that alone, unconverged; ensembles of one mode that disagree still are.
- `weigh`: each mode's posterior mass, by importance sampling. Per target, a Gaussian per mode (its ensembles'
  sample mean and covariance, widened by IS_WIDEN) and IS_DRAWS draws from each; every draw weighs
  p(x) / q(x), q the equal mixture of the Gaussians (the deterministic-mixture estimator: unbiased for the
  integral of p wherever some Gaussian covers it), Pareto-smoothed (psis.py); a mode's mass is the weight of the
  draws nearest it (the Gaussian, unwidened, that is densest there). Why not a Laplace evidence (a mode's best
  log density and its covariance's determinant): a mode cut by the prior's bounds or bent (the disc-halo
  degeneracy) is not Gaussian, and the evidence of its Gaussian can be off by a factor of several; the
  importance weights take the true density at every draw, a draw outside the prior weighs 0, and k-hat says when
  the Gaussians miss mass. Cost: IS_DRAWS log densities per mode, only for targets with more than one mode.
- `resample`: draws of the mixture of the modes that carry at least MIN_WEIGHT of the mass, each mode by its
  weight (systematic resampling of the chains' draws, each ensemble's draws sharing its mode's weight; one
  uniform of the target's own seed): a mode below MIN_WEIGHT is dropped.

Everything is per target (its own draws from seeding.py), so a target's modes do not depend on its batch.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from funcae_cli.inversion import seeding
from funcae_cli.inversion.diagnostics import rank_rhat
from funcae_cli.inversion.psis import psis

SEPARATION = 4.0  # ensembles further apart than this many pooled standard deviations (some coordinate): two modes
MIN_WEIGHT = 0.01  # a mode with less of the mass is dropped from the mixture (and does not make a target multimodal)
IS_DRAWS = 1000  # importance draws per mode
IS_WIDEN = 1.5  # the importance Gaussians' standard deviations, times the mode's own
KHAT_MAX = 0.7  # above it the mode weights are uncertain (psis.py)


def cluster(chains: Tensor) -> Tensor:
    """(k, G) the mode of each ensemble of chains (k targets, G ensembles, s draws, q): the smallest index of
    the ensembles in its mode (ensemble 0 is always in mode 0)."""
    g = chains.shape[1]
    med, var = chains.median(dim=2).values.double(), chains.double().var(dim=2)  # (k, G, q); median: the lower one
    pooled = torch.sqrt(0.5 * (var[:, :, None] + var[:, None, :]))  # (k, G, G, q)
    near = ((med[:, :, None] - med[:, None, :]).abs() <= SEPARATION * pooled).all(dim=3)  # (k, G, G)
    near |= torch.eye(g, dtype=torch.bool)
    for _ in range(max(1, math.ceil(math.log2(g)))):  # transitive closure: paths of up to G ensembles
        near = (near.double() @ near.double()) > 0
    return near.double().argmax(dim=2)  # the first ensemble each one is connected to


def count(labels: Tensor) -> Tensor:
    """(k,) the number of modes of each target's labels (k, G)."""
    g = labels.shape[1]
    return (labels == torch.arange(g)).sum(dim=1)  # a mode is labelled by its first ensemble


def within_rhat(chains: Tensor, labels: Tensor) -> Tensor:
    """(k, q) rank-normalized split R-hat across the ensembles of each mode, the worst mode's (chains (k, G, s, q),
    labels (k, G) from `cluster`). Targets are grouped by their pattern of modes (one call per mode of each
    pattern), so the common case, one mode, is one call over every such target."""
    k, g, _, q = chains.shape
    out = torch.empty(k, q, dtype=torch.float64)
    patterns, which = labels.unique(dim=0, return_inverse=True)
    for p, pattern in enumerate(patterns):
        rows = torch.nonzero(which == p).squeeze(1)
        mine = chains if rows.shape[0] == k else chains[rows]
        worst = torch.full((rows.shape[0], q), -math.inf, dtype=torch.float64)
        for mode in pattern.unique():
            members = torch.nonzero(pattern == mode).squeeze(1)
            worst = torch.maximum(worst, rank_rhat(mine if members.shape[0] == g else mine[:, members]))
        out[rows] = worst
    return out


@dataclass
class Modes:
    """Per target, up to G modes labelled by their first ensemble (absent labels: weight NaN)."""

    weight: Tensor  # (k, G) posterior mass of each mode (sums to 1 over the present ones), NaN where absent
    k_hat: Tensor  # (k,) Pareto k-hat of the importance weights (NaN for a target of one mode)

    def kept(self) -> Tensor:
        """(k, G) the modes that carry at least MIN_WEIGHT."""
        return self.weight >= MIN_WEIGHT

    def multimodal(self) -> Tensor:
        """(k,) targets with at least two modes that each carry at least MIN_WEIGHT."""
        return self.kept().sum(dim=1) >= 2


def _moments(chains: Tensor, member: Tensor) -> tuple[Tensor, Tensor]:
    """Mean (k, L, q) and covariance (k, L, q, q) of the draws of each mode's ensembles (member (k, G, L))."""
    x = chains.double()
    s = x.shape[2]
    n = member.double().sum(dim=1).clamp_min(1)[:, :, None] * s  # (k, L, 1) draws per mode
    m = torch.einsum("kgl,kgq->klq", member.double(), x.sum(dim=2)) / n
    second = torch.einsum("kgl,kgsq,kgsr->klqr", member.double(), x, x) / n[..., None]
    cov = second - m[:, :, :, None] * m[:, :, None, :]
    cov = 0.5 * (cov + cov.transpose(2, 3))
    ridge = 1e-10 * torch.diagonal(cov, dim1=2, dim2=3).mean(dim=2).clamp_min(1e-300)
    return m, cov * n[..., None] / (n[..., None] - 1).clamp_min(1) + ridge[..., None, None] * torch.eye(x.shape[3])


def gauss_log(x: Tensor, mean: Tensor, chol: Tensor) -> Tensor:
    """log N(x (k, D, q); mean (k, L, q), chol (k, L, q, q) lower) -> (k, D, L): each of L Gaussians per row
    (also amortized._adapted_look's mixture)."""
    k, d, q = x.shape
    diff = x[:, None] - mean[:, :, None]  # (k, L, D, q)
    sol = torch.linalg.solve_triangular(chol, diff.transpose(2, 3), upper=False)  # (k, L, q, D)
    log_det = torch.log(torch.diagonal(chol, dim1=2, dim2=3)).sum(dim=2)  # (k, L)
    out = -0.5 * sol.square().sum(dim=2) - log_det[:, :, None] - 0.5 * q * math.log(2 * math.pi)
    return out.transpose(1, 2)


def weigh(
    chains: Tensor, labels: Tensor, log_density: Callable[[Tensor, Tensor], Tensor], targets: Tensor, seeds: Tensor
) -> Modes:
    """Each mode's posterior mass (module docstring) for targets (k,) with chains (k, G, s, q) and labels (k, G):
    log_density(x (r, q), target of each row (r,)) the unnormalized log posterior; seeds (k,) the targets' own
    (stream "modes": the importance draws' normals)."""
    k, g, _, q = chains.shape
    member = labels[:, :, None] == torch.arange(g)  # (k, G, L): ensemble g in the mode labelled l
    present = member.any(dim=1)  # (k, L)
    mean, cov = _moments(chains, member)
    mean = torch.where(present[..., None], mean, 0.0)
    eye = torch.eye(q, dtype=torch.float64)
    cov = torch.where(present[..., None, None], cov, eye)
    chol, _ = torch.linalg.cholesky_ex(cov)
    eps = seeding.normal(seeds, "modes", (g, IS_DRAWS, q))  # (k, L, D, q)
    x = mean[:, :, None] + IS_WIDEN * (eps @ chol.transpose(2, 3))
    x = x.reshape(k, g * IS_DRAWS, q)
    drawn = present.repeat_interleave(IS_DRAWS, dim=1)  # (k, L D): draws of a present mode's Gaussian
    log_p = torch.full((k, g * IS_DRAWS), -math.inf, dtype=torch.float64)
    rows, cols = torch.nonzero(drawn, as_tuple=True)
    with torch.no_grad():
        log_p[rows, cols] = log_density(x[rows, cols], targets[rows]).double()
    wide = IS_WIDEN * chol
    log_q_each = gauss_log(x, mean, wide) + torch.where(present, 0.0, -math.inf)[:, None]  # (k, L D, L)
    log_q = torch.logsumexp(log_q_each, dim=2) - torch.log(present.sum(dim=1).double())[:, None]
    log_w = torch.where(drawn, log_p - log_q, -math.inf)
    smoothed, k_hat = psis(log_w)  # a NaN density: no weight (psis)
    nearest = (gauss_log(x, mean, chol) + torch.where(present, 0.0, -math.inf)[:, None]).argmax(dim=2)  # (k, L D)
    mass = torch.full((k, g), -math.inf, dtype=torch.float64)
    for mode in range(g):  # a handful of labels, every target at once
        mine = torch.where(nearest == mode, smoothed, -math.inf)
        mass[:, mode] = torch.logsumexp(mine, dim=1)
    lost = ~torch.isfinite(mass).any(dim=1)  # no finite weight at all: each mode by its share of the ensembles
    mass[lost] = torch.where(present[lost], torch.log(member[lost].double().sum(dim=1)), -math.inf)
    weight = torch.where(present, torch.softmax(mass, dim=1), math.nan)
    return Modes(weight, k_hat)


def sample_weights(labels: Tensor, weight: Tensor, walkers_per_group: int, steps: int) -> Tensor:
    """(k, W steps) the weight of each draw of chains flattened walker-major ((k, W, steps, q) -> (k, W steps, q)):
    each kept mode's weight shared evenly by its ensembles' draws; 0 for a dropped mode."""
    k, g = labels.shape
    keep = torch.where(weight >= MIN_WEIGHT, weight, 0.0)
    keep = keep / keep.sum(dim=1, keepdim=True)
    per_group = keep.gather(1, labels)  # (k, G): the weight of each ensemble's mode
    groups_in_mode = (labels[:, :, None] == labels[:, None, :]).sum(dim=2).double()  # (k, G)
    per_draw = per_group / groups_in_mode / (walkers_per_group * steps)
    return per_draw.repeat_interleave(walkers_per_group * steps, dim=1)


def resample(draws: Tensor, weights: Tensor, seeds: Tensor) -> Tensor:
    """(k, S, q) draws resampled systematically by weights (k, S) (summing to 1): one uniform per target, from
    stream "modes" of its seed (after the importance draws' counters), the indices in order."""
    k, s, q = draws.shape
    cdf = torch.cumsum(weights.double(), dim=1)
    offset = seeding.uniform(seeds, "modes", (1,), offset=1 << 32)  # (k, 1)
    where = (torch.arange(s, dtype=torch.float64)[None] + offset) / s * cdf[:, -1:]
    idx = torch.searchsorted(cdf, where, right=True).clamp_max(s - 1)
    return draws.gather(1, idx[:, :, None].expand(-1, -1, q))
