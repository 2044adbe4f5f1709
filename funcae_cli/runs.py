"""Run-level jobs behind the commands: generate a data set, train a run, load a trained run.

Each job takes a validated Config and a RunDir, writes only through RunDir, and returns a
summary dict the command reports. Nothing here prints.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from funcae_cli.checkpoint import load_checkpoint, save_checkpoint, versions
from funcae_cli.config import Config, config_from_dict, config_to_dict, dump_config
from funcae_cli.data import Dataset, Normalizer, generate, load_dataset, save_dataset
from funcae_cli.errors import CheckpointError, ConfigError, InputError
from funcae_cli.families import Family
from funcae_cli.models import build_model
from funcae_cli.rundir import RunDir, atomic_write_json, atomic_write_text, point_latest
from funcae_cli.train import StopFlag, Trainer, prepare, test_metrics


def data_fingerprint(cfg: Config) -> str:
    """Identifies the data a config generates: family, grid, size and seed."""
    d = config_to_dict(cfg)
    key = json.dumps({k: d[k] for k in ("seed", "family", "grid")} | {"n": d["data"]["n"]}, sort_keys=True)
    return hashlib.sha256(key.encode()).hexdigest()[:16]


def _check_writable(rd: RunDir, force: bool, what: str, exists: Callable[[RunDir], bool]) -> None:
    if exists(rd) and not force:
        raise InputError(f"{rd.root}: already holds {what}; pass --force to overwrite or --run-dir to choose another")


def summarize_dataset(ds: Dataset) -> dict[str, Any]:
    p = ds.params
    return {
        "shape": list(ds.curves.shape),
        "params": {
            name: {"min": float(p[:, i].min()), "max": float(p[:, i].max())} for i, name in enumerate(ds.param_names)
        },
        "value_min": float(ds.curves.min()),
        "value_max": float(ds.curves.max()),
    }


def run_generate(
    cfg: Config, rd: RunDir, force: bool = False, n: int | None = None, seed: int | None = None
) -> dict[str, Any]:
    _check_writable(rd, force, "a data set or a trained run", lambda r: r.data.exists() or r.is_trained())
    if n is not None:
        cfg.data.n = n
    if seed is not None:
        cfg.seed = seed
    t0 = time.perf_counter()
    ds = generate(cfg)  # may raise before anything is written
    seconds = time.perf_counter() - t0
    if force:
        rd.clear()
    rd.root.mkdir(parents=True, exist_ok=True)
    atomic_write_text(rd.config, dump_config(cfg))
    save_dataset(ds, rd.data, data_fingerprint(cfg))
    from funcae_cli import plotting
    from funcae_cli.datasets import image_shape

    preview = plotting.data_preview(ds, cfg.family.family, title=cfg.name, image_shape=image_shape(cfg))
    plotting.save_figure(preview, rd.data_preview)
    return {
        "run_dir": str(rd.root),
        "data": str(rd.data),
        "preview": str(rd.data_preview),
        **summarize_dataset(ds),
        "seconds": seconds,
    }


def dataset_for(cfg: Config, rd: RunDir) -> Dataset:
    """The run's data.npz when `generate` wrote it for this config, else generated in memory."""
    if rd.data.exists():
        ds, fp = load_dataset(rd.data)
        if fp == data_fingerprint(cfg):
            return ds
        raise InputError(
            f"{rd.data}: was generated from a different config (family, grid, data.n or seed differ); "
            "pass --force to start afresh"
        )
    return generate(cfg)


def _training_data(cfg: Config, rd: RunDir, force: bool) -> tuple[Dataset, bool]:
    """(data set, whether it is the run's own data.npz). With --force a stale data.npz is replaced."""
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
    for p in (rd.checkpoints, rd.plots, rd.invert_dir, rd.encodings):
        if p.is_dir():
            shutil.rmtree(p)
    for p in (rd.metrics, rd.history_csv, rd.history_json, rd.latents, rd.samples, rd.samples_png):
        p.unlink(missing_ok=True)


def _remove_stale_temp_files(rd: RunDir) -> None:
    """Temp files of atomic writes interrupted by SIGKILL: never read, safe to drop."""
    for folder in (rd.root, rd.checkpoints):
        if folder.is_dir():
            for p in folder.glob(".*.tmp"):
                p.unlink(missing_ok=True)


@dataclass
class Callbacks:
    on_epoch: Callable[[dict[str, Any]], None] | None = None
    on_step: Callable[[int, int], None] | None = None
    on_start: Callable[[dict[str, Any]], None] | None = None


