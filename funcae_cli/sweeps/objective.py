"""One trial: the base config with the trial's sampled values, trained through `run_train` into its own run
directory, each epoch's validation loss reported to Optuna, which may prune it.

The trial trains in `trials/.<n>.partial/` and is renamed to `trials/<n>/` when it ends, with a `trial.json`
saying how (complete, pruned, failed), so a `trials/<n>/` is never half-written; a partial folder left by a
killed worker is removed by the next worker's turn (study.py). A trial stopped by SIGINT/SIGTERM leaves no run
directory: it is re-queued with the same parameters and runs again when the sweep resumes.
"""

from __future__ import annotations

import math
import os
import shutil
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import optuna

from funcae_cli.device import resolve_device
from funcae_cli.errors import DivergedError, FuncaeError, Interrupted, user_message
from funcae_cli.files import atomic_write_json, json_safe
from funcae_cli.jobs.heldout import SWEEP_SEED, inversion_residual
from funcae_cli.jobs.train import Callbacks, run_train
from funcae_cli.stop import StopFlag
from funcae_cli.store.rundir import RunDir
from funcae_cli.store.trained import load_trained
from funcae_cli.sweeps.spec import AFTER_TRAINING_METRICS, SweepSpec, metric_value, trial_config
from funcae_cli.sweeps.sweepdir import SweepDir

# The trial's user attributes in the storage (shown by optuna-dashboard; read by results.py).
ATTR_WORKER = "funcae.worker"  # {host, pid}: set first, so a trial without it never started (study.py)
ATTR_VALUES = "funcae.values"  # dotted key -> the config value (lists as lists)
ATTR_CONFIG = "funcae.config"  # the trial's resolved config: best.yaml comes from it, on any machine
ATTR_ERROR = "funcae.error"  # why it failed (diverged, invalid config): a finished trial, counted in N
ATTR_INTERRUPTED = "funcae.interrupted"  # stopped by a signal: not counted, re-queued
ATTR_EPOCHS = "funcae.epochs"  # epochs trained (a pruned trial: when it was pruned)


def worker_id() -> dict[str, Any]:
    return {"host": socket.gethostname(), "pid": os.getpid()}


@dataclass
class TrialContext:
    """What every trial of one worker shares."""

    spec: SweepSpec
    study: str
    sd: SweepDir
    device: str
    stop: StopFlag
    on_start: Callable[[int, dict[str, Any]], None] | None = None  # (trial number, config values)
    track: list[str] | None = None  # `--track`: trackers switched on over the base config's `track` section
    on_warning: Callable[[int, str], None] | None = None  # (trial number, a tracking warning)


def _reporter(trial: optuna.Trial, rows: list[dict[str, Any]]) -> Callable[[dict[str, Any]], None]:
    """The on_epoch callback: report val_loss at step = epoch; raise TrialPruned when the pruner says so (the
    trainer has saved the epoch's checkpoints and history before calling it)."""

    def on_epoch(row: dict[str, Any]) -> None:
        rows.append(row)
        trial.report(row["val_loss"], row["epoch"])
        if trial.should_prune():
            raise optuna.TrialPruned(f"pruned at epoch {row['epoch']}: val_loss {row['val_loss']:.4g}")

    return on_epoch


def _with_inversion(part: RunDir, metrics: dict[str, Any], device: str) -> dict[str, Any]:
    """metrics.json with its `invert` section: the trained decoder's fit to held-out curves (jobs/heldout.py, the
    sweep's own targets), written into the trial's folder before it is renamed."""
    trained = load_trained(part, resolve_device(device))
    metrics = {**metrics, "invert": inversion_residual(trained, seed=SWEEP_SEED)}
    atomic_write_json(part.metrics, json_safe(metrics))
    return metrics


def _finish(sd: SweepDir, number: int, part: RunDir, record: dict[str, Any]) -> None:
    """trial.json into the partial folder, then rename it to trials/<number>."""
    atomic_write_json(part.trial, json_safe(record))
    final = sd.trial(number).root
    if final.exists():  # cannot happen within one study (numbers are unique); a leftover of a deleted one
        shutil.rmtree(final)
    os.replace(part.root, final)


def _track_tags(ctx: TrialContext, n: int) -> dict[str, str]:
    """A trial's tracked run: tagged with its study and number, and the folder it ends in."""
    return {"funcae.study": ctx.study, "funcae.trial": str(n), "funcae.run_dir": str(ctx.sd.trial(n).root.resolve())}


def run_trial(trial: optuna.Trial, ctx: TrialContext) -> float:
    """Train one trial and return its objective; TrialPruned, Interrupted or a FuncaeError end it otherwise."""
    spec, n = ctx.spec, trial.number
    trial.set_user_attr(ATTR_WORKER, worker_id())
    stored = {key: dist.suggest(trial, key) for key, dist in spec.space.items()}
    values = {key: spec.space[key].decode(v) for key, v in stored.items()}
    trial.set_user_attr(ATTR_VALUES, values)
    if ctx.on_start is not None:
        ctx.on_start(n, values)
    part = ctx.sd.partial(n)
    if part.root.exists():
        shutil.rmtree(part.root)
    rows: list[dict[str, Any]] = []
    t0 = time.perf_counter()

    def record(state: str, **extra: Any) -> dict[str, Any]:
        return {
            "study": ctx.study,
            "trial": n,
            "state": state,
            "params": values,
            "metric": spec.objective.metric,
            "direction": spec.objective.direction,
            "objective": None,
            "epochs": len(rows),
            "val_loss": rows[-1]["val_loss"] if rows else None,
            "seconds": time.perf_counter() - t0,
            "worker": worker_id(),
            **extra,
        }

    try:
        cfg = trial_config(spec, values, f"{ctx.study}-trial{n}")
        trial.set_user_attr(ATTR_CONFIG, cfg.to_dict())
        metrics = run_train(
            cfg, part, ctx.device, stop=ctx.stop, callbacks=Callbacks(on_epoch=_reporter(trial, rows)),
            plots=spec.plots, latest=False, track=ctx.track, track_tags=_track_tags(ctx, n),
        )  # fmt: skip
        for w in metrics.get("tracking", {}).get("warnings", []) if ctx.on_warning else []:
            ctx.on_warning(n, w)
        if spec.objective.metric in AFTER_TRAINING_METRICS:
            metrics = _with_inversion(part, metrics, ctx.device)
        value = metric_value(metrics, spec.objective.metric)
        if not math.isfinite(value):
            raise DivergedError(f"objective {spec.objective.metric} is {value}")
    except optuna.TrialPruned:
        trial.set_user_attr(ATTR_EPOCHS, len(rows))
        _finish(ctx.sd, n, part, record("pruned"))
        raise
    except Interrupted:
        trial.set_user_attr(ATTR_INTERRUPTED, True)
        shutil.rmtree(part.root, ignore_errors=True)
        raise
    except FuncaeError as e:
        trial.set_user_attr(ATTR_ERROR, user_message(e))
        trial.set_user_attr(ATTR_EPOCHS, len(rows))
        if part.root.exists():
            _finish(ctx.sd, n, part, record("failed", error=user_message(e)))
        raise
    trial.set_user_attr(ATTR_EPOCHS, len(rows))
    _finish(ctx.sd, n, part, record("complete", objective=value))
    return value
