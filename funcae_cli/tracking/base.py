"""The tracker interface and the fan-out that keeps tracking off the training thread.

A backend (tensorboard_backend.py, mlflow_backend.py) implements `Tracker`: `start` (config, tags), `epoch`
(one history row), `final` (the final metrics, figures and files), `close`. `Tracking` hands every call to one
background thread, so a slow or dead tracking server never blocks a training step; a backend that raises is
disabled with one warning and the run goes on. Nothing here prints: `Tracking.close` returns the warnings to the job.
"""

from __future__ import annotations

import queue
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from funcae_cli.errors import FuncaeError

INSTALL_HINT = "pip install 'funcae[tracking]'"


class TrackingUnavailable(FuncaeError):
    """A tracker the user asked for cannot be imported (exit 2)."""


@dataclass
class RunInfo:
    """What every backend is told when a run starts."""

    name: str  # the run's name (a trial: <study>-trial<n>)
    run_dir: Path  # where the run's files end up (a trial: its final trials/<n>/)
    logdir: Path  # the run's own folder for TensorBoard event files (RunDir.tensorboard)
    config: dict[str, Any]  # the resolved config (Config.to_dict()), `track` section included
    config_text: str  # the same, as the config.yaml written into the run directory
    experiment: str  # MLflow experiment name when the config gives none: the run's name or the study's
    start_epoch: int = 0  # > 0 when resuming
    tags: dict[str, str] = field(default_factory=dict)  # funcae.run_dir, and for a trial funcae.study, funcae.trial


@dataclass
class FinalInfo:
    """What a run ends with."""

    epoch: int  # the last epoch trained (the step of the final scalars)
    metrics: dict[str, float]  # final_metrics(metrics.json)
    figures: list[Path]  # PNG files
    files: list[Path]  # config.yaml, metrics.json, history.csv: logged as artifacts by backends that keep files


class Tracker(Protocol):
    name: str

    def start(self, run: RunInfo) -> None: ...

    def epoch(self, row: dict[str, Any]) -> None: ...

    def final(self, info: FinalInfo) -> None: ...

    def close(self, status: str) -> None:
        """`status`: FINISHED, FAILED or KILLED (MLflow's run states)."""
        ...


def flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """{"train": {"lr": 1e-3}} -> {"train.lr": 1e-3}; lists and None as their text (tracking params are scalars)."""
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict) and v:
            out.update(flatten(v, key + "."))
        elif isinstance(v, (bool, int, float, str)):
            out[key] = v
        else:
            out[key] = str(v)
    return out


def final_metrics(metrics: dict[str, Any]) -> dict[str, float]:
    """The numbers of metrics.json a run is compared by: test SSE (mean, median, p95), the PCA baseline with as
    many components as the latent code, relative L2, best validation loss and epoch, wall time."""
    t = metrics.get("test") or {}
    pca = t.get("pca") or {}
    named = {
        "test_sse_mean": t.get("sse_mean"),
        "test_sse_median": t.get("sse_median"),
        "test_sse_p95": t.get("sse_p95"),
        "test_rel_l2_median": t.get("rel_l2_median"),
        "pca_sse_mean": pca.get("sse_mean"),
        "best_val_loss": metrics.get("best_val_loss"),
        "best_epoch": metrics.get("best_epoch"),
        "wall_seconds": metrics.get("wall_seconds"),
    }
    return {k: float(v) for k, v in named.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}


def _first_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[0][:200]}" if text else type(e).__name__


_STOP = object()


class Tracking:
    """The run's trackers, called in order on one background thread. Every method returns at once."""

    def __init__(self, trackers: list[Tracker], timeout: float = 30.0):
        self.names = [t.name for t in trackers]
        self.timeout = timeout
        self._active = list(trackers)
        self._warnings: list[str] = []
        self._queue: queue.Queue[Any] = queue.Queue()
        self._thread: threading.Thread | None = None  # started by `start`: a run that fails before has none

    def __bool__(self) -> bool:
        return bool(self.names)

    def _work(self) -> None:
        while True:
            item = self._queue.get()
            if item is _STOP:
                return
            method, args = item
            for t in list(self._active):
                try:
                    getattr(t, method)(*args)
                except Exception as e:  # a tracker never breaks training: it is dropped, with one warning
                    self._active.remove(t)
                    self._warnings.append(f"tracking: {t.name} disabled ({_first_line(e)}); the run goes on without it")
                    if method != "close":
                        try:
                            t.close("FAILED")
                        except Exception:
                            pass

    def _put(self, method: str, *args: Any) -> None:
        if self._thread is not None:
            self._queue.put((method, args))

    def start(self, run: RunInfo) -> None:
        if self._active and self._thread is None:
            self._thread = threading.Thread(target=self._work, name="funcae-tracking", daemon=True)
            self._thread.start()
        self._put("start", run)

    def epoch(self, row: dict[str, Any]) -> None:
        self._put("epoch", dict(row))

    def final(self, info: FinalInfo) -> None:
        self._put("final", info)

    def close(self, status: str = "FINISHED") -> list[str]:
        """Flush (waiting at most `timeout` seconds) and close; returns the warnings of the whole run."""
        if self._thread is None:
            return []
        self._put("close", status)
        self._queue.put(_STOP)
        self._thread.join(self.timeout)
        if self._thread.is_alive():
            left = ", ".join(t.name for t in self._active)
            self._warnings.append(
                f"tracking: {left} still writing after {self.timeout:g}s (track.timeout); the rest is dropped"
            )
        self._thread = None
        return list(self._warnings)
