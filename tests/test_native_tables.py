"""The native log-log table kernel (funcae_cli/native/tables.c) against the torch code it replaces
(data/formulas.DiscTable.evaluate, itself checked against scipy's Bessel functions in tests/test_physics.py): the
same table to float32 rounding, inside it and beyond both of its ends (the float64 functions there), and NaN kept."""

from __future__ import annotations

import math

import pytest
import torch

from funcae_cli.data.formulas import DiscTable
from funcae_cli.native.kernels import kernels_or_none

pytestmark = pytest.mark.skipif(
    kernels_or_none() is None, reason="native kernels unavailable (no C compiler, or FUNCAE_NATIVE=0): torch code only"
)


def test_the_kernel_is_the_torch_table_to_float32_rounding() -> None:
    y = torch.cat([torch.logspace(-6, 5, 100_003, dtype=torch.float32), torch.tensor([math.nan, 1e-4, 1e3])])
    native = DiscTable.value(y)  # the kernel (float32 on the CPU)
    torch_code = DiscTable.evaluate(y, derivative=False)[0]
    inside = (y >= DiscTable.Y_MIN) & (y <= DiscTable.Y_MAX)
    # ln g rounded to float32 (|ln g| up to ~16 here: an ulp is ~1e-6 of g), then exp: a few ulp apart
    torch.testing.assert_close(native[inside], torch_code[inside], rtol=1e-5, atol=0)
    assert torch.equal(native[~inside & ~y.isnan()], torch_code[~inside & ~y.isnan()])  # both the float64 functions
    assert native[y.isnan()].isnan().all() and torch_code[y.isnan()].isnan().all()
    alone = DiscTable.value(y[5000:5001].clone())  # a point's value is its own, in any batch
    assert torch.equal(alone, native[5000:5001])
