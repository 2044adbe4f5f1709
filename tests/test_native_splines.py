"""The native rational-quadratic spline kernel (funcae_cli/native/rqs.c) against flow_sampling.Splines in float64
(itself checked against zuko's flows in tests/test_amortized.py): inverse and forward, a spline per target (the
context's) and per draw, zuko's 8 bins (the unrolled path) and another count, rows whose length is not a multiple
of the kernel's 16 lanes; values beyond the splines' bound and NaN passed through as zuko does; and the batched
sampler with the kernel against the same sampler without it."""

from __future__ import annotations

import math
import os
import shutil

import pytest
import torch

from funcae_cli.inversion.flow_sampling import FlowSampler, Splines, splines_at
from funcae_cli.native.kernels import kernels_or_none

pytestmark = pytest.mark.skipif(
    shutil.which(os.environ.get("CC") or "cc") is None or kernels_or_none() is None,
    reason="native kernels unavailable (no C compiler, or FUNCAE_NATIVE=0): flow_sampling uses Splines alone",
)
BOUND, SLOPE = 5.0, 1e-3
TOL = 5e-5  # float32 rounding through the spline: both float32 versions stay within ~1e-5 of float64 here


@pytest.mark.parametrize("bins", [8, 5])
@pytest.mark.parametrize("per_draw", [False, True], ids=["per-target", "per-draw"])
@pytest.mark.parametrize("forward", [False, True], ids=["inverse", "forward"])
def test_the_kernel_is_the_float64_spline_to_float32_rounding(bins: int, per_draw: bool, forward: bool) -> None:
    g = torch.Generator().manual_seed(bins + 2 * per_draw + 4 * forward)
    k, n, s = 2, 7, 37  # 37 draws: two full blocks of 16 and a tail of 5
    phi = 0.7 * torch.randn(3 * bins - 1, k, n, s if per_draw else 1, generator=g)
    y = 3 * torch.randn(k, n, s, generator=g)  # ~10% beyond the bound (the identity there)
    y[0, 0, :3] = torch.tensor([math.nan, BOUND, -BOUND - 1e-3])
    splines = Splines.of(phi.double(), BOUND, SLOPE)
    ref, ref_ladj = splines.forward(y.double()) if forward else splines.inverse(y.double())
    out, ladj = splines_at(phi, y, BOUND, SLOPE, forward, kernels_or_none())
    assert out.dtype == ladj.dtype == torch.float32
    torch.testing.assert_close(out.double(), ref, rtol=0, atol=TOL, equal_nan=True)
    torch.testing.assert_close(ladj.double(), ref_ladj.sum(0), rtol=0, atol=TOL, equal_nan=True)
    outside = ~(y.abs() < BOUND)  # NaN included: passed through, log-derivative 0
    assert torch.equal(out[outside].isnan(), y[outside].isnan())
    assert torch.equal(out[outside & ~y.isnan()], y[outside & ~y.isnan()])


def test_the_kernels_inverse_undoes_its_forward() -> None:
    g = torch.Generator().manual_seed(0)
    phi = 0.7 * torch.randn(23, 3, 5, 64, generator=g)
    x = 4 * torch.rand(3, 5, 64, generator=g) - 2
    y, ladj_f = splines_at(phi, x, BOUND, SLOPE, True, kernels_or_none())
    back, ladj_i = splines_at(phi, y, BOUND, SLOPE, False, kernels_or_none())
    torch.testing.assert_close(back, x, rtol=0, atol=2e-5)
    torch.testing.assert_close(ladj_i, ladj_f, rtol=0, atol=5e-5)  # both the forward's log-derivative at x


def test_the_sampler_with_the_kernel_matches_it_without() -> None:
    """A coupling NSF (the config's default) sampled and evaluated with the kernel and with Splines, float32, the
    same base draws: the same draws and densities to float32 rounding; and a target's draws bitwise the same alone
    and in a batch."""
    import zuko

    torch.manual_seed(0)
    flow = zuko.flows.NSF(4, 8, transforms=3, passes=2, hidden_features=(32, 32))
    with torch.no_grad():
        for p in flow.parameters():
            p += 0.1 * torch.randn_like(p)
    c, eps = torch.randn(6, 8), torch.randn(6, 300, 4)
    native, plain = FlowSampler(flow, 4), FlowSampler(flow, 4)
    plain.native = None
    assert native.native is not None
    (x, lq), (x0, lq0) = native.sample(c, eps), plain.sample(c, eps)
    torch.testing.assert_close(x, x0, rtol=0, atol=2e-4)
    torch.testing.assert_close(lq, lq0, rtol=0, atol=2e-3)
    torch.testing.assert_close(native.log_prob(c, x), plain.log_prob(c, x), rtol=0, atol=2e-3)
    alone, _ = native.sample(c[3:4], eps[3:4])
    assert torch.equal(alone[0], x[3])