def run_train(
    cfg: Config | None,
    rd: RunDir,
    device: torch.device,
    force: bool = False,
    resume: bool = False,
    stop: StopFlag | None = None,
    callbacks: Callbacks | None = None,
    source: str | None = None,
) -> dict[str, Any]:
    """Train `cfg` into `rd` (or resume it). `source` names the config file in error messages."""
    cb = callbacks or Callbacks()
    ckpt = None
    if resume:
        if not rd.last.exists():
            raise InputError(f"--resume: {rd.last} not found; nothing to resume")
        ckpt = load_checkpoint(rd.last)
        cfg = config_from_dict(ckpt["config"], str(rd.last))
    else:
        assert cfg is not None
        _check_writable(rd, force, "a trained run", RunDir.is_trained)
    ds, data_matches = _training_data(cfg, rd, force)
    prep = prepare(cfg, ds, device)  # validates the data (e.g. log of non-positive values) before any write
    del ds

    def save(which: str, payload: dict[str, Any]) -> None:
        save_checkpoint(rd.best if which == "best" else rd.last, payload)
        if which == "last":
            write_history(rd, trainer.state.history)

    try:  # the trainer picks its step engine: one named that cannot train this model fails before any write
        trainer = Trainer(cfg, prep, device, stop=stop, on_epoch=cb.on_epoch, on_step=cb.on_step, save=save)
    except ConfigError as e:
        raise ConfigError(e.problems, source or (str(rd.last) if resume else None)) from None
    if ckpt is not None:
        trainer.load_state(ckpt)
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
                "device": str(device),
                "engine": trainer.step.name,
                "params": sum(p.numel() for p in trainer.model.parameters()),
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
        "device": str(device),
        "engine": trainer.step.name,
        "torch_threads": torch.get_num_threads(),
        "seed": cfg.seed,
        "versions": versions(),
    }
    extras = post_train_hooks(trainer.model, prep, cfg, rd)
    metrics.update(extras)
    atomic_write_json(rd.metrics, metrics)
    point_latest(rd)
    return metrics


def post_train_hooks(model: nn.Module, prep, cfg: Config, rd: RunDir) -> dict[str, Any]:
    """Work after training whose summary goes into metrics.json."""
    from funcae_cli.regressor import regressor_after_training

    # latent code -> physical parameters, fitted on the training split; validation R^2 in metrics
    return regressor_after_training(model, prep, cfg, rd)


def write_history(rd: RunDir, history: list[dict[str, Any]]) -> None:
    atomic_write_json(rd.history_json, history)
    if history:
        cols = list(history[0])
        lines = [",".join(cols)] + [
            ",".join(f"{row[c]:.10g}" if isinstance(row[c], float) else str(row[c]) for c in cols) for row in history
        ]
        atomic_write_text(rd.history_csv, "\n".join(lines) + "\n")


# --- loading a trained run -------------------------------------------------------------------


@dataclass
class Trained:
    """A trained model with everything needed to use it, loaded from a run directory."""

    rd: RunDir
    cfg: Config
    model: nn.Module
    normalizer: Normalizer
    grid: torch.Tensor  # (n_points,) float64, CPU
    family: Family
    data: dict[str, Any]  # param names, training ranges, splits
    ckpt: dict[str, Any]
    device: torch.device

    @property
    def param_names(self) -> list[str]:
        return list(self.data["param_names"])

    @torch.no_grad()
    def encode(self, curves: torch.Tensor) -> torch.Tensor:
        """Curves in family units (n, n_points) -> codes (n, latent_dim)."""
        x = self.normalizer.encode(curves.to(self.device, torch.float32))
        return self.model.encode(x)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """Codes -> curves in family units (differentiable)."""
        return self.normalizer.decode(self.model.decode(z))


def load_trained(rd: RunDir, device: torch.device, which: str = "best") -> Trained:
    path = rd.checkpoint() if which == "best" else rd.last
    ckpt = load_checkpoint(path)
    try:
        cfg = config_from_dict(ckpt["config"], str(path))
        model = build_model(ckpt["model_args"])
        model.load_state_dict(ckpt["model"])
        normalizer = Normalizer.from_state(ckpt["normalizer"]).to(device)
        data = ckpt["data"]
    except (KeyError, TypeError, RuntimeError) as e:
        raise CheckpointError(f"{path}: incomplete or incompatible checkpoint ({e})") from None
    model.to(device).eval()
    for p in model.parameters():
        p.requires_grad_(False)
    grid = torch.as_tensor(data["grid"], dtype=torch.float64)
    return Trained(rd, cfg, model, normalizer, grid, cfg.family.family, data, ckpt, device)
