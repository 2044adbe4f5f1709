"""MLflow: one MLflow run per funcae run (a sweep: per trial), through `MlflowClient` (no global active run, so
sweep workers and the Python API can track side by side).

Params: the flattened resolved config (`train.lr`, `model.hidden`, ...); metrics: each history column per epoch
(step = epoch: `train_loss`, `val_loss`, `lr`, ...), then the final metrics (`test_sse_mean`, `pca_sse_mean`,
...); tags: `funcae.run_dir` (and a trial's `funcae.study`, `funcae.trial`); artifacts: config.yaml,
metrics.json, history.csv and the figures under `figures/`. mlflow (mlflow-skinny is enough) is imported when
a run starts. An http(s) server is probed first (a socket connect, PROBE_S): a server that is down costs one
warning instead of MLflow's own retries (minutes of back-off).
"""

from __future__ import annotations

import logging
import os
import socket
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from funcae_cli.config import MlflowTrackConfig
from funcae_cli.tracking.base import FinalInfo, RunInfo, flatten

PROBE_S = 5.0  # seconds a tracking server gets to accept a connection
BATCH = 100  # MLflow's log_batch limit on params (and a safe number of metrics per call)
PARAM_CHARS = 6000  # MLflow's limit on a param value's length


def require() -> None:
    from mlflow.tracking import MlflowClient  # noqa: F401


def probe(uri: str, timeout: float = PROBE_S) -> None:
    """ConnectionError when an http(s) tracking server does not accept a connection; other URIs pass."""
    u = urlparse(uri)
    if u.scheme not in ("http", "https"):
        return
    port = u.port or (443 if u.scheme == "https" else 80)
    try:
        socket.create_connection((u.hostname or "localhost", port), timeout=timeout).close()
    except OSError as e:
        raise ConnectionError(f"tracking server {u.scheme}://{u.hostname}:{port} not reachable ({e})") from None


class MlflowTracker:
    name = "mlflow"

    def __init__(self, cfg: MlflowTrackConfig, default_db: Path, default_artifacts: Path):
        """`default_db`, `default_artifacts`: the store used when neither the config nor $MLFLOW_TRACKING_URI
        names one (runs/mlflow.db, runs/mlartifacts)."""
        self.default_db = None if cfg.tracking_uri or os.environ.get("MLFLOW_TRACKING_URI") else default_db
        self.uri = cfg.tracking_uri or os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{default_db.resolve()}"
        self.experiment = cfg.experiment
        self.artifacts = cfg.artifact_location
        if self.artifacts is None and self.default_db is not None:
            self.artifacts = default_artifacts.resolve().as_uri()
        self.client: Any = None
        self.run_id: str | None = None

    def start(self, run: RunInfo) -> None:
        for name in ("mlflow", "alembic"):  # their INFO lines (creating tables, migrations) are not ours to print
            logging.getLogger(name).setLevel(logging.WARNING)
        probe(self.uri)
        if self.default_db is not None:
            self.default_db.parent.mkdir(parents=True, exist_ok=True)
        from mlflow.entities import Param
        from mlflow.tracking import MlflowClient

        self.client = MlflowClient(tracking_uri=self.uri)
        exp_id = self._experiment(self.experiment or run.experiment)
        self.run_id = self.client.create_run(exp_id, run_name=run.name, tags=run.tags).info.run_id
        params = [Param(k, str(v)[:PARAM_CHARS]) for k, v in flatten(run.config).items()]
        for i in range(0, len(params), BATCH):
            self.client.log_batch(self.run_id, params=params[i : i + BATCH])

    def _experiment(self, name: str) -> str:
        from mlflow.exceptions import MlflowException

        exp = self.client.get_experiment_by_name(name)
        if exp is not None:
            return exp.experiment_id
        try:
            return self.client.create_experiment(name, artifact_location=self.artifacts)
        except MlflowException:  # another worker created it first
            exp = self.client.get_experiment_by_name(name)
            if exp is None:
                raise
            return exp.experiment_id

    def _metrics(self, values: dict[str, float], step: int) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        metrics = [Metric(k, float(v), now, step) for k, v in values.items()]
        for i in range(0, len(metrics), BATCH):
            self.client.log_batch(self.run_id, metrics=metrics[i : i + BATCH])

    def epoch(self, row: dict[str, Any]) -> None:
        values = {k: v for k, v in row.items() if k != "epoch" and isinstance(v, (int, float))}
        self._metrics(values, int(row["epoch"]))

    def final(self, info: FinalInfo) -> None:
        self._metrics(info.metrics, info.epoch)
        for path in info.files:
            if Path(path).exists():
                self.client.log_artifact(self.run_id, str(path))
        for path in info.figures:
            self.client.log_artifact(self.run_id, str(path), artifact_path="figures")

    def close(self, status: str) -> None:
        if self.run_id is not None:
            self.client.set_terminated(self.run_id, status=status)
            self.run_id = None
