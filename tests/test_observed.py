"""Observed curves in, parameters out: readers (long CSV, repeated --curve, a folder, clip), bad files, the
batched objective with each object's own points, and the command's outputs on a rotation-curve run."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from funcae_cli.config import override
from funcae_cli.data.observations import Grid, Observation, read_long_csv
from funcae_cli.errors import InputError
from funcae_cli.inversion.invert import invert_batch
from funcae_cli.inversion.objective import Problem
from funcae_cli.inversion.targets import pad
from funcae_cli.jobs.fitted import latent_model_for
from funcae_cli.store.rundir import RunDir
from funcae_cli.store.trained import load_trained

from .conftest import ok, usage_error

CPU = torch.device("cpu")


def opts(trained, **options):
    """The run's invert section with these options, checked by the config's rules."""
    return override(trained.cfg.invert, options)


def normal_pdf(x: np.ndarray, mu: float, sigma: float) -> np.ndarray:
    return np.exp(-0.5 * ((x - mu) / sigma) ** 2) / (sigma * np.sqrt(2 * np.pi))


def write_long(path: Path, rows: list[tuple]) -> Path:
    path.write_text("id,x,y,yerr\n" + "".join(",".join(str(v) for v in r) + "\n" for r in rows))
    return path


def noisy_normals(n: int, seed: int = 0) -> list[tuple]:
    """Long-format rows of n normal curves at irregular x in [-4.5, 4.5], 5% errors."""
    rng = np.random.default_rng(seed)
    rows = []
    for k in range(n):
        mu, sigma = rng.uniform(-1.5, 1.5), rng.uniform(0.8, 1.8)
        x = np.sort(rng.uniform(-4.5, 4.5, rng.integers(6, 40)))
        v = normal_pdf(x, mu, sigma)
        e = 0.05 * v + 0.002
        rows += [(f"obj{k}", xi, vi + ei * rng.standard_normal(), ei) for xi, vi, ei in zip(x, v, e)]
    return rows


# --- reading ---------------------------------------------------------------------------------


def test_long_csv_keeps_each_objects_own_points(tmp_path: Path) -> None:
    path = write_long(tmp_path / "obs.csv", [("b", 2.0, 1.0, 0.1), ("a", 1.0, 5.0, 0.5), ("b", 1.0, 2.0, 0.2),
                                             ("a", 0.5, 4.0, 0.4), ("a", 3.0, 6.0, 0.6)])  # fmt: skip
    warnings: list[str] = []
    objects = read_long_csv(path, Grid(0.0, 10.0), warnings)
    assert [o.name for o in objects] == ["b", "a"]  # file order of first appearance
    np.testing.assert_array_equal(objects[1].x, [0.5, 1.0, 3.0])  # sorted by x, with their y and yerr
    np.testing.assert_array_equal(objects[1].y, [4.0, 5.0, 6.0])
    np.testing.assert_array_equal(objects[1].yerr, [0.4, 0.5, 0.6])
    t = pad(objects, str(path))
    assert t.y.shape == (2, 3) and t.mask.tolist() == [[True, True, False], [True, True, True]]
    assert bool((t.x[0, 1:] >= t.x[0, :-1]).all())  # padding continues increasing
    assert t.counts.tolist() == [2, 3] and not warnings


BAD_LONG = {
    "missing_column": ("id,x,yerr\na,1,0.1\na,2,0.1\n", ["line 1", "missing column 'y'"]),
    "non_numeric": ("id,x,y,yerr\na,1,2,0.1\na,2,two,0.1\n", ["line 3", "id a", "y: expected a number", "'two'"]),
    "one_point": ("id,x,y,yerr\na,1,2,0.1\na,2,3,0.1\nb,1,2,0.1\n", ["line 4", "id b", "1 point(s)", "at least 2"]),
    "yerr_zero": ("id,x,y,yerr\na,1,2,0.1\na,2,3,0\n", ["line 3", "id a", "yerr must be > 0"]),
    "yerr_negative": ("id,x,y,yerr\na,1,2,-0.1\na,2,3,0.1\n", ["line 2", "id a", "yerr must be > 0"]),
    "nan": ("id,x,y,yerr\na,1,nan,0.1\na,2,3,0.1\n", ["line 2", "id a", "must be finite"]),
    "outside_grid": ("id,x,y,yerr\na,1,2,0.1\na,9,3,0.1\n", ["line 2", "id a", "x=9", "outside the run's grid"]),
    "no_header": ("a,1,2,0.1\na,2,3,0.1\n", ["line 1", "header"]),
    "ragged": ("id,x,y,yerr\na,1,2\n", ["line 2", "expected 4 columns"]),
}


@pytest.mark.parametrize("case", list(BAD_LONG))
def test_a_bad_long_csv_is_exit_2_naming_file_line_and_id(cli, smoke_copy: Path, case: str) -> None:
    text, pieces = BAD_LONG[case]
    (smoke_copy.parent.parent / "bad.csv").write_text(text)
    usage_error(cli("invert", "--curves", "bad.csv"), "bad.csv", *pieces)
    assert not (smoke_copy / "invert").exists()  # nothing written


def test_repeated_curve_files_are_one_batch_each_with_its_own_x(cli, smoke_copy: Path) -> None:
    root = smoke_copy.parent.parent
    for name, x in (("left", np.linspace(-4, 1, 12)), ("right", np.linspace(-1, 4.5, 30))):
        np.savetxt(root / f"{name}.csv", np.column_stack([x, normal_pdf(x, 0.3, 1.1)]), delimiter=",",
                   header="x,y", comments="")  # fmt: skip
    r = cli("invert", "--curve", "left.csv", "--curve", "right.csv", "--json")
    ok(r)
    rec = json.loads(r.stdout)
    assert rec["n_targets"] == 2 and [t["name"] for t in rec["targets"]] == ["left", "right"]
    assert [len(t["x"]) for t in rec["targets"]] == [12, 30]
    for t in rec["targets"]:  # noiseless curves of the family: the refit finds their parameters
        assert t["params"]["mu"] == pytest.approx(0.3, abs=1e-3) and t["params"]["sigma"] == pytest.approx(1.1, 1e-3)
    assert (smoke_copy / "invert" / "left_and_1_more.csv").exists()


def test_invert_without_figures_does_not_import_matplotlib(smoke_copy: Path) -> None:
    """A catalogue or a script's `--no-plot` run skips matplotlib's import (~0.45 s of every process); the same
    command with figures imports it (the check can fail). The real command, in its own process."""
    root = smoke_copy.parent.parent
    x = np.linspace(-3, 3, 15)
    np.savetxt(root / "one.csv", np.column_stack([x, normal_pdf(x, 0.2, 1.0)]), delimiter=",", header="x,y",
               comments="")  # fmt: skip
    modules = {}
    for extra in (["--no-plot"], []):
        cmd = [sys.executable, "-X", "importtime", "-m", "funcae_cli", "invert", "--run", str(smoke_copy), "--curve",
               "one.csv", "--json", *extra]  # fmt: skip
        r = subprocess.run(cmd, cwd=root, capture_output=True, text=True)
        assert r.returncode == 0, r.stderr[-2000:]
        assert json.loads(r.stdout)["n_targets"] == 1
        modules[bool(extra)] = {line.rsplit("|", 1)[-1].strip() for line in r.stderr.splitlines() if "|" in line}
    assert "matplotlib" not in modules[True] and "torch" in modules[True]
    assert "matplotlib" in modules[False]


def test_a_folder_of_curve_files(cli, smoke_copy: Path) -> None:
    folder = smoke_copy.parent.parent / "objects"
    folder.mkdir()
    for k, mu in enumerate((-1.0, 0.0, 1.0)):
        x = np.linspace(-3, 3, 15 + k)
        np.savetxt(folder / f"o{k}.csv", np.column_stack([x, normal_pdf(x, mu, 1.0), np.full_like(x, 0.01)]),
                   delimiter=",", header="x,y,yerr", comments="")  # fmt: skip
    r = cli("invert", "--curves", "objects", "--json")
    ok(r)
    rec = json.loads(r.stdout)
    assert [t["name"] for t in rec["targets"]] == ["o0", "o1", "o2"]
    assert [round(t["params"]["mu"], 3) for t in rec["targets"]] == [-1.0, 0.0, 1.0]


def test_clip_drops_points_outside_the_grid_with_a_warning_naming_the_object(cli, smoke_copy: Path) -> None:
    rows = [("in", x, float(normal_pdf(np.array(x), 0, 1)), 0.01) for x in (-2.0, -1.0, 0.0, 1.0)]
    rows += [("out", x, 0.1, 0.01) for x in (-7.0, -6.0, 0.0, 1.0, 2.0)]
    write_long(smoke_copy.parent.parent / "edge.csv", rows)
    usage_error(cli("invert", "--curves", "edge.csv"), "edge.csv", "id out", "x=-7", "clip")
    r = cli("invert", "--curves", "edge.csv", "--clip", "--json")
    ok(r)
    rec = json.loads(r.stdout)
    assert any("out: dropped 2 of 5 points" in w for w in rec["warnings"])
    assert "dropped 2 of 5" in r.stderr
    assert [t["points"] for t in rec["targets"]] == [4, 3]


# --- the batched objective -------------------------------------------------------------------


@pytest.fixture(scope="module")
def smoke(smoke_run: Path):
    trained = load_trained(RunDir(smoke_run), CPU)
    return trained, latent_model_for(trained)[0]


def test_a_repeated_x_is_two_measurements(smoke) -> None:
    """chi^2 counts both points: a point given twice with errors e weighs as one with e / sqrt(2); the fitted
    parameters are the same (the documented meaning of repeated x)."""
    trained, lm = smoke
    x = np.array([-2.0, -1.0, 0.0, 0.0, 1.0, 2.5])
    y = normal_pdf(x, 0.2, 1.3) + np.array([0.01, -0.01, 0.02, 0.0, 0.0, 0.005])
    e = np.full(6, 0.01)
    twice = pad([Observation("twice", x, y, e)], "t")
    merged_y = np.array([y[0], y[1], (y[2] + y[3]) / 2, y[4], y[5]])
    merged_e = np.array([0.01, 0.01, 0.01 / np.sqrt(2), 0.01, 0.01])
    once = pad([Observation("once", np.delete(x, 3), merged_y, merged_e)], "o")
    z = torch.zeros(1, 2)
    chi_twice, chi_once = Problem(trained, twice).data_term(z), Problem(trained, once).data_term(z)
    offset = ((y[2] - y[3]) / 0.01) ** 2 / 2  # sum of squares about the mean: what merging leaves out
    assert float(chi_twice) == pytest.approx(float(chi_once) + offset, rel=1e-5)
    a, b = invert_batch(trained, twice, latent_model=lm), invert_batch(trained, once, latent_model=lm)
    np.testing.assert_allclose(a.params_est, b.params_est, rtol=1e-5)


def test_the_batch_equals_each_object_alone(smoke, tmp_path: Path) -> None:
    """Padding and masks change nothing: every object's physics fit is the one it gets alone."""
    trained, lm = smoke
    objects = read_long_csv(write_long(tmp_path / "o.csv", noisy_normals(7)), Grid(-5.0, 5.0), [])
    batch = invert_batch(trained, pad(objects, "all"), latent_model=lm)
    for i, o in enumerate(objects):
        alone = invert_batch(trained, pad([o], o.name), latent_model=lm)
        assert alone.physics_objective[0] == pytest.approx(batch.physics_objective[i], rel=1e-6)
        np.testing.assert_allclose(alone.params_est[0], batch.params_est[i], rtol=1e-4)
        assert alone.assessment.dof[0] == batch.assessment.dof[i] == len(o.x) - 2


