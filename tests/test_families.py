"""Function families against independent float64 numpy/scipy references.

Every expected value here is computed by scipy or by a numpy transcription of the notebook
formulas written in this file, never by funcae itself.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import stats
from scipy.special import i0, i0e, i1, i1e, k0, k0e, k1, k1e

from funcae_cli.config import config_from_dict
from funcae_cli.config.families import FAMILIES, Scatter
from funcae_cli.data.dataset import evaluate
from funcae_cli.data.formulas import scaling_relations
from funcae_cli.data.grids import make_grid, sample_params
from funcae_cli.errors import ConfigError

RTOL = 1e-5  # float32 curves against float64 references


def _curves(family: str, params: np.ndarray, grid: np.ndarray | None = None, **family_options) -> np.ndarray:
    """funcae's float32 curves for `params` (n, n_params) on `grid` (default: the family's grid)."""
    cfg = config_from_dict({"family": {"name": family, **family_options}})
    g = make_grid(cfg.grid) if grid is None else torch.as_tensor(grid, dtype=torch.float64)
    out = evaluate(FAMILIES[family], g, torch.as_tensor(params, dtype=torch.float64), cfg.family.options)
    assert out.dtype == torch.float32
    assert tuple(out.shape) == (len(params), len(g))
    return out.numpy()


# --- registry and defaults (values from the issue text) ----------------------------------------


def test_registry_holds_the_three_families_with_their_parameters():
    assert {k: FAMILIES[k].param_names for k in ("normal", "beta", "rotation_curve")} == {
        "normal": ["mu", "sigma"],
        "beta": ["alpha", "beta"],
        "rotation_curve": ["md", "rd", "mh", "c"],
    }


@pytest.mark.parametrize(
    "family, expected",
    [
        ("normal", np.linspace(-5, 5, 1000)),
        ("beta", np.linspace(0.01, 0.99, 100)),
        ("rotation_curve", np.logspace(-1, np.log10(50), 50)),
    ],
)
def test_default_grid_matches_the_notebooks(family, expected):
    grid = make_grid(config_from_dict({"family": family}).grid)
    assert grid.dtype == torch.float64
    np.testing.assert_allclose(grid.numpy(), expected, rtol=1e-12)


@pytest.mark.parametrize(
    "family, param, dist, low, high",
    [
        ("normal", "mu", "uniform", -3.0, 3.0),
        ("normal", "sigma", "uniform", 0.5, 3.0),
        ("beta", "alpha", "uniform", 0.0, 5.0),
        ("beta", "beta", "uniform", 0.0, 5.0),
        ("rotation_curve", "md", "loguniform", 1e9, 1e12),
    ],
)
def test_default_priors_match_the_issue(family, param, dist, low, high):
    spec = config_from_dict({"family": family}).family.params[param]
    assert (spec.dist, spec.low, spec.high) == (dist, low, high)


def test_rotation_curve_default_prior_is_the_scaling_relations_with_notebook_scatter():
    options = config_from_dict({"family": "rotation_curve"}).family.options
    assert options.prior == "scaling_relations"
    assert (options.scatter.rd, options.scatter.mh, options.scatter.c) == (0.4, 0.25, 0.11)


@pytest.mark.parametrize(
    "family, param",
    [("normal", "sigma"), ("beta", "alpha"), ("beta", "beta")]
    + [("rotation_curve", p) for p in ("md", "rd", "mh", "c")],
)
@pytest.mark.parametrize("value", [0.0, -1.0])
def test_positive_parameters_reject_values_outside_their_domain(family, param, value):
    raw = {"family": {"name": family, "params": {param: {"dist": "fixed", "value": value}}}}
    if family == "rotation_curve":
        raw["family"]["prior"] = "independent"
    with pytest.raises(ConfigError) as e:
        config_from_dict(raw)
    assert f"family.params.{param}" in str(e.value)


# --- normal -------------------------------------------------------------------------------------

NORMAL_PARAMS = np.array([[mu, s] for mu in np.linspace(-1, 1, 5) for s in (0.5, 0.6)])


def test_normal_integrates_to_one_where_the_grid_covers_the_mass():
    # every (mu, sigma) here keeps > 6 sigma of grid on each side: the missing mass is < 2e-9
    grid = np.linspace(-5, 5, 1000)
    assert ((grid[0] < NORMAL_PARAMS[:, 0] - 6 * NORMAL_PARAMS[:, 1]).all()) and (
        grid[-1] > NORMAL_PARAMS[:, 0] + 6 * NORMAL_PARAMS[:, 1]
    ).all()
    y = _curves("normal", NORMAL_PARAMS).astype(np.float64)
    np.testing.assert_allclose(np.trapezoid(y, grid, axis=1), 1.0, atol=1e-6)


def test_normal_equals_scipy_pdf():
    rng = np.random.default_rng(1)
    params = np.column_stack([rng.uniform(-3, 3, 100), rng.uniform(0.5, 3, 100)])
    params = np.vstack([params, NORMAL_PARAMS, [[-3.0, 0.5], [3.0, 3.0]]])
    grid = np.linspace(-5, 5, 1000)
    expected = stats.norm.pdf(grid[None, :], loc=params[:, :1], scale=params[:, 1:])
    np.testing.assert_allclose(_curves("normal", params), expected, rtol=RTOL, atol=1e-37)


# --- beta ---------------------------------------------------------------------------------------

BETA_EDGES = np.array([[a, b] for a in (1e-3, 0.5, 1.0, 2.2155, 4.999) for b in (1e-3, 0.5, 1.0, 2.5044, 4.999)])


def _beta_params() -> np.ndarray:
    rng = np.random.default_rng(2)
    return np.vstack([rng.uniform(0, 5, (200, 2)), BETA_EDGES])


def test_beta_log_pdf_equals_scipy_logpdf():
    params, grid = _beta_params(), np.linspace(0.01, 0.99, 100)
    expected = stats.beta.logpdf(grid[None, :], params[:, :1], params[:, 1:])
    got = _curves("beta", params)  # default output: log_pdf, as in notebook 001
    np.testing.assert_allclose(got, expected, rtol=RTOL, atol=1e-5)


def test_beta_pdf_output_equals_scipy_pdf():
    params, grid = _beta_params(), np.linspace(0.01, 0.99, 100)
    expected = stats.beta.pdf(grid[None, :], params[:, :1], params[:, 1:])
    np.testing.assert_allclose(_curves("beta", params, output="pdf"), expected, rtol=RTOL, atol=1e-37)


# --- rotation curve: a float64 transcription of notebook 004's class curveMod ---------------------

G, H, DC = 4.301e-9, 70.0, 200.0  # curveMod's constants
RADII = np.logspace(-1, np.log10(50), 50)  # curveMod's default `rad`, kpc


def _fc(x):
    return np.log(1 + x) - x / (1 + x)


def _vvir(mh):
    return np.sqrt((DC * H**2 / 2) ** (1.0 / 3.0) * (G * mh) ** (2.0 / 3.0))


def _rvir(mh):
    return 1e3 * (mh / (0.5 * DC * H**2 / G)) ** (1.0 / 3.0)


def _vhalo(r, mh, cc):
    rv = _rvir(mh)
    return np.sqrt(_vvir(mh) ** 2 * rv / r * _fc(cc * r / rv) / _fc(cc))


def _vdisc(r, md, rd, scaled: bool = False):
    # notebook: i0(y) k0(y) - i1(y) k1(y); the scaled variant is the same product (e^y e^-y = 1)
    y = r / 2.0 / rd
    bessel = i0e(y) * k0e(y) - i1e(y) * k1e(y) if scaled else i0(y) * k0(y) - i1(y) * k1(y)
    return np.sqrt(2 * 4.301e-6 * md / rd * y**2 * bessel)


def reference_rotation_curve(params: np.ndarray, r: np.ndarray = RADII, scaled: bool = False) -> np.ndarray:
    md, rd, mh, cc = (params[:, i : i + 1] for i in range(4))
    with np.errstate(all="raise"):  # the reference itself must not overflow silently
        return np.sqrt(_vdisc(r[None, :], md, rd, scaled) ** 2 + _vhalo(r[None, :], mh, cc) ** 2)


def reference_relations(md: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Notebook 004's getRd_fromMd, getMh_fromMd and c(Mh) without scatter."""
    rd = 10 ** ((np.log10(md) - 10.7) * 0.3 + 0.5)
    mh = 10 ** ((np.log10(md) - 10.7) * 0.75 + 12.0)
    return rd, mh, _concentration(mh)


