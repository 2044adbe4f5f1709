"""Evaluation of a model on a split: per-curve losses every epoch, the final test figures, and the baselines
they are compared with (PCA with as many components; the corrupted input itself for denoising runs).

Corrupted evaluation inputs come from `eval_chunks` alone, with a generator seeded `seed + EVAL_NOISE_SEED`:
every epoch, the final test figures and the plot job corrupt the very same entries.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from funcae_cli.config import Config, NoiseConfig
from funcae_cli.data.normalize import Normalizer, moments
from funcae_cli.training.losses import CORRUPTIONS, LOSSES, SQUARED_ERROR
from funcae_cli.training.prepared import Prepared

EVAL_NOISE_SEED = 2  # offset of the evaluation corruption's seed from the run's (training noise: + 1)
PCA_ROWS = 20_000  # training curves the PCA baseline is fitted on


def eval_chunks(
    xs: Tensor, batch: int, noise: NoiseConfig | None = None, seed: int = 0
) -> Iterator[tuple[Tensor, Tensor | None]]:
    """(x, corrupted x or None) for each chunk of `batch` rows of xs (training space, on its device)."""
    gen = torch.Generator(device=xs.device).manual_seed(seed + EVAL_NOISE_SEED) if noise is not None else None
    for i in range(0, xs.shape[0], batch):
        x = xs[i : i + batch]
        yield x, (CORRUPTIONS[noise.kind](x, noise, gen) if noise is not None else None)


def sse_units(normalizer: Normalizer, x: Tensor, recon: Tensor) -> Tensor:
    """Per-curve sum of squares in data units `(batch,)`; x and recon in training space."""
    return torch.linalg.vector_norm(normalizer.decode(recon).sub_(normalizer.decode(x)), dim=1).square_()


def run_noise(cfg: Config) -> NoiseConfig | None:
    """The run's own input corruption, or None."""
    return cfg.train.noise if cfg.train.noise.kind != "none" else None


@torch.no_grad()
def evaluate(model: nn.Module, prep: Prepared, part: slice, cfg: Config, kl_weight: float) -> dict[str, Any]:
    """Per-curve losses on one split: training-space loss parts and data-unit SSE/MSE.

    Denoising runs (train.noise.kind != none) add `noisy_recon`, `noisy_sse` and `noisy_mse`: the
    same figures for corrupted inputs against the clean curves.
    """
    model.eval()
    loss_fn = LOSSES[cfg.train.loss]
    noise = run_noise(cfg)
    xs = prep.x[part]
    raw_norms = prep.raw_norms(part)
    n_points = xs.shape[1]
    divisor, const = SQUARED_ERROR[cfg.train.loss](1, n_points, cfg.train)  # per-curve loss = |d|^2 / divisor + const
    scale = 1.0 / divisor
    linear = prep.normalizer.transform == "none"  # data units = training units * std + mean
    std = prep.normalizer.std
    std_sq = std.square() if linear and std.ndim == 0 else None  # one std for all points: SSE = |d|^2 std^2
    keys = ["loss", "recon", "kl", "sse", "mse", "rel_l2"] + (
        ["noisy_recon", "noisy_sse", "noisy_mse"] if noise else []
    )
    out: dict[str, list[Tensor]] = {k: [] for k in keys}
    i = 0
    for x, xc in eval_chunks(xs, cfg.train.eval_batch_size, noise, cfg.seed):
        o = model(x)
        # Few passes over (chunk, n_points): these run every epoch.
        d = o.recon - x
        sq = torch.linalg.vector_norm(d, dim=1).square_()
        recon = sq * scale + const
        kl = o.kl if o.kl is not None else torch.zeros_like(recon)
        if std_sq is not None:
            sse = sq.mul_(std_sq)
        elif linear:
            sse = torch.linalg.vector_norm(d.mul_(std), dim=1).square_()
        else:
            sse = sse_units(prep.normalizer, x, o.recon)
        out["loss"].append(recon + kl_weight * kl)
        out["recon"].append(recon)
        out["kl"].append(kl)
        out["sse"].append(sse)
        out["mse"].append(sse / x.shape[1])
        out["rel_l2"].append(sse.sqrt() / raw_norms[i : i + x.shape[0]].clamp_min(1e-30))
        i += x.shape[0]
        if xc is not None:
            o_noisy = model(xc)
            sse_noisy = sse_units(prep.normalizer, x, o_noisy.recon)
            out["noisy_recon"].append(loss_fn(o_noisy.recon, x, cfg.train))
            out["noisy_sse"].append(sse_noisy)
            out["noisy_mse"].append(sse_noisy / x.shape[1])
    return {k: torch.cat(v).double().cpu().numpy() for k, v in out.items()}


def test_split(prep: Prepared) -> slice:
    """The held-out test split, or the validation split when there is no test split."""
    return prep.test if prep.test.stop > prep.test.start else prep.val


