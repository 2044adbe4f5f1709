"""The Python API: the jobs the commands call, for notebooks and scripts.

    import funcae_cli as fa
    run = fa.train("configs/normal.yaml", run_dir="runs/normal")   # or fa.load_run("runs/normal")
    res = run.invert(x=r, y=v, yerr=e)        # one curve, or lists / NaN-padded arrays for many
    res.params, res.flags, res.table()         # numpy arrays, flags per target, a list of dict rows
    z = run.encode(curves); curves = run.decode(z); new = run.sample(16)

Functions return values: nothing is printed, and only `train` writes (the run directory it trains). Errors a user
can cause are the typed errors the CLI turns into exit 2 (`funcae_cli.errors.FuncaeError` and its subclasses).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from funcae_cli.config import Config, load_config, override
from funcae_cli.data.observations import Grid, Observation, make_observation
from funcae_cli.device import resolve_device
from funcae_cli.errors import InputError, OptionError
from funcae_cli.generation.sampling import sample_curves
from funcae_cli.inversion.encode import encode_curves
from funcae_cli.inversion.invert import InvertResult, invert_batch
from funcae_cli.inversion.targets import Targets, pad, targets_from_params
from funcae_cli.jobs.amortize import flow_for
from funcae_cli.jobs.fitted import latent_model_for
from funcae_cli.jobs.reports import result_rows
from funcae_cli.jobs.train import run_train
from funcae_cli.store.rundir import RunDir, default_run_dir
from funcae_cli.store.trained import Trained, load_trained

ArrayLike = Any  # a numpy array, a torch tensor, a list of numbers, or (for many curves) a list of those


@dataclass
class Inversion:
    """What `Run.invert` found, per target (arrays over targets)."""

    names: list[str]  # (n,) target names
    param_names: list[str]
    params: np.ndarray | None  # (n, n_params) in the family's units, or None (a run without parameters)
    z: np.ndarray  # (n, latent_dim)
    flags: list[list[str]]  # per target: model_mismatch, on_bound, off_manifold, ...
    reduced_chi2: np.ndarray | None  # (n,) with yerr
    result: InvertResult  # everything else (posterior, objectives, timings)
    _rows: list[dict[str, Any]] = field(default_factory=list, repr=False)

    @property
    def posterior(self) -> Any:
        """The posterior (samples, quantiles) when one was asked for (`posterior="laplace" | "mcmc"`), else None."""
        return self.result.posterior

    def table(self) -> list[dict[str, Any]]:
        """One dict per target: the fields of `funcae invert`'s JSON targets (name, params, flags, fit...)."""
        return [dict(r) for r in self._rows]


