"""`funcae plot`: every kind writes a real, non-blank figure; kinds that do not apply are skipped;
bad options exit 2. The figure functions are also called directly on synthetic arrays for the
paths a smoke run does not reach (latent_dim 1 and > max_dims, no parameters, negative losses)."""

from __future__ import annotations

import io
import json
from pathlib import Path

import matplotlib.image as mpimg
import numpy as np
import pytest

from funcae_cli.config.families import FAMILIES
from funcae_cli.jobs.plot import PLOTS, render_plots
from funcae_cli.jobs.results import read_inversions
from funcae_cli.plotting.latent import (
    corner_figure,
    decoder_grid_figure,
    grid_codes,
    latent_figure,
    spearman_matrix,
    support_mask,
)
from funcae_cli.plotting.reconstruction import pca_figure, reconstruction_figure
from funcae_cli.plotting.training import loss_figure
from funcae_cli.store.rundir import RunDir

from .conftest import ok, usage_error

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
DEFAULT_KINDS = {"loss", "latent", "decoder_grid", "reconstruction"}


def assert_figure_png(data: bytes, what: str = "") -> None:
    """A PNG that is not blank: signature, size, and enough ink (an empty axes box has ~1% dark
    pixels and a pixel variance ~0.007; every real figure here has far more)."""
    assert data[:8] == PNG_SIGNATURE, f"{what}: not a PNG"
    assert len(data) > 20_000, f"{what}: only {len(data)} bytes"
    rgb = mpimg.imread(io.BytesIO(data), format="png")[..., :3]
    assert rgb.var() > 0.01, f"{what}: pixel variance {rgb.var():.4f}: blank?"
    assert (rgb.mean(axis=-1) < 0.9).mean() > 0.03, f"{what}: almost no ink"


def render(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=80)
    return buf.getvalue()


def write_fake_results(rd: RunDir, n_points: int, latent_dim: int = 2) -> None:
    """invert/*.json, invert/*_samples.npz and samples.npz in the layout `funcae invert [--posterior]` /
    `funcae sample` write."""
    x = np.linspace(-5, 5, n_points)
    target = np.exp(-0.5 * (x - 1) ** 2) / np.sqrt(2 * np.pi)
    rows = [
        {
            "name": f"target {i}",
            "target": target.tolist(),
            "fit": (target * (1 + 0.05 * i)).tolist(),
            "z": [0.1 * i] * latent_dim,
            "true_params": {"mu": 1.0, "sigma": 1.0},
            "estimated_params": {"mu": 1.01, "sigma": 0.98},
            "objective": 0.01 * (i + 1),
            "rel_l2": 0.02,
        }
        for i in range(2)
    ]
    rows.append({"name": "no curves stored", "z": [0.0] * latent_dim, "objective": 0.1})  # batches past 16
    rd.invert_dir.mkdir(parents=True, exist_ok=True)
    rd.invert_json("fake").write_text(json.dumps({"x": x.tolist(), "method": "lbfgs", "targets": rows}))
    rng = np.random.default_rng(0)
    np.savez(
        rd.samples,
        curves=target[None, :] + 0.01 * rng.standard_normal((12, n_points)),
        z=rng.standard_normal((12, latent_dim)),
        grid=x,
    )
    draws = np.stack([rng.normal([1.0, 0.0], [0.05, 0.02], size=(400, 2)) for _ in range(2)])  # (n, s, p)
    np.savez(
        rd.invert_dir / "fake_samples.npz",
        samples=draws, names=np.array(["mu", "sigma"]), ids=np.array(["target 0", "target 1"]),
        kind=np.array("mcmc"), truth=np.array([[1.0, 0.0], [1.0, 0.0]]),
    )  # fmt: skip


# --- the command on a trained run --------------------------------------------------------------


def test_train_leaves_the_default_figures(smoke_run: Path):
    assert {k for k, p in PLOTS.items() if p.default} == DEFAULT_KINDS | {"filters"}  # filters: image runs only
    written = {p.stem for p in (smoke_run / "plots").iterdir()}
    assert written == DEFAULT_KINDS
    for kind in DEFAULT_KINDS:
        assert_figure_png((smoke_run / "plots" / f"{kind}.png").read_bytes(), kind)


