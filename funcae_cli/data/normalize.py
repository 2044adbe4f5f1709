"""Splits of a data set and the map between the family's units and the model's training space."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from funcae_cli.errors import InputError


@dataclass
class Splits:
    train: slice
    val: slice
    test: slice


def split_sizes(n: int, val_fraction: float, test_fraction: float) -> Splits:
    """Contiguous splits. Generated curves are i.i.d. draws, so contiguous slices are random splits."""
    n_test = int(round(n * test_fraction))
    n_val = max(1, int(round(n * val_fraction)))
    n_train = n - n_val - n_test
    if n_train < 1:
        raise InputError(f"data.n={n} leaves no training curves after val/test splits")
    return Splits(slice(0, n_train), slice(n_train, n_train + n_val), slice(n_train + n_val, n))


STATS_CHUNK = 4096  # rows per float64 chunk when computing statistics: no float64 copy of the data


def moments(x: Tensor, transform=lambda t: t, per_point: bool = False) -> tuple[Tensor, Tensor]:
    """Mean and (unbiased) std of transform(x), float64, over all values or per column, in row chunks."""
    n, d = x.shape
    s = torch.zeros(d, dtype=torch.float64, device=x.device)
    ss = torch.zeros(d, dtype=torch.float64, device=x.device)
    for i in range(0, n, STATS_CHUNK):
        t = transform(x[i : i + STATS_CHUNK].to(torch.float64))
        s += t.sum(dim=0)
        ss += t.square().sum(dim=0)
    if per_point:
        mean = s / n
        var = (ss - n * mean.square()) / max(n - 1, 1)
    else:
        m = n * d
        mean = s.sum() / m
        var = (ss.sum() - m * mean.square()) / max(m - 1, 1)
    return mean, var.clamp_min(0).sqrt()


TRANSFORMS = {
    "none": (lambda x: x, lambda y: y),
    "log": (torch.log, torch.exp),
}


class Normalizer:
    """Maps curves in the family's units to the model's training space and back.

    forward: y = (T(x) - mean) / std, with T the pointwise transform; mean/std are scalars
    (global) or `(n_points,)` (per point), fitted on the training split only.
    """

    def __init__(self, transform: str, mean: Tensor, std: Tensor):
        self.transform = transform
        self.mean = mean.to(torch.float32)
        self.std = std.to(torch.float32)

    @classmethod
    def fit(cls, x: Tensor, transform: str, normalize: str) -> Normalizer:
        if transform == "log" and bool((x <= 0).any()):
            raise InputError("data.transform: log needs strictly positive curves; this data has values <= 0")
        if normalize == "none":
            return cls(transform, torch.zeros(()), torch.ones(()))
        mean, std = moments(x, TRANSFORMS[transform][0], per_point=normalize == "per_point")
        std = torch.where(std > 0, std, torch.ones_like(std))
        return cls(transform, mean, std)

    def to(self, device) -> Normalizer:
        return Normalizer(self.transform, self.mean.to(device), self.std.to(device))

    def encode_(self, x: Tensor) -> Tensor:
        """In place: family units -> training space (no copy of a large tensor)."""
        if self.transform == "log":
            x.log_()
        return x.sub_(self.mean).div_(self.std)

    def encode(self, x: Tensor) -> Tensor:
        return (TRANSFORMS[self.transform][0](x) - self.mean) / self.std

    def decode(self, y: Tensor) -> Tensor:
        return TRANSFORMS[self.transform][1](y * self.std + self.mean)

    def state(self) -> dict[str, Any]:
        return {"transform": self.transform, "mean": self.mean.cpu(), "std": self.std.cpu()}

    @classmethod
    def from_state(cls, s: dict[str, Any]) -> Normalizer:
        return cls(s["transform"], s["mean"], s["std"])
