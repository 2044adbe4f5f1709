"""Targets: the curves to encode or invert, in the family's units, as one padded batch.

Sources: parameter values (the family evaluated on the run's grid), a table of parameter rows, observed curves
(data/observations.py reads them; jobs/targets.py reads what a user gave). Observed objects each
keep their own points: the batch is padded to the longest, with a mask of the real points, so that every
computation over targets is one tensor operation. Parameters are checked against the family's domain and
parameters outside the training ranges give warnings (the decoder is extrapolating there).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field, replace

import numpy as np
import torch
from torch import Tensor

from funcae_cli.config.families import Family
from funcae_cli.data.dataset import evaluate
from funcae_cli.data.observations import Observation, same_errors
from funcae_cli.errors import InputError
from funcae_cli.store.trained import Trained


@dataclass
class Targets:
    """Curves to encode or invert, in the family's units, padded to a common length m."""

    y: Tensor  # (n, m) float32; 0 beyond a target's own points
    x: Tensor | None = None  # (n, m) float64 observation points, increasing (padding continues past the last
    # point); None: every target on the run's grid
    yerr: Tensor | None = None  # (n, m) float32 one-sigma errors (padding 1) -> chi^2 objective
    mask: Tensor | None = None  # (n, m) bool, True on a target's own points; None: all are
    params: Tensor | None = None  # (n, n_params) float64 true parameters, when known
    names: list[str] = field(default_factory=list)  # one label per target (legends, CSV)
    source: str = ""  # where they came from, for messages and file names
    warnings: list[str] = field(default_factory=list)  # what reading them changed (e.g. points dropped)

    @property
    def n(self) -> int:
        return int(self.y.shape[0])

    @property
    def counts(self) -> Tensor:
        """(n,) number of real points per target."""
        if self.mask is None:
            return torch.full((self.n,), self.y.shape[1], dtype=torch.int64)
        return self.mask.sum(dim=1)

    def subset(self, rows: slice | Tensor) -> Targets:
        """The targets of a slice, or of an index tensor (in its order)."""

        def cut(t: Tensor | None) -> Tensor | None:
            return None if t is None else t[rows]

        if not self.names:  # unnamed targets (a library caller's batch) stay unnamed
            names: list[str] = []
        else:
            names = self.names[rows] if isinstance(rows, slice) else [self.names[i] for i in rows.tolist()]
        return replace(self, y=self.y[rows], x=cut(self.x), yerr=cut(self.yerr), mask=cut(self.mask),
                       params=cut(self.params), names=names)  # fmt: skip

    def points(self, i: int) -> tuple[np.ndarray | None, np.ndarray, np.ndarray | None]:
        """Target i's own (x or None for the grid, y, yerr or None), float64 numpy."""
        keep = slice(None) if self.mask is None else self.mask[i].numpy()
        x = None if self.x is None else self.x[i].numpy()[keep]
        e = None if self.yerr is None else self.yerr[i].double().numpy()[keep]
        return x, self.y[i].double().numpy()[keep], e


def pad(observations: list[Observation], source: str, warnings: list[str] | None = None) -> Targets:
    """Observed objects (each its own points) as one padded batch."""
    same_errors(observations, source)
    n, m = len(observations), max(o.x.size for o in observations)
    x = np.empty((n, m))
    y = np.zeros((n, m), dtype=np.float32)
    yerr = np.ones((n, m), dtype=np.float32) if observations[0].yerr is not None else None
    mask = np.zeros((n, m), dtype=bool)
    for i, o in enumerate(observations):
        k = o.x.size
        x[i, :k], y[i, :k], mask[i, :k] = o.x, o.y, True
        step = max(o.x[-1] - o.x[0], 1.0)  # padding continues past the last point: x stays increasing
        x[i, k:] = o.x[-1] + step * np.arange(1, m - k + 1)
        if yerr is not None:
            yerr[i, :k] = o.yerr
    return Targets(
        torch.from_numpy(y),
        torch.from_numpy(x),
        None if yerr is None else torch.from_numpy(yerr),
        None if mask.all() else torch.from_numpy(mask),
        names=[o.name for o in observations],
        source=source,
        warnings=list(warnings or []),
    )


def check_domain(family: Family, params: Tensor, where: Callable[[int], str] = lambda i: "") -> None:
    """Every value strictly inside its parameter's domain (low, high), else InputError naming the first bad one."""
    for j, p in enumerate(family.params):
        col = params[:, j]
        bad = ~torch.isfinite(col) | (col <= p.low) | (col >= p.high)
        if bool(bad.any()):
            i = int(bad.nonzero()[0, 0])
            allowed = " and ".join(
                s
                for s in (f"> {p.low:g}" if p.low > -math.inf else "", f"< {p.high:g}" if p.high < math.inf else "")
                if s
            )
            raise InputError(
                f"{where(i)}{p.name}={float(col[i]):g} is outside the domain of {family.name}'s "
                f"{p.name} (must be {allowed})"
            )


def training_range_warnings(trained: Trained, params: Tensor) -> list[str]:
    """One message per parameter with values outside the training range: the decoder is extrapolating."""
    lo = torch.tensor(trained.data["param_min"], dtype=torch.float64)
    hi = torch.tensor(trained.data["param_max"], dtype=torch.float64)
    out = []
    for j, name in enumerate(trained.param_names):
        col = params[:, j].double()
        outside = (col < lo[j]) | (col > hi[j])
        k = int(outside.sum())
        if k == 0:
            continue
        rng = f"the training range [{float(lo[j]):.4g}, {float(hi[j]):.4g}]"
        if params.shape[0] == 1:
            out.append(f"{name}={float(col[0]):.6g} is outside {rng}: the decoder is extrapolating")
        else:
            out.append(f"{k} of {params.shape[0]} targets have {name} outside {rng}: the decoder is extrapolating")
    return out


def _fmt_params(names: list[str], row: Tensor) -> str:
    return ", ".join(f"{n}={float(v):.6g}" for n, v in zip(names, row))


def targets_from_params(trained: Trained, params: Tensor, source: str = "params") -> Targets:
    """Evaluate the family on the run's grid at each parameter row (n, n_params)."""
    params = params.to(torch.float64).reshape(-1, len(trained.param_names))
    y = evaluate(trained.family, trained.grid, params, trained.cfg.family.options)
    bad = ~torch.isfinite(y).all(dim=1)
    if bool(bad.any()):
        i = int(bad.nonzero()[0, 0])
        raise InputError(f"the curve for {_fmt_params(trained.param_names, params[i])} has non-finite values")
    names = [_fmt_params(trained.param_names, r) for r in params]
    return Targets(y, params=params, names=names, source=source)
