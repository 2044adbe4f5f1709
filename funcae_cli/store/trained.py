"""A trained run loaded from its directory: the model, its normalizer and grid, and what it was trained on."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from funcae_cli.config import Config, config_from_dict
from funcae_cli.config.families import Family
from funcae_cli.config.userfamilies import run_code_trusted
from funcae_cli.data.normalize import Normalizer
from funcae_cli.errors import CheckpointError
from funcae_cli.models import build_model, chunked
from funcae_cli.store.checkpoint import load_checkpoint
from funcae_cli.store.rundir import RunDir


@dataclass
class Trained:
    """A trained model with everything needed to use it, loaded from a run directory."""

    rd: RunDir
    cfg: Config
    model: nn.Module
    normalizer: Normalizer
    grid: Tensor  # (n_points,) float64, CPU
    family: Family
    data: dict[str, Any]  # param names, training ranges, splits
    ckpt: dict[str, Any]
    device: torch.device

    @property
    def param_names(self) -> list[str]:
        return list(self.data["param_names"])

    @property
    def latent_dim(self) -> int:
        return int(self.model.args.latent_dim)

    def encode(self, curves: Tensor) -> Tensor:
        """Curves in family units (n, n_points) -> codes (n, latent_dim) on the device (VAE: posterior means)."""
        return chunked(lambda c: self.model.encode(self.normalizer.encode(c.to(self.device, torch.float32))), curves)

    def decode(self, z: Tensor) -> Tensor:
        """Codes (n, latent_dim) -> curves in family units (n, n_points) on the device, in chunks (no gradient)."""
        return chunked(lambda c: self.normalizer.decode(self.model.decode(c.to(self.device, torch.float32))), z)


def load_trained(rd: RunDir, device: torch.device, which: str = "best") -> Trained:
    path = rd.checkpoint() if which == "best" else rd.last
    ckpt = load_checkpoint(path)
    try:
        cfg = config_from_dict(ckpt["config"], str(path), trust_code=run_code_trusted())
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
