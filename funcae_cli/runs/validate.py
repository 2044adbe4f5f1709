"""The `validate` job: are a run's posteriors calibrated? Simulate observed curves from its prior, invert them
with posteriors, and measure coverage and SBC (inversion/calibration.py); write validate/validate.json and its
figures (coverage, ranks)."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from funcae_cli.data.grids import sample_params
from funcae_cli.errors import InputError, OptionError
from funcae_cli.files import atomic_write_json, json_safe
from funcae_cli.inversion.calibration import LEVELS, RANK_DRAWS, calibrate, misses
from funcae_cli.inversion.invert import invert_batch
from funcae_cli.inversion.latent import latent_model_for
from funcae_cli.inversion.posterior import Sampling, steps_value
from funcae_cli.inversion.simulate import NoiseModel, simulate
from funcae_cli.inversion.targets import pad
from funcae_cli.plotting.base import save_figure
from funcae_cli.plotting.calibration import coverage_figure, ranks_figure
from funcae_cli.runs.common import open_run, run_info
from funcae_cli.runs.rundir import RunDir

CHUNK = 250  # targets per batched inversion: bounds the memory of the MCMC chains


@dataclass
class ValidateOptions:
    """How to validate (`funcae validate`); None: the run's invert section (sampling) or seed."""

    n: int = 1000
    noise: float = 0.05  # relative one-sigma error of the simulated points
    points: tuple[int, int] = (10, 40)  # points per simulated curve, inclusive
    posterior: str = "mcmc"
    walkers: int | None = None
    steps: int | str | None = None
    burn: int | None = None
    seed: int | None = None
    require_coverage: float | None = None  # a tolerance: the report lists the coverages that miss by more


def _check(o: ValidateOptions) -> None:
    if o.posterior not in ("laplace", "mcmc"):
        raise OptionError("posterior", f"validate needs laplace or mcmc, got {o.posterior!r}")
    if o.n < 1:
        raise OptionError("n", f"must be >= 1, got {o.n}")
    if not 0 < o.noise < 1:
        raise OptionError("noise", f"a relative error in (0, 1), got {o.noise:g}")
    if o.require_coverage is not None and not 0 < o.require_coverage < 1:
        raise OptionError("require_coverage", f"a tolerance in (0, 1), got {o.require_coverage:g}")
    if not 2 <= o.points[0] <= o.points[1]:
        raise OptionError("points", f"expected MIN:MAX with 2 <= MIN <= MAX, got {o.points[0]}:{o.points[1]}")


def run_validate(
    rd: RunDir,
    options: ValidateOptions | None = None,
    device: str | torch.device = "auto",
    on_chunk: Callable[[int, int], None] | None = None,
) -> dict[str, Any]:
    """Simulate, invert with posteriors, calibrate; write validate/ and return the report (validate.json)."""
    o = options or ValidateOptions()
    _check(o)
    trained = open_run(rd, device)
    fam = trained.family
    if not fam.has_formula or not fam.params:
        raise InputError(
            f"{rd.root}: the {fam.name} family has no prior over physical parameters to simulate from; validate "
            "runs of a family with a formula (normal, beta, rotation_curve)"
        )
    ic = trained.cfg.invert
    seed = trained.cfg.seed if o.seed is None else o.seed
    burn = ic.burn if o.burn is None else o.burn
    sampling = Sampling(o.walkers or ic.walkers, steps_value(o.steps or ic.steps), burn, seed, max_steps=ic.max_steps,
                        groups=ic.groups)  # fmt: skip
    if sampling.walkers % (2 * sampling.groups):
        raise OptionError(
            "walkers", f"must be a multiple of 2 x groups ({2 * sampling.groups}), got {sampling.walkers}"
        )
    t0 = time.perf_counter()
    truth = sample_params(trained.cfg.family, o.n, torch.Generator().manual_seed(seed + 17)).numpy()
    noise = NoiseModel(points=o.points, frac=(o.noise, o.noise))
    observations = simulate(fam, trained.cfg.family.options, trained.grid.numpy(), truth, noise, seed, "sim")
    lm, _ = latent_model_for(trained)
    draws, unconverged = [], 0
    for a in range(0, o.n, CHUNK):
        res = invert_batch(trained, pad(observations[a : a + CHUNK], "validate"), latent_model=lm,
                           posterior=o.posterior, sampling=sampling, seed=seed)  # fmt: skip
        draws.append(res.posterior.samples)
        if res.posterior.unconverged is not None:
            unconverged += int(res.posterior.unconverged.sum())
        if on_chunk:
            on_chunk(min(a + CHUNK, o.n), o.n)
    log10 = [p.log_scale for p in fam.params]
    calib = calibrate(truth, np.concatenate(draws), trained.param_names, log10)
    report = run_info(trained)
    report.update(
        posterior=o.posterior,
        n=o.n,
        noise={"frac": o.noise, "points": list(o.points), "floor": noise.floor, "scatter": noise.scatter},
        seed=seed,
        sampling=vars(sampling) if o.posterior == "mcmc" else None,
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
