"""The `generate` job: sample parameters, evaluate the family, write data.npz and its preview figure."""

from __future__ import annotations

import time
from typing import Any

from funcae_cli.config import Config, dump_config
from funcae_cli.data.dataset import Dataset, generate
from funcae_cli.files import atomic_write_text, save_figure
from funcae_cli.plotting.data import data_preview
from funcae_cli.store.dataset import data_fingerprint, save_dataset
from funcae_cli.store.rundir import RunDir


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


def run_generate(cfg: Config, rd: RunDir, force: bool = False) -> dict[str, Any]:
    """Generate the config's data set into rd (nothing is written when generation fails)."""
    rd.refuse_overwrite(force, "a data set or a trained run", rd.data.exists() or rd.is_trained())
    t0 = time.perf_counter()
    ds = generate(cfg)  # may raise before anything is written
    seconds = time.perf_counter() - t0
    if force:
        rd.clear()
    rd.root.mkdir(parents=True, exist_ok=True)
    atomic_write_text(rd.config, dump_config(cfg))
    save_dataset(ds, rd.data, data_fingerprint(cfg))
    preview = data_preview(ds, cfg.family.family, title=cfg.name, image_shape=cfg.family.image_shape)
    save_figure(preview, rd.data_preview)
    return {
        "run_dir": str(rd.root),
        "data": str(rd.data),
        "preview": str(rd.data_preview),
        **summarize_dataset(ds),
        "seconds": seconds,
    }
