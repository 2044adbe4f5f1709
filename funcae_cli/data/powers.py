"""Powers whose value does not depend on how long the tensor is.

torch.pow with a non-integer exponent (and a scalar base: `10.0 ** u`) computes an array in blocks of 16 elements
with one vectorized kernel and the shorter tail with another, whose last bits differ: on an AMD EPYC with AVX-512
(torch 2.13) about 1% of float64 and 2-30% of float32 elements, so a target's parameters would change in the last
bits with the number of targets sharing its array, and its chain and intervals after them (at ~1e-7). exp and log
give every element the same bits wherever it sits (tests/test_powers.py checks both on the CPU it runs on). Hence
these, wherever a value a target reports goes through a power.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

LN10 = math.log(10.0)


def exp10(u: Tensor) -> Tensor:
    """10 ** u, elementwise, the same bits in any batch; within |u| ln 10 rounding units of pow (float64: 1e-14
    relative at |u| = 15; float32: ~2e-6)."""
    return torch.exp(u * LN10)


def power(base: Tensor, exponent: float) -> Tensor:
    """base ** exponent for base > 0, elementwise, the same bits in any batch."""
    return torch.exp(exponent * torch.log(base))
