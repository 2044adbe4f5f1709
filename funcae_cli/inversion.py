"""Use a trained decoder: encode curves, invert curves to latent codes, estimate physical parameters.

Inversion finds the code z whose decoded curve best matches a target. All targets (and all their
random restarts) are optimized together as ONE tensor problem: the objective is the sum of the
per-target objectives, so each target's gradient is its own, and the optimizers below keep per-target
state (step sizes, curvature pairs, convergence). Methods (`METHODS`):

- `encoder`: the encoder's code, nothing else.
- `lbfgs` (default): from the encoder's code, batched L-BFGS with a per-target backtracking line search.
- `adam`: from the encoder's code, Adam on the batch for `max_iter` steps, keeping each target's best.
- `nelder-mead`: scipy's Nelder-Mead, one target at a time, a numpy round trip per evaluation, as
  notebook 000 did; for comparison (`notebook_nelder_mead` starts from z = 0 exactly as the notebook).

Objective: the L2 norm of (target - decoded) in the model's training space (normalized, transformed),
or chi^2 in the family's units when `yerr` is given. Targets observed at arbitrary points x inside the
grid's range are compared with the decoded curve linearly interpolated onto x (differentiably).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from funcae_cli.data import evaluate
from funcae_cli.datasets import is_number
from funcae_cli.errors import CheckpointError, InputError
from funcae_cli.families import Family
from funcae_cli.regressor import (
    LatentModel,
    fit_latent_model,
    latent_codes,
    load_latent_model,
    model_signature,
    save_latent_model,
)
from funcae_cli.runs import Trained, dataset_for

METHODS = ("encoder", "lbfgs", "adam", "nelder-mead")
CHUNK_ROWS = 8192  # optimization rows (targets x starts) per tensor problem: bounds device memory

# --- targets ---------------------------------------------------------------------------------


@dataclass
class Targets:
    """Curves to encode or invert, in the family's units."""

    y: Tensor  # (n, m) float32
    x: Tensor | None = None  # (m,) float64 observation points; None: the run's grid
    yerr: Tensor | None = None  # (n, m) float32 one-sigma errors -> chi^2 objective
    params: Tensor | None = None  # (n, n_params) float64 true parameters, when known
    names: list[str] = field(default_factory=list)  # one label per target (legends, CSV)
    source: str = ""  # where they came from, for messages and file names

    @property
    def n(self) -> int:
        return int(self.y.shape[0])

    def subset(self, rows: slice) -> Targets:
        return Targets(
            self.y[rows],
            self.x,
            None if self.yerr is None else self.yerr[rows],
            None if self.params is None else self.params[rows],
            self.names[rows],
            self.source,
        )


def _num(text: str, where: str) -> float:
    try:
        v = float(text)
    except ValueError:
        raise InputError(f"{where}: expected a number, got {text!r}") from None
    if not math.isfinite(v):
        raise InputError(f"{where}: must be finite, got {text!r}")
    return v


def _param_list(family: Family) -> str:
    return ", ".join(f"--{n}" for n in family.param_names)


def parse_param_args(family: Family, args: list[str]) -> dict[str, float]:
    """Extra command-line args `['--mu', '2.4', '--sigma=1.7']` -> {'mu': 2.4, 'sigma': 1.7} ({} when none).

    Every family parameter must be given once; an unknown name or a stray argument is an error.
    """
    values: dict[str, float] = {}
    need = f"family {family.name} takes {_param_list(family)}"
    i = 0
    while i < len(args):
        tok = args[i]
        if not tok.startswith("--") or tok == "--":
            raise InputError(f"unexpected argument {tok!r}; {need}")
        name, eq, text = tok[2:].partition("=")
        if name not in family.param_names:
            raise InputError(f"unknown option --{name}; {need}")
        if not eq:
            if i + 1 >= len(args):
                raise InputError(f"--{name}: missing value; {need}")
            text = args[i + 1]
            i += 1
        if name in values:
            raise InputError(f"--{name}: given twice")
        values[name] = _num(text, f"--{name}")
        i += 1
    if values:
        missing = [n for n in family.param_names if n not in values]
        if missing:
            raise InputError(f"missing {', '.join('--' + n for n in missing)}; {need}")
    return values


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
    return Targets(y, None, None, params, names, source)


def _read_table(path: Path, what: str) -> tuple[list[str] | None, np.ndarray]:
    """A comma (or whitespace) separated numeric table with an optional header; '#' starts a comment."""
    if not path.exists():
        raise InputError(f"{what} {path}: file not found")
    try:
        lines = path.read_text().splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise InputError(f"{what} {path}: cannot read as text ({e.__class__.__name__})") from None
    rows: list[tuple[int, list[str]]] = []
    for k, line in enumerate(lines, start=1):
        line = line.split("#", 1)[0].strip()
        if line:
            cells = [c.strip() for c in (line.split(",") if "," in line else line.split())]
            rows.append((k, cells))
    if not rows:
        raise InputError(f"{what} {path}: no data rows")
    header = None
    first = rows[0][1]
    if any(not is_number(c) for c in first):
        header = [c.lower() for c in first]
        rows = rows[1:]
        if not rows:
            raise InputError(f"{what} {path}: a header but no data rows")
    width = len(header) if header else len(rows[0][1])
    values = np.empty((len(rows), width), dtype=np.float64)
    for r, (k, cells) in enumerate(rows):
        if len(cells) != width:
            raise InputError(f"{what} {path}, line {k}: expected {width} columns, got {len(cells)}")
        for c, cell in enumerate(cells):
            values[r, c] = _num(cell, f"{what} {path}, line {k}, column {c + 1}")
    return header, values


def _check_x(trained: Trained, x: Tensor, where: str) -> None:
    g0, g1 = float(trained.grid[0]), float(trained.grid[-1])
    tol = 1e-9 * max(abs(g0), abs(g1), g1 - g0)
    bad = (x < g0 - tol) | (x > g1 + tol)
    if bool(bad.any()):
        v = float(x[bad][0])
        raise InputError(
            f"{where}: x={v:g} is outside the run's grid range [{g0:g}, {g1:g}]; the decoder has no values there"
        )


def read_curve_csv(trained: Trained, path: str | Path) -> Targets:
    """One observed curve: columns `x,y` and optionally `yerr` (header optional; without one, in that order)."""
    path = Path(path)
    header, v = _read_table(path, "--curve")
    if header is not None:
        unknown = [h for h in header if h not in ("x", "y", "yerr")]
        if unknown or "x" not in header or "y" not in header:
            raise InputError(
                f"--curve {path}: header must name columns x, y and optionally yerr; got {', '.join(header)}"
            )
        col = {h: v[:, i] for i, h in enumerate(header)}
    else:
        if v.shape[1] not in (2, 3):
            raise InputError(f"--curve {path}: expected 2 columns (x, y) or 3 (x, y, yerr), got {v.shape[1]}")
        col = dict(zip(("x", "y", "yerr"), v.T))
    if len(col["x"]) < 2:
        raise InputError(f"--curve {path}: needs at least 2 points")
    order = np.argsort(col["x"], kind="stable")
    x = torch.from_numpy(col["x"][order].copy())
    _check_x(trained, x, f"--curve {path}")
    y = torch.from_numpy(col["y"][order].astype(np.float32))[None]
    yerr = None
    if "yerr" in col:
        yerr = torch.from_numpy(col["yerr"][order].astype(np.float32))[None]
        if bool((yerr <= 0).any()):
            raise InputError(f"--curve {path}: yerr must be > 0 everywhere")
    return Targets(y, x, yerr, None, [path.stem], str(path))


