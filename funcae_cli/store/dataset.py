"""A run's data set: its data.npz when `generate` wrote it for this config, else generated afresh (same bytes)."""

from __future__ import annotations

import hashlib
import json

from funcae_cli.config import Config, config_to_dict
from funcae_cli.data.dataset import Dataset, generate, load_dataset
from funcae_cli.errors import InputError
from funcae_cli.store.rundir import RunDir


def data_fingerprint(cfg: Config) -> str:
    """Identifies the data a config generates: family, grid, size and seed."""
    d = config_to_dict(cfg)
    key = json.dumps({k: d[k] for k in ("seed", "family", "grid")} | {"n": d["data"]["n"]}, sort_keys=True)
    return hashlib.sha256(key.encode()).hexdigest()[:16]


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