@dataclass
class Run:
    """A trained run: its directory, config and model on a device."""

    rd: RunDir
    trained: Trained

    @property
    def cfg(self) -> Config:
        return self.trained.cfg

    @property
    def grid(self) -> np.ndarray:
        return self.trained.grid.numpy()

    @property
    def param_names(self) -> list[str]:
        return self.trained.param_names

    def encode(self, curves: ArrayLike) -> np.ndarray:
        """Curves on the run's grid (n, n_points) or one (n_points,), in the family's units -> codes (n, d)."""
        y = _rows_of(curves, self.trained.grid.shape[0], "curves")
        return encode_curves(self.trained, y).cpu().double().numpy()

    def decode(self, z: ArrayLike) -> np.ndarray:
        """Codes (n, d) or one (d,) -> curves (n, n_points) on the run's grid, in the family's units."""
        zt = _rows_of(z, self.trained.latent_dim, "z")
        return self.trained.decode(zt).cpu().double().numpy()

    def sample(self, n: int = 16, latent: str | None = None, seed: int | None = None) -> np.ndarray:
        """n new curves (n, n_points) from the model (sample section's rules: latent auto | prior | empirical |
        gaussian)."""
        o = override(self.cfg.sample, {"n": n, "latent": latent, "seed": seed}, "sample")
        lm, _ = latent_model_for(self.trained)
        s = sample_curves(self.trained, lm, o.n, o.latent, self.cfg.seed if o.seed is None else o.seed)
        return s["curves"].astype(np.float64)

    def invert(
        self,
        y: ArrayLike = None,
        x: ArrayLike = None,
        yerr: ArrayLike = None,
        params: ArrayLike = None,
        names: Sequence[str] | None = None,
        **options: Any,
    ) -> Inversion:
        """Latent codes and physical parameters of targets, all solved at once.

        y: one curve (m,), many curves (n, m) (NaN pads shorter ones), or a list of curves of any lengths; at `x`
        (the same shapes, or one (m,) for all; default: the run's grid), with one-sigma errors `yerr` (same
        shapes; chi^2 and posteriors need them). Or params: parameter values (n, n_params) whose curves (the
        family's formula on the grid) are inverted. options: `invert` config fields (method, starts, posterior,
        walkers, ...) over the run's section, checked by the config's rules.
        """
        o = override(self.cfg.invert, options, "invert")
        targets = self._targets(y, x, yerr, params, names)
        lm, _ = latent_model_for(self.trained)
        flow = flow_for(self.rd, o.posterior, o.proposal)  # amortized, auto, and mcmc's proposal
        res = invert_batch(self.trained, targets, o, lm, flow)
        rows = result_rows(self.trained, targets, res)
        flags = [list(r["flags"]) for r in rows]
        return Inversion(
            names=list(targets.names),
            param_names=self.param_names,
            params=res.params_est,
            z=res.z,
            flags=flags,
            reduced_chi2=res.reduced_chi2,
            result=res,
            _rows=rows,
        )

    def _targets(self, y: ArrayLike, x: ArrayLike, yerr: ArrayLike, params: ArrayLike, names: Any) -> Targets:
        if (y is None) == (params is None):
            raise OptionError("y", "give curves (y, with x and yerr where observed) or params, not both or neither")
        if params is not None:
            p = torch.as_tensor(np.atleast_2d(np.asarray(params, dtype=np.float64)))
            if p.shape[1] != len(self.param_names):
                raise OptionError(
                    "params", f"expected {len(self.param_names)} columns {self.param_names}, got {p.shape}"
                )
            return targets_from_params(self.trained, p, "params")
        if x is None:
            yy = _rows_of(y, self.trained.grid.shape[0], "y")
            ee = None if yerr is None else _rows_of(yerr, yy.shape[1], "yerr").expand_as(yy).clone()
            if ee is not None and not bool((ee > 0).all()):
                raise OptionError("yerr", "must be > 0 everywhere")
            labels = _names(names, yy.shape[0])
            return Targets(yy, None, ee, names=labels, source="arrays")
        grid = Grid(float(self.trained.grid[0]), float(self.trained.grid[-1]))
        warnings: list[str] = []
        observations = [
            grid.restrict(obs, obs.name, warnings) for obs in _observations(x, y, yerr, _names(names, None))
        ]
        return pad(observations, "arrays", warnings)


def _names(names: Sequence[str] | None, n: int | None) -> Any:
    if names is None:
        return None if n is None else [f"target {i}" for i in range(n)]
    names = [str(v) for v in names]
    if n is not None and len(names) != n:
        raise OptionError("names", f"{len(names)} names for {n} targets")
    return names


def _rows_of(a: ArrayLike, width: int, what: str) -> torch.Tensor:
    """(n, width) float32 rows from one row or many; finite."""
    t = torch.as_tensor(np.asarray(a, dtype=np.float64))
    t = t[None] if t.ndim == 1 else t
    if t.ndim != 2 or t.shape[1] != width:
        raise OptionError(what, f"expected shape (n, {width}) or ({width},), got {tuple(t.shape)}")
    if not bool(torch.isfinite(t).all()):
        raise OptionError(what, "has non-finite values")
    return t.float()