def test_the_density_prior_keeps_the_code_on_the_manifold(smoke) -> None:
    """For data no curve of the family resembles (noise), maximum likelihood drifts off the training codes;
    the MAP objective keeps the code where the decoder was trained."""
    trained, lm = smoke
    rng = np.random.default_rng(3)
    y = torch.as_tensor(rng.normal(0.05, 0.1, (20, trained.grid.shape[0])), dtype=torch.float32)
    free = invert_batch(trained, y, opts(trained, prior="none", physics=False), latent_model=lm)
    map_ = invert_batch(trained, y, opts(trained, prior="density", physics=False), latent_model=lm)
    assert np.median(map_.log_density if map_.log_density is not None else 0) > np.median(
        lm.density.log_prob(torch.as_tensor(free.z)).numpy()
    )
    assert map_.prior == "density" and free.prior == "none" and free.log_density is None


def test_parameter_targets_fit_no_worse_with_the_density_prior(smoke) -> None:
    """The normal family's inversions (notebook 000's use) do not get worse with the prior: the data residual
    of curves from the training prior, median over 60 targets."""
    from funcae_cli.inversion.targets import targets_from_params

    trained, lm = smoke
    g = torch.Generator().manual_seed(11)
    params = torch.stack([torch.empty(60).uniform_(-1.8, 1.8, generator=g),
                          torch.empty(60).uniform_(0.8, 1.9, generator=g)], 1).double()  # fmt: skip
    t = targets_from_params(trained, params)
    a = invert_batch(trained, t, opts(trained, prior="none"), latent_model=lm)
    b = invert_batch(trained, t, opts(trained, prior="density"), latent_model=lm)
    assert np.median(b.data_residual) <= 1.01 * np.median(a.data_residual)
    assert np.abs(b.params_est - params.numpy()).max() < 1e-4  # the refit recovers noiseless parameters


