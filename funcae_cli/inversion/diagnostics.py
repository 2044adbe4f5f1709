"""Convergence diagnostics of MCMC chains, batched over many targets (torch and numpy; nothing of funcae).

- `rank_rhat`: the rank-normalized split R-hat of Vehtari, Gelman, Simpson, Carpenter & Buerkner (2021), the
  larger of the bulk R-hat (split chains, ranks over all draws mapped to normal scores) and the tail R-hat (the
  same of |x - median|), as ArviZ's `rhat(method="rank")` computes it. Its chains must be independent: for an
  ensemble sampler, independent ensembles (`ensemble.py`'s groups), never the walkers of one ensemble.
- `integrated_time`: the integrated autocorrelation time tau of emcee (`emcee.autocorr.integrated_time`): each
  walker's normalized autocorrelation, averaged over walkers, summed up to Sokal's window (the first M >= c tau(M)).
- `split_rhat`: the classic split R-hat (Gelman et al. 2013) without rank normalization.

Shapes: chains (n targets, chains, draws, q parameters) -> (n, q).
"""

from __future__ import annotations

import functools

import numpy as np
import torch
from torch import Tensor

from funcae_cli.native import kernels as native

RHAT_MAX = 1.01  # Vehtari et al. (2021)'s threshold
TAU_FACTOR = 50  # emcee's rule: tau is reliable, and the chain long enough, when its length is >= 50 tau


def _rhat(chains: Tensor) -> Tensor:
    """Gelman-Rubin R-hat (n, q) of (n, c, s, q) chains as given (no split)."""
    c = chains.double()
    s = c.shape[2]
    within = c.var(dim=2).mean(dim=1)
    between = s * c.mean(dim=2).var(dim=1)
    return torch.sqrt((between / within.clamp_min(1e-300) + s - 1) / s)


def _split(chains: Tensor) -> Tensor:
    """(n, 2c, s // 2, q): each chain's first and last halves (the middle draw of an odd length dropped)."""
    half = chains.shape[2] // 2
    return torch.cat([chains[:, :, :half], chains[:, :, chains.shape[2] - half :]], dim=1)


@functools.lru_cache(maxsize=8)
def _score_table(m: int) -> np.ndarray:
    """The normal scores of every average rank m draws can have, (j / 2 + 1) for j = 0 .. 2 m - 2 (a run of equal
    values at 0-based places a..b has j = a + b), with Blom's offset as ArviZ's: ndtri((rank - 3/8) / (m + 1/4))."""
    rank = torch.arange(2 * m - 1, dtype=torch.float64) / 2 + 1
    return torch.special.ndtri((rank - 0.375) / (m + 0.25)).numpy()


def _scores(flat: np.ndarray, table: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Normal scores (rows, m) of the ranks of each row's values, ties given their average rank (a chain's rejected
    moves repeat its value): one sort, then each run of equal values' first and last place in it; and, from the
    same sort, each row's median (numpy's: the mean of the two middle values)."""
    m = flat.shape[1]
    where = np.argsort(flat, axis=1)
    ordered = np.take_along_axis(flat, where, axis=1)
    first = np.ones(ordered.shape, dtype=bool)  # a run of equal values starts here
    first[:, 1:] = ordered[:, 1:] != ordered[:, :-1]
    last = np.ones_like(first)  # ... ends here
    last[:, :-1] = first[:, 1:]
    place = np.arange(m)
    start = np.maximum.accumulate(np.where(first, place, 0), axis=1)
    end = np.minimum.accumulate(np.where(last, place, m - 1)[:, ::-1], axis=1)[:, ::-1]
    z = np.empty_like(flat, dtype=np.float64)
    np.put_along_axis(z, where, table[start + end], axis=1)
    return z, 0.5 * (ordered[:, (m - 1) // 2] + ordered[:, m // 2])


def _rank_scores(chains: Tensor) -> tuple[Tensor, Tensor]:
    """Normal scores (n, c, s, q) of the ranks over all draws of each (target, parameter) (bulk) and of the ranks of
    their distances from its median (folded): Vehtari et al.'s rank normalization, ranks exact. Float32 draws (the
    samplers' recorded chains) go to the native kernel where it builds (native/ranks.c: a radix sort, and the
    folded order by one merge instead of a second sort; 5-13x numpy's two argsorts on 51,200 draws per row, 2026-12-07);
    elsewhere numpy's vectorized argsort (~1.8x torch's sort). Both look up `_score_table`: the same bits."""
    n, c, s, q = chains.shape
    m = c * s
    table = _score_table(m)
    flat = chains.permute(0, 3, 1, 2).reshape(n * q, m)
    lib = native.kernels_or_none() if chains.dtype == torch.float32 and m < 2**31 else None
    bulk = fold = None
    if lib is not None:
        x = np.ascontiguousarray(flat.numpy())
        bulk, fold = np.empty((n * q, m)), np.empty((n * q, m))
        ptr = lambda a: a.ctypes.data  # noqa: E731
        if lib.fae_rank_scores(ptr(x), n * q, m, ptr(table), ptr(bulk), ptr(fold)) != 0:
            bulk = fold = None  # the kernel could not allocate its buffers: numpy's path
    if bulk is None:
        x = np.ascontiguousarray(flat.double().numpy())
        bulk, median = _scores(x, table)
        fold, _ = _scores(np.abs(x - median[:, None]), table)
    shape = lambda z: torch.from_numpy(z).reshape(n, q, c, s).permute(0, 2, 3, 1)  # noqa: E731
    return shape(bulk), shape(fold)


def split_rhat(chains: Tensor) -> Tensor:
    """Classic split R-hat (n, q) of (n, chains, draws, q)."""
    return _rhat(_split(chains))


def rank_rhat(chains: Tensor) -> Tensor:
    """Rank-normalized split R-hat (n, q) of (n, chains, draws, q): max(bulk, tail) as ArviZ's method="rank"."""
    bulk, folded = _rank_scores(_split(chains))
    return torch.maximum(_rhat(bulk), _rhat(folded))


