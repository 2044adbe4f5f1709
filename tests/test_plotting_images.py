"""Figures of image runs (notebook 002): `data` and `reconstruction` draw images (with the
corrupted inputs of a denoising run), `latent` colours the codes by label with a legend,
`filters` shows first-layer weights as images and is skipped for curves, `decoder_grid` and
`samples` draw images. On a synthetic 12 x 12 bars set made here and on the bundled digits."""

from __future__ import annotations

import io
import json
import os
import shutil
from pathlib import Path

import matplotlib.image as mpimg
import numpy as np
import pytest
import torch
import yaml
from typer.testing import CliRunner

from funcae_cli.cli import app
from funcae_cli.jobs.plot import PLOTS, PlotOptions, RunPlots
from funcae_cli.plotting.images import filters_figure, image_examples_figure, image_reconstruction_figure
from funcae_cli.plotting.latent import latent_figure
from funcae_cli.store.rundir import RunDir
from funcae_cli.store.trained import load_trained

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
SIDE = 12
IMAGE_KINDS = ("data", "latent", "decoder_grid", "reconstruction", "filters", "samples")
DEFAULT_IMAGE_PLOTS = {"loss", "latent", "decoder_grid", "reconstruction", "filters"}


def assert_image_png(data: bytes, what: str) -> None:
    """A real PNG that is not blank: signature, a few KB, pixel variance well above an empty canvas."""
    assert data[:8] == PNG_SIGNATURE, f"{what}: not a PNG"
    assert len(data) > 5_000, f"{what}: only {len(data)} bytes"
    rgb = mpimg.imread(io.BytesIO(data), format="png")[..., :3]
    assert rgb.var() > 0.01, f"{what}: pixel variance {rgb.var():.4f}: blank?"


def render(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=60)
    return buf.getvalue()


def figure_text(fig) -> str:
    """Every text of a figure: figure texts, axes titles, legend titles and entries."""
    parts = [t.get_text() for t in fig.texts]
    for ax in fig.axes:
        parts.append(ax.get_title())
        leg = ax.get_legend()
        if leg is not None:
            parts += [leg.get_title().get_text()] + [t.get_text() for t in leg.get_texts()]
    return "\n".join(parts)


