"""A run's latent model (inversion.regressor.LatentModel: code -> parameters, and the training codes' density):
fitted at the end of training, or on first use for runs whose file is missing or stale; cached in the store."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from torch import nn

from funcae_cli.config import Config
from funcae_cli.errors import CheckpointError
from funcae_cli.inversion.regressor import KIND, LatentModel, fit_latent_model, model_signature
from funcae_cli.models import codes_of
from funcae_cli.store.dataset import dataset_for
from funcae_cli.store.fitted import load_latent_state, save_latent_state
from funcae_cli.store.rundir import RunDir
from funcae_cli.store.trained import Trained
from funcae_cli.training.prepared import Prepared


def cached_latent_model(trained: Trained) -> tuple[LatentModel | None, str]:
    """The run's latent model file when it exists, reads and was fitted on these weights; else None and why."""
    path = trained.rd.regressor
    if not path.exists():
        return None, f"{path} is missing (`funcae invert` fits it)"
    try:
        lm = LatentModel.from_state(load_latent_state(path))
    except (CheckpointError, KeyError, TypeError) as e:
        return None, f"{path}: {e}"  # foreign, damaged or of an older kind
    if not math.isclose(lm.signature, model_signature(trained.model), rel_tol=1e-9):
        return None, f"{path} was fitted on other weights (`funcae invert` refits it)"
    return lm, "current"


def latent_model_for(trained: Trained) -> tuple[LatentModel, bool]:
    """The run's latent model file, or a fresh fit when missing or stale (saved). Returns (model, fitted_now)."""
    lm, _ = cached_latent_model(trained)
    if lm is not None:
        return lm, False
    sig = model_signature(trained.model)
    ds = dataset_for(trained.cfg, trained.rd)
    (a, b), (c, d) = trained.data["splits"][0], trained.data["splits"][1]
    codes = codes_of(trained.model, trained.normalizer.encode(ds.curves[a:d].to(trained.device)))
    names = list(ds.param_names)
    lm = fit_latent_model(
        codes[: b - a], ds.params[a:b], codes[c - a : d - a], ds.params[c:d], names,
        trained.family.log_scale(names), sig, trained.cfg.seed,
    )  # fmt: skip
    save_latent_state(trained.rd.regressor, lm.state())
    return lm, True


def latent_model_after_training(model: nn.Module, prep: Prepared, cfg: Config, rd: RunDir) -> dict[str, Any]:
    """Fit from the trainer's prepared data, save to `rd.regressor`, return the summary for metrics.json.

    A failed fit never fails the training run: it is reported, and `invert` fits lazily later.
    """
    try:
        lm = fit_latent_model(
            codes_of(model, prep.x[prep.train]), prep.params[prep.train],
            codes_of(model, prep.x[prep.val]), prep.params[prep.val],
            prep.param_names, cfg.family.family.log_scale(prep.param_names), model_signature(model), cfg.seed,
        )  # fmt: skip
    except (RuntimeError, ValueError, np.linalg.LinAlgError) as e:
        return {"regressor": {"kind": KIND, "error": str(e).splitlines()[0][:200]}}
    save_latent_state(rd.regressor, lm.state())
    return {"regressor": lm.summary(), "code_density": lm.density.summary()}
