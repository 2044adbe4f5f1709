"""The `train` job: train a config into its run directory (or resume it), then everything a trained run
carries: metrics.json, the latent model (regressor and code density, jobs/fitted.py), default figures."""

from __future__ import annotations

import dataclasses
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from funcae_cli.config import Config, config_from_dict, dump_config
from funcae_cli.config.userfamilies import run_code_trusted
from funcae_cli.data.dataset import Dataset, generate
from funcae_cli.device import resolve_device
from funcae_cli.errors import ConfigError, DivergedError, FuncaeError, InputError, Interrupted, OptionError
from funcae_cli.files import atomic_write_json, atomic_write_text, csv_text
from funcae_cli.jobs.fitted import latent_model_after_training
from funcae_cli.jobs.plot import render_plots
from funcae_cli.stop import StopFlag
from funcae_cli.store.checkpoint import load_checkpoint, save_checkpoint, versions
from funcae_cli.store.dataset import dataset_for
from funcae_cli.store.rundir import RunDir, mlflow_store, point_latest
from funcae_cli.store.runstatus import mark_status
from funcae_cli.tracking import FinalInfo, RunInfo, Tracking, final_metrics, open_tracking, with_tracks
from funcae_cli.training.evaluation import test_metrics
from funcae_cli.training.loop import Trainer
from funcae_cli.training.prepared import prepare


def _training_data(cfg: Config, rd: RunDir, force: bool) -> tuple[Dataset, bool]:
    """(data set, whether it is the run's own data.npz). With force a stale data.npz is replaced."""
    try:
        ds = dataset_for(cfg, rd)
        return ds, rd.data.exists()
    except InputError:
        if not force:
            raise
        return generate(cfg), False


def _clear_for_training(rd: RunDir, keep_data: bool) -> None:
    if not keep_data:
        rd.clear()
        return
    for p in rd.trained_folders():
        if p.is_dir():
            shutil.rmtree(p)
    for p in rd.trained_files():
        p.unlink(missing_ok=True)


def _remove_stale_temp_files(rd: RunDir) -> None:
    """Temp files of atomic writes interrupted by SIGKILL: never read, safe to drop."""
    for folder in (rd.root, rd.checkpoints):
        if folder.is_dir():
            for p in folder.glob(".*.tmp"):
                p.unlink(missing_ok=True)


HISTORY_EVERY_S = 1.0  # history.json/.csv follow the checkpoints at most this often (and at the end)


@dataclass
class Callbacks:
    on_start: Callable[[dict[str, Any]], None] | None = None  # the run's size, device and engine
    on_epoch: Callable[[dict[str, Any]], None] | None = None  # each epoch's history row


def run_train(
    cfg: Config | None,
    rd: RunDir,
    device: str | torch.device = "auto",
    force: bool = False,
    resume: bool = False,
    stop: StopFlag | None = None,
    callbacks: Callbacks | None = None,
    source: str | None = None,
    plots: bool = True,
    latest: bool = True,
    track: list[str] | None = None,
    track_tags: dict[str, str] | None = None,
) -> dict[str, Any]:
    """Train `cfg` into `rd` (or resume it: cfg None, the checkpoint's config). `source` names the config file
    in error messages; `plots` draws the default figures at the end, on the same device; `latest` points
    runs/latest at the run (a sweep's trials do not: they train in a folder renamed when they end). `track`
    switches trackers on over the config's `track` section (`--track`); `track_tags` tag the tracked run (a
    trial: funcae.study, funcae.trial, funcae.run_dir); the tracking warnings come back in metrics["tracking"]."""
    dev = resolve_device(device)
    cb = callbacks or Callbacks()
    ckpt = None
    if resume:
        if not rd.last.exists():
            raise OptionError("resume", f"{rd.last} not found; nothing to resume")
        ckpt = load_checkpoint(rd.last)
        cfg = config_from_dict(ckpt["config"], str(rd.last), trust_code=run_code_trusted())
    else:
        assert cfg is not None
        rd.refuse_overwrite(force, "a trained run", rd.is_trained())
    cfg = dataclasses.replace(cfg, track=with_tracks(cfg.track, track))
    tracking = open_tracking(cfg.track, mlflow_store())  # a tracker's library missing: exit 2 before any write
    ds, data_matches = _training_data(cfg, rd, force)
    prep = prepare(cfg, ds, dev)  # validates the data (e.g. log of non-positive values) before any write
    del ds

    history_written = 0.0  # when history.json/.csv were last rewritten (time.monotonic)

    def save(which: str, payload: dict[str, Any]) -> None:
        nonlocal history_written
        save_checkpoint(rd.best if which == "best" else rd.last, payload)
        now = time.monotonic()  # the files are rewritten whole: each epoch, a long run's would cost O(epochs^2)
        if which == "last" and (now - history_written >= HISTORY_EVERY_S or trainer.stop.signum is not None):
            write_history(rd, trainer.state.history)
            history_written = now

    try:  # the trainer picks its step engine: one named that cannot train this model fails before any write
        trainer = Trainer(cfg, prep, dev, stop=stop, on_epoch=_with_tracking(tracking, cb.on_epoch), save=save)
    except ConfigError as e:
        raise ConfigError(e.problems, source or (str(rd.last) if resume else None)) from None
    warnings = trainer.load_state(ckpt) if ckpt is not None else []
    if force and not resume and rd.root.exists():
        _clear_for_training(rd, keep_data=data_matches)
    rd.root.mkdir(parents=True, exist_ok=True)
    _remove_stale_temp_files(rd)
    atomic_write_text(rd.config, dump_config(cfg))
    if cb.on_start:
        cb.on_start(
            {
                "epochs": cfg.train.epochs,
                "start_epoch": trainer.state.epoch,
                "steps_per_epoch": trainer.steps_per_epoch,
                "n_train": prep.n_train,
                "device": str(dev),
                "engine": trainer.step.name,
                "engine_reason": trainer.engine_choice.reason,
                "params": sum(p.numel() for p in trainer.model.parameters()),
                "warnings": warnings,
            }
        )
    tracking.start(_run_info(cfg, rd, trainer.state.epoch, track_tags or {}))
    status = "FAILED"
    try:
        metrics = _train_and_report(cfg, rd, trainer, prep, dev, warnings, plots, latest, tracking)
        status = "FINISHED"
    except Exception as e:  # a diverged run FAILED; stopped by a signal or a callback: KILLED
        status = "FAILED" if isinstance(e, FuncaeError) and not isinstance(e, Interrupted) else "KILLED"
        raise
    finally:
        track_warnings = tracking.close(status)
    if tracking:
        metrics["tracking"] = {"trackers": tracking.names, "warnings": track_warnings}
    return metrics