def test_every_kind_writes_a_figure(smoke_copy: Path, cli):
    rd = RunDir(smoke_copy)
    write_fake_results(rd, n_points=64)
    result = cli("plot", "--json", "--color-by", "sigma")
    ok(result)
    report = json.loads(result.stdout)  # nothing but the JSON on stdout
    per_target = {"posterior_target_0", "posterior_target_1"}  # posterior: one corner figure per target
    assert set(report["written"]) == set(PLOTS) - {"filters", "posterior"} | per_target, report["skipped"]
    assert set(report["skipped"]) == {"filters"}  # image runs only: tests/test_plotting_images.py
    for kind, path in report["written"].items():
        assert Path(path) == (rd.plot(kind, "png")).resolve()
        assert_figure_png(Path(path).read_bytes(), kind)


def test_inapplicable_kinds_are_skipped_not_errors(smoke_copy: Path, cli):
    result = cli("plot", "--kind", "invert", "--kind", "samples")
    ok(result)
    assert result.stdout == ""  # no paths: nothing written
    assert "skipped invert" in result.stderr and "funcae invert" in result.stderr
    assert "skipped samples" in result.stderr and "funcae sample" in result.stderr
    assert not (smoke_copy / "plots" / "invert.png").exists()
    assert not (smoke_copy / "plots" / "samples.png").exists()


def test_paths_on_stdout_and_other_formats(smoke_copy: Path, cli):
    result = cli("plot", "-k", "loss,corner", "--format", "pdf", "--run", smoke_copy)
    ok(result)
    paths = [Path(line) for line in result.stdout.splitlines()]
    assert [p.name for p in paths] == ["loss.pdf", "corner.pdf"]
    assert all(p.read_bytes().startswith(b"%PDF") for p in paths)


@pytest.mark.parametrize(
    "args, pieces",
    [
        (["--kind", "histogram"], ["histogram", "known: data, loss"]),
        (["--kind", "loss,nope"], ["nope"]),
        (["--color-by", "alpha"], ["--color-by", "alpha", "mu, sigma"]),
        (["--format", "jpeg"], ["--format", "png, pdf"]),
        (["--range", "-1"], ["--range"]),
        (["--run", "no/such/run"], ["no/such/run"]),
    ],
)
def test_bad_options_exit_2(smoke_copy: Path, cli, args, pieces):
    usage_error(cli("plot", *args), *pieces)
    assert not (smoke_copy / "plots" / "data.png").exists()  # nothing drawn before the check


def test_vae_with_latent_dim_3(workdir: Path, cli):
    """The VAE panels (KL apart, prior circles) and the latent_dim > 2 paths (pair plot, two
    dimensions of largest variance in the decoder grid)."""
    train = ["train", "configs/smoke.yaml", "--run-dir", "runs/vae3", "-q", "--no-plots"]
    sets = ["model.kind=vae", "model.latent_dim=3", "train.epochs=2", "data.n=400"]
    ok(cli(*train, *[a for s in sets for a in ("--set", s)]))
    result = cli("plot", "--run", "runs/vae3", "--json", "--range", "2", "-k", "loss,latent,decoder_grid,corner,pca")
    ok(result)
    report = json.loads(result.stdout)
    assert set(report["written"]) == {"loss", "latent", "decoder_grid", "corner", "pca"}
    for kind, path in report["written"].items():
        assert_figure_png(Path(path).read_bytes(), kind)


def test_render_plots_reports_the_paths_written(smoke_copy: Path):
    paths = list(render_plots(RunDir(smoke_copy), ["data", "invert"]).written.values())
    assert paths == [RunDir(smoke_copy).plot("data")]


# --- the figure functions on synthetic arrays ------------------------------------------------


@pytest.mark.parametrize("d, kind", [(1, "ae"), (2, "vae"), (10, "ae")])
def test_latent_figure_any_dimension(d: int, kind: str):
    rng = np.random.default_rng(0)
    z = rng.standard_normal((30_000, d))
    color = z[:, 0] + 0.1 * rng.standard_normal(30_000)
    fig = latent_figure(z, model_kind=kind, color=color, color_label="μ", max_points=2_000, max_dims=4, title="t")
    caption = fig.get_suptitle()
    assert "2,000 of 30,000" in caption  # the subsample is said
    if d > 4:
        assert "the 4 of 10 dimensions" in caption
    assert_figure_png(render(fig), f"latent d={d}")