def bars(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Shifted shapes on SIDE x SIDE pixels: a horizontal bar (label 0), a vertical bar (1) or a
    3 x 3 square (2) at a random offset."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 3, n)
    r0, c0 = rng.integers(0, SIDE - 2, n), rng.integers(0, SIDE - 2, n)
    idx = np.arange(SIDE)
    rows = (idx[None, :] >= r0[:, None]) & (idx[None, :] < r0[:, None] + 2)  # (n, SIDE)
    cols = (idx[None, :] >= c0[:, None]) & (idx[None, :] < c0[:, None] + 3)
    img = np.zeros((n, SIDE, SIDE), dtype=np.float32)
    img[labels == 0] = rows[labels == 0][:, :, None]  # whole rows
    img[labels == 1] = rows[labels == 1][:, None, :]  # whole columns
    sq = labels == 2
    img[sq] = (rows[sq][:, :, None] | (idx[None, :, None] == r0[sq][:, None, None] + 2)) & cols[sq][:, None, :]
    return img.reshape(n, -1), labels


def _train(root: Path, cfg: dict, *extra: str) -> Path:
    (root / f"{cfg['name']}.yaml").write_text(yaml.safe_dump(cfg))
    cwd = os.getcwd()
    os.chdir(root)
    try:
        result = CliRunner().invoke(app, ["train", f"{cfg['name']}.yaml", "-q", *extra], catch_exceptions=False)
    finally:
        os.chdir(cwd)
    assert result.exit_code == 0, result.output
    return root / "runs" / cfg["name"]


def bars_config(path: Path, name: str, noise: dict | None = None) -> dict:
    return {
        "name": name,
        "seed": 0,
        "family": {"name": "dataset", "path": str(path), "image_shape": [SIDE, SIDE]},
        "data": {"val_fraction": 0.2, "test_fraction": 0.1},
        "model": {"kind": "ae", "latent_dim": 2, "hidden": [32], "activation": "relu"},
        "train": {
            "epochs": 3,
            "batch_size": 32,
            "lr": 1.0e-2,
            "loss": "mse",
            **({"noise": noise} if noise else {}),
        },
    }


@pytest.fixture(scope="module")
def bars_runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Two tiny runs on the bars (read-only for tests): `plain` (with the default plots of
    `train`) and `denoising` (mask noise, --no-plots)."""
    root = tmp_path_factory.mktemp("bars_images")
    x, y = bars(240)
    np.savez(root / "bars.npz", X=x, y=y)
    return {
        "plain": _train(root, bars_config(root / "bars.npz", "bars")),
        "denoising": _train(
            root, bars_config(root / "bars.npz", "bars_dn", {"kind": "mask", "rate": 0.3}), "--no-plots"
        ),
    }


def plot_json(run: Path, *args: str) -> dict:
    result = CliRunner().invoke(app, ["plot", "--run", str(run), "--json", *args], catch_exceptions=False)
    assert result.exit_code == 0, result.stdout + result.stderr
    return json.loads(result.stdout)


def draw(run: Path, kind: str, **options):
    trained = load_trained(RunDir(run), torch.device("cpu"))
    return PLOTS[kind].draw(RunPlots(trained, PlotOptions(**options)))


# --- runs on the synthetic bars ---------------------------------------------------------------


def test_train_leaves_the_image_figures(bars_runs):
    plots = bars_runs["plain"] / "plots"
    assert {p.stem for p in plots.iterdir()} == DEFAULT_IMAGE_PLOTS
    for p in plots.iterdir():
        assert_image_png(p.read_bytes(), p.name)


def test_every_image_kind_writes_a_figure(bars_runs, tmp_path):
    run = tmp_path / "bars_dn"
    shutil.copytree(bars_runs["denoising"], run)
    sampled = CliRunner().invoke(app, ["sample", "--run", str(run), "-n", "12"], catch_exceptions=False)
    assert sampled.exit_code == 0, sampled.output
    report = plot_json(run)
    assert set(IMAGE_KINDS) <= set(report["written"]), report["skipped"]
    assert "corner" in report["skipped"]  # no physical parameters: skipped, not an error
    for kind in IMAGE_KINDS:
        assert_image_png(Path(report["written"][kind]).read_bytes(), kind)


def test_denoising_reconstruction_shows_the_corrupted_inputs(bars_runs):
    fig = draw(bars_runs["denoising"], "reconstruction")
    text = figure_text(fig)
    assert "corrupted input (mask, 30% of pixels zeroed)" in text
    assert "reconstruction of the corrupted input" in text and "reconstruction of the clean input" in text
    assert "label 0" in text or "label 1" in text or "label 2" in text
    n_panels = sum(1 for ax in fig.axes if ax.images)
    assert n_panels == 4 * (10 + 5)  # four rows: 10 random images and the worst five
    plain = figure_text(draw(bars_runs["plain"], "reconstruction"))
    assert "corrupted" not in plain and "reconstruction" in plain


def test_latent_is_coloured_by_label_with_a_legend(bars_runs):
    fig = draw(bars_runs["plain"], "latent")
    legends = [ax.get_legend() for ax in fig.axes if ax.get_legend() is not None]
    assert len(legends) == 1 and legends[0].get_title().get_text() == "label"
    assert [t.get_text() for t in legends[0].get_texts()] == ["0", "1", "2"]
    assert "coloured by label" in figure_text(fig)


def test_filters_show_first_layer_weights_of_random_units(bars_runs):
    fig = draw(bars_runs["plain"], "filters", n_filters=8)
    panels = [ax for ax in fig.axes if ax.images and ax.get_title()]
    assert len(panels) == 8
    assert all(ax.images[0].get_array().shape == (SIDE, SIDE) for ax in panels)
    assert all(not ax.get_xticks().size and not ax.get_yticks().size for ax in panels)
    assert "32 units" in figure_text(fig)  # hidden: [32], of which 8 chosen at random


def test_filters_are_skipped_for_a_curve_run(smoke_copy: Path, cli):
    result = cli("plot", "--kind", "filters")
    assert result.exit_code == 0, result.stdout + result.stderr
    assert result.stdout == ""
    assert "skipped filters" in result.stderr and "not images" in result.stderr
    assert not (smoke_copy / "plots" / "filters.png").exists()


def test_color_by_label_needs_labels(smoke_copy: Path, cli):
    result = cli("plot", "--kind", "latent", "--color-by", "label")
    assert result.exit_code == 2 and "no labels" in result.stderr


# --- the bundled digits -----------------------------------------------------------------------


@pytest.mark.slow
def test_digits_run_draws_digit_images(tmp_path):
    pytest.importorskip("sklearn", reason="the digits family needs scikit-learn: pip install 'funcae[images]'")
    cfg = yaml.safe_load((Path(__file__).parents[1] / "configs" / "digits.yaml").read_text())
    cfg["train"]["epochs"] = 2
    run = _train(tmp_path, cfg)
    assert {p.stem for p in (run / "plots").iterdir()} == DEFAULT_IMAGE_PLOTS
    report = plot_json(run, "-k", "data,latent,reconstruction,filters")
    for kind, path in report["written"].items():
        assert_image_png(Path(path).read_bytes(), kind)
    legend = next(ax.get_legend() for ax in draw(run, "latent").axes if ax.get_legend() is not None)
    assert [t.get_text() for t in legend.get_texts()] == [str(d) for d in range(10)]
    data = figure_text(draw(run, "data"))
    assert all(f"label {d}" in data for d in range(10))  # one row per digit


# --- the figure functions on arrays -------------------------------------------------------------


def test_examples_without_labels_or_with_many_labels():
    x, _ = bars(60)
    for labels in (None, np.arange(60) % 15):
        fig = image_examples_figure(x, (SIDE, SIDE), labels=labels, title="t")
        assert sum(1 for ax in fig.axes if ax.images) == 40
        assert_image_png(render(fig), f"examples, labels {labels is not None}")


def test_reconstruction_of_non_square_images_without_labels():
    rng = np.random.default_rng(0)
    x = rng.random((30, 6 * 10))
    fig = image_reconstruction_figure(x, x + 0.1 * rng.standard_normal(x.shape), (6, 10), title="t")
    assert fig.axes[0].images[0].get_array().shape == (6, 10)
    assert "corrupted" not in figure_text(fig)
    assert_image_png(render(fig), "reconstruction 6 x 10")


def test_filters_of_a_layer_narrower_than_asked():
    w = np.random.default_rng(1).standard_normal((5, SIDE * SIDE))
    w[2] = 0.0  # a dead unit is drawn, not a division by zero
    fig = filters_figure(w, (SIDE, SIDE), n=24, title="t")
    assert "all 5 units" in figure_text(fig)
    assert_image_png(render(fig), "filters")


@pytest.mark.parametrize("d", [1, 3])
def test_latent_by_label_in_one_and_three_dimensions(d):
    rng = np.random.default_rng(2)
    labels = rng.integers(0, 4, 3000)
    z = rng.standard_normal((3000, d)) + labels[:, None]
    fig = latent_figure(z, labels=labels, max_points=1000, title="t")
    legends = [ax.get_legend() for ax in fig.axes if ax.get_legend() is not None]
    assert len(legends) == 1 and legends[0].get_title().get_text() == "label"
    assert_image_png(render(fig), f"latent by label, d={d}")


def test_latent_with_too_many_labels_uses_a_colour_scale():
    rng = np.random.default_rng(3)
    labels = rng.integers(0, 50, 2000)
    fig = latent_figure(rng.standard_normal((2000, 2)), labels=labels, title="t")
    assert all(ax.get_legend() is None for ax in fig.axes)
    assert any(ax.get_ylabel() == "label" for ax in fig.axes)  # the colorbar
