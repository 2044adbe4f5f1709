"""Library tests of encode / invert / the latent -> parameter regressor, on the session's smoke run."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from benchmarks.baselines import notebook_nelder_mead
from funcae_cli.commands.common import parse_param_args
from funcae_cli.config import override
from funcae_cli.config.families import FAMILIES
from funcae_cli.errors import InputError
from funcae_cli.generation import sampling
from funcae_cli.inversion import encode as enc
from funcae_cli.inversion import invert as inv
from funcae_cli.inversion import targets as tg
from funcae_cli.inversion.regressor import LatentModel, fit_latent_model
from funcae_cli.inversion.search import lbfgs
from funcae_cli.jobs import fitted as latent
from funcae_cli.jobs.encode import encode_dataset
from funcae_cli.jobs.inputs import TargetInputs
from funcae_cli.jobs.targets import read_params_csv, read_targets
from funcae_cli.store.fitted import load_latent_state, save_latent_state
from funcae_cli.store.rundir import RunDir
from funcae_cli.store.trained import load_trained

CPU = torch.device("cpu")


def opts(trained, **options):
    """The run's invert section with these options, checked by the config's rules."""
    return override(trained.cfg.invert, options)


NORMAL = FAMILIES["normal"]


@pytest.fixture(scope="module")
def trained(smoke_run):
    return load_trained(RunDir(smoke_run), CPU)


def decoded_targets(trained, z: list[list[float]]) -> tuple[torch.Tensor, torch.Tensor]:
    """Curves the decoder itself makes from known codes: the exact optimum is z, objective 0."""
    zt = torch.tensor(z, dtype=torch.float32)
    with torch.no_grad():
        return zt, trained.decode(zt)


def random_params(n: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    mu = torch.empty(n, dtype=torch.float64).uniform_(-1.8, 1.8, generator=g)
    sigma = torch.empty(n, dtype=torch.float64).uniform_(0.8, 1.9, generator=g)
    return torch.stack([mu, sigma], dim=1)


# --- encode / decode -------------------------------------------------------------------------


def test_encode_decode_shapes(trained):
    n_points, d = trained.grid.shape[0], trained.model.args.latent_dim
    t = tg.targets_from_params(trained, random_params(7))
    assert t.y.shape == (7, n_points) and t.y.dtype == torch.float32
    z = enc.encode_curves(trained, t.y)
    assert z.shape == (7, d)
    assert trained.decode(z).shape == (7, n_points)
    assert enc.encode_curves(trained, t.y[:0]).shape == (0, d)


def test_encode_dataset_rows_and_splits(trained):
    out = encode_dataset(trained)
    n = trained.data["n"]
    assert out["z"].shape == (n, trained.model.args.latent_dim)
    assert out["params"].shape == (n, 2)
    assert list(out["param_names"]) == ["mu", "sigma"]
    (a, b), (c, d), (e, f) = trained.data["splits"]
    assert (out["split"][a:b] == 0).all() and (out["split"][c:d] == 1).all() and (out["split"][e:f] == 2).all()


# --- inversion -------------------------------------------------------------------------------


def test_inverting_a_decoded_curve_recovers_its_code(trained):
    z_true, y = decoded_targets(trained, [[0.2, -0.4], [0.0, -0.9], [0.5, 0.1]])
    res = inv.invert_batch(trained, y)
    assert res.objective.max() < 1e-4  # near 0 (float32 floor), while the encoder alone is off
    assert res.rel_l2.max() < 1e-4
    np.testing.assert_allclose(res.z, z_true.numpy(), atol=2e-3)
    assert (res.objective <= res.encoder_objective + 1e-7).all()
    assert res.converged.all() and (res.iterations > 0).any()


def test_batched_equals_one_by_one(trained):
    """Each target of a batch reaches the objective it reaches alone, and a code that decodes to the same curve.

    Not the same code to 1e-4: a batch of 6 and a batch of 1 go through different matrix kernels, so the
    float32 objectives differ in the last bits and L-BFGS may stop an iteration earlier or later (its ftol is
    1e-6 relative). Where the objective is flat along a direction of z that moves z by ~2e-4 at the same
    objective. How flat depends on the smoke model, whose weights depend on the CPU the native kernels were
    compiled for (-march=native): seen on an AMD EPYC (AVX2), target 5 of this batch: |dz| 2.0e-4, objective
    equal to 3e-7 relative, decoded curves 1.5e-4 apart (L2) where both leave a residual of 0.1. So z is held
    to 2e-3, and the two decoded curves to 1% of the residual they leave."""
    t = tg.targets_from_params(trained, random_params(6, seed=3))
    batch = inv.invert_batch(trained, t)
    for i in range(t.n):
        one = inv.invert_batch(trained, t.subset(slice(i, i + 1)))
        assert one.objective[0] == pytest.approx(batch.objective[i], rel=1e-4, abs=1e-6)
        np.testing.assert_allclose(one.z[0], batch.z[i], atol=2e-3)
        assert np.linalg.norm(one.fit[0] - batch.fit[i]) <= 1e-2 * batch.data_residual[i]


def test_refinement_never_worse_than_encoder_and_result_fields(trained):
    t = tg.targets_from_params(trained, random_params(20, seed=5))
    res = inv.invert_batch(trained, t, opts(trained, method="lbfgs"))
    n, d = 20, trained.model.args.latent_dim
    assert res.z.shape == res.encoder_z.shape == (n, d)
    for a in (res.objective, res.residual_norm, res.rel_l2, res.encoder_objective, res.seconds, res.iterations):
        assert a.shape == (n,)
    assert res.fit.shape == (n, trained.grid.shape[0])
    assert (res.objective <= res.encoder_objective * (1 + 1e-5) + 1e-7).all()
    np.testing.assert_allclose(res.objective, res.residual_norm)  # l2 objective = training-space norm
    data = np.linalg.norm(res.fit - t.y.double().numpy(), axis=1)  # family units, whatever the training space
    np.testing.assert_allclose(res.data_residual, data, rtol=1e-4, atol=1e-7)
    np.testing.assert_allclose(res.rel_l2, data / np.linalg.norm(t.y.double().numpy(), axis=1), rtol=1e-4)
    assert res.objective_kind == "l2" and res.chi2 is None
    assert res.targets_per_second > 0


@pytest.mark.parametrize("method", ["encoder", "adam", "nelder-mead"])
def test_other_methods(trained, method):
    t = tg.targets_from_params(trained, random_params(3, seed=7))
    enc = inv.invert_batch(trained, t, opts(trained, method="encoder"))
    res = inv.invert_batch(trained, t, opts(trained, method=method, max_iter=60))
    assert res.method == method and res.z.shape == (3, 2)
    assert (res.objective <= enc.objective * (1 + 1e-5) + 1e-7).all()
    if method == "encoder":
        np.testing.assert_array_equal(res.z, res.encoder_z)
        assert (res.iterations == 0).all()


def test_unknown_method_is_an_input_error(trained):
    t = tg.targets_from_params(trained, random_params(1))
    with pytest.raises(InputError, match="nelder-mead"):
        inv.invert_batch(trained, t, opts(trained, method="newton"))


def test_random_starts_keep_the_best(trained):
    """Without a latent prior the searched objective is the reported one: restarts never end worse. (With the
    density prior they minimize the posterior, of which the reported data term is a part.)"""
    lm, _ = latent.latent_model_for(trained)
    t = tg.targets_from_params(trained, random_params(8, seed=11))
    plain = inv.invert_batch(trained, t)
    multi = inv.invert_batch(trained, t, opts(trained, starts=3, seed=1, prior="none"), latent_model=lm)
    assert multi.starts == 3 and multi.start.min() >= 0 and multi.start.max() <= 3
    assert (multi.objective <= plain.objective * (1 + 1e-4) + 1e-7).all()
    assert multi.params_est is not None and multi.params_est.shape == (8, 2)


def test_notebook_nelder_mead_baseline(trained):
    z_true, y = decoded_targets(trained, [[0.2, -0.4]])
    res = notebook_nelder_mead(trained, y)
    assert res.z.shape == (1, 2) and res.iterations[0] > 0
    assert res.objective[0] < 1e-2  # scipy's default tolerances (xatol = fatol = 1e-4)


def test_lbfgs_rows_are_independent_problems():
    """Rows with very different curvature each converge: per-row line search and curvature pairs."""
    scales = torch.tensor([1e-2, 1.0, 1e3])[:, None]
    target = torch.tensor([[1.0, -2.0], [0.5, 0.5], [-3.0, 1.0]])

    def fg(z, rows):
        r = (z - target[rows]) * scales[rows].sqrt()
        return r.square().sum(dim=1), 2 * r * scales[rows].sqrt()

    res = lbfgs(fg, torch.zeros(3, 2), max_iter=200)
    np.testing.assert_allclose(res.z.numpy(), target.numpy(), atol=1e-3)
    assert res.converged.all()


# --- observations at arbitrary x, chi^2 ------------------------------------------------------


def write_curve(path, x, y, yerr=None, header=True):
    cols = [x, y] + ([yerr] if yerr is not None else [])
    head = "x,y" + (",yerr" if yerr is not None else "")
    np.savetxt(path, np.column_stack(cols), delimiter=",", header=head if header else "", comments="")
    return path


def test_csv_curve_with_irregular_x_recovers_a_decoded_curve(trained, tmp_path):
    z_true, y = decoded_targets(trained, [[0.25, -0.6]])
    grid = trained.grid.numpy()
    rng = np.random.default_rng(0)
    x = np.sort(rng.uniform(grid[0], grid[-1], 23))
    yx = np.interp(x, grid, y[0].double().numpy())  # the decoded curve, linearly interpolated onto x
    t = read_targets(trained, TargetInputs(curve_files=[write_curve(tmp_path / "obs.csv", x, yx)]))
    assert t.x is not None and t.x.shape == (1, 23) and t.y.shape == (1, 23) and t.yerr is None and t.mask is None
    res = inv.invert_batch(trained, t)
    assert res.fit.shape == (1, 23)
    assert res.objective[0] < 1e-4
    np.testing.assert_allclose(res.z[0], z_true[0].numpy(), atol=5e-3)


def test_csv_curve_with_yerr_gives_chi2(trained, tmp_path):
    grid = trained.grid.numpy()
    x = np.linspace(grid[0] + 0.3, grid[-1] - 0.7, 30)[::-1]  # unsorted on purpose
    y = np.exp(-0.5 * ((x - 0.4) / 1.2) ** 2) / (1.2 * math.sqrt(2 * math.pi))
    path = write_curve(tmp_path / "obs.csv", x, y, np.full_like(x, 0.01), header=False)
    t = read_targets(trained, TargetInputs(curve_files=[path]))
    assert t.yerr is not None and bool((t.x[0, 1:] > t.x[0, :-1]).all())
    res = inv.invert_batch(trained, t)
    assert res.objective_kind == "chi2"
    assert res.chi2[0] == pytest.approx(res.objective[0])
    # reduced chi^2 at the reported parameters: the family's formula refitted, 30 points - 2 parameters
    assert res.reduced_chi2[0] == pytest.approx(res.physics_objective[0] / (30 - 2))
    ml = inv.invert_batch(trained, t, opts(trained, prior="none"))  # the searched objective is then the reported chi^2
    assert ml.objective[0] <= ml.encoder_objective[0] * (1 + 1e-5)


@pytest.mark.parametrize(
    "text, match",
    [
        ("x,y\n-10,0.1\n0,0.2\n", "outside the run's grid range"),
        ("x,q\n0,1\n1,2\n", "header must name"),
        ("x,y,yerr\n0,1,0\n1,2,1\n", "yerr must be > 0"),
        ("x,y\n0,abc\n1,2\n", "line 2: y: expected a number"),
        ("x,y\n0,1\n", "1 point.*at least 2"),
    ],
)
def test_bad_curve_files(trained, tmp_path, text, match):
    p = tmp_path / "bad.csv"
    p.write_text(text)
    with pytest.raises(InputError, match=match):
        read_targets(trained, TargetInputs(curve_files=[p]))


def test_params_csv_and_curves_npz(trained, tmp_path):
    p = tmp_path / "params.csv"
    p.write_text("sigma,mu\n1.2,0.5\n1.5,-0.5\n")
    t = read_params_csv(trained, p)
    assert t.n == 2 and t.params[0].tolist() == [0.5, 1.2]
    np.savez(tmp_path / "c.npz", curves=t.y.numpy(), params=t.params.numpy())
    c = read_targets(trained, TargetInputs(curves=tmp_path / "c.npz"))
    assert c.n == 2 and c.x is None and c.params is not None
    p.write_text("mu,sigma,tau\n1,1,1\n")
    with pytest.raises(InputError, match="unknown column.*tau"):
        read_params_csv(trained, p)
    p.write_text("mu,sigma\n1,-1\n")
    with pytest.raises(InputError, match="row 1: sigma=-1 is outside the domain"):
        read_params_csv(trained, p)


# --- command-line parameters -----------------------------------------------------------------


def test_parse_param_args():
    assert parse_param_args(NORMAL, ["--mu", "-2.4", "--sigma=1.7"]) == {"mu": -2.4, "sigma": 1.7}
    assert parse_param_args(NORMAL, []) == {}
    assert parse_param_args(FAMILIES["rotation_curve"], "--md 1e11 --rd 3 --mh 1e12 --c 9".split())["md"] == 1e11
    for args, match in [
        (["--mu", "1"], "missing --sigma; family normal takes --mu, --sigma"),
        (["--mu", "1", "--sigma", "1", "--tau", "2"], "unknown option --tau; family normal takes --mu, --sigma"),
        (["--mu", "x", "--sigma", "1"], "--mu: expected a number"),
        (["--mu", "1", "--mu", "2", "--sigma", "1"], "given twice"),
        (["stray"], "unexpected argument"),
        (["--mu"], "missing value"),
        (["--mu", "nan", "--sigma", "1"], "must be finite"),
    ]:
        with pytest.raises(InputError, match=match):
            parse_param_args(NORMAL, args)


def test_domain_and_training_range(trained):
    with pytest.raises(InputError, match="sigma=0 is outside the domain of normal's sigma"):
        tg.check_domain(NORMAL, torch.tensor([[0.0, 0.0]], dtype=torch.float64))
    tg.check_domain(NORMAL, torch.tensor([[0.0, 9.0]], dtype=torch.float64))  # inside the domain: fine
    assert tg.training_range_warnings(trained, torch.tensor([[0.0, 1.0]], dtype=torch.float64)) == []
    (w,) = tg.training_range_warnings(trained, torch.tensor([[0.0, 9.0]], dtype=torch.float64))
    assert "sigma=9" in w and "extrapolating" in w


# --- regressor -------------------------------------------------------------------------------


def test_regressor_recovers_a_curved_map_and_round_trips(tmp_path):
    g = torch.Generator().manual_seed(0)
    z = 4 * torch.rand(4000, 2, generator=g, dtype=torch.float64) - 2
    mu = torch.sin(1.5 * z[:, 0]) + 0.3 * z[:, 1] ** 2  # no low-degree polynomial
    sigma = 10 ** (0.2 * z[:, 1] - 0.1 * torch.cos(z[:, 0] * z[:, 1]))  # log10 sigma is smooth
    p = torch.stack([mu, sigma], 1)
    lm = fit_latent_model(z[:3500], p[:3500], z[3500:], p[3500:], NORMAL.param_names, [False, True])
    assert lm.val_r2["mu"] > 0.999 and lm.val_r2["sigma"] > 0.999
    assert lm.log_scale == [False, True] and lm.k in (8, 16, 32, 64)
    inside = (z[3500:].abs() < 1.9).all(dim=1)  # away from the edges of the data
    np.testing.assert_allclose(lm.predict(z[3500:][inside]).numpy(), p[3500:][inside].numpy(), rtol=0, atol=1e-2)
    far = lm.predict(torch.tensor([[50.0, -50.0]]))  # far outside: clamped near the training range
    assert bool(torch.isfinite(far).all()) and float(far[0, 1]) < 10 * float(sigma.max())
    save_latent_state(tmp_path / "regressor.pt", lm.state())
    back = LatentModel.from_state(load_latent_state(tmp_path / "regressor.pt"))
    assert torch.equal(back.predict(z[:50]), lm.predict(z[:50]))
    assert back.val_r2 == lm.val_r2 and back.summary() == lm.summary()


def test_regressor_written_at_training_and_fitted_lazily(smoke_copy):
    rd = RunDir(smoke_copy)
    import json

    metrics = json.loads(rd.metrics.read_text())
    assert metrics["regressor"]["val_r2"]["mu"] > 0.9 and metrics["regressor"]["val_r2"]["sigma"] > 0.9
    assert rd.regressor.exists()
    t = load_trained(rd, CPU)
    lm, fitted = latent.latent_model_for(t)
    assert not fitted
    rd.regressor.unlink()  # a run trained before the regressor existed
    lm2, fitted = latent.latent_model_for(t)
    assert fitted and rd.regressor.exists()
    assert lm2.val_r2 == pytest.approx(lm.val_r2)


# --- sampling --------------------------------------------------------------------------------


def test_sample_codes(trained):
    lm, _ = latent.latent_model_for(trained)
    g = torch.Generator().manual_seed(0)
    emp = sampling.sample_codes(trained, lm, 5000, "empirical", g)
    assert emp.shape == (5000, 2)
    lo, hi = lm.codes.min(dim=0).values, lm.codes.max(dim=0).values
    assert bool(((emp >= lo) & (emp <= hi)).all())
    gau = sampling.sample_codes(trained, lm, 20000, "gaussian", g)
    np.testing.assert_allclose(gau.mean(0).numpy(), lm.code_mean.numpy(), atol=0.05)
    assert sampling.resolve_latent(trained, "auto") == "empirical"
    with pytest.raises(InputError, match="an AE has no prior"):
        sampling.resolve_latent(trained, "prior")
    s = sampling.sample_curves(trained, lm, 4, "gaussian", seed=1)
    assert s["curves"].shape == (4, trained.grid.shape[0]) and s["z"].shape == (4, 2)
    again = sampling.sample_curves(trained, lm, 4, "gaussian", seed=1)
    np.testing.assert_array_equal(s["curves"], again["curves"])  # seeded


@pytest.mark.parametrize("dim", [3, 12])  # the k-d tree's side of KDTREE_MAX_DIM, and brute force's
def test_the_regressors_neighbours_are_the_exact_nearest_codes(dim: int) -> None:
    from funcae_cli.inversion.regressor import KDTREE_MAX_DIM, Neighbours

    rng = np.random.default_rng(dim)
    codes, query = rng.normal(size=(3000, dim)), rng.normal(size=(200, dim))
    search = Neighbours(codes, brute_force_pairs=0)  # the k-d tree from the first query, where it applies
    dist, idx = search.query(query, 16)
    assert (search.tree is not None) == (dim <= KDTREE_MAX_DIM)
    full = np.sqrt(((query[:, None, :] - codes[None, :, :]) ** 2).sum(axis=2))  # every distance, float64
    expect = np.argsort(full, axis=1, kind="stable")[:, :16]
    np.testing.assert_array_equal(idx, expect)
    np.testing.assert_allclose(dist, np.take_along_axis(full, expect, axis=1), rtol=1e-12)


def test_the_k_d_tree_and_brute_force_give_bitwise_the_same_neighbours_in_any_batch() -> None:
    """A search answers its first queries by brute force and builds a k-d tree once they are many (Neighbours): a
    target's neighbours, their order and their distances must not depend on which search answered it."""
    from funcae_cli.inversion.regressor import Neighbours

    rng = np.random.default_rng(7)
    codes, query = rng.normal(size=(5000, 4)), rng.normal(size=(300, 4))
    tree, brute = Neighbours(codes, brute_force_pairs=0), Neighbours(codes, brute_force_pairs=10**12)
    d_tree, i_tree = tree.query(query, 32)
    d_one, i_one = zip(*(brute.query(query[j : j + 1], 32) for j in range(len(query))))
    assert tree.tree is not None and brute.tree is None
    np.testing.assert_array_equal(i_tree, np.concatenate(i_one))
    np.testing.assert_array_equal(d_tree, np.concatenate(d_one))  # bitwise
    switching = Neighbours(codes, brute_force_pairs=100 * 5000)  # brute force for 100 queries, the tree after
    parts = [switching.query(query[a : a + 60], 32) for a in range(0, len(query), 60)]
    assert switching.tree is not None
    np.testing.assert_array_equal(np.concatenate([p[1] for p in parts]), i_tree)
    np.testing.assert_array_equal(np.concatenate([p[0] for p in parts]), d_tree)