def test_decoder_grid_one_dim_and_support():
    center = np.zeros(3)
    codes, ticks = grid_codes(center, (1,), 2.0, n=10)
    assert codes.shape == (10, 3) and np.allclose(codes[:, 1], ticks) and np.allclose(codes[:, [0, 2]], 0)
    codes2, ticks2 = grid_codes(center, (0, 2), 1.0, n=4)
    # row-major, top row = largest z_b, columns: z_a ascending
    assert np.allclose(codes2[0, [0, 2]], [-1, 1]) and np.allclose(codes2[-1, [0, 2]], [1, -1])
    mask = support_mask(np.array([[-1.0, 0.0, 1.0]]), (0, 2), ticks2)
    assert mask.sum() == 1 and mask[0, 0]  # the code (-1, 1) is the top-left cell
    x = np.linspace(0, 1, 50)
    decoded = np.sin(np.outer(ticks, x) * 3)
    fig = decoder_grid_figure(x, decoded, codes, (1,), FAMILIES["normal"], title="t")
    assert_figure_png(render(fig), "decoder grid, one dim")


def test_corner_with_a_constant_parameter():
    rng = np.random.default_rng(1)
    z = rng.standard_normal((500, 2))
    values = np.column_stack([z[:, 0] * 2 + 0.01 * rng.standard_normal(500), np.ones(500)])
    rho = spearman_matrix(z, values)
    assert rho.shape == (2, 2) and rho[0, 0] > 0.99 and np.isnan(rho[:, 1]).all()
    fig = corner_figure(z, values, ["μ", "σ"], title="t")
    texts = [t.get_text() for ax in fig.axes for t in ax.texts]
    assert "ρ = +1.00" in texts and "ρ = n/a (constant)" in texts
    assert_figure_png(render(fig), "corner")


def test_reconstruction_without_parameters_and_pca_with_zeros():
    x = np.linspace(-5, 5, 40)
    curves = np.exp(-0.5 * (x[None, :] - np.linspace(-2, 2, 60)[:, None]) ** 2)
    recon = curves + 0.02 * np.random.default_rng(2).standard_normal(curves.shape)
    fig = reconstruction_figure(x, curves, recon, FAMILIES["normal"], title="t")
    assert_figure_png(render(fig), "reconstruction without parameters")
    sse = ((recon - curves) ** 2).sum(axis=1)
    sse[0] = 0.0  # an exact reconstruction still has a place on the log axis
    assert_figure_png(render(pca_figure(sse, sse * 2, components=2, title="t")), "pca")


def test_loss_figure_with_negative_nll():
    history = [
        {
            "epoch": e,
            "lr": 1e-3 * 0.9**e,
            **{f"{s}_{k}": v for s in ("train", "val") for k, v in (("loss", -e), ("recon", -e - 1), ("kl", 0.5))},
        }
        for e in range(1, 6)
    ]
    fig = loss_figure(history, vae=True, loss="gaussian", title="t")
    assert len(fig.axes) == 4
    assert fig.axes[0].get_yscale() == "linear" and fig.axes[2].get_yscale() == "log"
    assert_figure_png(render(fig), "loss")


def test_read_inversions_is_tolerant(tmp_path: Path):
    (tmp_path / "bad.json").write_text("{not json")
    (tmp_path / "nocurves.json").write_text(json.dumps({"targets": [{"z": [0, 0]}]}))
    (tmp_path / "one.json").write_text(json.dumps({"x": [0, 1, 2], "target": [1, 2, 3], "fit": [1, 2, 2.9]}))
    found, problems = read_inversions(sorted(tmp_path.glob("*.json")))
    assert len(found) == 1 and found[0].source == "one.json"
    assert len(problems) == 2