def _ragged(a: ArrayLike, what: str) -> list[np.ndarray]:
    """One curve (m,) -> [it]; (n, m) or a list of (m_i,) -> a list of float64 rows (NaN pads kept for now)."""
    if isinstance(a, torch.Tensor):
        a = a.detach().cpu().numpy()
    if isinstance(a, (list, tuple)) and a and np.ndim(a[0]) == 1:
        return [np.asarray(r, dtype=np.float64) for r in a]
    arr = np.asarray(a, dtype=np.float64)
    if arr.ndim == 1:
        return [arr]
    if arr.ndim == 2:
        return list(arr)
    raise OptionError(what, f"expected one curve (m,), curves (n, m) or a list of curves, got shape {arr.shape}")


def _observations(x: ArrayLike, y: ArrayLike, yerr: ArrayLike, names: list[str] | None) -> list[Observation]:
    ys = _ragged(y, "y")
    xs = _ragged(x, "x")
    if len(xs) == 1 and len(ys) > 1:
        xs = xs * len(ys)
    es: list[np.ndarray | None] = [None] * len(ys) if yerr is None else _ragged(yerr, "yerr")
    if len(es) == 1 and len(ys) > 1:
        es = es * len(ys)
    if not len(xs) == len(ys) == len(es):
        raise OptionError("x", f"{len(xs)} x rows, {len(ys)} y rows and {len(es)} yerr rows: they must match")
    labels = names or [f"target {i}" for i in range(len(ys))]
    if len(labels) != len(ys):
        raise OptionError("names", f"{len(labels)} names for {len(ys)} targets")
    out = []
    for name, xi, yi, ei in zip(labels, xs, ys, es):
        if xi.shape != yi.shape or (ei is not None and ei.shape != yi.shape):
            raise OptionError("x", f"{name}: x, y (and yerr) must have the same length, got {xi.shape}, {yi.shape}")
        keep = ~np.isnan(yi)  # NaN pads a shorter curve in a rectangular array
        xi, yi, ei = xi[keep], yi[keep], None if ei is None else ei[keep]
        if not (np.isfinite(xi).all() and np.isfinite(yi).all()):
            raise InputError(f"{name}: x and y must be finite (NaN in y marks padding)")
        if ei is not None and not (np.isfinite(ei).all() and (ei > 0).all()):
            raise InputError(f"{name}: yerr must be finite and > 0")
        out.append(make_observation(name, xi, yi, ei, name))
    return out


def load_run(path: str | Path, device: str | torch.device = "auto") -> Run:
    """A trained run directory, its model on `device` (auto: CUDA when available)."""
    rd = RunDir(Path(path))
    if not rd.root.is_dir():
        raise InputError(f"{path}: not a run directory")
    if not rd.is_trained():
        raise InputError(f"{path}: has no checkpoint; train it first (funcae_cli.train or `funcae train`)")
    return Run(rd, load_trained(rd, resolve_device(device)))


def train(
    config: str | Path | Config,
    run_dir: str | Path | None = None,
    overrides: Sequence[str] = (),
    device: str | torch.device = "auto",
    force: bool = False,
    plots: bool = True,
) -> Run:
    """Train a config (a YAML path with `key.path=value` overrides, or a Config) into `run_dir` (default
    runs/<name>) and return the trained run. An existing trained run there needs force=True."""
    if isinstance(config, Config):
        if overrides:
            raise OptionError("overrides", "apply overrides to a YAML path, or change the Config record itself")
        cfg, source = config, None
    else:
        cfg, source = load_config(config, list(overrides)), str(config)
    rd = RunDir(Path(run_dir)) if run_dir is not None else default_run_dir(cfg.name)
    run_train(cfg, rd, device, force=force, source=source, plots=plots)
    return load_run(rd.root, device)
