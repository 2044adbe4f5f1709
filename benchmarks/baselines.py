"""Notebook-style baselines, written the way the reference notebooks do it, for side-by-side timing.

These are deliberately NOT vectorized: they reproduce the notebooks' per-curve Python loops and
Dataset/DataLoader training so that the ratios measure what a user gains by switching.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader
from torch.utils.data import Dataset as TorchDataset

from funcae_cli.inversion.invert import nelder_mead_target
from funcae_cli.inversion.objective import Problem
from funcae_cli.inversion.targets import Targets
from funcae_cli.store.trained import Trained


def _notebook_target_func(x, mu, sigma):
    """Notebook 000's expression, verbatim: numpy functions applied to torch tensors."""
    return 1 / np.sqrt(2 * np.pi) / sigma * np.exp(-0.5 * (x - mu) ** 2 / sigma**2)


def _torch_target_func(x, mu, sigma):
    """The same expression in torch operations only (no numpy round trip): ~1.4x faster per curve."""
    return 1 / math.sqrt(2 * math.pi) / sigma * torch.exp(-0.5 * (x - mu) ** 2 / sigma**2)


def notebook_generate_normal(n: int, n_points: int = 1000, seed: int = 0, verbatim: bool = True) -> torch.Tensor:
    """Notebook 000's generation: one curve per loop iteration, torch.distributions samplers.

    `verbatim=False` swaps the notebook's numpy-on-tensor expression for torch operations: the
    faster loop a careful user might write, reported beside the verbatim one.
    """
    torch.manual_seed(seed)
    dist_mu = torch.distributions.uniform.Uniform(-3.0, 3.0)
    dist_sigma = torch.distributions.uniform.Uniform(0.5, 3.0)
    grid = torch.linspace(-5.0, 5.0, n_points)
    target_func = _notebook_target_func if verbatim else _torch_target_func
    X, Y = [], []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # numpy 2's __array_wrap__ notice on tensors
        for _ in range(n):
            mu, sigma = dist_mu.sample(), dist_sigma.sample()
            X.append(target_func(grid, mu, sigma))
            Y.append([mu, sigma])
    return torch.vstack(X)


class NotebookAE(nn.Module):
    """Notebook 000's autoencoder: 4 linear layers each side, tanh, width `hidden`."""

    def __init__(self, n_points: int, latent: int = 2, hidden: int = 16):
        super().__init__()
        self.e = nn.ModuleList([nn.Linear(n_points, hidden), nn.Linear(hidden, hidden), nn.Linear(hidden, hidden)])
        self.e_out = nn.Linear(hidden, latent)
        self.d = nn.ModuleList([nn.Linear(latent, hidden), nn.Linear(hidden, hidden), nn.Linear(hidden, hidden)])
        self.d_out = nn.Linear(hidden, n_points)

    def encoder(self, x):
        for layer in self.e:
            x = F.tanh(layer(x))
        return self.e_out(x)

    def decoder(self, z):
        for layer in self.d:
            z = F.tanh(layer(z))
        return self.d_out(z)

    def forward(self, x):
        return self.decoder(self.encoder(x))


class FuncDataset(TorchDataset):
    def __init__(self, X):
        self.X = X

    def __len__(self):
        return len(self.X)

    def __getitem__(self, idx):
        return self.X[idx]


class NotebookTraining:
    """Notebook 000's training loop, one epoch per call: DataLoader over a per-item Dataset,
    per-batch SSE, Adam, ExponentialLR."""

    def __init__(self, X: torch.Tensor, hidden: int = 16, batch: int = 256, lr: float = 1e-3, gamma: float = 0.98,
                 seed: int = 0):  # fmt: skip
        torch.manual_seed(seed)
        self.model = NotebookAE(X.shape[1], hidden=hidden)
        self.loader = DataLoader(FuncDataset(X), batch_size=batch, shuffle=True)
        self.opt = torch.optim.Adam(self.model.parameters(), lr=lr)
        self.sched = torch.optim.lr_scheduler.ExponentialLR(self.opt, gamma=gamma)
        self.history: list[float] = []

    def epoch(self) -> float:
        total = 0.0
        for x in self.loader:
            self.opt.zero_grad()
            loss = ((x - self.model(x)) ** 2).sum()
            loss.backward()
            self.opt.step()
            total += loss.item()
        self.sched.step()
        self.history.append(total / len(self.loader))
        return self.history[-1]


@dataclass
class NelderMeadBaseline:
    """Notebook 000's inversion of each target: its code, fit and cost."""

    z: np.ndarray  # (n, d)
    objective: np.ndarray  # (n,) L2 norm of (fit - target) in training space
    data_residual: np.ndarray  # (n,) ||fit - target|| in the family's units
    iterations: np.ndarray  # (n,)
    converged: np.ndarray  # (n,) bool
    seconds: np.ndarray  # (n,)


def notebook_nelder_mead(trained: Trained, curves: torch.Tensor | np.ndarray) -> NelderMeadBaseline:
    """The notebook-000 baseline: per target, scipy's Nelder-Mead from z = 0 with its default options, one decoder
    call and numpy round trip per evaluation. curves: (n, n_points) in family units on the run's grid."""
    y = torch.as_tensor(np.asarray(curves) if not isinstance(curves, torch.Tensor) else curves, dtype=torch.float32)
    targets = Targets(y.reshape(-1, y.shape[-1]), names=[], source="array")
    problem = Problem(trained, targets)
    n, d = targets.n, trained.model.args.latent_dim
    z_out = np.zeros((n, d))
    it, conv, secs = np.zeros(n, np.int64), np.zeros(n, bool), np.zeros(n)
    for i in range(n):
        z_out[i], _, it[i], conv[i], secs[i] = nelder_mead_target(problem, i, np.zeros(d))
    m = problem.metrics(torch.as_tensor(z_out, dtype=torch.float32, device=trained.device))
    return NelderMeadBaseline(
        z=z_out,
        objective=m["objective"].cpu().double().numpy(),
        data_residual=m["data_residual"].cpu().double().numpy(),
        iterations=it,
        converged=conv,
        seconds=secs,
    )
