"""The pieces behind trusted parameters, each against an independent reference: the formulas' derivatives
(finite differences, autograd's gradcheck), the physics refit (scipy's least_squares, float64), the codes'
density (scipy's multivariate normal), goodness of fit (scipy.stats.chi2)."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch
from scipy import optimize, special, stats

from benchmarks.observed import rotation_curve_np, scipy_fit
from funcae_cli.config import load_config
from funcae_cli.data.formulas import FORMULAS, Disc, DiscTable
from funcae_cli.inversion.assess import assess, chi2_p_value
from funcae_cli.inversion.density import fit_code_density
from funcae_cli.inversion.physics import Observations, fit_physics, natural_bounds

from .conftest import CONFIGS


def test_disc_derivative_passes_gradcheck_and_forward_mode() -> None:
    y = torch.tensor([0.01, 0.3, 1.0, 4.0, 25.0, 200.0], dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda t: Disc.apply(t)[0], (y,))
    with torch.autograd.forward_ad.dual_level():
        dual = torch.autograd.forward_ad.make_dual(y.detach(), torch.ones(6, dtype=torch.float64))
        tangent = torch.autograd.forward_ad.unpack_dual(Disc.apply(dual)[0]).tangent
    h = 1e-6 * y.detach()
    fd = (Disc.apply(y.detach() + h)[0] - Disc.apply(y.detach() - h)[0]) / (2 * h)
    torch.testing.assert_close(tangent, fd, rtol=1e-6, atol=1e-12)


def test_the_float64_disc_table_and_its_derivative_match_scipy_bessel_functions() -> None:
    """The refit's float64 disc term and derivative (DiscTable through Disc) against scipy's scaled Bessel functions,
    inside the table (up to y = 100: beyond, scipy's own difference I0K0 - I1K1 cancels to ~1e-9) and beyond both
    of its ends (the Bessel functions themselves)."""
    y = torch.cat([torch.logspace(-4, 2, 200_001, dtype=torch.float64), torch.tensor([1e-6, 3e-5, 2e3, 1e4])])
    yy = y.numpy()
    i0, i1, k0, k1 = special.i0e(yy), special.i1e(yy), special.k0e(yy), special.k1e(yy)
    value, derivative = (t.numpy() for t in Disc.apply(y))
    rel = np.abs(value / (i0 * k0 - i1 * k1) - 1)
    assert rel.max() < 5e-11, f"worst relative error {rel.max():.2e} at y = {yy[rel.argmax()]:.4g}"
    rel = np.abs(derivative / (2 * (i1 * k0 - i0 * k1 + i1 * k1 / yy)) - 1)
    assert rel.max() < 5e-9, f"worst relative error of the derivative {rel.max():.2e} at y = {yy[rel.argmax()]:.4g}"


def test_the_float32_disc_table_matches_scipy_bessel_functions_in_float64() -> None:
    """The samplers' float32 disc term (DiscTable) against scipy's scaled Bessel functions in float64, at the same
    (float32-rounded) arguments, inside the table and beyond both of its ends (the float64 fallback)."""
    y = torch.logspace(-6, 5, 200_001, dtype=torch.float32)
    yy = y.double().numpy()
    ref = special.i0e(yy) * special.k0e(yy) - special.i1e(yy) * special.k1e(yy)
    rel = np.abs(DiscTable.value(y).double().numpy() / ref - 1)
    assert rel.max() < 1e-5, f"worst relative error {rel.max():.2e} at y = {yy[rel.argmax()]:.4g}"
    r = torch.tensor([[0.5, 3.0, 30.0]], dtype=torch.float32)  # the formula takes the table in float32 alone
    params = torch.tensor([[3e10, 2.5, 1e12, 9.0]])
    cfg = load_config(CONFIGS / "rotation_curve.yaml")
    f32 = FORMULAS["rotation_curve"](r, params.float(), cfg.family.options)
    f64 = FORMULAS["rotation_curve"](r.double(), params.double(), cfg.family.options)
    torch.testing.assert_close(f32.double(), f64, rtol=1e-5, atol=0)


@pytest.mark.parametrize("name", ["normal", "beta", "rotation_curve"])
def test_formulas_give_the_parameters_a_gradient(name: str) -> None:
    """Every parameter of every formula gets a (finite, correct) derivative: checked against central differences."""
    cfg = load_config(CONFIGS / {"normal": "normal.yaml", "beta": "beta_vae.yaml",
                                 "rotation_curve": "rotation_curve.yaml"}[name])  # fmt: skip
    params = {"normal": [[0.3, 1.2]], "beta": [[2.0, 3.5]], "rotation_curve": [[3e10, 2.5, 1e12, 9.0]]}[name]
    x = {"normal": torch.linspace(-3, 3, 9), "beta": torch.linspace(0.05, 0.95, 9),
         "rotation_curve": torch.logspace(-1, 1.5, 9)}[name].double()  # fmt: skip
    p = torch.tensor(params, dtype=torch.float64, requires_grad=True)
    f = FORMULAS[name]
    (grad,) = torch.autograd.grad(f(x, p, cfg.family.options).sum(), p)
    for j in range(p.shape[1]):
        h = torch.zeros_like(p)
        h[0, j] = 1e-6 * abs(params[0][j])
        fd = (f(x, p.detach() + h, cfg.family.options).sum() - f(x, p.detach() - h, cfg.family.options).sum()) / (
            2 * h[0, j]
        )
        assert float(grad[0, j]) == pytest.approx(float(fd), rel=1e-5), j


def test_the_rotation_formula_equals_the_scipy_reference_at_per_row_points() -> None:
    r = np.geomspace(0.1, 80, 40)
    p = np.array([[3e10, 2.5, 1e12, 9.0], [1e8, 0.5, 5e9, 4.0]])
    x = torch.as_tensor(np.stack([r, r * 0.9]))  # each row its own points
    got = FORMULAS["rotation_curve"](x, torch.as_tensor(p), None).numpy()
    for i in range(2):
        np.testing.assert_allclose(got[i], rotation_curve_np(r * (1 - 0.1 * i), *p[i]), rtol=1e-12)


def _trained_like(config: str, overrides: list[str], lo: list[float], hi: list[float]) -> SimpleNamespace:
    cfg = load_config(CONFIGS / config, overrides)
    return SimpleNamespace(family=cfg.family.family, cfg=cfg, data={"param_min": lo, "param_max": hi})


def test_the_physics_refit_matches_scipy_least_squares_on_rotation_curves() -> None:
    """20 noisy rotation curves, 8-60 points each, fitted all at once; scipy fits each alone (10 starts, trf)."""
    from benchmarks.observed import galaxies

    trained = _trained_like("rotation_curve_observed.yaml", [], [1e6, 0.2, 1e9, 2.0], [5e11, 15.0, 5e13, 40.0])
    bounds = natural_bounds(trained, "prior")
    items = galaxies(20, seed=3, low=bounds.low.numpy(), high=bounds.high.numpy())
    n, m = len(items), max(g.obs.x.size for g in items)
    x, y, e = np.ones((n, m)), np.zeros((n, m)), np.ones((n, m))
    mask = np.zeros((n, m), dtype=bool)
    for i, g in enumerate(items):
        k = g.obs.x.size
        x[i, :k], y[i, :k], e[i, :k], mask[i, :k] = g.obs.x, g.obs.y, g.obs.yerr, True
    obs = Observations.of(*(torch.as_tensor(a) for a in (x, y, e, mask)), torch.device("cpu"))
    estimate = torch.tensor([1e9, 2.0, 1e11, 10.0], dtype=torch.float64).expand(n, 4)  # an uninformed start
    fit = fit_physics(trained, obs, estimate, bounds, starts=6, max_iter=80)
    reference = np.array([scipy_fit(g.obs, bounds.low.numpy(), bounds.high.numpy())[1] for g in items])
    ratio = fit.objective / reference
    assert np.mean(ratio <= 1.05) >= 0.9, ratio
    assert np.median(ratio) < 1.01
    for i in range(n):  # the reported chi^2 is the formula's at the reported parameters (scipy's implementation)
        model = rotation_curve_np(items[i].obs.x, *fit.params[i])
        assert fit.objective[i] == pytest.approx(np.sum(((model - items[i].obs.y) / items[i].obs.yerr) ** 2), 1e-9)


def test_the_physics_refit_recovers_normal_parameters_and_respects_fixed_ones() -> None:
    trained = _trained_like("normal.yaml", ["family.params.sigma=1.3"], [-3.0, 1.3], [3.0, 1.3])
    bounds = natural_bounds(trained, "prior")
    assert bounds.free.tolist() == [True, False]  # the prior fixes sigma: it is not fitted
    x = torch.linspace(-4, 4, 50, dtype=torch.float64)
    truth = torch.tensor([[0.7, 1.3], [-1.9, 1.3]], dtype=torch.float64)
    y = FORMULAS["normal"](x, truth, None)
    obs = Observations.of(x, y, None, None, torch.device("cpu"))
    fit = fit_physics(trained, obs, torch.tensor([[0.0, 1.3], [0.0, 1.3]], dtype=torch.float64), bounds)
    np.testing.assert_allclose(fit.params, truth.numpy(), atol=1e-7)
    assert fit.objective.max() < 1e-20 and (fit.on_bound == 0).all()


def test_a_fit_pulled_beyond_the_prior_ends_on_the_bound_and_says_so() -> None:
    """Data of mu = 4.5 with the prior's mu in [-3, 3]: the fit stops at 3 (scipy's bounded fit too), flagged +1."""
    trained = _trained_like("normal.yaml", [], [-3.0, 0.5], [3.0, 3.0])
    bounds = natural_bounds(trained, "prior")
    x = torch.linspace(-5, 5, 80, dtype=torch.float64)
    y = FORMULAS["normal"](x, torch.tensor([[4.5, 1.0]], dtype=torch.float64), None)
    yerr = torch.full_like(y, 0.005)
    obs = Observations.of(x, y, yerr, None, torch.device("cpu"))
    fit = fit_physics(trained, obs, torch.tensor([[0.0, 1.0]], dtype=torch.float64), bounds)
    ref = optimize.least_squares(
        lambda p: (stats.norm.pdf(x.numpy(), p[0], p[1]) - y[0].numpy()) / 0.005, [0.0, 1.0],
        bounds=([-3.0, 0.5], [3.0, 3.0]),
    )  # fmt: skip
    assert fit.params[0, 0] == pytest.approx(3.0, abs=1e-9) and fit.on_bound[0].tolist() == [1, 0]
    assert fit.objective[0] <= np.sum(ref.fun**2) * (1 + 1e-6)


def test_the_code_density_of_gaussian_codes_is_the_gaussian() -> None:
    g = torch.Generator().manual_seed(0)
    a = torch.tensor([[1.0, 0.0, 0.0], [0.6, 0.4, 0.0], [-0.2, 0.3, 0.5]], dtype=torch.float64)
    z = torch.randn(12000, 3, generator=g, dtype=torch.float64) @ a.T + torch.tensor([1.0, -2.0, 0.5])
    d = fit_code_density(z[:10000], z[10000:])
    assert d.components == 1
    cov = (d.chol[0] @ d.chol[0].T).numpy()
    np.testing.assert_allclose(d.means[0].numpy(), [1.0, -2.0, 0.5], atol=0.05)  # EM on 5,000 codes:
    np.testing.assert_allclose(cov, (a @ a.T).numpy(), atol=0.05)  # statistical error ~1/sqrt(5000)
    query = z[10000:10200]
    ref = stats.multivariate_normal(mean=d.means[0].numpy(), cov=cov)  # the density of what was fitted
    np.testing.assert_allclose(d.log_prob(query).numpy(), ref.logpdf(query.numpy()), rtol=1e-10)
    far = torch.tensor([[9.0, 9.0, 9.0]], dtype=torch.float64)
    assert float(d.log_prob(far)) < d.off_manifold_below < float(d.log_prob(torch.tensor([[1.0, -2.0, 0.5]])))
    pct = d.percentile(d.log_prob(query))
    assert 0.3 < float(pct.mean()) < 0.7  # held-out codes sit in the middle of the training codes' densities


def test_a_mixture_is_chosen_for_clustered_codes() -> None:
    g = torch.Generator().manual_seed(1)
    centres = torch.tensor([[0.0, 0.0], [4.0, 0.0], [0.0, 4.0]], dtype=torch.float64)
    z = (centres[torch.randint(0, 3, (9000,), generator=g)] + 0.3 * torch.randn(9000, 2, generator=g)).double()
    d = fit_code_density(z[:8000], z[8000:])
    assert d.components >= 3
    assert float(d.log_prob(torch.tensor([[2.0, 2.0]], dtype=torch.float64))) < d.off_manifold_below


def test_p_values_equal_scipys_and_mismatch_needs_both_conditions() -> None:
    chi2 = np.array([3.5, 40.0, 12.0, 200.0, 5.0])
    dof = np.array([1, 10, 2, 50, 0])
    np.testing.assert_allclose(chi2_p_value(chi2, dof)[:4], stats.chi2.sf(chi2[:4], dof[:4]), rtol=1e-10)
    assert np.isnan(chi2_p_value(chi2, dof)[4])
    a = assess(["a", "b", "c", "d", "e"], chi2, dof, None, [], None, None)
    # a: reduced 3.5 but p 0.06 (1 dof): chance; b: 4.0, p 2e-5; c: 6.0, p 0.0025 (> 0.001); d: 4.0, p ~ 0
    assert [f for f in a.flags] == [[], ["model_mismatch"], [], ["model_mismatch"], []]
    assert len(a.warnings) == 1 and "b (reduced chi^2 4)" in a.warnings[0] and "d (" in a.warnings[0]
