"""The `validate` job: are a run's posteriors calibrated? Simulate observed curves from its prior, invert them
with posteriors, and measure coverage and SBC (inversion/calibration.py); write validate/validate.json and its
figures (coverage, ranks)."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import replace
from typing import Any

import numpy as np
import torch

from funcae_cli.config import override
from funcae_cli.data.grids import sample_params
from funcae_cli.errors import InputError
from funcae_cli.files import atomic_write_json, json_safe, save_figure
from funcae_cli.inversion import amortized
from funcae_cli.inversion.calibration import LEVELS, RANK_DRAWS, calibrate, misses, split_by_flag
from funcae_cli.inversion.invert import invert_batch
from funcae_cli.inversion.laplace_check import FLAG, KHAT_MAX
from funcae_cli.inversion.simulate import NoiseModel, simulate
from funcae_cli.inversion.targets import pad
from funcae_cli.jobs.amortize import load_flow
from funcae_cli.jobs.common import open_run, run_info
from funcae_cli.jobs.fitted import latent_model_for
from funcae_cli.plotting.calibration import coverage_figure, ranks_figure
from funcae_cli.store.rundir import RunDir

CHUNK = 250  # targets per batched inversion: bounds the memory of the MCMC chains


def run_validate(
    rd: RunDir,
    options: dict[str, Any] | None = None,
    inversion: dict[str, Any] | None = None,
    device: str | torch.device = "auto",
    on_chunk: Callable[[int, int], None] | None = None,
) -> dict[str, Any]:
    """Simulate, invert with posteriors, calibrate; write validate/ and return the report (validate.json).

    options: ValidateConfig fields over the run's `validate` section; inversion: InvertConfig fields (walkers,
    steps, burn, seed...) over its `invert` section; both checked by the config's rules before any work."""
    trained = open_run(rd, device)
    o = override(trained.cfg.validate, options or {}, "validate")
    inv = override(trained.cfg.invert, inversion or {}, "invert")
    fam = trained.family
    if not fam.has_formula or not fam.params:
        raise InputError(
            f"{rd.root}: the {fam.name} family has no prior over physical parameters to simulate from; validate "
            "runs of a family with a formula (normal, beta, rotation_curve)"
        )
    seed = trained.cfg.seed if inv.seed is None else inv.seed
    inv = replace(inv, seed=seed, posterior=o.posterior)
    flow = load_flow(rd) if o.posterior == "amortized" else None  # exit 2 naming `funcae amortize` when missing
    t0 = time.perf_counter()
    truth = sample_params(trained.cfg.family, o.n, torch.Generator().manual_seed(seed + 17)).numpy()
    noise = NoiseModel(points=tuple(o.points), frac=(o.noise, o.noise))
    observations = simulate(fam, trained.cfg.family.options, trained.grid.numpy(), truth, noise, seed, "sim")
    lm, _ = latent_model_for(trained)
    draws, flagged, unconverged, multimodal, k_hats = [], [], 0, 0, []
    for a in range(0, o.n, CHUNK):
        res = invert_batch(trained, pad(observations[a : a + CHUNK], "validate"), inv, lm, flow)
        draws.append(res.posterior.samples)
        flag = amortized.FLAG if o.posterior == "amortized" else FLAG
        flagged.append(np.array([flag in f for f in res.assessment.flags]))  # laplace's/amortized k-hat >= KHAT_MAX
        k_hats.append(res.posterior.k_hat if res.posterior.k_hat is not None else np.full(res.n, np.nan))
        if res.posterior.unconverged is not None:  # mcmc: stopped by its cap before converging
            bad = res.posterior.unconverged
            unconverged, flagged[-1] = unconverged + int(bad.sum()), bad
            multimodal += int(res.posterior.multimodal.sum())  # two or more modes of >= 1% of the mass each
        if on_chunk:
            on_chunk(min(a + CHUNK, o.n), o.n)
    log10 = fam.log_scale()
    calib = calibrate(truth, np.concatenate(draws), trained.param_names, log10)
    report = run_info(trained)
    report.update(
        posterior=o.posterior,
        n=o.n,
        noise={"frac": o.noise, "points": list(o.points), "floor": noise.floor, "scatter": noise.scatter},
        seed=seed,
        sampling={k: getattr(inv, k) for k in ("walkers", "steps", "burn")} if o.posterior == "mcmc" else None,
        levels=list(LEVELS),
        rank_draws=RANK_DRAWS,
        params={
            c.name: {
                "coverage": {f"{k:g}": v for k, v in c.coverage.items()},
                "coverage_error": {f"{k:g}": v for k, v in c.coverage_error.items()},
                "sbc": {"counts": c.ranks.tolist(), "chi2": c.sbc_chi2, "p_value": c.sbc_p},
                "median_bias": c.median_bias,
                "median_spread": c.median_spread,
                "z_mean": c.z_mean,
                "z_sd": c.z_sd,
                "scale": "log10" if lg else "linear",
            }
            for c, lg in zip(calib, log10)
        },
        unconverged_targets=unconverged if o.posterior == "mcmc" else None,
        multimodal_targets=multimodal if o.posterior == "mcmc" else None,
        k_hat_below=_k_hat_below(np.concatenate(k_hats)),
        flagged=split_by_flag(truth, np.concatenate(draws), trained.param_names, log10, np.concatenate(flagged)),
        require_coverage=o.require_coverage,
        coverage_misses=misses(calib, o.require_coverage) if o.require_coverage is not None else [],
        seconds=time.perf_counter() - t0,
        files={
            "json": str(rd.validate_json),
            "coverage": str(rd.validate_png("coverage")),
            "ranks": str(rd.validate_png("ranks")),
        },  # fmt: skip
    )
    title = f"{trained.cfg.name}: {o.posterior} posteriors of {o.n:,} simulated curves"
    note = f"{o.noise:g} relative errors, {o.points[0]}-{o.points[1]} points"
    save_figure(coverage_figure([c.name for c in calib], [c.coverage for c in calib], o.n, title=title, note=note),
                rd.validate_png("coverage"))  # fmt: skip
    save_figure(ranks_figure([c.name for c in calib], [c.ranks for c in calib], [c.sbc_p for c in calib],
                             title=f"{title}: SBC ranks"), rd.validate_png("ranks"))  # fmt: skip
    report = json_safe(report)
    atomic_write_json(rd.validate_json, report)
    return report


def _k_hat_below(k: np.ndarray) -> float | None:
    """The fraction of targets whose importance check passed (Pareto k-hat < KHAT_MAX); None without a check."""
    return None if np.isnan(k).all() else float(np.mean(k < KHAT_MAX))
