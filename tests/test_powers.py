"""data/powers.py: 10 ** u and base ** e whose bits do not depend on the array's length, against numpy's float64
pow (an independent implementation) and, on the CPU the suite runs on, against themselves in every slice."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from funcae_cli.data.powers import exp10, power


def _slices_agree(f, x: torch.Tensor) -> int:
    """Elements whose value differs between the whole array and a short copy of a slice of it (lengths 1-20 at
    offsets 0-63: the vectorized kernels' tails)."""
    full, bad = f(x), 0
    for n in range(1, 21):
        for off in range(64):
            bad += int((f(x[off : off + n].clone()) != full[off : off + n]).sum())
    return bad


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_powers_are_the_same_in_any_slice(dtype: torch.dtype) -> None:
    gen = torch.Generator().manual_seed(0)
    u = (torch.rand(200, generator=gen, dtype=torch.float64) * 24 - 12).to(dtype)  # 1e-12 .. 1e12
    base = (torch.rand(200, generator=gen, dtype=torch.float64) * 1e6 + 1e-3).to(dtype)
    assert _slices_agree(exp10, u) == 0
    assert _slices_agree(lambda b: power(b, 2 / 3), base) == 0
    assert _slices_agree(lambda b: power(b, 1 / 3), base) == 0


def test_powers_match_numpy_pow() -> None:
    gen = torch.Generator().manual_seed(1)
    u = torch.rand(1000, generator=gen, dtype=torch.float64) * 30 - 15
    base = torch.rand(1000, generator=gen, dtype=torch.float64) * 1e12 + 1e-6
    np.testing.assert_allclose(exp10(u).numpy(), np.power(10.0, u.numpy()), rtol=2e-14, atol=0)
    np.testing.assert_allclose(power(base, 2 / 3).numpy(), np.power(base.numpy(), 2 / 3), rtol=2e-14, atol=0)
    np.testing.assert_allclose(exp10(u.float()).numpy(), np.power(10.0, u.float().numpy().astype(np.float64)),
                               rtol=3e-6, atol=0)  # fmt: skip
    assert float(power(torch.zeros(1, dtype=torch.float64), 2 / 3)) == 0.0
