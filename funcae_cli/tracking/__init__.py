"""Experiment tracking (TensorBoard, MLflow): the optional extra `pip install 'funcae[tracking]'`.

`TRACKERS` is the registry of backends; each imports its library only when a run uses it, so nothing here
loads torch, tensorboard or mlflow. The train job calls `open_tracking` (which checks each chosen library
imports: TrackingUnavailable, exit 2, names the extra) and feeds the returned `Tracking` its epochs.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from funcae_cli.config import MlflowTrackConfig, TrackConfig
from funcae_cli.errors import OptionError
from funcae_cli.tracking import mlflow_backend, tensorboard_backend
from funcae_cli.tracking.base import (
    INSTALL_HINT,
    FinalInfo,
    RunInfo,
    Tracker,
    Tracking,
    TrackingUnavailable,
    final_metrics,
)

__all__ = ["TRACKERS", "FinalInfo", "RunInfo", "Tracking", "final_metrics", "open_tracking", "with_tracks"]


@dataclass(frozen=True)
class Backend:
    package: str  # what pip installs (the `tracking` extra brings it)
    enabled: Callable[[TrackConfig], bool]
    switch_on: Callable[[TrackConfig], TrackConfig]  # `--track NAME`
    require: Callable[[], None]  # ImportError when the library is missing
    build: Callable[[TrackConfig, tuple[Path, Path]], Tracker]  # (config, default MLflow store)


def _mlflow_settings(t: TrackConfig) -> MlflowTrackConfig:
    return t.mlflow if isinstance(t.mlflow, MlflowTrackConfig) else MlflowTrackConfig()


TRACKERS: dict[str, Backend] = {
    "tensorboard": Backend(
        "tensorboard",
        enabled=lambda t: t.tensorboard,
        switch_on=lambda t: dataclasses.replace(t, tensorboard=True),
        require=tensorboard_backend.require,
        build=lambda t, store: tensorboard_backend.TensorBoardTracker(),
    ),
    "mlflow": Backend(
        "mlflow-skinny",
        enabled=lambda t: t.mlflow not in (None, False),
        switch_on=lambda t: dataclasses.replace(t, mlflow=_mlflow_settings(t)),
        require=mlflow_backend.require,
        build=lambda t, store: mlflow_backend.MlflowTracker(_mlflow_settings(t), *store),
    ),
}


def with_tracks(track: TrackConfig, names: list[str] | None) -> TrackConfig:
    """The config's `track` section with the backends named by `--track` switched on."""
    for name in names or []:
        if name not in TRACKERS:
            raise OptionError("track", f"unknown tracker {name!r}; allowed: {', '.join(TRACKERS)}")
        track = TRACKERS[name].switch_on(track)
    return track


def open_tracking(track: TrackConfig, mlflow_store: tuple[Path, Path]) -> Tracking:
    """The trackers `track` turns on, running on their own thread (none on: a Tracking that does nothing)."""
    trackers = []
    for name, b in TRACKERS.items():
        if not b.enabled(track):
            continue
        try:
            b.require()
        except ImportError as e:
            raise TrackingUnavailable(
                f"track.{name}: tracking with {name} needs the {b.package} package, which cannot be imported "
                f"({e}); install it with: {INSTALL_HINT}"
            ) from None
        trackers.append(b.build(track, mlflow_store))
    return Tracking(trackers, timeout=track.timeout)
