"""Tracking through the real commands, read back with the real libraries: TensorBoard's EventAccumulator on the
event files, MlflowClient on an SQLite store; a dead server; a missing package."""

from __future__ import annotations

import csv
import json
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from .conftest import REPO, ok, usage_error

pytest.importorskip("tensorboard", reason="the `tracking` extra: pip install 'funcae[tracking]'")
pytest.importorskip("mlflow", reason="the `tracking` extra: pip install 'funcae[tracking]'")

pytestmark = pytest.mark.slow

EPOCHS = 4
SMALL = ["--set", f"train.epochs={EPOCHS}", "--set", "data.n=600"]


def history(run: Path) -> dict[str, list[float]]:
    with (run / "history.csv").open() as f:
        rows = list(csv.DictReader(f))
    return {k: [float(r[k]) for r in rows] for k in rows[0]}


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]  # nothing listens once the socket is closed


def test_tensorboard_event_files_hold_scalars_per_epoch_hparams_config_and_figures(cli, workdir):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from tensorboard.plugins.hparams import plugin_data_pb2

    ok(cli("train", "configs/smoke.yaml", "--quiet", "--track", "tensorboard", *SMALL))
    run = workdir / "runs" / "smoke"
    acc = EventAccumulator(str(run / "tensorboard"), size_guidance={"scalars": 0, "images": 0, "tensors": 0})
    acc.Reload()
    hist = history(run)
    for tag, column in [("train/loss", "train_loss"), ("val/loss", "val_loss"), ("lr", "lr")]:
        events = acc.Scalars(tag)
        assert [e.step for e in events] == list(range(1, EPOCHS + 1))
        assert [e.value for e in events] == pytest.approx(hist[column], rel=1e-6)  # stored as float32
    metrics = json.loads((run / "metrics.json").read_text())
    assert acc.Scalars("final/test_sse_mean")[-1].value == pytest.approx(metrics["test"]["sse_mean"], rel=1e-6)
    assert acc.Scalars("final/pca_sse_mean")[-1].value == pytest.approx(metrics["test"]["pca"]["sse_mean"], rel=1e-6)
    # hyperparameters: the session's values are the config's
    content = acc.PluginTagToContent("hparams")
    assert {"_hparams_/experiment", "_hparams_/session_start_info", "_hparams_/session_end_info"} <= set(content)
    start = plugin_data_pb2.HParamsPluginData.FromString(content["_hparams_/session_start_info"])
    hp = start.session_start_info.hparams
    smoke = yaml.safe_load((REPO / "configs" / "smoke.yaml").read_text())
    assert hp["train.lr"].number_value == pytest.approx(float(smoke["train"]["lr"]))
    assert hp["family.name"].string_value == smoke["family"]["name"]
    assert hp["model.hidden"].string_value == str(smoke["model"]["hidden"])
    # the config as text, and every figure as the PNG written in plots/
    text = acc.Tensors("config/text_summary")[0].tensor_proto.string_val[0].decode()
    assert yaml.safe_load(text.strip("`\n").removeprefix("yaml\n")) == yaml.safe_load((run / "config.yaml").read_text())
    pngs = {p.stem: p.read_bytes() for p in (run / "plots").glob("*.png")}
    assert pngs and set(acc.Tags()["images"]) == {f"figures/{k}" for k in pngs}
    for stem, data in pngs.items():
        assert acc.Images(f"figures/{stem}")[-1].encoded_image_string == data


def test_mlflow_run_holds_params_metric_history_final_metrics_and_artifacts(cli, workdir):
    from mlflow.tracking import MlflowClient

    uri = f"sqlite:///{workdir / 'mlflow.db'}"
    args = ["--set", f"track.mlflow.tracking_uri={uri}", "--set", "track.mlflow.experiment=exp1"]
    args += ["--set", f"track.mlflow.artifact_location={(workdir / 'artifacts').as_uri()}"]
    ok(cli("train", "configs/smoke.yaml", "--quiet", *SMALL, *args))
    run_dir = workdir / "runs" / "smoke"
    client = MlflowClient(tracking_uri=uri)
    (run,) = client.search_runs([client.get_experiment_by_name("exp1").experiment_id])
    assert run.info.status == "FINISHED" and run.info.run_name == "smoke"
    assert run.data.tags["funcae.run_dir"] == str(run_dir.resolve())
    smoke = yaml.safe_load((REPO / "configs" / "smoke.yaml").read_text())
    p = run.data.params
    assert float(p["train.lr"]) == float(smoke["train"]["lr"]) and p["model.hidden"] == str(smoke["model"]["hidden"])
    assert int(p["train.epochs"]) == EPOCHS and p["family.name"] == smoke["family"]["name"]
    hist = history(run_dir)
    for key in ("train_loss", "val_loss", "lr"):
        steps = sorted(client.get_metric_history(run.info.run_id, key), key=lambda m: m.step)
        assert [m.step for m in steps] == list(range(1, EPOCHS + 1))
        assert [m.value for m in steps] == pytest.approx(hist[key], rel=1e-9)
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert run.data.metrics["test_sse_mean"] == pytest.approx(metrics["test"]["sse_mean"], rel=1e-12)
    assert run.data.metrics["pca_sse_mean"] == pytest.approx(metrics["test"]["pca"]["sse_mean"], rel=1e-12)
    top = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"config.yaml", "metrics.json", "history.csv", "figures"} <= top
    figures = {Path(a.path).name for a in client.list_artifacts(run.info.run_id, "figures")}
    assert figures == {p.name for p in (run_dir / "plots").glob("*.png")} and figures
    got = client.download_artifacts(run.info.run_id, "config.yaml", str(workdir))
    assert Path(got).read_text() == (run_dir / "config.yaml").read_text()