def _concentration(mh):
    return 10.0 ** (0.905 - 0.101 * (np.log10(mh * H / 100.0) - 12))


def _extreme_rotation_params() -> np.ndarray:
    rows = []
    for md in (1e9, 1e12):  # both ends of the disc-mass prior
        rd_rel, mh_rel, _ = reference_relations(np.array(md))
        for rd in (0.05, float(rd_rel), 30.0):  # rd = 0.05 kpc: y = r / (2 rd) reaches 500 at r = 50 kpc
            for mh in (mh_rel / 10, mh_rel, mh_rel * 10):  # the relation's halo mass, +-1 dex
                for cc in (float(_concentration(mh)), 3.0, 30.0):
                    rows.append([md, rd, mh, cc])
    return np.array(rows)


def test_rotation_curve_equals_the_notebook_formulas_at_the_extremes():
    params = _extreme_rotation_params()
    assert params[:, 1].min() == 0.05 and RADII[-1] == pytest.approx(50.0)
    expected = reference_rotation_curve(params)
    assert np.isfinite(expected).all()
    got = _curves("rotation_curve", params, prior="independent")
    assert np.isfinite(got).all()
    np.testing.assert_allclose(got, expected, rtol=RTOL)


def test_rotation_curve_equals_the_notebook_formulas_on_prior_samples():
    rng = np.random.default_rng(4)
    md = 10 ** rng.uniform(9, 12, 500)
    rd, mh, _ = reference_relations(md)
    rd = rd * 10 ** rng.normal(0, 0.4, 500)
    mh = mh * 10 ** rng.normal(0, 0.25, 500)
    cc = _concentration(mh) * 10 ** rng.normal(0, 0.11, 500)
    params = np.column_stack([md, np.maximum(rd, 0.05), mh, cc])
    got = _curves("rotation_curve", params, prior="independent")
    np.testing.assert_allclose(got, reference_rotation_curve(params), rtol=RTOL)