def read_params_csv(trained: Trained, path: str | Path) -> Targets:
    """Many parameter targets: a header naming every family parameter, one row per target."""
    path = Path(path)
    fam = trained.family
    header, v = _read_table(path, "--targets")
    need = f"family {fam.name} needs columns {', '.join(fam.param_names)}"
    if header is None:
        raise InputError(f"--targets {path}: needs a header row; {need}")
    unknown = [h for h in header if h not in fam.param_names]
    missing = [n for n in fam.param_names if n not in header]
    if unknown:
        raise InputError(f"--targets {path}: unknown column(s) {', '.join(unknown)}; {need}")
    if missing:
        raise InputError(f"--targets {path}: missing column(s) {', '.join(missing)}; {need}")
    params = torch.from_numpy(v[:, [header.index(n) for n in fam.param_names]])
    check_domain(fam, params, lambda i: f"--targets {path}, row {i + 1}: ")
    return targets_from_params(trained, params, str(path))


def read_curves_npz(trained: Trained, path: str | Path) -> Targets:
    """Many curves: `curves` (n, m); optional `x` (m,) (default: the run's grid), `yerr` (n, m) or (m,), `params`."""
    path = Path(path)
    if not path.exists():
        raise InputError(f"--curves {path}: file not found")
    try:
        with np.load(path, allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
    except (OSError, ValueError) as e:
        raise InputError(f"--curves {path}: not an .npz file ({str(e).splitlines()[0][:120]})") from None
    if "curves" not in arrays:
        raise InputError(f"--curves {path}: needs an array `curves` (n, m); has {', '.join(arrays) or 'nothing'}")
    y = np.asarray(arrays["curves"], dtype=np.float64)
    if y.ndim == 1:
        y = y[None]
    if y.ndim != 2 or y.shape[0] == 0:
        raise InputError(f"--curves {path}: `curves` must be (n, m), got shape {tuple(y.shape)}")
    m = y.shape[1]
    if "x" in arrays:
        xs = np.asarray(arrays["x"], dtype=np.float64).reshape(-1)
        if xs.shape[0] != m:
            raise InputError(f"--curves {path}: `x` has {xs.shape[0]} points but `curves` has {m} columns")
        x = torch.from_numpy(xs)
        _check_x(trained, x, f"--curves {path}")
        order = torch.argsort(x, stable=True)
        x, y = x[order], y[:, order.numpy()]
    else:
        if m != trained.grid.shape[0]:
            raise InputError(
                f"--curves {path}: {m} columns but the run's grid has {trained.grid.shape[0]} points; "
                "add an array `x` with the observation points"
            )
        x, order = None, None
    if not np.isfinite(y).all():
        raise InputError(f"--curves {path}: `curves` has non-finite values")
    yerr = None
    if "yerr" in arrays:
        e = np.broadcast_to(np.asarray(arrays["yerr"], dtype=np.float64), y.shape).copy()
        if order is not None:
            e = e[:, order.numpy()]
        if not (e > 0).all():
            raise InputError(f"--curves {path}: `yerr` must be > 0 everywhere")
        yerr = torch.from_numpy(e.astype(np.float32))
    params = None
    if "params" in arrays:
        p = np.asarray(arrays["params"], dtype=np.float64)
        if p.shape == (y.shape[0], len(trained.param_names)):
            params = torch.from_numpy(p)
    names = [f"{path.stem}[{i}]" for i in range(y.shape[0])]
    return Targets(torch.from_numpy(y.astype(np.float32)), x, yerr, params, names, str(path))


# --- interpolation and the objective ---------------------------------------------------------


def _interp_coords(grid: Tensor, x: Tensor, log_x: bool) -> tuple[Tensor, Tensor]:
    """Left neighbour index and weight of each x in the grid: value = c[idx] (1 - w) + c[idx + 1] w."""
    g, q = (grid.log(), x.log()) if log_x else (grid, x)
    idx = (torch.searchsorted(g, q, right=True) - 1).clamp(0, g.shape[0] - 2)
    w = ((q - g[idx]) / (g[idx + 1] - g[idx])).clamp(0.0, 1.0)
    return idx, w


def interp_rows(xs: Tensor, ys: Tensor, xq: Tensor, log_x: bool = False) -> Tensor:
    """Linear interpolation of curves (n, m) sampled at increasing xs (m,) onto xq (q,); ends held constant."""
    idx, w = _interp_coords(xs.to(torch.float64), xq.to(torch.float64).clamp(xs[0], xs[-1]), log_x)
    w = w.to(ys.dtype).to(ys.device)
    idx = idx.to(ys.device)
    return ys[..., idx] * (1 - w) + ys[..., idx + 1] * w


class Problem:
    """Residuals of decoded codes against a batch of targets; all tensors on the run's device.

    Row r of a code batch is compared with target `rows[r]`, so restarts of one target share its data.
    """

    def __init__(self, trained: Trained, targets: Targets):
        dev = trained.device
        self.model, self.norm, self.device = trained.model, trained.normalizer, dev
        self.chi2 = targets.yerr is not None
        if targets.x is None:
            self.idx = None
        else:
            idx, w = _interp_coords(trained.grid, targets.x.to(torch.float64), _log_grid(trained))
            self.idx, self.w = idx.to(dev), w.to(torch.float32).to(dev)
        self.y = targets.y.to(dev, torch.float32)  # (n, m) family units
        self.m = int(self.y.shape[1])
        if self.chi2:
            self.inv_err = 1.0 / targets.yerr.to(dev, torch.float32)
        if self.norm.transform == "log" and bool((self.y <= 0).any()) and not self.chi2:
            raise InputError(
                f"{targets.source or 'target'}: has values <= 0, but this run was trained on log curves "
                "(data.transform: log); give yerr to fit it by chi^2 in the family's units"
            )
        self.t = self.to_training_space(self.y)  # (n, m); NaN where a chi^2 target is <= 0 on a log run

    def at_x(self, c: Tensor) -> Tensor:
        """Curves on the grid (k, n_points) -> at the observation points (k, m)."""
        if self.idx is None:
            return c
        return c[..., self.idx] * (1 - self.w) + c[..., self.idx + 1] * self.w

    def to_training_space(self, y: Tensor) -> Tensor:
        """Family units at the observation points -> training space, with mean/std interpolated onto x."""
        from funcae_cli.data import TRANSFORMS

        mean, std = self.norm.mean, self.norm.std
        if mean.ndim:
            mean, std = self.at_x(mean), self.at_x(std)
        return (TRANSFORMS[self.norm.transform][0](y) - mean) / std

    def training_residual(self, z: Tensor, rows: Tensor | None) -> Tensor:
        """(k, m) decoded - target, in training space."""
        t = self.t if rows is None else self.t[rows]
        return self.at_x(self.model.decode(z)) - t

    def residual(self, z: Tensor, rows: Tensor | None = None) -> Tensor:
        """(k, m): the objective's residual (training space, or (fit - y) / yerr in family units)."""
        if not self.chi2:
            return self.training_residual(z, rows)
        fit = self.at_x(self.norm.decode(self.model.decode(z)))
        y, inv = (self.y, self.inv_err) if rows is None else (self.y[rows], self.inv_err[rows])
        return (fit - y) * inv

    def fit(self, z: Tensor) -> Tensor:
        """Decoded curves in family units at the observation points (k, m)."""
        return self.at_x(self.norm.decode(self.model.decode(z)))

    def loss(self, z: Tensor, rows: Tensor | None) -> Tensor:
        """(k,) per-row objective minimized: sum of squared residuals (squared L2 norm, or chi^2)."""
        return self.residual(z, rows).square().sum(dim=1)

    def loss_and_grad(self, z: Tensor, rows: Tensor | None) -> tuple[Tensor, Tensor]:
        """Per-row objective (k,) and its gradient (k, d): one backward pass of the summed objective."""
        with torch.enable_grad():
            zz = z.detach().requires_grad_(True)
            f = self.loss(zz, rows)
            (g,) = torch.autograd.grad(f.sum(), zz)
        return f.detach(), g

    @torch.no_grad()
    def gn_curvature(self, z: Tensor, v: Tensor, rows: Tensor | None, probe: float = 1e-2) -> Tensor:
        """(k,) v' H v with H the Gauss-Newton Hessian 2 J'J of the objective.

        J v by a secant of the residual over a step of length `probe` along v: two forward passes,
        cheaper here than forward-mode autograd, and a secant over a step's length is what a step needs.
        """
        norm = v.norm(dim=1, keepdim=True).clamp_min(1e-30)
        jv = (self.residual(z + probe * v / norm, rows) - self.residual(z, rows)) * (norm / probe)
        return 2 * jv.square().sum(dim=1)

    @torch.no_grad()
    def metrics(self, z: Tensor, rows: Tensor | None = None) -> dict[str, Tensor]:
        """Per-row figures: fit and rel_l2 (family units), residual_norm (training space L2), chi2, objective."""
        fit = self.fit(z)
        y = self.y if rows is None else self.y[rows]
        res_t = self.training_residual(z, rows)
        data_residual = (fit - y).square().sum(dim=1).sqrt()
        out = {
            "fit": fit,
            "residual_norm": res_t.square().sum(dim=1).sqrt(),
            "data_residual": data_residual,
            "rel_l2": data_residual / y.square().sum(dim=1).sqrt().clamp_min(1e-30),
        }
        if self.chi2:
            inv = self.inv_err if rows is None else self.inv_err[rows]
            out["chi2"] = ((fit - y) * inv).square().sum(dim=1)
            out["objective"] = out["chi2"]
        else:
            out["objective"] = out["residual_norm"]
        return out


def _log_grid(trained: Trained) -> bool:
    """Interpolate in log x on log-spaced grids of families plotted on a log axis (rotation curves)."""
    return bool(trained.family.x_log and float(trained.grid[0]) > 0)


# --- encoding --------------------------------------------------------------------------------


def targets_on_grid(trained: Trained, targets: Targets) -> Tensor:
    """The targets' values on the run's grid (n, n_points): the encoder's input. Irregular x: interpolated."""
    if targets.x is None:
        return targets.y
    return interp_rows(targets.x, targets.y.double(), trained.grid, _log_grid(trained)).float()


def encode_curves(trained: Trained, curves: Tensor, batch_size: int = 8192) -> Tensor:
    """Curves in family units on the grid (n, n_points) -> codes (n, d) on the device (posterior mean for a VAE)."""
    if trained.normalizer.transform == "log" and bool((curves <= 0).any()):
        raise InputError("curve has values <= 0, but this run was trained on log curves (data.transform: log)")
    out = [trained.encode(curves[i : i + batch_size]) for i in range(0, curves.shape[0], batch_size)]
    return torch.cat(out) if out else torch.empty(0, trained.model.args.latent_dim, device=trained.device)


def covers_grid(trained: Trained, targets: Targets) -> bool:
    """Whether the observation points span the whole grid (else the encoder sees held end values)."""
    if targets.x is None:
        return True
    span = float(trained.grid[-1] - trained.grid[0])
    return (
        float(targets.x[0] - trained.grid[0]) <= 0.02 * span and float(trained.grid[-1] - targets.x[-1]) <= 0.02 * span
    )


@torch.no_grad()
def encode_dataset(trained: Trained) -> dict[str, np.ndarray]:
    """Codes of the run's whole data set (same rows as training), with the true parameters and split labels."""
    ds = dataset_for(trained.cfg, trained.rd)
    x = trained.normalizer.encode(ds.curves.to(trained.device))
    out: dict[str, np.ndarray] = {}
    if hasattr(trained.model, "posterior"):
        means, logvars = [], []
        for i in range(0, x.shape[0], 8192):
            m, lv = trained.model.posterior(x[i : i + 8192])
            means.append(m)
            logvars.append(lv)
        out["mean"] = torch.cat(means).cpu().numpy()
        out["logvar"] = torch.cat(logvars).cpu().numpy()
        out["z"] = out["mean"]
    else:
        out["z"] = latent_codes(trained.model, x).cpu().numpy()
    split = np.zeros(x.shape[0], dtype=np.int8)  # 0 train, 1 val, 2 test
    for k, (a, b) in enumerate(trained.data["splits"]):
        split[a:b] = k
    if ds.labels is not None:
        out["labels"] = ds.labels.numpy()
    out.update(
        params=ds.params.numpy(),
        param_names=np.array(ds.param_names, dtype=str),
        split=split,
        split_names=np.array(["train", "val", "test"], dtype=str),
    )
    return out


# --- the latent model (regressor + code distribution), fitted lazily for older runs ----------


def latent_model_for(trained: Trained) -> tuple[LatentModel, bool]:
    """The run's regressor file, or a fresh fit when missing or stale (saved). Returns (model, fitted_now)."""
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
    x = trained.normalizer.encode(ds.curves[a:d].to(trained.device))
    codes = latent_codes(trained.model, x)
    lm = fit_latent_model(
        codes[: b - a], ds.params[a:b], codes[c - a : d - a], ds.params[c:d], trained.family, sig, trained.cfg.seed
    )
    save_latent_model(lm, path)
    return lm, True


def random_starts(trained: Trained, lm: LatentModel | None, k: int, n: int, gen: torch.Generator) -> Tensor:
    """(k, n, d) starting codes from the latent distribution: the prior N(0, I) for a VAE, training codes for an AE."""
    d = trained.model.args.latent_dim
    if k == 0:
        return torch.empty(0, n, d)
    if trained.model.args.kind == "vae" or lm is None:
        return torch.randn(k, n, d, generator=gen)
    idx = torch.randint(0, lm.codes.shape[0], (k, n), generator=gen)
    return lm.codes[idx]


# --- batched optimizers ----------------------------------------------------------------------

LossGrad = Callable[[Tensor, Tensor], tuple[Tensor, Tensor]]  # (z (k, d), rows (k,)) -> f (k,), g (k, d)
Curvature = Callable[[Tensor, Tensor, Tensor], Tensor]  # (z, v, rows) -> v' H v (k,)


@dataclass
class OptResult:
    z: Tensor  # (k, d)
    f: Tensor  # (k,) final objective (sum of squares)
    iterations: Tensor  # (k,) int64
    converged: Tensor  # (k,) bool: stopped by a tolerance, not by max_iter


def lbfgs(
    fg: LossGrad,
    z0: Tensor,
    max_iter: int = 200,
    history: int = 8,
    ftol: float = 1e-6,
    xtol: float = 1e-6,
    gtol: float = 1e-12,
    max_ls: int = 12,
    curvature: Curvature | None = None,
) -> OptResult:
    """Batched L-BFGS: every row is its own problem with its own curvature pairs, line search and stopping.

    Each iteration evaluates only the rows still running. A float32 objective is only known to about
    1e-6 relative, so the Armijo test allows that much noise and a row stops (converged) when its
    objective decreased by less than `ftol` relative, its step was below `xtol` (relative to |z|), its
    gradient's largest entry is below `gtol`, or no step decreased it. A row never ends worse than
    it started. Curvature pairs share one slot counter; a row with no new pair stores zeros, which
    leave the two-loop recursion unchanged. `curvature` (g' H g along the gradient) sizes the first
    step: the minimum of the quadratic model along -g, instead of a blind |step|_1 = 1 that the line
    search then halves several times.
    """
    k, d = z0.shape
    dev = z0.device
    z = z0.clone()
    all_rows = torch.arange(k, device=dev)
    f, g = fg(z, all_rows)
    S = torch.zeros(k, history, d, device=dev, dtype=z0.dtype)  # curvature pairs s = dz, y = dg
    Y = torch.zeros_like(S)
    rho = torch.zeros(k, history, device=dev, dtype=z0.dtype)
    gamma = (1.0 / g.abs().sum(dim=1).clamp_min(1e-12)).clamp(max=1.0)  # first step: |p|_1 <= 1
    if curvature is not None:
        ghg = curvature(z, g, all_rows)
        cauchy = g.square().sum(dim=1) / ghg
        gamma = torch.where(torch.isfinite(cauchy) & (ghg > 0), cauchy, gamma)
    iters = torch.zeros(k, dtype=torch.int64, device=dev)
    done = ~torch.isfinite(f) | (g.abs().amax(dim=1) <= gtol)
    converged = done.clone()
    for it in range(max_iter):
        act = (~done).nonzero().squeeze(1)
        if act.numel() == 0:
            break
        ga, fa, za = g[act], f[act], z[act]
        Sa, Ya, ra = S[act], Y[act], rho[act]
        # two-loop recursion, newest pair first
        slots = [(it - 1 - j) % history for j in range(min(it, history))]
        q, alphas = ga.clone(), []
        for s in slots:
            a = ra[:, s] * (Sa[:, s] * q).sum(dim=1)
            q -= a[:, None] * Ya[:, s]
            alphas.append(a)
        r = gamma[act, None] * q
        for s, a in zip(reversed(slots), reversed(alphas)):
            b = ra[:, s] * (Ya[:, s] * r).sum(dim=1)
            r += Sa[:, s] * (a - b)[:, None]
        p = -r
        gp = (ga * p).sum(dim=1)
        uphill = ~(gp < 0)
        if bool(uphill.any()):  # lost curvature information: fall back to scaled steepest descent
            p[uphill] = -ga[uphill] * gamma[act[uphill], None]
            gp = (ga * p).sum(dim=1)
        # backtracking (Armijo) line search, per row
        t = torch.ones(act.shape[0], device=dev, dtype=z0.dtype)
        pending = torch.ones(act.shape[0], dtype=torch.bool, device=dev)
        z_new, f_new, g_new = za.clone(), fa.clone(), ga.clone()
        for _ in range(max_ls):
            pi = pending.nonzero().squeeze(1)
            if pi.numel() == 0:
                break
            zt = za[pi] + t[pi, None] * p[pi]
            ft, gt = fg(zt, act[pi])
            noise = ftol * fa[pi].abs()
            ok = torch.isfinite(ft) & (ft <= fa[pi] + 1e-4 * t[pi] * gp[pi] + noise)
            acc = pi[ok]
            z_new[acc], f_new[acc], g_new[acc] = zt[ok], ft[ok], gt[ok]
            pending[acc] = False
            t[pi[~ok]] *= 0.5
        worse = ~pending & (f_new > fa)  # accepted within the noise, but no better: stay
        z_new[worse], f_new[worse], g_new[worse] = za[worse], fa[worse], ga[worse]
        moved = ~pending & ~worse
        s_vec, y_vec = z_new - za, g_new - ga
        sy = (s_vec * y_vec).sum(dim=1)
        yy = (y_vec * y_vec).sum(dim=1)
        good = moved & (sy > 1e-12 * s_vec.norm(dim=1) * y_vec.norm(dim=1)) & (yy > 0)
        slot = it % history
        S[act, slot] = torch.where(good[:, None], s_vec, 0.0)
        Y[act, slot] = torch.where(good[:, None], y_vec, 0.0)
        rho[act, slot] = torch.where(good, 1.0 / sy.where(good, torch.ones_like(sy)), 0.0)
        gamma[act] = torch.where(good, sy / yy.where(good, torch.ones_like(yy)), gamma[act])
        z[act], f[act], g[act] = z_new, f_new, g_new
        iters[act] += moved.long()
        small_f = (fa - f_new) <= ftol * fa.abs().clamp_min(1e-30)
        small_x = s_vec.abs().amax(dim=1) <= xtol * (1 + za.abs().amax(dim=1))
        stop = ~moved | small_f | small_x | (g_new.abs().amax(dim=1) <= gtol)
        done[act[stop]] = True
        converged[act[stop]] = True
    return OptResult(z, f, iters, converged)


def adam(
    fg: LossGrad, z0: Tensor, max_iter: int = 200, lr: float = 0.05, ftol: float = 1e-6, betas=(0.9, 0.999)
) -> OptResult:
    """Batched Adam (written out: its update is elementwise, so rows never interact), keeping each row's best.

    Converged: the last tenth of the steps improved the row's best objective by less than ftol (relative).
    """
    k, d = z0.shape
    rows = torch.arange(k, device=z0.device)
    b1, b2 = betas
    z, m, v = z0.clone(), torch.zeros_like(z0), torch.zeros_like(z0)
    best_z, best_f = z0.clone(), torch.full((k,), math.inf, device=z0.device)
    mark_f = best_f.clone()
    check = max(1, max_iter // 10)
    for i in range(max_iter + 1):
        f, g = fg(z, rows)
        better = f < best_f
        best_f = torch.where(better, f, best_f)
        best_z = torch.where(better[:, None], z, best_z)
        if i == max_iter:
            break
        if i == max_iter - check:
            mark_f = best_f.clone()
        m.mul_(b1).add_(g, alpha=1 - b1)
        v.mul_(b2).addcmul_(g, g, value=1 - b2)
        step = lr / (1 - b1 ** (i + 1))
        z = z - step * m / ((v / (1 - b2 ** (i + 1))).sqrt() + 1e-8)
    converged = (mark_f - best_f) <= ftol * best_f.abs().clamp_min(1e-30)
    return OptResult(best_z, best_f, torch.full((k,), max_iter, dtype=torch.int64, device=z0.device), converged)


# --- inversion -------------------------------------------------------------------------------


@dataclass
class InvertResult:
    """Per-target results (arrays over targets), plus the batch's totals."""

    method: str
    objective_kind: str  # "l2" (norm in training space) or "chi2"
    z: np.ndarray  # (n, d)
    objective: np.ndarray  # (n,) L2 norm in training space, or chi^2
    residual_norm: np.ndarray  # (n,) L2 norm of (target - fit) in training space
    data_residual: np.ndarray  # (n,) ||fit - target|| in the family's units
    rel_l2: np.ndarray  # (n,) ||fit - target|| / ||target|| in the family's units
    encoder_z: np.ndarray  # (n, d) the encoder's code
    encoder_objective: np.ndarray  # (n,) objective at the encoder's code
    encoder_rel_l2: np.ndarray  # (n,)
    iterations: np.ndarray  # (n,) of the winning start
    converged: np.ndarray  # (n,) bool
    start: np.ndarray  # (n,) winning start: 0 = the encoder's code, k = k-th random start
    seconds: np.ndarray  # (n,) per target; amortized (batch time / n) for the batched methods
    fit: np.ndarray  # (n, m) decoded curve in family units at the observation points
    total_seconds: float
    chi2: np.ndarray | None = None  # (n,) with yerr
    reduced_chi2: np.ndarray | None = None  # (n,) chi^2 / (m - d)
    params_est: np.ndarray | None = None  # (n, n_params) from the regressor
    starts: int = 0

    @property
    def n(self) -> int:
        return int(self.z.shape[0])

    @property
    def targets_per_second(self) -> float:
        return self.n / max(self.total_seconds, 1e-12)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def invert_batch(
    trained: Trained,
    targets: Targets | Tensor | np.ndarray,
    method: str = "lbfgs",
    starts: int = 0,
    max_iter: int = 200,
    lr: float = 0.05,
    seed: int = 0,
    latent_model: LatentModel | None = None,
    x: Tensor | np.ndarray | None = None,
    yerr: Tensor | np.ndarray | None = None,
) -> InvertResult:
    """Invert many targets at once; usable without the CLI.

    targets: a Targets, or curves (n, m) in family units on the run's grid (or at `x`, with optional `yerr`).
    starts: random restarts per target from the latent distribution (AE: the training codes, which
    need `latent_model`; VAE: the prior); the best of the encoder's code and the restarts is kept.
    latent_model: used for the parameter estimates (and AE restarts); None: no estimates (and
    AE restarts fall back to the prior N(0, I)).
    """
    if method not in METHODS:
        raise InputError(f"--method: unknown method {method!r}; choose one of {', '.join(METHODS)}")
    if not isinstance(targets, Targets):
        y = torch.as_tensor(np.asarray(targets) if not isinstance(targets, Tensor) else targets, dtype=torch.float32)
        y = y.reshape(-1, y.shape[-1])
        xt = None if x is None else torch.as_tensor(x, dtype=torch.float64)
        et = None if yerr is None else torch.as_tensor(yerr, dtype=torch.float32).expand_as(y).clone()
        targets = Targets(y, xt, et, None, [f"target {i}" for i in range(y.shape[0])], "array")
    if targets.x is None and targets.y.shape[1] != trained.grid.shape[0]:
        raise InputError(f"targets have {targets.y.shape[1]} points but the run's grid has {trained.grid.shape[0]}")
    dev = trained.device
    _sync(dev)
    t0 = time.perf_counter()
    problem = Problem(trained, targets)
    n, d = targets.n, trained.model.args.latent_dim
    y_grid = targets_on_grid(trained, targets)
    if trained.normalizer.transform == "log" and problem.chi2:  # noisy data may dip <= 0; only the start needs log
        positive = y_grid[y_grid > 0]
        y_grid = y_grid.clamp_min(float(positive.min()) if positive.numel() else 1e-30)
    z_enc = encode_curves(trained, y_grid)  # (n, d)
    gen = torch.Generator().manual_seed(seed)
    zs = torch.cat([z_enc[None], random_starts(trained, latent_model, starts, n, gen).to(dev)])  # (1+K, n, d)
    seconds = None
    if method == "encoder":
        z_best = z_enc
        iters = torch.zeros(n, dtype=torch.int64)
        conv = torch.ones(n, dtype=torch.bool)
        start = torch.zeros(n, dtype=torch.int64)
    elif method == "nelder-mead":
        z_best, iters, conv, start, seconds = _nelder_mead_all(problem, zs, max_iter)
    else:
        z_best, iters, conv, start = _batched(problem, zs, method, max_iter, lr)
    m_enc = problem.metrics(z_enc)
    m = problem.metrics(z_best)
    fit = m["fit"]
    _sync(dev)
    total = time.perf_counter() - t0
    params_est = None
    if latent_model is not None:
        params_est = latent_model.predict(z_best).numpy()

    def np_(t: Tensor) -> np.ndarray:
        return t.detach().cpu().numpy()

    chi2 = reduced = None
    if problem.chi2:
        chi2 = np_(m["chi2"]).astype(np.float64)
        dof = problem.m - d
        reduced = chi2 / dof if dof > 0 else np.full_like(chi2, np.nan)
    return InvertResult(
        method=method,
        objective_kind="chi2" if problem.chi2 else "l2",
        z=np_(z_best).astype(np.float64),
        objective=np_(m["objective"]).astype(np.float64),
        residual_norm=np_(m["residual_norm"]).astype(np.float64),
        data_residual=np_(m["data_residual"]).astype(np.float64),
        rel_l2=np_(m["rel_l2"]).astype(np.float64),
        encoder_z=np_(z_enc).astype(np.float64),
        encoder_objective=np_(m_enc["objective"]).astype(np.float64),
        encoder_rel_l2=np_(m_enc["rel_l2"]).astype(np.float64),
        iterations=np_(iters),
        converged=np_(conv),
        start=np_(start),
        seconds=np.full(n, total / max(n, 1)) if seconds is None else seconds,
        fit=np_(fit),
        total_seconds=total,
        chi2=chi2,
        reduced_chi2=reduced,
        params_est=params_est,
        starts=starts,
    )


def _batched(
    problem: Problem, zs: Tensor, method: str, max_iter: int, lr: float
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Optimize every (start, target) pair as rows of one problem, in chunks of targets; keep each target's best."""
    n_starts, n, d = zs.shape
    per_chunk = max(1, CHUNK_ROWS // n_starts)
    dev = zs.device
    out_z, out_it, out_conv, out_start = [], [], [], []
    for a in range(0, n, per_chunk):
        b = min(n, a + per_chunk)
        k = b - a
        rows = torch.arange(a, b, device=dev).repeat(n_starts)  # row -> target; start-major
        z0 = zs[:, a:b].reshape(-1, d)

        def fg(z: Tensor, r: Tensor, rows: Tensor = rows) -> tuple[Tensor, Tensor]:
            return problem.loss_and_grad(z, rows[r])

        def curv(z: Tensor, v: Tensor, r: Tensor, rows: Tensor = rows) -> Tensor:
            return problem.gn_curvature(z, v, rows[r])

        res = lbfgs(fg, z0, max_iter, curvature=curv) if method == "lbfgs" else adam(fg, z0, max_iter, lr)
        f = torch.where(torch.isfinite(res.f), res.f, math.inf).reshape(n_starts, k)
        best = f.argmin(dim=0)  # (k,) winning start per target; ties go to the encoder's code
        pick = best * k + torch.arange(k, device=dev)
        out_z.append(res.z[pick])
        out_it.append(res.iterations[pick].cpu())
        out_conv.append(res.converged[pick].cpu())
        out_start.append(best.cpu())
    return torch.cat(out_z), torch.cat(out_it), torch.cat(out_conv), torch.cat(out_start)


def nelder_mead_target(
    problem: Problem, i: int, z0: np.ndarray, max_iter: int | None = None
) -> tuple[np.ndarray, float, int, bool, float]:
    """scipy Nelder-Mead on target i, one decoder call and numpy round trip per evaluation (notebook 000).

    Minimizes the objective's norm (sqrt of the sum of squares), as the notebook did.
    Returns (z, objective norm, iterations, success, seconds).
    """
    from scipy.optimize import minimize

    row = torch.tensor([i], device=problem.device)

    def func(zv: np.ndarray) -> float:
        with torch.no_grad():
            zt = torch.as_tensor(zv, dtype=torch.float32, device=problem.device)[None]
            return float(problem.residual(zt, row).square().sum().sqrt())

    options = {} if max_iter is None else {"maxiter": max_iter}
    t0 = time.perf_counter()
    res = minimize(func, np.asarray(z0, dtype=np.float64), method="Nelder-Mead", options=options)
    return np.asarray(res.x), float(res.fun), int(res.nit), bool(res.success), time.perf_counter() - t0


def _nelder_mead_all(problem: Problem, zs: Tensor, max_iter: int) -> tuple[Tensor, Tensor, Tensor, Tensor, np.ndarray]:
    """Nelder-Mead per target and per start (a Python loop: this is the baseline, not the fast path)."""
    n_starts, n, d = zs.shape
    z0s = zs.cpu().double().numpy()
    z_out = np.zeros((n, d))
    it, conv, start = np.zeros(n, np.int64), np.zeros(n, bool), np.zeros(n, np.int64)
    secs = np.zeros(n)
    for i in range(n):
        best = math.inf
        for s in range(n_starts):
            z, fun, nit, ok, sec = nelder_mead_target(problem, i, z0s[s, i], max_iter * d)
            secs[i] += sec
            if fun < best:
                best, z_out[i], it[i], conv[i], start[i] = fun, z, nit, ok, s
    dev = problem.device
    return (
        torch.as_tensor(z_out, dtype=torch.float32, device=dev),
        torch.from_numpy(it),
        torch.from_numpy(conv),
        torch.from_numpy(start),
        secs,
    )


def notebook_nelder_mead(trained: Trained, curves: Tensor | np.ndarray) -> InvertResult:
    """The notebook-000 baseline: per target, Nelder-Mead from z = 0 with scipy's default options.

    curves: (n, n_points) in family units on the run's grid.
    """
    y = torch.as_tensor(np.asarray(curves) if not isinstance(curves, Tensor) else curves, dtype=torch.float32)
    targets = Targets(y.reshape(-1, y.shape[-1]), names=[], source="array")
    problem = Problem(trained, targets)
    n, d = targets.n, trained.model.args.latent_dim
    t0 = time.perf_counter()
    z_out = np.zeros((n, d))
    it, conv, secs = np.zeros(n, np.int64), np.zeros(n, bool), np.zeros(n)
    for i in range(n):
        z_out[i], _, it[i], conv[i], secs[i] = nelder_mead_target(problem, i, np.zeros(d))
    total = time.perf_counter() - t0
    z = torch.as_tensor(z_out, dtype=torch.float32, device=trained.device)
    m = problem.metrics(z)
    z_enc = encode_curves(trained, targets.y)
    m_enc = problem.metrics(z_enc)
    return InvertResult(
        method="nelder-mead (notebook, z0 = 0)",
        objective_kind="l2",
        z=z_out,
        objective=m["objective"].cpu().double().numpy(),
        residual_norm=m["residual_norm"].cpu().double().numpy(),
        data_residual=m["data_residual"].cpu().double().numpy(),
        rel_l2=m["rel_l2"].cpu().double().numpy(),
        encoder_z=z_enc.cpu().double().numpy(),
        encoder_objective=m_enc["objective"].cpu().double().numpy(),
        encoder_rel_l2=m_enc["rel_l2"].cpu().double().numpy(),
        iterations=it,
        converged=conv,
        start=np.zeros(n, np.int64),
        seconds=secs,
        fit=problem.fit(z).cpu().numpy(),
        total_seconds=total,
    )


# --- report ----------------------------------------------------------------------------------


def result_rows(trained: Trained, targets: Targets, res: InvertResult, with_curves: int = 16) -> list[dict[str, Any]]:
    """One JSON-ready dict per target; the first `with_curves` carry their target and fit curves."""
    names = trained.param_names
    rows = []
    for i in range(res.n):
        row: dict[str, Any] = {
            "index": i,
            "name": targets.names[i] if i < len(targets.names) else f"target {i}",
            "z": res.z[i].tolist(),
            "objective": float(res.objective[i]),
            "residual_norm": float(res.residual_norm[i]),
            "data_residual": float(res.data_residual[i]),
            "rel_l2": float(res.rel_l2[i]),
            "encoder_z": res.encoder_z[i].tolist(),
            "encoder_objective": float(res.encoder_objective[i]),
            "encoder_rel_l2": float(res.encoder_rel_l2[i]),
            "iterations": int(res.iterations[i]),
            "converged": bool(res.converged[i]),
            "start": int(res.start[i]),
            "seconds": float(res.seconds[i]),
        }
        if res.chi2 is not None:
            row["chi2"] = float(res.chi2[i])
            row["reduced_chi2"] = _finite_or_none(res.reduced_chi2[i])
        if res.params_est is not None:
            row["estimated_params"] = {k: float(v) for k, v in zip(names, res.params_est[i])}
        if targets.params is not None:
            true = targets.params[i].tolist()
            row["true_params"] = dict(zip(names, true))
            if res.params_est is not None:
                row["param_error"] = {k: float(e) - t for k, e, t in zip(names, res.params_est[i], true)}
                row["param_rel_error"] = {
                    k: abs(float(e) - t) / abs(t) if t != 0 else None for k, e, t in zip(names, res.params_est[i], true)
                }
        if i < with_curves:
            row["target"] = targets.y[i].tolist()
            row["fit"] = res.fit[i].tolist()
            if targets.yerr is not None:
                row["yerr"] = targets.yerr[i].tolist()
        rows.append(row)
    return rows


def _finite_or_none(v: float) -> float | None:
    v = float(v)
    return v if math.isfinite(v) else None


def _nanmedian(a: np.ndarray) -> float | None:
    a = a[np.isfinite(a)]
    return float(np.median(a)) if a.size else None


def json_safe(obj: Any) -> Any:
    """NaN and infinities (invalid JSON) become null, recursively."""
    if isinstance(obj, float):
        return _finite_or_none(obj)
    if isinstance(obj, dict):
        return {k: json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_safe(v) for v in obj]
    return obj


def summarize(res: InvertResult, targets: Targets, names: list[str]) -> dict[str, Any]:
    """Medians and percentiles over the batch."""

    def stats(a: np.ndarray) -> dict[str, float | None]:
        a = a[np.isfinite(a)]
        if a.size == 0:
            return {"median": None, "p90": None, "max": None}
        return {"median": float(np.median(a)), "p90": float(np.percentile(a, 90)), "max": float(a.max())}

    out: dict[str, Any] = {
        "objective": stats(res.objective),
        "residual_norm": stats(res.residual_norm),
        "data_residual": stats(res.data_residual),
        "rel_l2": stats(res.rel_l2),
        "encoder_objective": stats(res.encoder_objective),
        "encoder_rel_l2": stats(res.encoder_rel_l2),
        "iterations": stats(res.iterations.astype(np.float64)),
        "converged_fraction": float(res.converged.mean()),
        "restart_won_fraction": float((res.start > 0).mean()),
    }
    if res.reduced_chi2 is not None:
        out["reduced_chi2"] = stats(res.reduced_chi2)
    if res.params_est is not None and targets.params is not None:
        true = targets.params.numpy()
        err = np.abs(res.params_est - true)
        with np.errstate(divide="ignore", invalid="ignore"):
            rel = np.where(true != 0, err / np.abs(true), np.nan)
        out["param_abs_error_median"] = {k: float(np.median(err[:, j])) for j, k in enumerate(names)}
        out["param_rel_error_median"] = {k: _nanmedian(rel[:, j]) for j, k in enumerate(names)}
    return out


# --- sampling --------------------------------------------------------------------------------

LATENTS = ("auto", "prior", "empirical", "gaussian")


def sample_codes(trained: Trained, lm: LatentModel | None, n: int, latent: str, gen: torch.Generator) -> Tensor:
    """(n, d) codes: `prior` N(0, I) (VAE); `empirical`: each marginal of the training codes resampled
    independently (notebook 004); `gaussian`: a Gaussian with the training codes' mean and covariance."""
    d = trained.model.args.latent_dim
    if latent == "prior":
        return torch.randn(n, d, generator=gen)
    assert lm is not None
    if latent == "empirical":
        idx = torch.randint(0, lm.codes.shape[0], (n, d), generator=gen)
        return torch.gather(lm.codes, 0, idx)
    cov = lm.code_cov.double()
    evals, evecs = torch.linalg.eigh(cov)
    root = evecs * evals.clamp_min(0).sqrt()  # root @ root.T = cov, also when cov is singular
    eps = torch.randn(n, d, generator=gen, dtype=torch.float64)
    return (lm.code_mean.double() + eps @ root.T).float()


def resolve_latent(trained: Trained, latent: str) -> str:
    if latent not in LATENTS:
        raise InputError(f"--latent: unknown {latent!r}; choose one of {', '.join(LATENTS)}")
    kind = trained.model.args.kind
    if latent == "auto":
        return "prior" if kind == "vae" else "empirical"
    if latent == "prior" and kind != "vae":
        raise InputError("--latent prior: an AE has no prior; use empirical or gaussian (the training codes)")
    return latent


@torch.no_grad()
def sample_curves(trained: Trained, n: int, latent: str = "auto", seed: int = 0) -> dict[str, Any]:
    """New curves from the model: VAE from the prior, AE from the training codes' distribution.

    Returns arrays (curves (n, n_points) family units, z (n, d), grid) and what was used.
    """
    if n < 1:
        raise InputError(f"-n: must be >= 1, got {n}")
    kind = resolve_latent(trained, latent)
    lm, fitted_now = latent_model_for(trained)  # the training codes: sampled from (AE), shown beside (VAE)
    gen = torch.Generator().manual_seed(seed)
    z = sample_codes(trained, lm, n, kind, gen)
    curves = torch.cat([trained.decode(z[i : i + 8192].to(trained.device)) for i in range(0, n, 8192)])
    return {
        "curves": curves.float().cpu().numpy(),
        "z": z.numpy(),
        "grid": trained.grid.numpy(),
        "latent": kind,
        "regressor_fitted_now": fitted_now,
        "z_real": None if lm is None else lm.codes.numpy(),
    }


# --- jobs behind the commands ----------------------------------------------------------------


def targets_from_inputs(
    trained: Trained,
    param_args: list[str],
    curve: Path | None = None,
    params_csv: Path | None = None,
    curves_npz: Path | None = None,
) -> tuple[Targets | None, str]:
    """The command line's targets (at most one kind) and a default slug; None when none was given."""
    fam = trained.family
    values = parse_param_args(fam, param_args)
    given = [
        k
        for k, v in (("parameters", values), ("--curve", curve), ("--targets", params_csv), ("--curves", curves_npz))
        if v
    ]
    if len(given) > 1:
        raise InputError(f"give one kind of target, got {' and '.join(given)}")
    if values:
        params = torch.tensor([[values[n] for n in fam.param_names]], dtype=torch.float64)
        check_domain(fam, params, lambda i: "--")
        t = targets_from_params(trained, params, "parameters")
        return t, "_".join(f"{k}={v:.6g}" for k, v in values.items())
    if curve is not None:
        return read_curve_csv(trained, curve), Path(curve).stem
    if params_csv is not None:
        return read_params_csv(trained, params_csv), Path(params_csv).stem
    if curves_npz is not None:
        return read_curves_npz(trained, curves_npz), Path(curves_npz).stem
    return None, ""


def _run_info(trained: Trained) -> dict[str, Any]:
    return {
        "run": trained.cfg.name,
        "run_dir": str(trained.rd.root),
        "family": trained.family.name,
        "model": trained.model.args.kind,
        "latent_dim": trained.model.args.latent_dim,
        "param_names": trained.param_names,
        "device": str(trained.device),
    }


def _write_npz(path: Path, arrays: dict[str, Any]) -> None:
    import io

    from funcae_cli.rundir import atomic_write_bytes

    buf = io.BytesIO()
    np.savez(buf, **{k: v for k, v in arrays.items() if v is not None})
    atomic_write_bytes(path, buf.getvalue())


def _csv(header: list[str], rows: list[list[Any]]) -> str:
    def cell(v: Any) -> str:
        if isinstance(v, (bool, np.bool_)):
            return str(bool(v)).lower()
        if isinstance(v, (float, np.floating)):
            return f"{float(v):.9g}"
        text = str(v)
        return f'"{text}"' if ("," in text or '"' in text) else text

    return "\n".join(",".join(cell(v) for v in row) for row in [header, *rows]) + "\n"


def run_encode(trained: Trained, targets: Targets | None, slug: str) -> dict[str, Any]:
    """No targets: the whole data set to latents.npz. Targets: their codes to encode/<slug>.json (+ .csv)."""
    from funcae_cli.rundir import atomic_write_json, atomic_write_text, slugify

    rd = trained.rd
    t0 = time.perf_counter()
    out = _run_info(trained)
    if targets is None:
        arrays = encode_dataset(trained)
        _write_npz(rd.latents, arrays)
        z = arrays["z"]
        out.update(
            n=int(z.shape[0]),
            z_mean=z.mean(axis=0).tolist(),
            z_std=z.std(axis=0).tolist(),
            z_min=z.min(axis=0).tolist(),
            z_max=z.max(axis=0).tolist(),
            files={"latents": str(rd.latents)},
            seconds=time.perf_counter() - t0,
        )
        return out
    warnings = training_range_warnings(trained, targets.params) if targets.params is not None else []
    if not covers_grid(trained, targets):
        warnings.append(
            f"{targets.source}: x covers [{float(targets.x[0]):g}, {float(targets.x[-1]):g}] of the grid's "
            f"[{float(trained.grid[0]):g}, {float(trained.grid[-1]):g}]: the encoder sees end values held "
            "constant; `funcae invert` fits the observed points only"
        )
    z = encode_curves(trained, targets_on_grid(trained, targets)).cpu().numpy().astype(np.float64)
    slug = slugify(slug)
    rows = []
    for i in range(targets.n):
        row: dict[str, Any] = {"index": i, "name": targets.names[i], "z": z[i].tolist()}
        if targets.params is not None:
            row["true_params"] = dict(zip(trained.param_names, targets.params[i].tolist()))
        rows.append(row)
    out.update(
        source=targets.source,
        n_targets=targets.n,
        extrapolating=any("extrapolating" in w for w in warnings),
        warnings=warnings,
        targets=rows,
        files={"json": str(rd.encode_json(slug))},
    )
    if targets.n > 1:
        header = ["name", *(f"z{j + 1}" for j in range(z.shape[1]))]
        if targets.params is not None:
            header += trained.param_names
        lines = [
            [targets.names[i], *z[i], *(targets.params[i].tolist() if targets.params is not None else [])]
            for i in range(targets.n)
        ]
        atomic_write_text(rd.encode_csv(slug), _csv(header, lines))
        out["files"]["csv"] = str(rd.encode_csv(slug))
    out["seconds"] = time.perf_counter() - t0
    atomic_write_json(rd.encode_json(slug), out)
    return out


def run_invert(
    trained: Trained,
    targets: Targets,
    slug: str,
    method: str,
    starts: int,
    max_iter: int,
    lr: float,
    seed: int,
    plot: bool = True,
) -> dict[str, Any]:
    """Invert, estimate parameters, write invert/<slug>.json, .png and (batches) .csv; return the record.

    The record (also what `invert --json` prints):
      run, run_dir, family, model, latent_dim, param_names, device, source, method, starts, max_iter, seed;
      objective_kind ("l2" | "chi2"), objective_space; n_targets, seconds, targets_per_second;
      extrapolating (a parameter target outside the training ranges), warnings;
      regressor (kind, degree, ridge, n_train, val_r2 per parameter), regressor_fitted_now;
      x (observation points); summary (median/p90/max of objective, residual_norm, data_residual, rel_l2,
      encoder_objective, encoder_rel_l2, iterations; converged_fraction; restart_won_fraction; reduced_chi2;
      parameter errors); targets: one dict per target with index, name, z, objective, residual_norm
      (training space L2), data_residual (|fit - target| in family units), rel_l2 (family units), encoder_z,
      encoder_objective, encoder_rel_l2, iterations, converged, start, seconds (amortized for batched
      methods), estimated_params, [chi2, reduced_chi2], [true_params, param_error, param_rel_error], and
      for the first 16 targets target, fit [, yerr] at x;
      files: json, png, csv (batches).
    """
    from funcae_cli.rundir import atomic_write_json, atomic_write_text, slugify

    rd = trained.rd
    if starts < 0:
        raise InputError(f"--starts: must be >= 0, got {starts}")
    if max_iter < 1:
        raise InputError(f"--max-iter: must be >= 1, got {max_iter}")
    warnings = training_range_warnings(trained, targets.params) if targets.params is not None else []
    lm, fitted_now = latent_model_for(trained)
    res = invert_batch(trained, targets, method, starts, max_iter, lr, seed, lm)
    slug = slugify(slug)
    x = trained.grid if targets.x is None else targets.x
    record = _run_info(trained)
    record.update(
        source=targets.source,
        method=method,
        starts=starts,
        max_iter=max_iter,
        seed=seed,
        objective_kind=res.objective_kind,
        objective_space="chi^2 in the family's units (yerr)" if res.chi2 is not None else "training space (L2 norm)",
        n_targets=res.n,
        seconds=res.total_seconds,
        targets_per_second=res.targets_per_second,
        extrapolating=any("extrapolating" in w for w in warnings),
        warnings=warnings,
        regressor=lm.summary(),
        regressor_fitted_now=fitted_now,
        x=x.tolist(),
        summary=summarize(res, targets, trained.param_names),
        targets=result_rows(trained, targets, res),
    )
    files = {"json": str(rd.invert_json(slug))}
    if res.n > 1:
        names = trained.param_names
        header = ["name", *(f"z{j + 1}" for j in range(res.z.shape[1]))]
        header += ["objective", "residual_norm", "data_residual", "rel_l2", "encoder_objective", "encoder_rel_l2"]
        header += ["iterations", "converged", "start", "seconds"]
        header += ["chi2", "reduced_chi2"] if res.chi2 is not None else []
        header += [f"est_{k}" for k in names]
        header += [f"true_{k}" for k in names] if targets.params is not None else []
        lines = []
        for i in range(res.n):
            line = [targets.names[i], *res.z[i], res.objective[i], res.residual_norm[i], res.data_residual[i]]
            line += [res.rel_l2[i]]
            line += [res.encoder_objective[i], res.encoder_rel_l2[i], res.iterations[i], res.converged[i]]
            line += [res.start[i], res.seconds[i]]
            line += [res.chi2[i], res.reduced_chi2[i]] if res.chi2 is not None else []
            line += list(res.params_est[i])
            line += targets.params[i].tolist() if targets.params is not None else []
            lines.append(line)
        atomic_write_text(rd.invert_csv(slug), _csv(header, lines))
        files["csv"] = str(rd.invert_csv(slug))
    if plot:
        from funcae_cli.plotting.base import save_figure
        from funcae_cli.plotting.invert import invert_figure_from_record

        save_figure(invert_figure_from_record(record, trained.family), rd.invert_png(slug))
        files["png"] = str(rd.invert_png(slug))
    record["files"] = files
    record = json_safe(record)
    atomic_write_json(rd.invert_json(slug), record)
    return record


def run_sample(trained: Trained, n: int, latent: str, seed: int, n_real: int = 200) -> dict[str, Any]:
    """Sample n curves, write samples.npz (curves, z, grid, real, z_real, latent) and samples.png."""
    from funcae_cli.data import generate
    from funcae_cli.plotting.base import save_figure
    from funcae_cli.plotting.samples import samples_figure

    rd = trained.rd
    t0 = time.perf_counter()
    s = sample_curves(trained, n, latent, seed)
    real = generate(trained.cfg, n=n_real, seed=seed + 1).curves.numpy()  # fresh curves of the same prior
    _write_npz(
        rd.samples,
        {
            "curves": s["curves"],
            "z": s["z"],
            "grid": s["grid"],
            "real": real,
            "z_real": s["z_real"],
            "latent": np.array(s["latent"]),
            "family": np.array(trained.family.name),
            "run": np.array(trained.cfg.name),
        },
    )
    note = f"latent: {s['latent']}; seed {seed}; real: {n_real} fresh curves from the run's prior"
    fig = samples_figure(
        s["grid"], s["curves"], real, trained.family, z=s["z"], z_real=s["z_real"], title=trained.cfg.name, note=note
    )
    save_figure(fig, rd.samples_png)
    c = s["curves"]
    out = _run_info(trained)
    out.update(
        n=n,
        latent=s["latent"],
        seed=seed,
        regressor_fitted_now=s["regressor_fitted_now"],
        finite_fraction=float(np.isfinite(c).all(axis=1).mean()),
        value_min=float(np.nanmin(c)),
        value_max=float(np.nanmax(c)),
        z_mean=s["z"].mean(axis=0).tolist(),
        z_std=s["z"].std(axis=0).tolist(),
        files={"samples": str(rd.samples), "png": str(rd.samples_png)},
        seconds=time.perf_counter() - t0,
    )
    return out