def test_a_dead_tracking_server_is_one_warning_and_the_run_completes(cli, workdir):
    url = f"http://127.0.0.1:{closed_port()}"
    r = cli("train", "configs/smoke.yaml", "--quiet", "--track", "mlflow", *SMALL,
            "--set", f"track.mlflow.tracking_uri={url}")  # fmt: skip
    ok(r)
    warnings = [line for line in r.stderr.splitlines() if line.startswith("warning:")]
    assert len(warnings) == 1 and "mlflow" in warnings[0] and url.removeprefix("http://") in warnings[0], r.stderr
    assert len(history(workdir / "runs" / "smoke")["epoch"]) == EPOCHS
    assert (workdir / "runs" / "smoke" / "metrics.json").exists()


@pytest.mark.parametrize("name, module", [("mlflow", "mlflow"), ("tensorboard", "tensorboard")])
def test_track_without_the_package_is_exit_2_naming_the_extra(workdir, name, module):
    code = (
        f"import sys; sys.modules[{module!r}] = None; from funcae_cli.cli import main; "
        f"sys.exit(main(['train', 'configs/smoke.yaml', '--track', {name!r}]))"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=workdir)
    assert r.returncode == 2, r.stderr
    assert r.stderr.startswith("error:") and "Traceback" not in r.stderr
    assert name in r.stderr and "funcae[tracking]" in r.stderr
    assert not (workdir / "runs").exists()  # nothing written


def test_an_unknown_tracker_is_exit_2(cli, workdir):
    usage_error(cli("train", "configs/smoke.yaml", "--track", "wandb"), "--track", "wandb", "tensorboard, mlflow")


def test_a_sweeps_trials_are_runs_tagged_with_study_and_trial_and_the_study_logs_its_figures(cli, workdir):
    from mlflow.tracking import MlflowClient

    uri = f"sqlite:///{workdir / 'mlflow.db'}"
    sweep = {
        "name": "tracked",
        "base": "../smoke.yaml",
        "overrides": {"train.epochs": 2, "data.n": 400, "track.mlflow.tracking_uri": uri},
        "space": {"train.lr": {"log_uniform": [1.0e-3, 1.0e-2]}},
        "objective": {"metric": "test.sse_mean"},
        "sampler": {"name": "random", "seed": 0},
        "pruner": {"name": "none"},
        "trials": 2,
    }
    path = workdir / "configs" / "sweeps" / "tracked.yaml"
    path.write_text(yaml.safe_dump(sweep))
    ok(cli("sweep", "run", str(path), "--quiet", "--track", "tensorboard"))
    client = MlflowClient(tracking_uri=uri)
    runs = client.search_runs([client.get_experiment_by_name("tracked").experiment_id])
    trials = sorted((r for r in runs if "funcae.trial" in r.data.tags), key=lambda r: int(r.data.tags["funcae.trial"]))
    assert [r.data.tags["funcae.trial"] for r in trials] == ["0", "1"]
    for r in trials:
        assert r.data.tags["funcae.study"] == "tracked" and r.info.status == "FINISHED"
        trial_dir = workdir / "runs" / "tracked" / "trials" / r.data.tags["funcae.trial"]
        assert r.data.tags["funcae.run_dir"] == str(trial_dir.resolve())
        stored = json.loads((trial_dir / "metrics.json").read_text())
        assert r.data.metrics["test_sse_mean"] == pytest.approx(stored["test"]["sse_mean"], rel=1e-12)
        trial_cfg = yaml.safe_load((trial_dir / "config.yaml").read_text())
        assert float(r.data.params["train.lr"]) == trial_cfg["train"]["lr"]
        assert any((trial_dir / "tensorboard").glob("events.out.tfevents.*"))  # --track tensorboard, per trial
    (study_run,) = [r for r in runs if r.data.tags.get("funcae.kind") == "study"]
    figures = {Path(a.path).name for a in client.list_artifacts(study_run.info.run_id, "figures")}
    assert figures == {p.name for p in (workdir / "runs" / "tracked" / "plots").glob("*.png")} and figures
