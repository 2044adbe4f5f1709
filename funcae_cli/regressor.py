"""Latent model of a run: a regressor from latent code to physical parameters, and the codes' distribution.

The regressor is ridge regression on polynomial features of the code, solved in closed form:
deterministic, no training loop, a few hundred numbers on disk. The map code -> parameters is
smooth and low-dimensional (latent 2-8), which is where polynomials do well; the degree and the
ridge strength are chosen on the validation split. Parameters with `log_scale` are regressed in
log10. A polynomial explodes away from its data, so inputs are clamped to the box of the training
codes and outputs to the training parameters' range widened by `OUTPUT_MARGIN` of its span: the
regressor never extrapolates far (the commands warn when a target lies outside the training ranges).

The same file keeps a sample of the training codes (with their mean and covariance): the AE's
"latent distribution" for random restarts of `invert` and for `sample`.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from funcae_cli.checkpoint import load_checkpoint, save_checkpoint
from funcae_cli.errors import CheckpointError
from funcae_cli.families import Family

KIND = "poly_ridge"
MAX_DEGREE = 7
MAX_FEATURES = 400
RIDGES = (1e-10, 1e-7, 1e-4, 1e-2)  # relative to the mean diagonal of the feature Gram matrix
MAX_FIT_ROWS = 50_000  # training rows used for the fit; more changes nothing at these feature counts
MAX_STORED_CODES = 20_000  # training codes kept for sampling and random restarts
ENCODE_BATCH = 8192
OUTPUT_MARGIN = 0.1  # predictions are clamped to the training range widened by this fraction of its span


@torch.no_grad()
def latent_codes(model: nn.Module, x: Tensor, batch_size: int = ENCODE_BATCH) -> Tensor:
    """Deterministic codes (posterior means for a VAE) of curves already in training space.

    x: (n, n_points) on the model's device -> (n, latent_dim) on the same device.
    """
    was_training = model.training
    model.eval()
    try:
        parts = [model.encode(x[i : i + batch_size]) for i in range(0, x.shape[0], batch_size)]
    finally:
        model.train(was_training)
    if not parts:
        return torch.empty(0, model.args.latent_dim, device=x.device)
    return torch.cat(parts)


def model_signature(model: nn.Module) -> float:
    """A cheap fingerprint of the weights: tells a regressor fitted on other weights (stale) apart."""
    with torch.no_grad():
        return float(sum(p.detach().double().abs().sum() for p in model.state_dict().values()))


def exponents(dim: int, degree: int) -> Tensor:
    """Multi-indices of the monomials of total degree 1..degree, ordered by degree: (n_features, dim).

    Ordered by total degree, so the features of a lower degree are a prefix of those of a higher one.
    """
    rows = [e for d in range(1, degree + 1) for e in _compositions(dim, d)]
    return torch.tensor(rows, dtype=torch.int64).reshape(-1, dim)


def _compositions(dim: int, total: int) -> list[tuple[int, ...]]:
    out = []
    for combo in itertools.combinations_with_replacement(range(dim), total):
        e = [0] * dim
        for i in combo:
            e[i] += 1
        out.append(tuple(e))
    return sorted(out, reverse=True)


def n_features(dim: int, degree: int) -> int:
    return math.comb(dim + degree, degree) - 1


def _features(u: Tensor, exps: Tensor) -> Tensor:
    """(n, dim) standardized codes -> (n, n_features) monomials."""
    return torch.prod(u[:, None, :] ** exps[None, :, :].to(u.dtype), dim=2)


@dataclass
class LatentModel:
    """Code -> parameters regressor plus the distribution of the training codes."""

    param_names: list[str]
    log_scale: list[bool]
    degree: int
    ridge: float
    exps: Tensor  # (n_features, dim) int64
    z_mean: Tensor  # (dim,) standardization of the codes
    z_std: Tensor
    u_min: Tensor  # (dim,) box of the standardized training codes (inputs are clamped to it)
    u_max: Tensor
    f_mean: Tensor  # (n_features,) standardization of the features
    f_std: Tensor
    coef: Tensor  # (n_features, n_params), float64
    intercept: Tensor  # (n_params,)
    y_low: Tensor  # (n_params,) clamp of the predictions, regression space (log10 for log-scale params)
    y_high: Tensor
    val_r2: dict[str, float | None]  # validation R^2 per parameter (log10 space for log-scale ones)
    codes: Tensor  # (k, dim) float32: a sample of the training codes
    code_mean: Tensor  # (dim,)
    code_cov: Tensor  # (dim, dim)
    signature: float  # model_signature() of the weights it was fitted on
    n_train: int

    @property
    def dim(self) -> int:
        return int(self.z_mean.shape[0])

    def _design(self, z: Tensor) -> Tensor:
        u = (z.detach().cpu().double() - self.z_mean) / self.z_std
        u = torch.maximum(torch.minimum(u, self.u_max), self.u_min)
        return (_features(u, self.exps) - self.f_mean) / self.f_std

    def predict(self, z: Tensor) -> Tensor:
        """Codes (n, dim) -> parameters (n, n_params), float64 on the CPU, in the family's units."""
        y = self._design(z) @ self.coef + self.intercept
        y = torch.maximum(torch.minimum(y, self.y_high), self.y_low)
        logs = torch.tensor(self.log_scale)
        return torch.where(logs, 10.0**y, y)

    def summary(self) -> dict[str, Any]:
        return {
            "kind": KIND,
            "degree": self.degree,
            "ridge": self.ridge,
            "n_train": self.n_train,
            "val_r2": self.val_r2,
            "log10": [n for n, lg in zip(self.param_names, self.log_scale) if lg],
        }

    def state(self) -> dict[str, Any]:
        """Plain tensors and numbers: loadable with weights_only=True."""
        out: dict[str, Any] = {"kind": KIND}
        for name in self.__dataclass_fields__:
            v = getattr(self, name)
            out[name] = v.clone() if isinstance(v, Tensor) else v
        return out

    @classmethod
    def from_state(cls, s: dict[str, Any]) -> LatentModel:
        if s.get("kind") != KIND:
            raise KeyError(f"kind {s.get('kind')!r}")
        return cls(**{name: s[name] for name in cls.__dataclass_fields__})


