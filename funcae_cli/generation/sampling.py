"""New curves from a trained model: codes from the VAE's prior or the AE's training-code distribution, decoded."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from funcae_cli.data.dataset import curve_bytes
from funcae_cli.errors import OptionError
from funcae_cli.inversion.regressor import LatentModel
from funcae_cli.memory import check_fits
from funcae_cli.store.trained import Trained

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
        raise OptionError("latent", f"unknown {latent!r}; choose one of {', '.join(LATENTS)}")
    kind = trained.model.args.kind
    if latent == "auto":
        return "prior" if kind == "vae" else "empirical"
    if latent == "prior" and kind != "vae":
        raise OptionError("latent", "prior: an AE has no prior; use empirical or gaussian (the training codes)")
    return latent


@torch.no_grad()
def sample_curves(
    trained: Trained, lm: LatentModel | None, n: int, latent: str = "auto", seed: int = 0
) -> dict[str, Any]:
    """New curves from the model: VAE from the prior, AE from the training codes' distribution (lm: the run's
    latent model, whose training codes an AE samples from and a VAE's figure shows).

    Returns arrays (curves (n, n_points) family units, z (n, d), grid) and what was used.
    """
    kind = resolve_latent(trained, latent)
    n_points = trained.grid.shape[0]
    check_fits(
        curve_bytes(n, n_points) + 8 * n * trained.latent_dim,
        f"{n:,} sampled curves of {n_points:,} points",
        "lower it",
        option="n",
    )
    gen = torch.Generator().manual_seed(seed)
    z = sample_codes(trained, lm, n, kind, gen)
    curves = trained.decode(z)
    return {
        "curves": curves.float().cpu().numpy(),
        "z": z.numpy(),
        "grid": trained.grid.numpy(),
        "latent": kind,
        "z_real": None if lm is None else lm.codes.numpy(),
    }
