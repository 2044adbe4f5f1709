"""The `train` job: train a config into its run directory (or resume it), then everything a trained run
carries: metrics.json, the latent model (regressor and code density, inversion/latent.py), default figures."""

from __future__ import annotations

import shutil
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from funcae_cli.config import Config, config_from_dict, dump_config
from funcae_cli.data.dataset import Dataset, generate
from funcae_cli.device import resolve_device
from funcae_cli.errors import ConfigError, InputError, OptionError
from funcae_cli.files import atomic_write_json, atomic_write_text, csv_text
from funcae_cli.inversion.latent import latent_model_after_training
from funcae_cli.runs.checkpoint import load_checkpoint, save_checkpoint, versions
from funcae_cli.runs.dataset import dataset_for
from funcae_cli.runs.plot import render_plots
from funcae_cli.runs.rundir import RunDir, point_latest
from funcae_cli.stop import StopFlag
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
) -> dict[str, Any]:
    """Train `cfg` into `rd` (or resume it: cfg None, the checkpoint's config). `source` names the config file
    in error messages; `plots` draws the default figures at the end, on the same device; `latest` points
    runs/latest at the run (a sweep's trials do not: they train in a folder renamed when they end)."""
    dev = resolve_device(device)
    cb = callbacks or Callbacks()
    ckpt = None
    if resume:
        if not rd.last.exists():
            raise OptionError("resume", f"{rd.last} not found; nothing to resume")
        ckpt = load_checkpoint(rd.last)
        cfg = config_from_dict(ckpt["config"], str(rd.last))
    else:
        assert cfg is not None
        rd.refuse_overwrite(force, "a trained run", rd.is_trained())
    ds, data_matches = _training_data(cfg, rd, force)
    prep = prepare(cfg, ds, dev)  # validates the data (e.g. log of non-positive values) before any write
    del ds

    def save(which: str, payload: dict[str, Any]) -> None:
        save_checkpoint(rd.best if which == "best" else rd.last, payload)
        if which == "last":
            write_history(rd, trainer.state.history)

    try:  # the trainer picks its step engine: one named that cannot train this model fails before any write
        trainer = Trainer(cfg, prep, dev, stop=stop, on_epoch=cb.on_epoch, save=save)
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
    state = trainer.run()
    write_history(rd, state.history)
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
    if latest:
        point_latest(rd)
    if plots:
        metrics["plots"] = [str(p) for p in render_plots(rd, default_only=True, device=dev).written.values()]
    return metrics


def write_history(rd: RunDir, history: list[dict[str, Any]]) -> None:
    atomic_write_json(rd.history_json, history)
    if history:
        cols = list(history[0])
        atomic_write_text(rd.history_csv, csv_text(cols, [[row[c] for c in cols] for row in history], ".10g"))
