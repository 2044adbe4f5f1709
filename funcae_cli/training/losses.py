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

# Every reconstruction loss is `sum((recon - x)^2) / divisor + const` over a batch of curves:
# (batch, n_points, cfg) -> (divisor, const). The per-curve and batch forms below and the
# hand-written training step (steps.py) all come from this one table.
SQUARED_ERROR: dict[str, Callable[[int, int, TrainConfig], tuple[float, float]]] = {
    "sse": lambda b, n, c: (b, 0.0),  # per-curve sum of squares
    "mse": lambda b, n, c: (b * n, 0.0),  # per-point mean
    # negative log-likelihood of x under N(recon, eta^2 I), dropping the 2*pi constant (notebook 001)
    "gaussian": lambda b, n, c: (2 * b * c.eta**2, n * math.log(c.eta)),
}


def _per_curve(name: str) -> Loss:
    def loss(recon: Tensor, x: Tensor, cfg: TrainConfig) -> Tensor:
        divisor, const = SQUARED_ERROR[name](1, x.shape[1], cfg)
        return (recon - x).square().sum(dim=1) / divisor + const

    return loss


def _batch_mean(name: str) -> Loss:
    """The loss averaged over the batch: F.mse_loss is one fused kernel forward and backward."""

    def loss(recon: Tensor, x: Tensor, cfg: TrainConfig) -> Tensor:
        divisor, const = SQUARED_ERROR[name](x.shape[0], x.shape[1], cfg)
        out = F.mse_loss(recon, x, reduction="sum") / divisor
        return out + const if const else out

    return loss


LOSSES: dict[str, Loss] = {name: _per_curve(name) for name in SQUARED_ERROR}
BATCH_LOSSES: dict[str, Loss] = {name: _batch_mean(name) for name in SQUARED_ERROR}

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
