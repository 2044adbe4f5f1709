"""Reconstruction losses (per curve), input corruption and the weight penalty."""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from funcae_cli.config import NoiseConfig, TrainConfig
from funcae_cli.models import linear_layers

# (recon, target, cfg) -> per-curve loss (batch,)
Loss = Callable[[Tensor, Tensor, TrainConfig], Tensor]


def _sse(recon: Tensor, x: Tensor, cfg: TrainConfig) -> Tensor:
    return (recon - x).square().sum(dim=1)  # per-curve sum of squares


def _mse(recon: Tensor, x: Tensor, cfg: TrainConfig) -> Tensor:
    return (recon - x).square().mean(dim=1)


def _gaussian(recon: Tensor, x: Tensor, cfg: TrainConfig) -> Tensor:
    """Negative log-likelihood of x under N(recon, eta^2 I), dropping the 2*pi constant (notebook 001)."""
    n = x.shape[1]
    return 0.5 * (recon - x).square().sum(dim=1) / cfg.eta**2 + n * math.log(cfg.eta)


LOSSES: dict[str, Loss] = {"sse": _sse, "mse": _mse, "gaussian": _gaussian}

# The same losses averaged over the batch, for the training step: F.mse_loss is one fused kernel
# forward and backward, where the per-curve forms above take four passes over (batch, n_points).
BATCH_LOSSES: dict[str, Loss] = {
    "sse": lambda r, x, c: F.mse_loss(r, x, reduction="sum") / x.shape[0],
    "mse": lambda r, x, c: F.mse_loss(r, x),
    "gaussian": lambda r, x, c: (
        0.5 * F.mse_loss(r, x, reduction="sum") / (x.shape[0] * c.eta**2) + x.shape[1] * math.log(c.eta)
    ),
}

# Every loss above is `scale * sum((recon - x)^2) + const` over a batch: (batch, n_points, cfg) ->
# (scale, const). The hand-written training step (steps.py) needs only these two numbers.
SQUARED_ERROR: dict[str, Callable[[int, int, TrainConfig], tuple[float, float]]] = {
    "sse": lambda b, n, c: (1.0 / b, 0.0),
    "mse": lambda b, n, c: (1.0 / (b * n), 0.0),
    "gaussian": lambda b, n, c: (0.5 / (b * c.eta**2), n * math.log(c.eta)),
}

# (x, cfg, generator) -> corrupted copy of x
CORRUPTIONS: dict[str, Callable[[Tensor, NoiseConfig, torch.Generator], Tensor]] = {
    "none": lambda x, c, g: x,
    "mask": lambda x, c, g: x * (torch.rand(x.shape, generator=g, device=x.device, dtype=x.dtype) >= c.rate),
    "gaussian": lambda x, c, g: x + c.std * torch.randn(x.shape, generator=g, device=x.device, dtype=x.dtype),
}


def weight_penalty(model: nn.Module, gamma: float) -> Tensor | None:
    """gamma * mean(W^2) summed over every linear layer (notebook 002); None when gamma is 0."""
    if gamma == 0:
        return None
    return gamma * sum(layer.weight.square().mean() for layer in linear_layers(model))
