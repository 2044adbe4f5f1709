"""The fitted helpers a run caches beside its checkpoints (the regressor code -> parameters and the training codes'
density), stored as plain tensors: the inversion library fits them and turns them into objects; this module only
keeps them."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from funcae_cli.errors import CheckpointError
from funcae_cli.store.checkpoint import load_checkpoint, save_checkpoint

KEY = "latent_model"


def save_latent_state(path: str | Path, state: dict[str, Any]) -> None:
    """Write the latent model's state (atomic)."""
    save_checkpoint(path, {KEY: state})


def load_latent_state(path: str | Path) -> dict[str, Any]:
    """The latent model's state; CheckpointError when the file is missing, foreign, unsafe or incomplete."""
    ckpt = load_checkpoint(path)
    if not isinstance(ckpt.get(KEY), dict):
        raise CheckpointError(f"{path}: incomplete or incompatible regressor file (no {KEY})")
    return ckpt[KEY]