def test_invert_figure_draws_error_bars_and_residuals_in_sigma_for_targets_with_yerr():
    from matplotlib.container import ErrorbarContainer

    from funcae_cli.jobs.results import invert_figures

    x = np.linspace(0.5, 30.0, 12)
    target = 200 * (1 - np.exp(-x / 3))
    fit = target + np.linspace(-4, 4, 12)
    row = {"name": "galaxy", "z": [0.1, -0.2], "objective": 1.0, "rel_l2": 0.01, "target": target.tolist(),
           "fit": fit.tolist()}  # fmt: skip
    record = {"x": x.tolist(), "run": "r", "method": "lbfgs",
              "targets": [row, {**row, "yerr": [2.0] * 12, "reduced_chi2": 1.5}]}  # fmt: skip
    fig = invert_figures(record, FAMILIES["rotation_curve"])["png"]
    (plain_curve, plain_res), (obs_curve, obs_res) = np.array(fig.axes).reshape(2, 2)
    assert not plain_curve.containers and not plain_res.containers
    assert "σ" not in plain_res.get_ylabel() and "velocity" in plain_res.get_ylabel()  # family units without errors
    bars = [c for c in obs_curve.containers if isinstance(c, ErrorbarContainer)]
    assert len(bars) == 1 and bars[0].has_yerr
    assert obs_res.get_ylabel() == "(data − model) / σ"
    (decoder,) = [line for line in obs_res.get_lines() if line.get_label() == "decoder"]
    np.testing.assert_allclose(decoder.get_ydata(), (target - fit) / 2.0)  # residuals in units of sigma
    assert "χ²/dof 1.5" in obs_curve.get_title(loc="left")
    assert "±1σ" in " ".join(t.get_text() for t in obs_curve.get_legend().get_texts())
    assert len(fig.texts) == 1  # one title
    assert_figure_png(render(fig), "invert with yerr")


def test_read_inversions_ignores_malformed_yerr(tmp_path: Path):
    base = {"x": [0, 1, 2], "target": [1, 2, 3], "fit": [1, 2, 2.9]}
    (tmp_path / "a.json").write_text(json.dumps({**base, "yerr": [0.1, 0.1, 0.1]}))
    (tmp_path / "b.json").write_text(json.dumps({**base, "yerr": [0.1, 0.1]}))  # wrong length
    (tmp_path / "c.json").write_text(json.dumps({**base, "yerr": [0.1, 0.0, 0.1]}))  # not > 0
    found, _ = read_inversions(sorted(tmp_path.glob("*.json")))
    assert [f.yerr is not None for f in found] == [True, False, False]


def test_the_command_figure_reads_records_like_plot_does():
    """invert_figures parses rows with read_inversions' parser: malformed yerr is dropped, rows without curves
    are skipped, and beyond MAX_ROWS targets the figure says how many it shows."""
    from funcae_cli.jobs.results import MAX_ROWS, invert_figures

    x = np.linspace(0.5, 30.0, 12)
    row = {"name": "g", "z": [0.1, -0.2], "objective": 1.0, "target": (x / 30).tolist(), "fit": (x / 31).tolist()}
    bad_yerr = {**row, "yerr": [2.0] * 11}  # one short: drawn without bars rather than failing
    record = {"x": x.tolist(), "run": "r", "method": "lbfgs",
              "targets": [bad_yerr, {"name": "no curves", "z": [0, 0]}] + [row] * MAX_ROWS}  # fmt: skip
    figures = invert_figures(record, FAMILIES["rotation_curve"])
    fig = figures["png"]
    assert len(fig.axes) == 2 * MAX_ROWS and not any(ax.containers for ax in fig.axes)
    assert f"first {MAX_ROWS} of {MAX_ROWS + 1} targets" in " ".join(t.get_text() for t in fig.texts)
    assert set(figures) == {"png", "page", "summary"}  # a batch also gets a page and a summary


@pytest.mark.parametrize("n", [5, 12])
def test_the_page_figures_title_clears_its_panels_titles(n: int):
    """The suptitle of invert's page figure and the first row's two-line panel titles (name, chi^2/dof) do not
    overlap, for one row and for several (drawn: their rendered boxes)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    from funcae_cli.jobs.results import invert_figures

    x = np.linspace(0.5, 30.0, 12)
    row = {"name": "g", "z": [0.1, -0.2], "objective": 1.0, "target": (x / 30).tolist(), "fit": (x / 31).tolist(),
           "yerr": [0.01] * 12, "reduced_chi2": 1.1}  # fmt: skip
    record = {"x": x.tolist(), "run": "r", "method": "lbfgs", "targets": [row] * n}
    fig = invert_figures(record, FAMILIES["rotation_curve"])["page"]
    canvas = FigureCanvasAgg(fig)
    canvas.draw()
    renderer = canvas.get_renderer()
    (title,) = fig.texts
    top = title.get_window_extent(renderer)
    panels = [ax.title.get_window_extent(renderer) for ax in fig.axes if ax.get_visible() and ax.get_title()]
    assert panels and not any(top.overlaps(p) for p in panels)
