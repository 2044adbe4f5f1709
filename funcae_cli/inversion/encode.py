"""Encoding with a trained run: curves (on the grid or observed at other points) to latent codes, and the
codes of the run's whole data set."""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from funcae_cli.errors import InputError
from funcae_cli.inversion.latent import codes_of
from funcae_cli.inversion.objective import interp_rows, log_grid
from funcae_cli.inversion.targets import Targets
from funcae_cli.models import chunked
from funcae_cli.runs.dataset import dataset_for
from funcae_cli.runs.trained import Trained


def targets_on_grid(trained: Trained, targets: Targets) -> Tensor:
    """The targets' values on the run's grid (n, n_points): the encoder's input. Irregular x: interpolated."""
    if targets.x is None:
        return targets.y
    return interp_rows(targets.x, targets.y.double(), trained.grid, log_grid(trained)).float()


def encode_curves(trained: Trained, curves: Tensor) -> Tensor:
    """Curves in family units on the grid (n, n_points) -> codes (n, d) on the device (posterior mean for a VAE)."""
    if trained.normalizer.transform == "log" and bool((curves <= 0).any()):
        raise InputError("curve has values <= 0, but this run was trained on log curves (data.transform: log)")
    return trained.encode(curves)


def covers_grid(trained: Trained, targets: Targets) -> bool:
    """Whether the observation points span the whole grid (else the encoder sees held end values)."""
    if targets.x is None:
        return True
    span = float(trained.grid[-1] - trained.grid[0])
    return (
        float(targets.x[0] - trained.grid[0]) <= 0.02 * span and float(trained.grid[-1] - targets.x[-1]) <= 0.02 * span
    )


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
