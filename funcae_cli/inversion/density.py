"""The density of a run's training codes: a Gaussian mixture, the prior of the latent search (MAP) and the test
of whether an inverted code still lies where the decoder was trained.

Fitted by EM on the training codes (float64), the number of components chosen by the mean log-likelihood of
the validation codes among `COMPONENTS` (doubling until it stops improving); full covariances, each
floored at `REG` times the codes' variance.
`log_prob` is differentiable (the latent search adds -2 log p(z) to its objective). `percentile(logp)` places
a code's log density among the training codes' own; below `OFF_MANIFOLD_QUANTILE` a code is off the manifold.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

COMPONENTS = (1, 2, 4, 8, 16)  # candidate mixture sizes
REG = 1e-4  # covariance floor, relative to the codes' per-dimension variance
EM_ITERATIONS = 150
EM_TOL = 1e-5  # stop when the mean log-likelihood improves by less than this
QUANTILES = 1001  # stored quantiles of the training codes' log densities (0, 0.1%, ..., 100%)
OFF_MANIFOLD_QUANTILE = 0.001  # below the training codes' 0.1% quantile: off the manifold
MAX_FIT_CODES = 5_000  # EM runs on at most this many training codes (a seeded subset)


@dataclass
class CodeDensity:
    """A Gaussian mixture over latent codes, float64 on the CPU (moved to a device with `to`)."""

    weights: Tensor  # (K,)
    means: Tensor  # (K, d)
    chol: Tensor  # (K, d, d) lower Cholesky factors of the covariances
    logp_quantiles: Tensor  # (QUANTILES,) of the training codes' log densities, increasing
    val_loglik: float  # mean log density of the validation codes

    @property
    def components(self) -> int:
        return int(self.weights.shape[0])

    def to(self, device: torch.device | str) -> CodeDensity:
        return CodeDensity(*(t.to(device) for t in (self.weights, self.means, self.chol, self.logp_quantiles)),
                           self.val_loglik)  # fmt: skip

    def log_prob(self, z: Tensor) -> Tensor:
        """log p(z) for codes (n, d), in z's dtype; differentiable."""
        return _log_prob(z.to(self.means.dtype), self.weights, self.means, self.chol).to(z.dtype)

    def percentile(self, logp: Tensor) -> Tensor:
        """Fraction of training codes with a lower log density (0..1), by the stored quantiles."""
        q = self.logp_quantiles.to(logp.device, torch.float64)
        pos = torch.searchsorted(q, logp.detach().to(torch.float64).contiguous())
        return pos.to(torch.float64) / (q.shape[0] - 1)

    def sample(self, n: int, gen: torch.Generator) -> Tensor:
        """(n, d) float64 codes drawn from the mixture (a component by its weight, then its Gaussian)."""
        k = torch.multinomial(self.weights.double().cpu(), n, replacement=True, generator=gen)
        eps = torch.randn(n, self.means.shape[1], generator=gen, dtype=torch.float64)
        means, chol = self.means.double().cpu(), self.chol.double().cpu()
        return means[k] + (chol[k] @ eps[:, :, None]).squeeze(2)

    def moments(self) -> tuple[Tensor, Tensor]:
        """The mixture's mean and per-dimension standard deviation (d,), float64."""
        w, means, chol = self.weights.double().cpu(), self.means.double().cpu(), self.chol.double().cpu()
        mean = w @ means
        var = w @ (chol.square().sum(dim=2) + (means - mean).square())
        return mean, var.sqrt()

    @property
    def off_manifold_below(self) -> float:
        """The log density under which a code is off the manifold: the training codes' 0.1% quantile."""
        return float(self.logp_quantiles[round(OFF_MANIFOLD_QUANTILE * (QUANTILES - 1))])

    def state(self) -> dict[str, Any]:
        return {"weights": self.weights, "means": self.means, "chol": self.chol,
                "logp_quantiles": self.logp_quantiles, "val_loglik": self.val_loglik}  # fmt: skip

    @classmethod
    def from_state(cls, s: dict[str, Any]) -> CodeDensity:
        return cls(s["weights"], s["means"], s["chol"], s["logp_quantiles"], float(s["val_loglik"]))

    def summary(self) -> dict[str, Any]:
        return {
            "kind": "gaussian_mixture",
            "components": self.components,
            "val_mean_log_density": self.val_loglik,
            "off_manifold_below": self.off_manifold_below,
        }