def _with_tracking(
    tracking: Tracking, on_epoch: Callable[[dict[str, Any]], None] | None
) -> Callable[[dict[str, Any]], None]:
    """Each epoch's row to the trackers first (queued: returns at once), then to the caller's callback."""

    def both(row: dict[str, Any]) -> None:
        tracking.epoch(row)
        if on_epoch is not None:
            on_epoch(row)

    return both


def _run_info(cfg: Config, rd: RunDir, start_epoch: int, tags: dict[str, str]) -> RunInfo:
    run_dir = tags.get("funcae.run_dir", str(rd.root.resolve()))
    return RunInfo(
        name=cfg.name,
        run_dir=Path(run_dir),
        logdir=rd.tensorboard,
        config=cfg.to_dict(),
        config_text=dump_config(cfg),
        experiment=tags.get("funcae.study", cfg.name),
        start_epoch=start_epoch,
        tags={**tags, "funcae.run_dir": run_dir},
    )


def _train_and_report(
    cfg: Config,
    rd: RunDir,
    trainer: Trainer,
    prep: Any,
    dev: torch.device,
    warnings: list[str],
    plots: bool,
    latest: bool,
    tracking: Tracking,
) -> dict[str, Any]:
    """Train, then metrics.json, the latent model and the default figures; the final metrics and figures
    go to the trackers. status.json says how training ended (runstatus.py)."""
    mark_status(rd, "running")
    try:
        state = trainer.run()
    except DivergedError as e:
        mark_status(rd, "diverged", error=str(e))
        raise
    except (Interrupted, KeyboardInterrupt) as e:
        mark_status(rd, "interrupted", error=str(e) or type(e).__name__)
        raise
    finally:  # however training ended (a sweep's pruner ends it by an exception too): every epoch's row
        write_history(rd, trainer.state.history)
    # Final figures from the best-validation weights.
    best = load_checkpoint(rd.best) if rd.best.exists() else trainer.payload()
    trainer.model.load_state_dict(best["model"])
    metrics = {
        "name": cfg.name,
        "family": cfg.family.name,
        "model": cfg.model.kind,
        "latent_dim": cfg.model.latent_dim,
        "test": test_metrics(trainer.model, prep, cfg),
        "best_epoch": state.best_epoch,
        "best_val_loss": state.best_val,
        "final": state.history[-1] if state.history else {},
        "epochs": len(state.history),
        "wall_seconds": state.wall_seconds,
        "curves_per_second": prep.n_train * len(state.history) / max(state.wall_seconds, 1e-9),
        "device": str(dev),
        "engine": trainer.step.name,
        "engine_choice": trainer.engine_choice.to_dict(),
        "torch_threads": torch.get_num_threads(),
        "seed": cfg.seed,
        "versions": versions(),
        "warnings": warnings,
    }
    # latent code -> physical parameters and the codes' density, fitted on the training split
    metrics.update(latent_model_after_training(trainer.model, prep, cfg, rd))
    atomic_write_json(rd.metrics, metrics)
    mark_status(rd, "complete")
    if latest:
        point_latest(rd)
    if plots:
        metrics["plots"] = [str(p) for p in render_plots(rd, default_only=True, device=dev).written.values()]
    figures = [Path(p) for p in metrics.get("plots", [])]
    tracking.final(
        FinalInfo(len(state.history), final_metrics(metrics), figures, [rd.config, rd.metrics, rd.history_csv])
    )
    return metrics


def write_history(rd: RunDir, history: list[dict[str, Any]]) -> None:
    atomic_write_json(rd.history_json, history)
    if history:
        cols = list(history[0])
        atomic_write_text(rd.history_csv, csv_text(cols, [[row[c] for c in cols] for row in history], ".10g"))