@pytest.mark.parametrize("rd", [0.02, 0.01, 1e-3])
def test_rotation_curve_stays_finite_and_exact_below_rd_0_05(rd):
    # y up to 25,000: unscaled I0(y) overflows float64 at y ~ 713; the scaled product does not
    params = np.array([[1e9, rd, 1e10, 10.0], [1e12, rd, 1e13, 5.0]])
    got = _curves("rotation_curve", params, prior="independent")
    assert np.isfinite(got).all()
    np.testing.assert_allclose(got, reference_rotation_curve(params, scaled=True), rtol=RTOL)


def test_rotation_curve_default_prior_curves_are_all_finite():
    cfg = config_from_dict({"family": "rotation_curve"})
    params = sample_params(cfg.family, 20_000, torch.Generator().manual_seed(0))
    curves = evaluate(FAMILIES["rotation_curve"], make_grid(cfg.grid), params, cfg.family.options)
    assert bool(torch.isfinite(curves).all())
    assert bool((curves > 0).all())


# --- scaling relations -------------------------------------------------------------------------


def test_scaling_relations_with_zero_scatter_are_the_exact_relations():
    md = np.logspace(9, 12, 31)
    got = scaling_relations(torch.tensor(md), Scatter(rd=0, mh=0, c=0), torch.Generator().manual_seed(0)).numpy()
    assert got.shape == (31, 4)
    rd, mh, cc = reference_relations(md)
    np.testing.assert_allclose(got, np.column_stack([md, rd, mh, cc]), rtol=1e-12)


def test_scaling_prior_from_config_with_scatter_0_gives_the_exact_relations():
    raw = {"family": {"name": "rotation_curve", "scatter": {"rd": 0, "mh": 0, "c": 0}}}
    cfg = config_from_dict(raw)
    p = sample_params(cfg.family, 2000, torch.Generator().manual_seed(3)).numpy()
    assert p.min(axis=0)[0] >= 1e9 and p.max(axis=0)[0] <= 1e12
    rd, mh, cc = reference_relations(p[:, 0])
    np.testing.assert_allclose(p[:, 1:], np.column_stack([rd, mh, cc]), rtol=1e-12)


def test_concentration_follows_the_scattered_halo_mass_as_in_the_notebook():
    # notebook: mh = getMh_fromMd(ms, w_scatter=True); cc = c(mh, ...) uses the scattered mh
    cfg = config_from_dict({"family": {"name": "rotation_curve", "scatter": {"rd": 0, "mh": 0.25, "c": 0}}})
    p = sample_params(cfg.family, 2000, torch.Generator().manual_seed(5)).numpy()
    _, mh_rel, _ = reference_relations(p[:, 0])
    assert np.std(np.log10(p[:, 2] / mh_rel)) > 0.2  # the halo mass really scatters
    np.testing.assert_allclose(p[:, 3], _concentration(p[:, 2]), rtol=1e-12)


def test_scaling_prior_scatter_has_the_configured_dex():
    n = 40_000
    cfg = config_from_dict({"family": "rotation_curve"})  # scatter 0.4, 0.25, 0.11 dex
    p = sample_params(cfg.family, n, torch.Generator().manual_seed(6)).numpy()
    rd_rel, mh_rel, _ = reference_relations(p[:, 0])
    residuals = {
        "rd": np.log10(p[:, 1] / rd_rel),
        "mh": np.log10(p[:, 2] / mh_rel),
        "c": np.log10(p[:, 3] / _concentration(p[:, 2])),
    }
    for name, dex in (("rd", 0.4), ("mh", 0.25), ("c", 0.11)):
        r = residuals[name]
        assert abs(r.mean()) < 5 * dex / np.sqrt(n), name
        assert r.std() == pytest.approx(dex, rel=0.03), name
    # md is log-uniform on [1e9, 1e12]
    log_md = np.log10(p[:, 0])
    assert log_md.min() >= 9 and log_md.max() <= 12
    assert stats.kstest((log_md - 9) / 3, "uniform").pvalue > 1e-3
