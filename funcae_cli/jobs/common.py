"""What every job that uses a trained run shares: loading it on a device, and the run's facts in each result."""

from __future__ import annotations

from typing import Any

import torch

from funcae_cli.device import resolve_device
from funcae_cli.store.rundir import RunDir
from funcae_cli.store.trained import Trained, load_trained


def open_run(rd: RunDir, device: str | torch.device) -> Trained:
    return load_trained(rd, resolve_device(device))


def run_info(trained: Trained) -> dict[str, Any]:
    """The fields every result of a trained run starts with."""
    return {
        "run": trained.cfg.name,
        "run_dir": str(trained.rd.root),
        "family": trained.family.name,
        "model": trained.model.args.kind,
        "latent_dim": trained.model.args.latent_dim,
        "param_names": trained.param_names,
        "device": str(trained.device),
    }
