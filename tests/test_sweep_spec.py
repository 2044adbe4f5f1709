"""Sweep files and options: every shipped sweep loads; a bad sweep file, storage URL or option is exit 2 with one
line naming what was wrong, and nothing is written (no study, no trial). No trial trains here."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from funcae_cli.sweeps.space import DISTRIBUTIONS, encode_choice, parse_dist
from funcae_cli.sweeps.spec import TRAINING_METRICS, load_sweep, metric_value
from funcae_cli.sweeps.storage import display_url, normalize_url
from funcae_cli.sweeps.workers import worker_device, worker_threads

from .conftest import CONFIGS, usage_error

GOOD = {
    "name": "bad",
    "base": "../smoke.yaml",
    "overrides": {"train.epochs": 2, "data.n": 600},
    "space": {"train.lr": {"log_uniform": [1.0e-3, 1.0e-2]}, "model.hidden": {"choice": [[16, 16], [32, 32]]}},
    "trials": 2,
}

# case -> (changes to GOOD (None deletes a key), extra CLI args, pieces the one-line message must hold)
ROTTEN = {
    "unknown space key": (
        {"space": {"model.latnet_dim": {"int": [2, 4]}}},
        [],
        ["space.model.latnet_dim", "did you mean model.latent_dim?"],
    ),
    "unknown section in a space key": ({"space": {"modle.hidden": {"choice": [[8]]}}}, [], ["space.modle", "model"]),
    "unknown sweep key": ({"trails": 3}, [], ["trails", "did you mean trials?"]),
    "unknown distribution": (
        {"space": {"train.lr": {"loguniform": [1.0e-4, 1.0e-2]}}},
        [],
        ["space.train.lr.loguniform", "did you mean log_uniform?"],
    ),
    "log scale from zero": ({"space": {"train.lr": {"log_uniform": [0, 0.01]}}}, [], ["space.train.lr", "low > 0"]),
    "one bound": ({"space": {"train.lr": {"uniform": [0.001]}}}, [], ["space.train.lr.uniform", "two numbers"]),
    "low above high": ({"space": {"model.latent_dim": {"int": [6, 2]}}}, [], ["space.model.latent_dim", "low"]),
    "non-integer int": ({"space": {"model.latent_dim": {"int": [2, 4.5]}}}, [], ["space.model.latent_dim.int"]),
    "value out of the config's range": (
        {"space": {"train.lr": {"uniform": [-1, 1]}}},
        [],
        ["space.train.lr", "must be > 0"],
    ),
    "choice the config refuses": (
        {"space": {"model.activation": {"choice": ["relu", "sigmoid"]}}},
        [],
        ["space.model.activation", "sigmoid"],
    ),
    "empty space": ({"space": {}}, [], ["space"]),
    "unknown metric": ({"objective": {"metric": "test.sse"}}, [], ["objective.metric", "test.sse_mean"]),
    "grid of a continuous range": ({"sampler": {"name": "grid"}}, [], ["sampler.name", "space.train.lr"]),
    "pruning a maximized metric": ({"objective": {"direction": "maximize"}}, [], ["pruner.name", "minimize"]),
    "missing base": ({"base": "../nope.yaml"}, [], ["nope.yaml"]),
    "bad override": ({"overrides": {"train.epoch": 3}}, [], ["overrides", "train.epoch", "did you mean train.epochs?"]),
    "storage that cannot connect": (
        {},
        ["--storage", "postgresql://funcae:secret@127.0.0.1:1/nodb"],
        ["--storage", "cannot connect", "127.0.0.1:1"],
    ),
    "storage that is not a URL": ({}, ["--storage", "no url here"], ["--storage", "not a database URL"]),
    "storage without a driver": ({}, ["--storage", "mysql://u:p@127.0.0.1/db"], ["--storage", "driver"]),
    "bad device": ({}, ["--device", "tpu"], ["--device", "tpu"]),
    "bad study name": ({}, ["--study", "../up"], ["--study", "../up"]),
    "trials beyond the grid": (
        {"sampler": {"name": "grid"}, "space": {"model.latent_dim": {"int": [2, 3]}}, "trials": None},
        ["--trials", "5"],
        ["--trials", "2 points"],
    ),
}


def _write(path: Path, changes: dict) -> Path:
    doc = dict(GOOD)
    for k, v in changes.items():
        if v is None:
            doc.pop(k, None)
        else:
            doc[k] = v
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


@pytest.mark.parametrize("case", list(ROTTEN))
def test_bad_sweep_is_exit_2_with_a_clear_line_and_starts_nothing(cli, workdir, case):
    changes, extra, pieces = ROTTEN[case]
    path = _write(workdir / "configs" / "sweeps" / "bad.yaml", changes)
    result = cli("sweep", path, *extra)
    usage_error(result, *pieces)
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert "secret" not in result.stderr  # a storage URL's password is never shown
    assert not (workdir / "runs").exists()


def test_malformed_sweep_yaml_names_the_line(cli, workdir):
    path = workdir / "configs" / "sweeps" / "bad.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("name: x\nbase: ../smoke.yaml\nspace:\n  train.lr: {uniform: [0.001, 0.01]\n")
    usage_error(cli("sweep", path), "bad.yaml", "line")
    assert not (workdir / "runs").exists()


def test_several_problems_are_listed_together(cli, workdir):
    path = _write(workdir / "s.yaml", {"trails": 3, "space": {"train.lr": {"normal": [0, 1]}}})
    result = cli("sweep", path)
    assert result.exit_code == 2
    assert "2 problems" in result.stderr and "trails" in result.stderr and "space.train.lr.normal" in result.stderr


def test_a_usage_error_of_the_sweep_command_is_exit_2(cli, workdir):
    path = _write(workdir / "configs" / "sweeps" / "ok.yaml", {})
    result = cli("sweep", path, "--workers", "0")
    assert result.exit_code == 2 and "--workers" in result.stderr
    assert not (workdir / "runs").exists()


def test_show_without_a_study_is_exit_2(cli, workdir):
    usage_error(cli("sweep", "show", "runs/nothing"), "runs/nothing")
    usage_error(cli("sweep", "show"), "--storage")
    usage_error(cli("sweep", "show", "--storage", "sqlite:///runs/none.db", "--study", "x"), "runs/none.db")
    assert not (workdir / "runs").exists()


# --- the shipped sweeps and the pieces -------------------------------------------------------------------------


@pytest.mark.parametrize("path", sorted((CONFIGS / "sweeps").glob("*.yaml")), ids=lambda p: p.name)
def test_every_shipped_sweep_loads(path: Path) -> None:
    spec = load_sweep(path)
    assert spec.space and spec.trials >= 10
    assert Path(spec.base_path).resolve().parent == CONFIGS.resolve()
    header = path.read_text().splitlines()[:3]
    assert any(f"funcae sweep configs/sweeps/{path.name}" in line for line in header)  # the command that runs it


def test_objective_metrics_are_in_a_trained_runs_metrics(smoke_run: Path) -> None:
    metrics = json.loads((smoke_run / "metrics.json").read_text())
    for name in TRAINING_METRICS:
        assert isinstance(metric_value(metrics, name), float), name


def test_distributions_suggest_and_decode_config_values() -> None:
    class FakeTrial:  # records what Optuna would be asked
        def suggest_categorical(self, name, choices):
            return choices[-1]

        def suggest_int(self, name, low, high, step, log):
            return high

        def suggest_float(self, name, low, high, step, log):
            return low

    problems: list[str] = []
    hidden = parse_dist({"choice": [[64, 64], [128, 128, 128]]}, "space.model.hidden", problems)
    width = parse_dist({"int": [16, 64], "step": 16}, "space.w", problems)
    lr = parse_dist({"log_uniform": [1e-4, 1e-2]}, "space.train.lr", problems)
    gamma = parse_dist({"uniform": [0.9, 1.0], "step": 0.05}, "space.g", problems)
    assert problems == []
    assert hidden.choices == ("[64, 64]", "[128, 128, 128]")  # what Optuna stores and the dashboard shows
    assert hidden.decode(hidden.suggest(FakeTrial(), "model.hidden")) == [128, 128, 128]
    assert width.grid() == [16, 32, 48, 64] and width.decode(width.suggest(FakeTrial(), "w")) == 64
    assert lr.grid() is None and lr.corners() == [1e-4, 1e-2]
    assert gamma.grid() == pytest.approx([0.9, 0.95, 1.0])
    assert encode_choice("relu") == "relu" and encode_choice({"name": "cosine"}) == "{name: cosine}"
    assert set(DISTRIBUTIONS) == {"uniform", "log_uniform", "int", "log_int", "choice"}


def test_threads_are_split_between_workers_and_gpus_shared_out() -> None:
    assert [worker_threads(k, cores=2) for k in (1, 2, 3)] == [2, 1, 1]
    assert worker_threads(4, cores=16) == 4
    assert [worker_device("cuda", i, cuda_devices=2) for i in range(3)] == ["cuda:0", "cuda:1", "cuda:0"]
    assert worker_device("auto", 3, cuda_devices=0) == "auto"
    assert worker_device("cuda:1", 0, cuda_devices=2) == "cuda:1" and worker_device("cpu", 1, cuda_devices=2) == "cpu"


def test_storage_urls() -> None:
    assert normalize_url("postgresql://u:pw@h:5432/db").startswith("postgresql+psycopg://u:pw@h:5432/db")
    assert display_url("postgresql+psycopg://u:pw@h/db") == "postgresql+psycopg://u:***@h/db"
