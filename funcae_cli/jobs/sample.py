"""The `sample` job: new curves from the model beside fresh curves of the run's prior (samples.npz, samples.png)."""

from __future__ import annotations

import time
from typing import Any

import numpy as np
import torch

from funcae_cli.config import override
from funcae_cli.data.dataset import generate
from funcae_cli.files import atomic_write_bytes, npz_bytes, save_figure
from funcae_cli.generation.sampling import sample_curves
from funcae_cli.jobs.common import open_run, run_info
from funcae_cli.jobs.fitted import latent_model_for
from funcae_cli.plotting.samples import samples_comparison_figure
from funcae_cli.store.rundir import RunDir


def run_sample(
    rd: RunDir, options: dict[str, Any] | None = None, device: str | torch.device = "auto"
) -> dict[str, Any]:
    """Sample curves, write samples.npz (curves, z, grid, real, z_real, latent) and samples.png.

    options: SampleConfig fields (n, latent, seed, real) over the run's `sample` section."""
    trained = open_run(rd, device)
    o = override(trained.cfg.sample, options or {}, "sample")
    n, n_real = o.n, o.real
    seed = trained.cfg.seed if o.seed is None else o.seed
    t0 = time.perf_counter()
    lm, fitted_now = latent_model_for(trained)  # the training codes: sampled from (AE), shown beside (VAE)
    s = sample_curves(trained, lm, n, o.latent, seed)
    real = generate(trained.cfg, n=n_real, seed=seed + 1).curves.numpy()  # fresh curves of the same prior
    arrays = {
        "curves": s["curves"],
        "z": s["z"],
        "grid": s["grid"],
        "real": real,
        "z_real": s["z_real"],
        "latent": np.array(s["latent"]),
        "family": np.array(trained.family.name),
        "run": np.array(trained.cfg.name),
    }
    atomic_write_bytes(rd.samples, npz_bytes(arrays))
    note = f"latent: {s['latent']}; seed {seed}; real: {n_real} fresh curves from the run's prior"
    fig = samples_comparison_figure(
        s["grid"], real, s["curves"], trained.family, z_real=s["z_real"], z_sampled=s["z"], title=trained.cfg.name,
        note=note,
    )  # fmt: skip
    save_figure(fig, rd.samples_png)
    c = s["curves"]
    out = run_info(trained)
    out.update(
        n=n,
        latent=s["latent"],
        seed=seed,
        regressor_fitted_now=fitted_now,
        finite_fraction=float(np.isfinite(c).all(axis=1).mean()),
        value_min=float(np.nanmin(c)),
        value_max=float(np.nanmax(c)),
        z_mean=s["z"].mean(axis=0).tolist(),
        z_std=s["z"].std(axis=0).tolist(),
        files={"samples": str(rd.samples), "png": str(rd.samples_png)},
        seconds=time.perf_counter() - t0,
    )
    return out
