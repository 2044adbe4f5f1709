"""A run's data ready for training: on the device, in training space, split, with its normalizer."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
from torch import Tensor

from funcae_cli.config import Config
from funcae_cli.data.dataset import Dataset, curve_bytes
from funcae_cli.data.normalize import Normalizer, moments, split_sizes
from funcae_cli.memory import check_fits


@dataclass
class Prepared:
    """Data on the device, in training space, with its splits and normalizer."""

    x: Tensor  # (n, n_points) normalized, on device
    params: Tensor  # (n, n_params) float64, CPU
    normalizer: Normalizer  # on device
    train: slice
    val: slice
    test: slice
    global_std: float  # std of the raw training curves: notebook 004's MSE normalization
    grid: Tensor  # (n_points,) float64
    param_names: list[str] = field(default_factory=list)  # from the data set (file data may carry its own)
    labels: Tensor | None = None

    _raw_norms: dict[tuple[int, int], Tensor] = field(default_factory=dict, repr=False)

    def per_std2(self, mse: float) -> float:
        """An MSE in units of the training curves' variance (notebook 004's figure); NaN for constant data."""
        return mse / self.global_std**2 if self.global_std > 0 else math.nan

    @property
    def n_train(self) -> int:
        return self.train.stop - self.train.start

    def raw_norms(self, part: slice, chunk: int = 2048) -> Tensor:
        """Per-curve L2 norms in data units of one split (the rel_l2 denominators), computed once."""
        key = (part.start, part.stop)
        if key not in self._raw_norms:
            xs = self.x[part]
            self._raw_norms[key] = torch.cat(
                [torch.linalg.vector_norm(self.normalizer.decode(xs[i : i + chunk]), dim=1)
                 for i in range(0, xs.shape[0], chunk)] or [xs.new_zeros(0)]
            )  # fmt: skip
        return self._raw_norms[key]


def prepare(cfg: Config, ds: Dataset, device: torch.device) -> Prepared:
    """Split, fit the normalizer on the training split, and put the curves on the device in training space
    (in place: on the CPU the data set's own tensor becomes the normalized one)."""
    if device.type != "cpu":
        n, n_points = ds.curves.shape
        check_fits(curve_bytes(n, n_points), f"{n:,} curves of {n_points:,} points on {device}", "lower data.n", device)
    splits = split_sizes(ds.curves.shape[0], cfg.data.val_fraction, cfg.data.test_fraction)
    raw_train = ds.curves[splits.train]
    sub = raw_train[: min(len(raw_train), 50_000)]  # the statistics need no more
    norm = Normalizer.fit(sub, cfg.data.transform, cfg.data.normalize)
    global_std = float(moments(sub)[1])
    x = ds.curves.to(device)  # one copy on the device (none on CPU)
    norm_dev = norm.to(device)
    norm_dev.encode_(x)
    return Prepared(
        x,
        ds.params,
        norm_dev,
        splits.train,
        splits.val,
        splits.test,
        global_std,
        ds.grid,
        list(ds.param_names),
        ds.labels,
    )
