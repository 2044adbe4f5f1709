"""Pareto-smoothed importance sampling (PSIS; Vehtari, Simpson, Gelman, Yao & Gabry 2015/2024), batched.

Given log importance weights (rows, S) (e.g. log p - log q of S draws from a proposal q for each of many
targets), per row:
- the right tail: the M = ceil(min(S / 5, 3 sqrt(S / r_eff))) largest weights above the (M+1)-th largest;
- a generalized Pareto distribution fitted to the tail's excesses over that cutoff by Zhang & Stephens' (2009)
  empirical Bayes estimate, with the weakly informative prior on k that ArviZ and loo use (k shrunk toward 0.5
  as if 10 more observations);
- the tail's weights replaced by the fitted distribution's expected order statistics (quantiles at
  (i - 1/2) / M), truncated at the largest raw weight, and the row normalized (log-sum-exp = 0).
k-hat, the fitted shape, says how far the weights can be trusted: below 0.7 the smoothed estimate is reliable
(the 2024 paper's threshold for S >= 2000 draws; min(1 - 1 / log10 S, 0.7) for fewer), above it the proposal
misses mass the target has.

Numbers are ArviZ's `psislw` (arviz 0.23, `arviz.stats.stats._psislw` and `_gpdfit`), computed for every row at
once (no loop over rows; chunks bound the memory of the fit's (rows, grid, M) tensor), in float64. One
difference: a row whose log weights are all equal (the proposal is the target) gets k-hat = -inf (no tail at
all), where ArviZ returns inf (too few tail draws to fit); a row with fewer than 5 tail draws otherwise gets
inf, as in ArviZ. A row with no finite weight gets k-hat = inf and NaN weights.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import Tensor

PRIOR_BS = 3.0  # Zhang & Stephens' prior on b: the grid spreads over 1 / (PRIOR_BS * first quartile)
PRIOR_K = 10.0  # weakly informative prior on k: PRIOR_K pseudo-observations at k = 0.5
CHUNK_ELEMENTS = 1 << 21  # rows x grid x tail elements of one chunk's fit (16 MiB in float64)
LOG_TINY = math.log(np.finfo(np.float64).tiny)
EPS = float(np.finfo(np.float64).eps)


def importance_ess(log_weights: Tensor) -> Tensor:
    """Effective draws 1 / sum(w^2) of each row of normalized log weights (rows, S) (psis's output: log-sum-exp 0),
    the draws an unweighted sample would need for the same variance of a mean (Kish); NaN where a row has none."""
    lse = torch.logsumexp(2 * log_weights.to(torch.float64), dim=1)
    return torch.where(torch.isfinite(lse), torch.exp(-lse), math.nan)


def tail_length(draws: int, r_eff: float = 1.0) -> int:
    """M: how many of `draws` weights form the tail."""
    return int(math.ceil(min(draws / 5.0, 3.0 * math.sqrt(draws / r_eff))))


def psis(log_weights: Tensor | np.ndarray, r_eff: float = 1.0) -> tuple[Tensor | np.ndarray, Tensor | np.ndarray]:
    """Smoothed, normalized log weights (rows, S) and k-hat (rows,) of log weights (rows, S) or (S,) (then
    (S,) and a 0-d k-hat). Same kind out as in (numpy or torch, float64). A NaN weight (a density that could not be
    computed) counts as -inf, no weight; a row without a finite weight gets k-hat inf (never a pass)."""
    as_numpy = not isinstance(log_weights, Tensor)
    lw = torch.as_tensor(np.asarray(log_weights) if as_numpy else log_weights).to(torch.float64)
    lw = torch.where(torch.isnan(lw), -math.inf, lw)  # not nan_to_num: it makes -inf the lowest finite float, so
    # a row of draws all outside the prior would weigh them all alike (k-hat -inf, every draw counted)
    one = lw.ndim == 1
    lw = lw.reshape(1, -1) if one else lw
    rows, s = lw.shape
    if s < 2:
        raise ValueError(f"PSIS needs at least 2 draws per row, got {s}")
    m = tail_length(s, r_eff)
    grid = 30 + int(math.sqrt(m))
    chunk = max(1, CHUNK_ELEMENTS // (grid * m))
    out, k = torch.empty_like(lw), torch.empty(rows, dtype=torch.float64, device=lw.device)
    for a in range(0, rows, chunk):
        out[a : a + chunk], k[a : a + chunk] = _psis_rows(lw[a : a + chunk], m)
    if one:
        out, k = out[0], k[0]
    return (out.cpu().numpy(), k.cpu().numpy()) if as_numpy else (out, k)


def _gpd_fit(y: Tensor, n: Tensor) -> tuple[Tensor, Tensor]:
    """Zhang & Stephens' estimate (k with the prior, sigma) per row of tail excesses y (r, M), sorted ascending,
    of which the last n (r,) are the row's tail (the others are 0: log1p(0) adds nothing to the means)."""
    r, m = y.shape
    nf = n.to(y.dtype).clamp_min(1)
    grid = 30 + torch.floor(torch.sqrt(nf))  # per row: 30 + int(sqrt(n))
    width = int(grid.max())
    i = torch.arange(1, width + 1, dtype=y.dtype, device=y.device)[None, :]  # (1, G)
    quart = (m - n + torch.floor(nf / 4 + 0.5).long() - 1).clamp(0, m - 1)  # the tail's first quartile
    b = 1 - torch.sqrt(grid[:, None] / (i - 0.5))
    b = b / (PRIOR_BS * y.gather(1, quart[:, None])) + 1 / y[:, -1:]  # (r, G)
    terms = b[:, :, None] * y[:, None, :]  # (r, G, M), the fit's one large tensor: in place from here
    k_grid = terms.neg_().log1p_().sum(dim=2) / nf[:, None]
    len_scale = nf[:, None] * (torch.log(-(b / k_grid)) - k_grid - 1)
    len_scale = torch.where((i <= grid[:, None]) & torch.isfinite(len_scale), len_scale, -math.inf)
    w = torch.softmax(len_scale, dim=1)  # = 1 / sum_j exp(L_j - L_i), as ArviZ writes it
    w = torch.where(w >= 10 * EPS, w, 0.0)
    w = w / w.sum(dim=1, keepdim=True)
    b_post = (b * w).nansum(dim=1)
    k_post = torch.log1p(-b_post[:, None] * y).sum(dim=1) / nf
    sigma = -k_post / b_post
    return (nf * k_post + PRIOR_K * 0.5) / (nf + PRIOR_K), sigma


def _psis_rows(lw: Tensor, m: int) -> tuple[Tensor, Tensor]:
    """PSIS of a chunk of rows (r, S) with tail length m."""
    top = lw.max(dim=1, keepdim=True).values
    x = lw - top
    high, where = torch.topk(x, m + 1, dim=1)  # descending: the tail candidates and the cutoff
    cutoff = high[:, m].clamp_min(LOG_TINY)  # (r,)
    tail, where = high[:, :m].flip(1), where[:, :m].flip(1)  # (r, m), ascending
    in_tail = tail > cutoff[:, None]  # a suffix of each row
    n = in_tail.sum(dim=1)
    fits = n > 4
    y = torch.where(in_tail & fits[:, None], torch.exp(tail) - torch.exp(cutoff)[:, None], 0.0)
    k, sigma = _gpd_fit(y, torch.where(fits, n, 5))
    k = torch.where(fits, k, math.inf)
    smooth = fits & torch.isfinite(k) & torch.isfinite(sigma) & (sigma > 0)
    # the expected order statistics of the fitted tail: quantiles (t + 1/2) / n, t = 0..n-1 its rank
    rank = torch.arange(m, device=lw.device)[None, :] - (m - n)[:, None]
    p = (rank.to(lw.dtype) + 0.5) / n.clamp_min(1)[:, None].to(lw.dtype)
    kk = k[:, None]
    tiny_k = kk.abs() < EPS
    q = torch.where(tiny_k, -torch.log1p(-p), torch.expm1(-kk * torch.log1p(-p)) / torch.where(tiny_k, 1.0, kk))
    smoothed = torch.log(q * sigma[:, None] + torch.exp(cutoff)[:, None])
    tail = torch.where(in_tail & smooth[:, None], smoothed, tail).clamp_max(0.0)  # truncated at the max raw weight
    out = x.scatter(1, where, tail)
    out = out - torch.logsumexp(out, dim=1, keepdim=True)
    flat = x.min(dim=1).values == 0  # all weights equal: the proposal is the target, no tail to fit
    k = torch.where(flat, -math.inf, k)
    dead = ~torch.isfinite(top[:, 0])  # no finite weight
    k = torch.where(dead, math.inf, k)
    out = torch.where(dead[:, None], math.nan, out)
    return out, k