def _regression_targets(params: Tensor, log_scale: list[bool]) -> Tensor:
    p = params.double()
    logs = torch.tensor(log_scale)
    return torch.where(logs, torch.log10(p.clamp_min(1e-300)), p)


def _r2(pred: Tensor, y: Tensor) -> list[float | None]:
    ss_res = (pred - y).square().sum(dim=0)
    ss_tot = (y - y.mean(dim=0)).square().sum(dim=0)
    out: list[float | None] = []
    for r, t in zip(ss_res.tolist(), ss_tot.tolist()):
        if t > 1e-30 * max(1, len(y)):
            out.append(1.0 - r / t)
        else:  # a constant parameter (dist: fixed): R^2 is undefined
            out.append(None)
    return out


def fit_latent_model(
    codes_train: Tensor,
    params_train: Tensor,
    codes_val: Tensor,
    params_val: Tensor,
    family: Family,
    signature: float = 0.0,
    seed: int = 0,
) -> LatentModel:
    """Fit the regressor on the training codes, choosing degree and ridge by mean validation R^2.

    codes_*: (n, dim); params_*: (n, n_params) in the family's units. CPU or device; computed in float64.
    """
    log_scale = [p.log_scale for p in family.params]
    gen = torch.Generator().manual_seed(seed)
    zt_all = codes_train.detach().cpu().double()
    yt_all = _regression_targets(params_train.cpu(), log_scale)
    if zt_all.shape[0] > MAX_FIT_ROWS:
        keep = torch.randperm(zt_all.shape[0], generator=gen)[:MAX_FIT_ROWS]
        zt, yt = zt_all[keep], yt_all[keep]
    else:
        zt, yt = zt_all, yt_all
    zv = codes_val.detach().cpu().double()
    yv = _regression_targets(params_val.cpu(), log_scale)
    n, dim = zt.shape

    z_mean, z_std = zt.mean(dim=0), zt.std(dim=0).clamp_min(1e-12)
    ut = (zt - z_mean) / z_std
    u_min, u_max = ut.min(dim=0).values, ut.max(dim=0).values
    uv = torch.maximum(torch.minimum((zv - z_mean) / z_std, u_max), u_min)
    top = max(d for d in range(1, MAX_DEGREE + 1) if d == 1 or n_features(dim, d) <= min(MAX_FEATURES, n // 5))
    exps = exponents(dim, top)
    ft, fv = _features(ut, exps), _features(uv, exps)
    f_mean, f_std = ft.mean(dim=0), ft.std(dim=0).clamp_min(1e-12)
    ft, fv = (ft - f_mean) / f_std, (fv - f_mean) / f_std
    y_mean = yt.mean(dim=0)
    y_min, y_max = yt_all.min(dim=0).values, yt_all.max(dim=0).values
    y_low, y_high = y_min - OUTPUT_MARGIN * (y_max - y_min), y_max + OUTPUT_MARGIN * (y_max - y_min)
    gram = ft.T @ ft  # (F, F); prefixes serve every lower degree
    rhs = ft.T @ (yt - y_mean)  # (F, p)

    best: tuple[float, int, float, Tensor] | None = None
    for degree in range(1, top + 1):
        k = n_features(dim, degree)
        g = gram[:k, :k]
        scale = float(torch.diagonal(g).mean())
        for ridge in RIDGES:
            coef = torch.linalg.solve(g + ridge * scale * torch.eye(k, dtype=g.dtype), rhs[:k])
            r2 = _r2(torch.maximum(torch.minimum(fv[:, :k] @ coef + y_mean, y_high), y_low), yv)
            score = sum(r for r in r2 if r is not None) / max(1, sum(r is not None for r in r2))
            if best is None or score > best[0] + 1e-6:  # prefer the simpler model on ties
                best = (score, degree, ridge, coef)
    assert best is not None
    _, degree, ridge, coef = best
    k = n_features(dim, degree)
    r2 = _r2(torch.maximum(torch.minimum(fv[:, :k] @ coef + y_mean, y_high), y_low), yv)

    stored = zt_all if zt_all.shape[0] <= MAX_STORED_CODES else zt_all[torch.randperm(len(zt_all), generator=gen)]
    stored = stored[:MAX_STORED_CODES]
    code_cov = torch.cov(zt_all.T).reshape(dim, dim) if len(zt_all) > 1 else torch.eye(dim, dtype=torch.float64)
    return LatentModel(
        param_names=family.param_names,
        log_scale=log_scale,
        degree=degree,
        ridge=ridge,
        exps=exps[:k].clone(),
        z_mean=z_mean,
        z_std=z_std,
        u_min=u_min,
        u_max=u_max,
        f_mean=f_mean[:k].clone(),
        f_std=f_std[:k].clone(),
        coef=coef,
        intercept=y_mean,
        y_low=y_low,
        y_high=y_high,
        val_r2={name: r for name, r in zip(family.param_names, r2)},
        codes=stored.float().clone(),
        code_mean=zt_all.mean(dim=0),
        code_cov=code_cov,
        signature=signature,
        n_train=int(zt_all.shape[0]),
    )


def fit_after_training(model: nn.Module, prep: Any, family: Family, seed: int = 0) -> LatentModel:
    """Fit from the trainer's prepared data (`train.Prepared`: normalized curves on the device)."""
    codes_train = latent_codes(model, prep.x[prep.train])
    codes_val = latent_codes(model, prep.x[prep.val])
    return fit_latent_model(
        codes_train,
        prep.params[prep.train],
        codes_val,
        prep.params[prep.val],
        family,
        signature=model_signature(model),
        seed=seed,
    )


# --- on disk ---------------------------------------------------------------------------------


def save_latent_model(lm: LatentModel, path: str | Path) -> None:
    save_checkpoint(path, {"latent_model": lm.state()})


def load_latent_model(path: str | Path) -> LatentModel:
    """Raises CheckpointError when the file is missing, foreign or incomplete."""
    ckpt = load_checkpoint(path)
    try:
        return LatentModel.from_state(ckpt["latent_model"])
    except (KeyError, TypeError) as e:
        raise CheckpointError(f"{path}: incomplete or incompatible regressor file ({e})") from None


def regressor_after_training(model: nn.Module, prep: Any, cfg: Any, rd: Any) -> dict[str, Any]:
    """Post-training hook: fit, save to `rd.regressor`, return the summary recorded in metrics.json.

    A failed fit never fails the training run: it is reported, and `invert` fits lazily later.
    """
    try:
        lm = fit_after_training(model, prep, cfg.family.family, seed=cfg.seed)
    except (RuntimeError, ValueError) as e:  # torch.linalg errors are RuntimeErrors
        return {"regressor": {"kind": KIND, "error": str(e).splitlines()[0][:200]}}
    save_latent_model(lm, rd.regressor)
    return {"regressor": lm.summary()}
