"""Array data sets (dataset and digits families), denoising training and its figures."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from funcae_cli.config import config_from_dict, load_config
from funcae_cli.data.arrays import read_array_file
from funcae_cli.data.dataset import generate
from funcae_cli.data.normalize import split_sizes
from funcae_cli.errors import ConfigError, InputError
from funcae_cli.models import build_model
from funcae_cli.store.dataset import dataset_for
from funcae_cli.store.rundir import RunDir
from funcae_cli.store.trained import load_trained
from funcae_cli.training.evaluation import denoising_figures, evaluate, metrics_noise
from funcae_cli.training.prepared import prepare

SIDE = 16  # synthetic images are SIDE x SIDE


def bars(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Shifted bars: a 2-pixel horizontal (label 0) or vertical (label 1) bar at a random offset."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 2, n)
    offsets = rng.integers(0, SIDE - 1, n)
    img = np.zeros((n, SIDE, SIDE), dtype=np.float32)
    rows = np.arange(SIDE)
    on = (rows[None, :] >= offsets[:, None]) & (rows[None, :] < offsets[:, None] + 2)  # (n, SIDE)
    img[labels == 0] = on[labels == 0][:, :, None]  # horizontal: whole rows
    img[labels == 1] = on[labels == 1][:, None, :]  # vertical: whole columns
    return img.reshape(n, -1), labels


def dataset_cfg(path: str | Path, **extra) -> dict:
    return {"name": "bars", "family": {"name": "dataset", "path": str(path), **extra}}


# --- reading files ------------------------------------------------------------------------------


def test_npy_rows_become_curves_on_the_feature_index(tmp_path):
    x = np.random.default_rng(0).random((20, 5))
    np.save(tmp_path / "x.npy", x)
    cfg = config_from_dict(dataset_cfg(tmp_path / "x.npy"))
    ds = generate(cfg)
    assert tuple(ds.curves.shape) == (20, 5) and ds.curves.dtype == torch.float32
    assert torch.equal(ds.grid, torch.arange(5, dtype=torch.float64))
    assert ds.labels is None and tuple(ds.params.shape) == (20, 0)
    # every row is there, shuffled
    got = np.sort(ds.curves.numpy(), axis=0)
    assert np.allclose(got, np.sort(x.astype(np.float32), axis=0))


def test_npz_labels_and_params_stay_aligned_with_their_rows_after_shuffling(tmp_path):
    n = 50
    x = np.arange(n * 3, dtype=np.float64).reshape(n, 3)  # row i starts with 3 i
    y = np.arange(n) % 7
    params = np.stack([np.arange(n), -np.arange(n)], axis=1).astype(np.float64)
    np.savez(tmp_path / "d.npz", X=x, y=y, params=params, param_names=np.array(["a", "b"]))
    ds = generate(config_from_dict(dataset_cfg(tmp_path / "d.npz")))
    row = (ds.curves[:, 0] / 3).round().long()  # original row index of each shuffled row
    assert not torch.equal(row, torch.arange(n))  # shuffled by the seed ...
    assert torch.equal(ds.labels, row % 7)  # ... with labels and params in the same order
    assert torch.equal(ds.params[:, 0].long(), row) and ds.param_names == ["a", "b"]


def test_shuffle_is_fixed_by_the_seed_and_caps_apply(tmp_path):
    np.save(tmp_path / "x.npy", np.arange(200.0).reshape(100, 2))
    a = generate(config_from_dict({"seed": 3, **dataset_cfg(tmp_path / "x.npy")}))
    b = generate(config_from_dict({"seed": 3, **dataset_cfg(tmp_path / "x.npy")}))
    c = generate(config_from_dict({"seed": 4, **dataset_cfg(tmp_path / "x.npy")}))
    assert torch.equal(a.curves, b.curves) and not torch.equal(a.curves, c.curves)
    capped = generate(config_from_dict(dataset_cfg(tmp_path / "x.npy", max_rows=10)))
    assert capped.curves.shape[0] == 10
    assert generate(config_from_dict(dataset_cfg(tmp_path / "x.npy")), n=7).curves.shape[0] == 7


def test_csv_with_a_header_and_a_label_column(tmp_path):
    (tmp_path / "t.csv").write_text("f1,label,f2\n1.5,3,2\n0.5,1,4\n-1,3,0\n")
    a = read_array_file(tmp_path / "t.csv")
    assert a.x.tolist() == [[1.5, 2], [0.5, 4], [-1, 0]]
    assert a.labels.tolist() == [3, 1, 3]


def test_csv_without_a_header_is_all_features(tmp_path):
    (tmp_path / "t.csv").write_text("1,2,3\n4,5,6\n")
    a = read_array_file(tmp_path / "t.csv")
    assert a.x.tolist() == [[1, 2, 3], [4, 5, 6]] and a.labels is None


def test_images_scale_and_keras_layout(tmp_path):
    x_train = np.full((3, 4, 4), 255, dtype=np.uint8)
    x_test = np.zeros((2, 4, 4), dtype=np.uint8)
    np.savez(tmp_path / "m.npz", x_train=x_train, y_train=np.arange(3), x_test=x_test, y_test=np.arange(2))
    cfg = config_from_dict(dataset_cfg(tmp_path / "m.npz", image_shape=[4, 4], scale=255))
    ds = generate(cfg)
    assert tuple(ds.curves.shape) == (5, 16) and float(ds.curves.max()) == 1.0
    assert sorted(ds.labels.tolist()) == [0, 0, 1, 1, 2]
    assert cfg.family.image_shape == (4, 4)
    assert config_from_dict(dataset_cfg(tmp_path / "m.npz")).family.image_shape is None
    assert load_config(Path(__file__).parents[1] / "configs" / "smoke.yaml").family.image_shape is None


def test_an_explicit_grid_must_have_one_point_per_feature(tmp_path):
    np.save(tmp_path / "x.npy", np.ones((4, 3)))
    ok = generate(
        config_from_dict({**dataset_cfg(tmp_path / "x.npy"), "grid": {"kind": "points", "points": [1, 2, 5]}})
    )
    assert ok.grid.tolist() == [1, 2, 5]
    bad = config_from_dict(
        {**dataset_cfg(tmp_path / "x.npy"), "grid": {"kind": "linspace", "start": 0, "stop": 1, "num": 4}}
    )
    with pytest.raises(InputError, match="3 features per row but the config's grid has 4 points"):
        generate(bad)


@pytest.mark.parametrize(
    "raw, problem",
    [
        ({"family": {"name": "dataset"}}, "family.path"),
        ({"family": {"name": "dataset", "path": "x.txt"}}, "family.path"),
        ({"family": {"name": "dataset", "path": "x.npz", "image_shape": [28]}}, "family.image_shape"),
        ({"family": {"name": "dataset", "path": "x.npz", "scale": 0}}, "family.scale"),
        ({"family": {"name": "digits", "path": "x.npz"}}, "family.path"),
        ({"family": {"name": "normal"}, "grid": {"kind": "index"}}, "grid.kind"),
    ],
)
def test_bad_array_family_config_is_a_config_error(raw, problem):
    with pytest.raises(ConfigError, match=problem):
        config_from_dict(raw)


# --- bad files: exit 2, the path in the message, no run directory ------------------------------


def _write_bad(kind: str, d: Path) -> tuple[str, dict, str]:
    """(file name, extra family options, expected words) for each kind of bad input."""
    good = np.ones((5, 4))
    if kind == "missing":
        return "nope.npz", {}, "not found"
    if kind == "wrong_shape":
        np.save(d / "v.npy", np.ones(7))
        return "v.npy", {}, "expected 2-D"
    if kind == "image_3d_without_shape":
        np.save(d / "v.npy", np.ones((5, 4, 4)))
        return "v.npy", {}, "image_shape: [4, 4]"
    if kind == "image_shape_mismatch":
        np.save(d / "v.npy", good)
        return "v.npy", {"image_shape": [3, 3]}, "do not fit family.image_shape"
    if kind == "nan_inside":
        bad = good.copy()
        bad[3, 2] = np.nan
        np.savez(d / "v.npz", X=bad)
        return "v.npz", {}, "row 3, column 2"
    if kind == "labels_length":
        np.savez(d / "v.npz", X=good, y=np.arange(4))
        return "v.npz", {}, "4 labels for 5 rows"
    if kind == "labels_not_integers":
        np.savez(d / "v.npz", X=good, y=np.linspace(0, 1, 5))
        return "v.npz", {}, "labels y must be integers"
    if kind == "params_shape":
        np.savez(d / "v.npz", X=good, params=np.ones((3, 2)))
        return "v.npz", {}, "params have shape (3, 2)"
    if kind == "one_row":
        np.save(d / "v.npy", np.ones((1, 4)))
        return "v.npy", {}, "at least 2"
    if kind == "unknown_key":
        np.savez(d / "v.npz", Xs=good)
        return "v.npz", {}, "expected X"
    if kind == "csv_text":
        (d / "v.csv").write_text("a,b\n1,two\n")
        return "v.csv", {}, "not numeric CSV"
    if kind == "not_an_archive":
        (d / "v.npz").write_text("hello")
        return "v.npz", {}, "not a readable .npz"
    raise AssertionError(kind)


BAD = [
    "missing",
    "wrong_shape",
    "image_3d_without_shape",
    "image_shape_mismatch",
    "nan_inside",
    "labels_length",
    "labels_not_integers",
    "params_shape",
    "one_row",
    "unknown_key",
    "csv_text",
    "not_an_archive",
]


@pytest.mark.parametrize("kind", BAD)
def test_bad_data_file_exits_2_naming_the_path_and_creates_no_run_dir(cli, workdir, kind):
    name, extra, words = _write_bad(kind, workdir)
    (workdir / "bad.yaml").write_text(yaml.safe_dump(dataset_cfg(name, **extra)))
    result = cli("train", "bad.yaml", "-q")
    assert result.exit_code == 2, result.output
    message = result.stderr
    assert name in message and words in message, message
    assert "Traceback" not in result.output
    assert len(message.strip().splitlines()) == 1, message
    assert not (workdir / "runs").exists()


def test_digits_without_scikit_learn_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "sklearn.datasets", None)  # import fails
    with pytest.raises(InputError, match=r"pip install 'funcae\[images\]'"):
        generate(config_from_dict({"family": {"name": "digits"}}))


# --- training on images ------------------------------------------------------------------------


BARS_RUN = {
    "name": "bars",
    "seed": 0,
    "data": {"val_fraction": 0.15, "test_fraction": 0.15},
    "model": {"kind": "ae", "latent_dim": 8, "hidden": [64], "activation": "relu"},
    "train": {
        "epochs": 25,
        "batch_size": 32,
        "lr": 1.0e-2,
        "loss": "mse",
        "weight_penalty": 1.0e-4,
        "noise": {"kind": "mask", "rate": 0.3},
    },
}


@pytest.fixture
def bars_run(cli, workdir) -> Path:
    x, y = bars(400)
    np.savez(workdir / "bars.npz", X=x, y=y)
    cfg = {**BARS_RUN, "family": {"name": "dataset", "path": "bars.npz", "image_shape": [SIDE, SIDE]}}
    (workdir / "bars.yaml").write_text(yaml.safe_dump(cfg))
    result = cli("train", "bars.yaml", "-q")
    assert result.exit_code == 0, result.output
    return workdir / "runs" / "bars"


def test_denoising_autoencoder_trained_through_the_cli_beats_no_denoising(bars_run):
    test = json.loads((bars_run / "metrics.json").read_text())["test"]
    dn = test["denoising"]
    assert dn["noise"] == {"kind": "mask", "rate": 0.3}
    assert dn["pca_components"] == 8
    # corrupted inputs against the clean images: the trained model beats the corrupted input itself
    assert dn["model"]["sse_mean"] < 0.5 * dn["corrupted_input"]["sse_mean"], dn

    # ... and the same architecture untrained, on the same corrupted inputs
    trained = load_trained(RunDir(bars_run), torch.device("cpu"))
    prep = prepare(trained.cfg, dataset_for(trained.cfg, RunDir(bars_run)), torch.device("cpu"))
    torch.manual_seed(0)
    untrained = build_model(trained.ckpt["model_args"])
    part = prep.test
    before = denoising_figures(untrained, prep, trained.cfg, part, trained.cfg.train.noise)
    after = denoising_figures(trained.model, prep, trained.cfg, part, trained.cfg.train.noise)
    assert after["model"]["sse_mean"] == pytest.approx(dn["model"]["sse_mean"], rel=1e-5)
    assert after["model"]["sse_mean"] < 0.2 * before["model"]["sse_mean"], (before, after)
    assert before["corrupted_input"] == after["corrupted_input"]  # the same corruption both times

    # validation figures: clean and corrupted-input reconstruction error
    val = evaluate(trained.model, prep, prep.val, trained.cfg, 1.0)
    assert {"sse", "noisy_sse", "noisy_mse", "noisy_recon"} <= set(val)
    assert np.isfinite(val["noisy_sse"]).all() and not np.allclose(val["noisy_sse"], val["sse"])
    # labels travel with the run's data for plots coloured by label
    assert prep.labels is not None and prep.labels.shape[0] == prep.x.shape[0]


def test_metrics_noise_defaults_to_a_mask_for_image_runs_only(tmp_path):
    np.save(tmp_path / "x.npy", np.ones((4, 4)))
    plain = config_from_dict(dataset_cfg(tmp_path / "x.npy"))
    images = config_from_dict(dataset_cfg(tmp_path / "x.npy", image_shape=[2, 2]))
    assert metrics_noise(plain) is None
    assert metrics_noise(images).kind == "mask"
    gaussian = config_from_dict({**dataset_cfg(tmp_path / "x.npy"), "train": {"noise": {"kind": "gaussian"}}})
    assert metrics_noise(gaussian).kind == "gaussian"


def test_splits_of_file_data_are_random_rows(tmp_path):
    """File rows are often sorted (by label): after the seeded shuffle each split mixes them."""
    x = np.repeat(np.eye(2), 50, axis=0)  # rows sorted by class
    np.savez(tmp_path / "s.npz", X=x, y=np.repeat([0, 1], 50))
    ds = generate(config_from_dict(dataset_cfg(tmp_path / "s.npz")))
    sp = split_sizes(100, 0.2, 0.2)
    for part in (sp.train, sp.val, sp.test):
        assert set(ds.labels[part].tolist()) == {0, 1}


@pytest.mark.slow
@pytest.mark.parametrize("config, plots", [("digits.yaml", []), ("digits_denoising.yaml", ["--no-plots"])])
def test_digits_configs_run_end_to_end(cli, workdir, config, plots):
    pytest.importorskip("sklearn", reason="the digits family needs scikit-learn: pip install 'funcae[images]'")
    result = cli("train", f"configs/{config}", "--set", "train.epochs=2", "-q", *plots)
    assert result.exit_code == 0, result.output
    cfg = load_config(workdir / "configs" / config)
    metrics = json.loads((workdir / "runs" / cfg.name / "metrics.json").read_text())
    test = metrics["test"]
    assert metrics["family"] == "digits" and test["n_curves"] == round(1797 * 0.15)
    assert test["pca"]["components"] == cfg.model.latent_dim
    assert set(test["denoising"]) == {"noise", "pca_components", "model", "pca", "corrupted_input"}