# --- the command on a rotation-curve run ---------------------------------------------------------


def _galaxies(path: Path, n: int, seed: int) -> Path:
    from benchmarks.observed import galaxies, write_long_csv

    low, high = np.log10([1e6, 0.2, 1e9, 2.0]), np.log10([5e11, 15.0, 5e13, 40.0])
    write_long_csv(galaxies(n, seed, low, high), path)
    return path


@pytest.mark.slow
def test_invert_many_observed_galaxies_writes_the_table_and_figures(cli, rotation_copy: Path) -> None:
    _galaxies(rotation_copy.parent.parent / "gal.csv", 40, seed=5)
    r = cli("invert", "--run", str(rotation_copy), "--curves", "gal.csv", "--json")
    ok(r)
    rec = json.loads(r.stdout)
    assert rec["n_targets"] == 40 and rec["params_source"] == "physics" and rec["objective_kind"] == "chi2"
    for t in rec["targets"]:
        assert set(t["params"]) == {"md", "rd", "mh", "c"}
        for key in ("physics_objective", "decoder_physics_objective", "reduced_chi2", "p_value", "log_density",
                    "density_percentile", "flags", "dof"):  # fmt: skip
            assert key in t, key
        assert t["dof"] == t["points"] - 4
    folder = rotation_copy / "invert"
    assert {p.name for p in folder.iterdir()} == {"gal.json", "gal.csv", "gal.png", "gal_page.png", "gal_summary.png"}
    with open(folder / "gal.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 40 and rows[0]["id"] == "g0000"
    assert {"md", "rd", "mh", "c", "physics_objective", "decoder_objective", "reduced_chi2", "p_value",
            "log_density", "density_percentile", "flags"} <= set(rows[0])  # fmt: skip
    flagged = [t["name"] for t in rec["targets"] if "model_mismatch" in t["flags"]]
    if flagged:  # a warning names them
        assert any(flagged[0] in w and "model mismatch" in w for w in rec["warnings"])
    ok(cli("plot", "--run", str(rotation_copy), "--kind", "invert"))


def test_invert_outside_the_prior_flags_the_bound(cli, rotation_copy: Path) -> None:
    """A galaxy whose halo is far lighter than the prior allows: with the prior's bounds its halo mass sits on
    the lower bound, flagged; with the family's domain the fit is free and better."""
    from funcae_cli.data.formulas import rotation_curve

    r = np.geomspace(0.3, 20, 40)
    v = rotation_curve(torch.as_tensor(r), torch.tensor([[3e9, 1.5, 1e8, 10.0]], dtype=torch.float64), None)[0]
    e = 0.03 * v.numpy() + 0.5
    np.savetxt(rotation_copy.parent.parent / "dwarf.csv", np.column_stack([r, v.numpy(), e]), delimiter=",",
               header="x,y,yerr", comments="")  # fmt: skip
    prior = json.loads(cli("invert", "--run", str(rotation_copy), "--curve", "dwarf.csv", "--json").stdout)
    domain = json.loads(
        cli("invert", "--run", str(rotation_copy), "--curve", "dwarf.csv", "--bounds", "domain", "--json").stdout
    )
    assert "on_bound" in prior["targets"][0]["flags"] and "mh" in prior["targets"][0]["on_bound"]
    assert any("dwarf" in w and "bound" in w for w in prior["warnings"])
    assert domain["targets"][0]["physics_objective"] < prior["targets"][0]["physics_objective"]
    assert domain["targets"][0]["params"]["mh"] == pytest.approx(1e8, rel=0.05)
    assert "on_bound" not in domain["targets"][0]["flags"]


def test_bad_invert_options_are_exit_2(cli, smoke_copy: Path) -> None:
    usage_error(cli("invert", "--mu", "0", "--sigma", "1", "--prior", "flat"), "--prior", "flat", "density")
    usage_error(cli("invert", "--mu", "0", "--sigma", "1", "--bounds", "wide"), "--bounds", "wide", "domain")
    with pytest.raises(InputError):
        pad([Observation("a", np.array([0.0, 1.0]), np.ones(2), np.ones(2)),
             Observation("b", np.array([0.0, 1.0]), np.ones(2), None)], "mixed")  # fmt: skip


def test_the_shipped_example_is_the_generators_output(tmp_path: Path) -> None:
    """configs/data/observed_rotation_curves.csv (the README's worked example) is reproducible: regenerated by
    `python -m benchmarks.observed`, byte for byte."""
    from benchmarks.observed import EXAMPLE, write_example

    write_example(tmp_path / "again.csv")
    assert (tmp_path / "again.csv").read_bytes() == EXAMPLE.read_bytes()
