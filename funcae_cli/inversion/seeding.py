"""Per-target randomness: a target's random draws depend on the run's seed and the target itself, never on the
batch it is inverted in or its position there.

Identity. A target's seed is a 64-bit hash of the run's seed and its DATA: every real point's (position, x, y,
yerr), as float64 bits (padding and the batch's width play no part). Its name is not hashed, by choice: names
are often positional ("target 3" for arrays) or cosmetic, and renaming an object must not change its answer;
two targets with identical points therefore draw identical starts (and reach identical answers).

Draws. torch has no per-row generators, so draws are counter-based (as Philox and SplitMix64 are): the draw
number c of stream s for a target with seed k is splitmix64(k + golden * (s * 2^32 + c)), a bijective 64-bit
mixer, in int64 torch ops (wrapping multiplication and addition, logical shifts by masking). The 53 high bits
give a uniform in [0, 1); Box-Muller gives normals. A (n, k) block is one tensor expression: row i from seed_i.
Streams keep separate uses (latent starts, physics starts, walkers, moves) independent.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor

from funcae_cli.native import kernels as native

GOLDEN = -7046029254386353131  # 0x9E3779B97F4A7C15 as int64: SplitMix64's increment
MIX1 = -4658895280553007687  # 0xBF58476D1CE4E5B9
MIX2 = -7723592293110705685  # 0x94D049BB133111EB
# Independent uses of a target's seed. The posteriors' layout: "walkers" the MCMC starts (normals, then the
# uniforms that put a walker outside the box back in it), "moves" and "kernel" the ensemble's uniforms and normals
# (ensemble.py documents its counters), "laplace" Laplace's Gaussian draws, "resample" the importance resample,
# "modes" the modes' importance draws and their mixture's resample (modes.py).
# "amortized" the base normals of the amortized posterior's flow (flow_sampling.py).
# "amortized_t" the Student t draws of the amortized check's second look (amortized.py), "amortized_adapted" the
# normals of its adapted rounds (amortized._adapted_look: each round's from where the last one's end).
# "blocks" (per ensemble) whether each block of mcmc's steps uses the independence proposal (ensemble._Proposing).
STREAMS = {"latent": 1, "physics": 2, "walkers": 3, "moves": 4, "kernel": 5, "laplace": 6, "resample": 7, "modes": 8,
           "amortized": 9, "amortized_t": 10, "blocks": 11, "amortized_moments": 12,
           "amortized_adapted": 13}  # fmt: skip


def _i64(v: int) -> int:
    """A Python integer wrapped to int64's range (two's complement)."""
    return (v + 2**63) % 2**64 - 2**63


def _shr(x: Tensor, k: int) -> Tensor:
    """Logical right shift of int64 bits (torch's >> is arithmetic)."""
    return (x >> k) & ((1 << (64 - k)) - 1)


def mix64(x: Tensor) -> Tensor:
    """SplitMix64's finalizer: a bijection of 64-bit integers (int64 tensors, wrapping arithmetic)."""
    x = (x ^ _shr(x, 30)) * MIX1
    x = (x ^ _shr(x, 27)) * MIX2
    return x ^ _shr(x, 31)


def _bits(x: Tensor) -> Tensor:
    """float64 values -> their int64 bit patterns (-0.0 read as 0.0, so equal values hash alike)."""
    return (x.double() + 0.0).contiguous().view(torch.int64)


def seeds_of_points(seed: int, target: Tensor, n: int, columns: list[Tensor]) -> Tensor:
    """(n,) int64 seeds of n targets from their points, given as flat arrays: target (N,) the target of each
    point (points of a target in order), columns: (N,) float values of each point (x, y, yerr...)."""
    target = target.long().cpu()
    counts = torch.zeros(n, dtype=torch.int64).index_add_(0, target, torch.ones_like(target))
    first = torch.cumsum(counts, 0) - counts
    position = torch.arange(target.shape[0]) - first[target]  # the point's ordinal within its target
    h = mix64(position * GOLDEN + 1)
    for j, col in enumerate(columns):
        h = mix64(h ^ mix64(_bits(col.cpu()) + _i64((j + 1) * GOLDEN)))
    per_target = torch.zeros(n, dtype=torch.int64).index_add_(0, target, h)  # order-free wrapping sum
    return mix64(mix64(per_target ^ mix64(counts)) + mix64(torch.tensor(int(seed), dtype=torch.int64)))


def seeds_of_curves(seed: int, y: Tensor, x: Tensor | None, yerr: Tensor | None, mask: Tensor | None) -> Tensor:
    """(n,) seeds of padded curves (n, m): y, x (n, m) or (m,) or None (a shared grid: not hashed), yerr or None,
    mask (True on real points) or None."""
    n, m = y.shape
    keep = torch.ones(n, m, dtype=torch.bool) if mask is None else mask.cpu().bool()
    target = torch.arange(n)[:, None].expand(n, m)[keep]
    cols = [y.cpu().double()[keep]]
    if x is not None:
        cols.append(x.cpu().double().expand(n, m)[keep])
    if yerr is not None:
        cols.append(yerr.cpu().double()[keep])
    return seeds_of_points(seed, target, n, cols)


def child(seeds: Tensor, index: Tensor | int) -> Tensor:
    """Seeds of independent sub-streams of each seed (an ensemble of a target's walkers: (seed, group)):
    mix64 of the seed and the index's own mix, so children of one seed and of neighbouring seeds are unrelated."""
    index = torch.as_tensor(index, dtype=torch.int64)
    return mix64(seeds.cpu() ^ mix64(index * GOLDEN + _i64(0x5851F42D4C957F2D)))


def _counters(seeds: Tensor, stream: str, shape: tuple[int, ...], offset: int) -> Tensor:
    """(n, *shape) int64 mixed states: draw c (row-major over shape, from `offset`) of stream `stream`."""
    k = math.prod(shape)
    c = torch.arange(offset, offset + k, dtype=torch.int64) + (STREAMS[stream] << 40)
    return mix64(seeds.cpu()[:, None] + c[None, :] * GOLDEN).reshape(seeds.shape[0], *shape)


def uniform(seeds: Tensor, stream: str, shape: tuple[int, ...], offset: int = 0) -> Tensor:
    """(n, *shape) float64 uniforms in [0, 1), row i from seeds[i] alone: in one pass of the native kernel where it
    is built (native/counters.c, the same bits; mcmc draws its moves' numbers this way), else in torch."""
    lib = native.kernels_or_none()
    if lib is None:
        return _shr(_counters(seeds, stream, shape, offset), 11).double() * 2.0**-53
    s = seeds.cpu().long().contiguous()
    out = torch.empty(s.shape[0], math.prod(shape), dtype=torch.float64)
    lib.fae_uniform(s.data_ptr(), s.shape[0], out.shape[1], _i64(offset + (STREAMS[stream] << 40)), out.data_ptr())
    return out.reshape(s.shape[0], *shape)


def normal(seeds: Tensor, stream: str, shape: tuple[int, ...], offset: int = 0) -> Tensor:
    """(n, *shape) float64 standard normals (Box-Muller on two uniforms per draw), row i from seeds[i] alone."""
    k = math.prod(shape)
    u = uniform(seeds, stream, (2, k), 2 * offset)
    radius = torch.sqrt(-2.0 * torch.log1p(-u[:, 0]))  # 1 - u in (0, 1]: finite
    return (radius * torch.cos(2 * math.pi * u[:, 1])).reshape(seeds.shape[0], *shape)


def paired_normal(seeds: Tensor, stream: str, shape: tuple[int, ...], offset: int = 0) -> Tensor:
    """(n, *shape) float64 standard normals, draw c (row-major, from `offset`) from uniforms 2c and 2c + 1 of the
    stream (Box-Muller): unlike `normal`, a draw's counters do not depend on how many draws the call makes, so a
    block drawn at once equals the same block drawn piece by piece."""
    k = math.prod(shape)
    u = uniform(seeds, stream, (k, 2), 2 * offset)
    radius = torch.sqrt(-2.0 * torch.log1p(-u[:, :, 0]))
    return (radius * torch.cos(2 * math.pi * u[:, :, 1])).reshape(seeds.shape[0], *shape)


def integers(seeds: Tensor, stream: str, high: int, shape: tuple[int, ...], offset: int = 0) -> Tensor:
    """(n, *shape) int64 in [0, high), row i from seeds[i] alone."""
    return (uniform(seeds, stream, shape, offset) * high).long().clamp_max(high - 1)


def permutations(seeds: Tensor, stream: str, k: int, p: int, offset: int = 0) -> Tensor:
    """(n, k, p): for every row and every column j, a permutation of range(k) (argsort of uniform keys)."""
    return uniform(seeds, stream, (k, p), offset).argsort(dim=1)


# --- batch-invariant arithmetic -------------------------------------------------------------------

# CPU BLAS takes other kernels for small row counts, whose sums round differently: 1-2 rows (matrix-vector) on every
# CPU seen; 5-7 and 9-11 rows on an AMD EPYC with AVX-512 (torch 2.13), where 8 and 12 to 400 agree. 16: above both.
MIN_ROWS = 16


def invariant_rows(fn: Callable[[Tensor], Tensor], x: Tensor) -> Tensor:
    """fn(x) for a row-wise network fn, evaluated on at least MIN_ROWS rows (zero rows appended, then dropped),
    so that a row's value does not depend on how many rows share the call."""
    k = x.shape[0]
    if k >= MIN_ROWS:
        return fn(x)
    return fn(torch.cat([x, x.new_zeros(MIN_ROWS - k, *x.shape[1:])]))[:k]


def row_sumsq(r: Tensor) -> Tensor:
    """(k,) sum of squares of each row of r (k, m), accumulated in float64 (squares of float32 are exact there):
    the padding's width changes the summation order of a vectorized float32 sum, not this one's rounded result."""
    return r.double().square().sum(dim=1).to(r.dtype)


def linear_rows(x: Tensor, weight: Tensor, bias: Tensor | None = None) -> Tensor:
    """x (..., i) @ weight (o, i).T + bias in float64, rounded to x's dtype: BLAS picks its kernel (and so its
    summation order) by the number of rows, even past MIN_ROWS (a float32 product of 4 rows and of 12 differ in
    the last bit), while float64's differences (~1e-16) vanish in the rounding to float32 (but for a value within
    1e-16 of a rounding boundary: ~1e-9 of them). For the small per-target products of a batched sampler."""
    out = x.double() @ weight.double().T
    return (out if bias is None else out + bias.double()).to(x.dtype)


def linear_layer(m: torch.nn.Module) -> tuple[Tensor, Tensor | None] | None:
    """(weight, bias) of a linear layer: torch's (masked ones: weight * mask), or zuko's own `Linear` (zuko 1.6's
    element-wise flows: not a torch Linear; y = x W^T + b with a 2-D W); None for any other module."""
    if isinstance(m, torch.nn.Linear):
        return (m.weight * m.mask if hasattr(m, "mask") else m.weight), m.bias
    if type(m).__name__ == "Linear" and type(m).__module__.startswith("zuko") and m.weight.dim() == 2:
        return m.weight, m.bias
    return None


def mlp_rows(net: torch.nn.Sequential, x: Tensor) -> Tensor:
    """A sequential network of linear layers (masked ones and zuko's included: linear_layer) and element-wise
    activations on x (..., i), each linear layer by `linear_rows`."""
    for m in net:
        layer = linear_layer(m)
        x = m(x) if layer is None else linear_rows(x, *layer)
    return x