def test_metrics(model: nn.Module, prep: Prepared, cfg: Config) -> dict[str, Any]:
    """Final figures on the held-out test split (val if there is no test split), data units.

    Image and denoising runs also carry `denoising`: see `denoising_figures`.
    """
    part = test_split(prep)
    r = evaluate(model, prep, part, cfg, cfg.train.kl_weight)
    pca = pca_baseline(prep, cfg.model.latent_dim, part)
    out = {
        "split": "test" if part is prep.test else "val",
        "n_curves": int(len(r["sse"])),
        "sse_mean": float(r["sse"].mean()),
        "sse_median": float(np.median(r["sse"])),
        "sse_p95": float(np.percentile(r["sse"], 95)),
        "mse": float(r["mse"].mean()),
        "mse_global_std": prep.per_std2(float(r["mse"].mean())),
        "rel_l2_median": float(np.median(r["rel_l2"])),
        "rel_l2_mean": float(r["rel_l2"].mean()),
        "pca": pca,
    }
    noise = metrics_noise(cfg)
    if noise is not None:
        out["denoising"] = denoising_figures(model, prep, cfg, part, noise)
    return out


def metrics_noise(cfg: Config) -> NoiseConfig | None:
    """The corruption of the denoising figures: the run's own, else a 20% mask for image data, else none."""
    if cfg.train.noise.kind != "none":
        return cfg.train.noise
    if cfg.family.image_shape is not None:
        return NoiseConfig(kind="mask")
    return None


@torch.no_grad()
def denoising_figures(model: nn.Module, prep: Prepared, cfg: Config, part: slice, noise: NoiseConfig) -> dict[str, Any]:
    """Error on corrupted inputs against the clean curves, data units, for the same corrupted inputs:
    the model, PCA with latent_dim components fitted on the clean training split, and the corrupted
    input itself (no denoising at all)."""
    model.eval()
    mean, axes = pca_fit(prep.x[prep.train], cfg.model.latent_dim)
    xs = prep.x[part]
    out: dict[str, list[Tensor]] = {"model": [], "pca": [], "corrupted_input": []}
    for x, xc in eval_chunks(xs, cfg.train.eval_batch_size, noise, cfg.seed):
        out["model"].append(sse_units(prep.normalizer, x, model(xc).recon))
        out["pca"].append(sse_units(prep.normalizer, x, pca_reconstruct(xc, mean, axes)))
        out["corrupted_input"].append(sse_units(prep.normalizer, x, xc))
    d = xs.shape[1]
    figures = {k: torch.cat(v).double().cpu().numpy() for k, v in out.items()}
    noise_desc = {"kind": noise.kind, **({"rate": noise.rate} if noise.kind == "mask" else {"std": noise.std})}
    return {
        "noise": noise_desc,  # applied in training space (after data.transform and data.normalize)
        "pca_components": int(axes.shape[1]),
        **{
            k: {"sse_mean": float(v.mean()), "sse_median": float(np.median(v)), "mse": float(v.mean()) / d}
            for k, v in figures.items()
        },
    }


@torch.no_grad()
def pca_fit(x_train: Tensor, k: int, max_rows: int = PCA_ROWS) -> tuple[Tensor, Tensor]:
    """Top-k principal axes of (at most max_rows of) training curves in training space: mean (d,), axes (d, k),
    float64, from the eigenvectors of the covariance accumulated in chunks (no float64 copy of the rows)."""
    xt = x_train[:max_rows]
    mean = moments(xt, per_point=True)[0]
    d = xt.shape[1]
    cov = torch.zeros(d, d, dtype=torch.float64, device=xt.device)
    for i in range(0, xt.shape[0], 4096):
        c = xt[i : i + 4096].double() - mean
        cov += c.T @ c
    _, vecs = torch.linalg.eigh(cov)  # ascending eigenvalues
    return mean, vecs[:, -k:].flip(1)


def pca_reconstruct(x: Tensor, mean: Tensor, axes: Tensor) -> Tensor:
    """Projection of curves (n, d) in training space onto the principal axes, in x's dtype."""
    return ((x.double() - mean) @ axes @ axes.T + mean).to(x.dtype)


@torch.no_grad()
def pca_sse(normalizer: Normalizer, x_train: Tensor, x: Tensor, k: int) -> np.ndarray:
    """Per-curve SSE in data units of PCA-k (fitted on x_train) on curves x, both in training space."""
    mean, axes = pca_fit(x_train, k)
    raw = normalizer.decode(x).double()
    raw_hat = normalizer.decode(pca_reconstruct(x, mean, axes)).double()
    return (raw_hat - raw).square().sum(dim=1).cpu().numpy()


def pca_baseline(prep: Prepared, k: int, part: slice) -> dict[str, Any]:
    sse = pca_sse(prep.normalizer, prep.x[prep.train], prep.x[part], k)
    return {
        "components": k,
        "sse_mean": float(sse.mean()),
        "sse_median": float(np.median(sse)),
        "sse_p95": float(np.percentile(sse, 95)),
    }
