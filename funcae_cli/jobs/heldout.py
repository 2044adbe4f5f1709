"""How well a trained decoder inverts curves it never saw: the family evaluated at fresh parameters drawn from the
config's prior, inverted with the run's `invert` defaults (encoder start, latent search) but without the latent
model (so no code-density prior and no AE restarts), the physics refit or a posterior, and the median distance
between the decoder's fit and the curve in the family's units.

REPRODUCTION.md reports it (notebooks 000 and 001 report an inversion residual); a sweep may rank trials on it
(objective `invert.residual_median`). The two draw different targets (REPORT_SEED, SWEEP_SEED): a config chosen on
the sweep's targets is reported on others.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np
import torch

from funcae_cli.data.grids import sample_params
from funcae_cli.errors import ConfigError
from funcae_cli.inversion.invert import invert_batch
from funcae_cli.inversion.targets import targets_from_params
from funcae_cli.store.trained import Trained

TARGETS = 200
REPORT_SEED = 123
SWEEP_SEED = 7


def inversion_residual(trained: Trained, n: int = TARGETS, seed: int = REPORT_SEED) -> dict[str, Any]:
    """The median (and mean) of |fit - target| and of the relative L2 error over n targets from the prior (seed:
    torch generator of the parameter draws). The decoder's own fit: the physics refit, which would hide a poor
    decoder behind the formula, is off."""
    if not trained.family.has_formula:
        raise ConfigError([f"family.name: {trained.family.name} has no formula to draw held-out curves from"])
    params = sample_params(trained.cfg.family, n, torch.Generator().manual_seed(seed))
    options = dataclasses.replace(trained.cfg.invert, physics=False, posterior="none")
    res = invert_batch(trained, targets_from_params(trained, params), options)
    return {
        "residual_median": float(np.median(res.data_residual)),
        "residual_mean": float(np.mean(res.data_residual)),
        "rel_l2_median": float(np.median(res.rel_l2)),
        "targets": n,
        "seed": seed,
    }
