"""The rotation-curve family's fused chi^2 (funcae_cli/native/rotation.c, data/formulas.rotation_chi2) against
an independent float64 reference (benchmarks/observed.rotation_curve_np: numpy and scipy.special's Bessel
functions), and against the torch formula it stands in for in the samplers and the amortized check: padding
skipped, rows whose disc argument leaves the table computed by the torch code, a row's value its own in any batch."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from benchmarks.observed import rotation_curve_np
from funcae_cli.data.formulas import CHI2, rotation_chi2, rotation_curve
from funcae_cli.native import kernels as native

pytestmark = pytest.mark.skipif(
    native.kernels_or_none() is None, reason="native kernels unavailable (no C compiler, or FUNCAE_NATIVE=0)"
)

LOW = np.array([6.0, math.log10(0.2), 9.0, math.log10(2.0)])  # rotation_curve_observed.yaml's prior box, log10
HIGH = np.array([math.log10(5e11), math.log10(15.0), math.log10(5e13), math.log10(40.0)])


def _rows(k: int, m: int, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """k parameter rows in the prior box, each with m radii in 0.1-80 kpc, observed with 5% errors."""
    rng = np.random.default_rng(seed)
    params = 10 ** rng.uniform(LOW, HIGH, (k, 4))
    r = np.sort(10 ** rng.uniform(-1, math.log10(80), (k, m)), axis=1)
    true = np.stack([rotation_curve_np(r[i], *params[i]) for i in range(k)])
    yerr = 0.05 * true
    y = true + yerr * rng.standard_normal((k, m))
    return params, r, y, 1 / yerr


def _chi2(params: np.ndarray, r: np.ndarray, y: np.ndarray, w: np.ndarray) -> torch.Tensor:
    k, m = r.shape
    start, count = torch.arange(k) * m, torch.full((k,), m)
    f32 = lambda a: torch.from_numpy(np.ascontiguousarray(a, dtype=np.float32).reshape(-1))  # noqa: E731
    return rotation_chi2(f32(params).reshape(k, 4), start, count, f32(r), f32(y), f32(w))


def test_the_fused_chi2_is_the_float64_reference_to_float32_rounding() -> None:
    params, r, y, w = _rows(2000, 30, seed=1)
    reference = np.array([(((rotation_curve_np(r[i], *params[i]) - y[i]) * w[i]) ** 2).sum() for i in range(2000)])
    fused = _chi2(params, r, y, w).numpy()
    # measured: 1.1e-5 at most (the model curve within ~1e-6, the chi^2 of 5% errors amplifying it ~20x)
    np.testing.assert_allclose(fused, reference, rtol=5e-5)
    # the model curve itself: with y = 0 and w = 1 / v, each point adds 1
    v = np.stack([rotation_curve_np(r[i], *params[i]) for i in range(2000)])
    np.testing.assert_allclose(_chi2(params, r, 0 * y, 1 / v).numpy(), 30.0, rtol=3e-6)


def test_it_is_at_least_as_close_to_float64_as_the_torch_float32_code() -> None:
    params, r, y, w = _rows(2000, 30, seed=2)
    reference = np.array([(((rotation_curve_np(r[i], *params[i]) - y[i]) * w[i]) ** 2).sum() for i in range(2000)])
    f = rotation_curve(torch.from_numpy(r).float(), torch.from_numpy(params).float(), None).double().numpy()
    torch32 = (((f - y.astype(np.float32)) * w.astype(np.float32)) ** 2).sum(axis=1)
    fused = _chi2(params, r, y, w).numpy()
    worst = lambda a: np.max(np.abs(a - reference) / reference)  # noqa: E731
    assert worst(fused) <= worst(torch32)


def test_padding_is_skipped_and_a_row_is_its_own_in_any_batch() -> None:
    params, r, y, w = _rows(40, 20, seed=3)
    whole = _chi2(params, r, y, w)
    # the same rows padded to 32 points past 80 kpc (a disc argument beyond the table there), weight 0
    pad = np.concatenate([r, 80 + 300 * np.arange(1, 13)[None].repeat(40, 0)], axis=1)
    padded = _chi2(params, pad, np.pad(y, ((0, 0), (0, 12))), np.pad(w, ((0, 0), (0, 12))))
    assert torch.equal(padded, whole)
    assert torch.equal(_chi2(params[7:8], r[7:8], y[7:8], w[7:8]), whole[7:8])


def test_rows_off_the_table_come_from_the_torch_code() -> None:
    params, r, y, w = _rows(6, 25, seed=4)
    params[2, 1] = 0.01  # rd = 0.01 kpc: r / (2 rd) reaches 4,000, past the table's 1e3
    fused = _chi2(params, r, y, w)
    f = rotation_curve(torch.from_numpy(r[2:3]).float(), torch.from_numpy(params[2:3]).float(), None)
    expected = ((f.double() - torch.from_numpy(y[2])) * torch.from_numpy(w[2])).square().sum()
    assert torch.isfinite(fused).all()
    torch.testing.assert_close(fused[2], expected, rtol=1e-5, atol=0)


def test_other_dtypes_and_no_kernel_leave_it_to_the_formula(monkeypatch: pytest.MonkeyPatch) -> None:
    params, r, y, w = _rows(4, 10, seed=5)
    t = lambda a: torch.from_numpy(np.ascontiguousarray(a).reshape(-1))  # noqa: E731
    start, count = torch.arange(4) * 10, torch.full((4,), 10)
    assert rotation_chi2(t(params).reshape(4, 4), start, count, t(r), t(y), t(w)) is None  # float64: the formula's
    monkeypatch.setenv("FUNCAE_NATIVE", "0")
    native.reset()
    try:
        assert _chi2(params, r, y, w) is None
    finally:
        monkeypatch.delenv("FUNCAE_NATIVE")
        native.reset()
    assert CHI2["rotation_curve"] is rotation_chi2 and "normal" not in CHI2


def test_the_amortized_checks_likelihood_takes_it_padding_and_errors_included(monkeypatch: pytest.MonkeyPatch) -> None:
    """FormulaSpace.log_posterior (the amortized check's) through the kernel: its chi^2 that of the float64
    reference over each target's own points (a padded batch, per-point errors), the torch code's without it."""
    from funcae_cli.config import config_from_dict
    from funcae_cli.inversion.flow_spaces import FormulaSpace
    from funcae_cli.inversion.physics import Bounds
    from funcae_cli.inversion.prior import log_prior
    from funcae_cli.inversion.targets import Targets

    params = {k: {"dist": "loguniform", "low": float(10**a), "high": float(10**b)}
              for k, a, b in zip(("md", "rd", "mh", "c"), LOW, HIGH)}  # fmt: skip
    fcfg = config_from_dict({"family": {"name": "rotation_curve", "prior": "independent", "params": params},
                             "grid": {"kind": "logspace", "start": -1, "stop": 1.9, "num": 64}}).family  # fmt: skip
    space = FormulaSpace(fcfg, Bounds(torch.tensor(LOW), torch.tensor(HIGH), [True] * 4, "prior"), log_prior(fcfg))
    truth, r, y, w = _rows(5, 24, seed=6)
    counts = [24, 10, 17, 24, 12]
    mask = torch.arange(24)[None] < torch.tensor(counts)[:, None]
    batch = Targets(torch.from_numpy(y).float(), torch.from_numpy(r), torch.from_numpy(1 / w).float(), mask)
    rng = np.random.default_rng(7)
    u = torch.from_numpy(rng.uniform(LOW, HIGH, (5, 9, 4)))  # 9 draws per target, log10 of the parameters

    def reference(i: int, s: int) -> float:  # target i's own points only
        k = counts[i]
        return float((((rotation_curve_np(r[i, :k], *(10 ** u[i, s].numpy())) - y[i, :k]) * w[i, :k]) ** 2).sum())

    chi2 = torch.tensor([[reference(i, s) for s in range(9)] for i in range(5)], dtype=torch.float64)
    fused = space.log_posterior(batch, u)
    constant = (fused + 0.5 * chi2).median()  # the log prior: the same at every point of the box
    torch.testing.assert_close(-2 * (fused - constant), chi2, rtol=5e-5, atol=1e-3)
    monkeypatch.setenv("FUNCAE_NATIVE", "0")
    native.reset()
    try:
        torch_code = space.log_posterior(batch, u)
    finally:
        monkeypatch.delenv("FUNCAE_NATIVE")
        native.reset()
    torch.testing.assert_close(fused, torch_code, rtol=2e-3, atol=0)


def test_rows_not_needed_are_skipped_and_the_others_unchanged() -> None:
    """active: the samplers' walkers outside the prior (log prior -inf) are not computed, not even by the torch
    code where their disc argument leaves the table; the other rows' values are the same bits."""
    params, r, y, w = _rows(8, 20, seed=8)
    params[5, 1] = 0.01  # off the table: would take the torch code
    k, m = r.shape
    start, count = torch.arange(k) * m, torch.full((k,), m)
    f32 = lambda a: torch.from_numpy(np.ascontiguousarray(a, dtype=np.float32).reshape(-1))  # noqa: E731
    args = (f32(params).reshape(k, 4), start, count, f32(r), f32(y), f32(w))
    every = rotation_chi2(*args)
    active = torch.tensor([True, True, False, True, True, False, True, True])
    some = rotation_chi2(*args, active)
    assert torch.equal(some[active], every[active])
    assert some[~active].isnan().all() and torch.isfinite(every).all()