FFT_BYTES = 1 << 23  # integrated_time's spectra per block of targets (8 MiB: the FFTs' working set stays in cache)


def integrated_time(chains: Tensor, c: float = 5.0) -> Tensor:
    """tau (n, q) of (n, walkers, steps, q): emcee's estimator (each walker's autocorrelation normalized, then
    averaged over walkers, summed up to Sokal's window c); at least 1. Computed in blocks of targets whose spectra
    fit FFT_BYTES (~5x faster than all at once on 100 targets x 64 walkers x 800 steps, 2026-12-07: memory, not
    arithmetic, bounded the FFTs), each target's the same numbers in any block."""
    n, w, steps, q = chains.shape
    size = 1 << (2 * steps - 1).bit_length()
    block = max(1, FFT_BYTES // (w * q * size * 16))
    return torch.cat([_integrated_time(chains[a : a + block], size, c) for a in range(0, n, block)])


def _integrated_time(chains: Tensor, size: int, c: float) -> Tensor:
    x = chains.double() - chains.double().mean(dim=2, keepdim=True)
    steps = x.shape[2]
    f = torch.fft.rfft(x, n=size, dim=2)
    acf = torch.fft.irfft(f * f.conj(), n=size, dim=2)[:, :, :steps]  # (n, W, steps, q)
    acf = (acf / acf[:, :, :1].clamp_min(1e-300)).mean(dim=1)  # each walker's normalized, then averaged
    taus = 2.0 * torch.cumsum(acf, dim=1) - 1.0  # tau(M) for every window M
    window = torch.arange(steps, dtype=torch.float64)[None, :, None]
    ok = window >= c * taus
    first = torch.where(ok.any(dim=1), ok.float().argmax(dim=1), steps - 1)  # (n, q)
    return taus.gather(1, first[:, None]).squeeze(1).clamp_min(1.0)


def effective_size(chains: Tensor, tau: Tensor | None = None) -> Tensor:
    """ESS (n, q) = walkers x steps / tau of (n, walkers, steps, q)."""
    tau = integrated_time(chains) if tau is None else tau
    return chains.shape[1] * chains.shape[2] / tau


def long_enough(steps: int, tau: Tensor) -> Tensor:
    """(n,) True where every parameter has steps >= TAU_FACTOR tau (tau (n, q))."""
    return (steps >= TAU_FACTOR * tau).all(dim=1)


def converged(steps: int, tau: Tensor, rhat: Tensor) -> Tensor:
    """(n,) True where every parameter has steps >= TAU_FACTOR tau and R-hat < RHAT_MAX (NaN counts as not)."""
    return long_enough(steps, tau) & (rhat < RHAT_MAX).all(dim=1)
