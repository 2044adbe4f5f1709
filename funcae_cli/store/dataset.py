"""A run's data set: its data.npz (written by `generate`, read back with its fingerprint), or generated afresh from
the config when there is none (same bytes)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import torch

from funcae_cli.config import Config, config_to_dict
from funcae_cli.data.dataset import Dataset, generate
from funcae_cli.errors import InputError
from funcae_cli.files import atomic_write_bytes, npz_bytes
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


def save_dataset(ds: Dataset, path: Path, fingerprint: str) -> None:
    arrays = {
        "curves": ds.curves.numpy(),
        "params": ds.params.numpy(),
        "param_names": np.array(ds.param_names, dtype=str),
        "grid": ds.grid.numpy(),
        "fingerprint": np.array(fingerprint),
    }
    if ds.labels is not None:
        arrays["labels"] = ds.labels.numpy()
    atomic_write_bytes(path, npz_bytes(arrays))


def load_dataset(path: Path) -> tuple[Dataset, str]:
    try:
        with np.load(path, allow_pickle=False) as z:
            ds = Dataset(
                curves=torch.from_numpy(np.ascontiguousarray(z["curves"], dtype=np.float32)),
                params=torch.from_numpy(z["params"].astype(np.float64)),
                param_names=[str(s) for s in z["param_names"]],
                grid=torch.from_numpy(z["grid"].astype(np.float64)),
                labels=torch.from_numpy(z["labels"].astype(np.int64)) if "labels" in z else None,
            )
            fingerprint = str(z["fingerprint"]) if "fingerprint" in z else ""
    except (OSError, ValueError, KeyError) as e:
        raise InputError(f"{path}: not a funcae data file ({e})") from None
    return ds, fingerprint