def _log_prob(z: Tensor, weights: Tensor, means: Tensor, chol: Tensor) -> Tensor:
    """log sum_k w_k N(z; m_k, L_k L_k^T): (n, d) -> (n,)."""
    d = z.shape[1]
    diff = z[None, :, :] - means[:, None, :]  # (K, n, d)
    sol = torch.linalg.solve_triangular(chol, diff.transpose(1, 2), upper=False)  # (K, d, n)
    maha = sol.square().sum(dim=1)  # (K, n)
    log_det = 2 * torch.log(torch.diagonal(chol, dim1=1, dim2=2)).sum(dim=1)  # (K,)
    comp = -0.5 * (maha + log_det[:, None] + d * math.log(2 * math.pi))
    return torch.logsumexp(comp + torch.log(weights)[:, None], dim=0)


def _kmeans_pp(z: Tensor, k: int, gen: torch.Generator) -> Tensor:
    """k-means++ seeding: k of the codes, each next one drawn in proportion to its squared distance."""
    centres = [z[torch.randint(z.shape[0], (1,), generator=gen)]]
    for _ in range(1, k):
        d2 = torch.cdist(z, torch.cat(centres)).square().min(dim=1).values
        centres.append(z[torch.multinomial(d2 / d2.sum(), 1, generator=gen)])
    return torch.cat(centres)


def _em(z: Tensor, k: int, gen: torch.Generator) -> tuple[Tensor, Tensor, Tensor]:
    """EM for a k-component mixture with full covariances floored at REG x the codes' variance."""
    n, d = z.shape
    floor = REG * torch.diag(z.var(dim=0).clamp_min(1e-12))
    means = _kmeans_pp(z, k, gen)
    cov = torch.cov(z.T).reshape(d, d)[None].repeat(k, 1, 1) + floor
    weights = torch.full((k,), 1.0 / k, dtype=z.dtype)
    chol = torch.linalg.cholesky(cov)
    last = -math.inf
    for _ in range(EM_ITERATIONS):
        diff = z[None] - means[:, None]
        sol = torch.linalg.solve_triangular(chol, diff.transpose(1, 2), upper=False)
        log_det = 2 * torch.log(torch.diagonal(chol, dim1=1, dim2=2)).sum(dim=1)
        comp = -0.5 * (sol.square().sum(dim=1) + log_det[:, None] + d * math.log(2 * math.pi))
        joint = comp + torch.log(weights)[:, None]  # (k, n)
        total = torch.logsumexp(joint, dim=0)
        resp = torch.exp(joint - total)  # (k, n) responsibilities
        mean_ll = float(total.mean())
        nk = resp.sum(dim=1).clamp_min(1e-10)
        weights = nk / n
        means = (resp @ z) / nk[:, None]
        diff = z[None] - means[:, None]
        cov = torch.einsum("kn,kni,knj->kij", resp, diff, diff) / nk[:, None, None] + floor
        chol = torch.linalg.cholesky(cov)
        if mean_ll - last < EM_TOL:
            break
        last = mean_ll
    return weights, means, chol


def fit_code_density(codes_train: Tensor, codes_val: Tensor, seed: int = 0) -> CodeDensity:
    """The mixture of COMPONENTS with the best validation log-likelihood, fitted on the training codes.

    codes_*: (n, d) any device and dtype; a VAE's posterior means."""
    zt = codes_train.detach().cpu().to(torch.float64)
    zv = codes_val.detach().cpu().to(torch.float64)
    gen = torch.Generator().manual_seed(seed)
    if zt.shape[0] > MAX_FIT_CODES:
        zt_fit = zt[torch.randperm(zt.shape[0], generator=gen)[:MAX_FIT_CODES]]
    else:
        zt_fit = zt
    zv = zv if zv.shape[0] else zt_fit
    best: tuple[float, tuple[Tensor, Tensor, Tensor]] | None = None
    for k in COMPONENTS:
        if k > max(1, zt_fit.shape[0] // (10 * (zt_fit.shape[1] + 1))):  # at least ~10 codes per parameter
            break
        params = _em(zt_fit, k, gen)
        score = float(_log_prob(zv, *params).mean())
        if best is not None and score <= best[0] + 1e-3:
            break  # more components no longer help the validation codes
        best = (score, params)
    assert best is not None
    weights, means, chol = best[1]
    logp_train = _log_prob(zt, weights, means, chol)
    quantiles = torch.quantile(logp_train, torch.linspace(0, 1, QUANTILES, dtype=torch.float64))
    return CodeDensity(weights, means, chol, quantiles, best[0])
