"""The `encode` job: codes of the run's whole data set (latents.npz) or of given targets (encode/<slug>.*)."""

from __future__ import annotations

import time
from typing import Any

import numpy as np
import torch

from funcae_cli.files import atomic_write_bytes, atomic_write_json, atomic_write_text, csv_text, npz_bytes
from funcae_cli.inversion.encode import covers_grid, encode_curves, targets_on_grid
from funcae_cli.inversion.targets import training_range_warnings
from funcae_cli.jobs.common import open_run, run_info
from funcae_cli.jobs.inputs import TargetInputs
from funcae_cli.jobs.targets import read_targets
from funcae_cli.models import chunked, codes_of
from funcae_cli.store.dataset import dataset_for
from funcae_cli.store.rundir import RunDir, slugify
from funcae_cli.store.trained import Trained


def run_encode(
    rd: RunDir, inputs: TargetInputs | None = None, name: str | None = None, device: str | torch.device = "auto"
) -> dict[str, Any]:
    """No targets: the whole data set to latents.npz. Targets: their codes to encode/<slug>.json (+ .csv)."""
    trained = open_run(rd, device)
    targets = read_targets(trained, inputs) if inputs is not None else None
    t0 = time.perf_counter()
    out = run_info(trained)
    if targets is None:
        arrays = encode_dataset(trained)
        atomic_write_bytes(rd.latents, npz_bytes(arrays))
        z = arrays["z"]
        out.update(
            n=int(z.shape[0]),
            z_mean=z.mean(axis=0).tolist(),
            z_std=z.std(axis=0).tolist(),
            z_min=z.min(axis=0).tolist(),
            z_max=z.max(axis=0).tolist(),
            files={"latents": str(rd.latents)},
            seconds=time.perf_counter() - t0,
        )
        return out
    warnings = list(targets.warnings)
    warnings += training_range_warnings(trained, targets.params) if targets.params is not None else []
    short = [targets.names[i] for i in torch.nonzero(~covers_grid(trained, targets)).flatten().tolist()]
    if short:
        more = f" and {len(short) - 5} more" if len(short) > 5 else ""
        warnings.append(
            f"{', '.join(short[:5])}{more}: the points cover part of the grid's "
            f"[{float(trained.grid[0]):g}, {float(trained.grid[-1]):g}]; the encoder sees the end values held "
            "constant beyond them (`funcae invert` fits the observed points only)"
        )
    z = encode_curves(trained, targets_on_grid(trained, targets)).cpu().numpy().astype(np.float64)
    slug = slugify(name or inputs.slug())
    rows = []
    for i in range(targets.n):
        row: dict[str, Any] = {"index": i, "name": targets.names[i], "z": z[i].tolist()}
        if targets.params is not None:
            row["true_params"] = dict(zip(trained.param_names, targets.params[i].tolist()))
        rows.append(row)
    out.update(
        source=targets.source,
        n_targets=targets.n,
        extrapolating=any("extrapolating" in w for w in warnings),
        warnings=warnings,
        targets=rows,
        files={"json": str(rd.encode_json(slug))},
    )
    if targets.n > 1:
        header = ["name", *(f"z{j + 1}" for j in range(z.shape[1]))]
        if targets.params is not None:
            header += trained.param_names
        lines = [
            [targets.names[i], *z[i], *(targets.params[i].tolist() if targets.params is not None else [])]
            for i in range(targets.n)
        ]
        atomic_write_text(rd.encode_csv(slug), csv_text(header, lines))
        out["files"]["csv"] = str(rd.encode_csv(slug))
    out["seconds"] = time.perf_counter() - t0
    atomic_write_json(rd.encode_json(slug), out)
    return out


@torch.no_grad()
def encode_dataset(trained: Trained) -> dict[str, np.ndarray]:
    """Codes of the run's whole data set (same rows as training), with the true parameters and split labels."""
    ds = dataset_for(trained.cfg, trained.rd)
    x = trained.normalizer.encode(ds.curves.to(trained.device))
    out: dict[str, np.ndarray] = {}
    if hasattr(trained.model, "posterior"):
        d = trained.latent_dim
        both = chunked(lambda c: torch.cat(trained.model.posterior(c), dim=1), x).cpu().numpy()
        out["mean"], out["logvar"] = both[:, :d], both[:, d:]
        out["z"] = out["mean"]
    else:
        out["z"] = codes_of(trained.model, x).cpu().numpy()
    split = np.zeros(x.shape[0], dtype=np.int8)  # 0 train, 1 val, 2 test
    for k, (a, b) in enumerate(trained.data["splits"]):
        split[a:b] = k
    if ds.labels is not None:
        out["labels"] = ds.labels.numpy()
    out.update(
        params=ds.params.numpy(),
        param_names=np.array(ds.param_names, dtype=str),
        split=split,
        split_names=np.array(["train", "val", "test"], dtype=str),
    )
    return out
