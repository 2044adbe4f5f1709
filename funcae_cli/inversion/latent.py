"""A run's latent model (regressor.LatentModel: code -> parameters, and the training codes' distribution):
fitted at the end of training, or lazily for runs whose file is missing or stale."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from torch import Tensor, nn

from funcae_cli.config import Config
from funcae_cli.errors import CheckpointError
from funcae_cli.inversion.regressor import (
    KIND,
    LatentModel,
    fit_latent_model,
    load_latent_model,
    model_signature,
    save_latent_model,
)
from funcae_cli.models import chunked
from funcae_cli.runs.dataset import dataset_for
from funcae_cli.runs.rundir import RunDir
from funcae_cli.runs.trained import Trained
from funcae_cli.training.prepared import Prepared


def codes_of(model: nn.Module, x: Tensor) -> Tensor:
    """Deterministic codes (posterior means for a VAE) of curves in training space, (n, n_points) -> (n, d)."""
    was_training = model.training
    model.eval()
    try:
        return chunked(model.encode, x)
    finally:
        model.train(was_training)


def _log_scale(cfg: Config, names: list[str]) -> list[bool]:
    """log10 for the family's positive scale parameters; parameters from a user's file: as given."""
    known = {p.name: p.log_scale for p in cfg.family.family.params}
    return [known.get(n, False) for n in names]


def latent_model_for(trained: Trained) -> tuple[LatentModel, bool]:
    """The run's latent model file, or a fresh fit when missing or stale (saved). Returns (model, fitted_now)."""
    path = trained.rd.regressor
    sig = model_signature(trained.model)
    if path.exists():
        try:
            lm = load_latent_model(path)
            if math.isclose(lm.signature, sig, rel_tol=1e-9):
                return lm, False
        except CheckpointError:
            pass
    ds = dataset_for(trained.cfg, trained.rd)
    (a, b), (c, d) = trained.data["splits"][0], trained.data["splits"][1]
    codes = codes_of(trained.model, trained.normalizer.encode(ds.curves[a:d].to(trained.device)))
    names = list(ds.param_names)
    lm = fit_latent_model(
        codes[: b - a], ds.params[a:b], codes[c - a : d - a], ds.params[c:d], names,
        _log_scale(trained.cfg, names), sig, trained.cfg.seed,
    )  # fmt: skip
    save_latent_model(lm, path)
    return lm, True


def latent_model_after_training(model: nn.Module, prep: Prepared, cfg: Config, rd: RunDir) -> dict[str, Any]:
    """Fit from the trainer's prepared data, save to `rd.regressor`, return the summary for metrics.json.

    A failed fit never fails the training run: it is reported, and `invert` fits lazily later.
    """
    try:
        lm = fit_latent_model(
            codes_of(model, prep.x[prep.train]), prep.params[prep.train],
            codes_of(model, prep.x[prep.val]), prep.params[prep.val],
            prep.param_names, _log_scale(cfg, prep.param_names), model_signature(model), cfg.seed,
        )  # fmt: skip
    except (RuntimeError, ValueError, np.linalg.LinAlgError) as e:
        return {"regressor": {"kind": KIND, "error": str(e).splitlines()[0][:200]}}
    save_latent_model(lm, rd.regressor)
    return {"regressor": lm.summary(), "code_density": lm.density.summary()}
