"""The `validate` job: are a run's posteriors calibrated? Simulate observed curves from its prior, invert them
with posteriors, and measure coverage, SBC and TARP (inversion/calibration.py); an amortized posterior is also
compared with mcmc on the first curves. Write validate/validate.json and its figures (coverage, ranks, tarp)."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import torch

from funcae_cli.config import InvertConfig, override
from funcae_cli.data.grids import sample_params
from funcae_cli.data.observations import Observation
from funcae_cli.files import atomic_write_json, json_safe, save_figure
from funcae_cli.inversion import amortized
from funcae_cli.inversion.calibration import (
    LEVELS,
    RANK_DRAWS,
    TARP_BAND,
    TARP_BOOTSTRAP,
    Tarp,
    agreement,
    calibrate,
    misses,
    split_by_flag,
    tarp,
)
from funcae_cli.inversion.flow_spaces import LatentSpace
from funcae_cli.inversion.invert import invert_batch
from funcae_cli.inversion.laplace_check import FLAG, KHAT_MAX
from funcae_cli.inversion.objective import log_grid
from funcae_cli.inversion.regressor import LatentModel
from funcae_cli.inversion.simulate import NoiseModel, simulate, simulate_with
from funcae_cli.inversion.targets import pad
from funcae_cli.jobs.amortize import flow_for
from funcae_cli.jobs.common import open_run, run_info
from funcae_cli.jobs.fitted import latent_model_for
from funcae_cli.plotting.calibration import coverage_figure, ranks_figure, tarp_figure
from funcae_cli.store.rundir import RunDir
from funcae_cli.store.trained import Trained

LOW_ESS = 100  # validate.json's importance_ess.split_low: the coverage of targets with fewer effective draws apart
SAMPLING = ("walkers", "steps", "burn", "max_steps")  # the mcmc settings each sampling record reports
VALUES_CHUNK = 4096  # a data-only family's simulated curves are decoded this many at a time


def run_validate(
    rd: RunDir,
    options: dict[str, Any] | None = None,
    inversion: dict[str, Any] | None = None,
    device: str | torch.device = "auto",
    progress: Callable[[int, int], None] | None = None,
) -> dict[str, Any]:
    """Simulate, invert with posteriors, calibrate; write validate/ and return the report (validate.json).

    options: ValidateConfig fields over the run's `validate` section; inversion: InvertConfig fields (walkers,
    steps, burn, seed...) over its `invert` section; both checked by the config's rules before any work."""
    trained = open_run(rd, device)
    o = override(trained.cfg.validate, options or {}, "validate")
    inv = override(trained.cfg.invert, inversion or {}, "invert")
    seed = trained.cfg.seed if inv.seed is None else inv.seed
    inv = replace(inv, seed=seed, posterior=o.posterior)
    flow = flow_for(rd, o.posterior, inv.proposal)  # required and missing: exit 2 naming `funcae amortize`
    t0 = time.perf_counter()
    noise = NoiseModel(points=tuple(o.points), frac=(o.noise, o.noise))
    lm, _ = latent_model_for(trained)
    world = _world(trained, lm, o.n, noise, seed)
    truth, observations, names, log10 = world.truth, world.observations, world.names, world.log10
    res = invert_batch(trained, pad(observations, "validate"), inv, lm, flow, progress=progress)
    draws = res.posterior.samples
    flags = {amortized.FLAG, amortized.MISSED_MODE} if o.posterior in ("amortized", "auto") else {FLAG}
    flagged = np.array([bool(flags & set(f)) for f in res.assessment.flags])  # k-hat >= KHAT_MAX, or a missed mode
    k_hats = res.posterior.k_hat if res.posterior.k_hat is not None else np.full(res.n, np.nan)
    esses = res.posterior.importance_ess if res.posterior.importance_ess is not None else np.full(res.n, np.nan)
    by_mcmc = 0 if res.posterior.source is None else int((res.posterior.source == "mcmc").sum())  # auto: sent there
    unconverged = multimodal = 0
    if res.posterior.unconverged is not None:  # mcmc: stopped by its cap before converging
        flagged = res.posterior.unconverged
        unconverged = int(flagged.sum())
        multimodal = int(np.sum(res.posterior.multimodal))  # two or more modes of >= 1% of the mass each
    calib = calibrate(truth, draws, names, log10)
    joint = tarp(truth, draws, names, log10, np.random.default_rng(seed + 29))
    compared = None
    if o.posterior == "amortized" and o.compare_mcmc > 0:
        compared = _compare_mcmc(trained, observations[: o.compare_mcmc], draws, replace(inv, posterior="mcmc"), lm,
                                 names, log10)  # fmt: skip
    report = run_info(trained)
    report.update(
        posterior=o.posterior,
        n=o.n,
        noise={"frac": o.noise, "points": list(o.points), "floor": noise.floor, "scatter": noise.scatter},
        seed=seed,
        simulated=world.what,
        sampling={
            **{k: getattr(inv, k) for k in (*SAMPLING, "proposal")},
            "proposal_used": flow is not None and inv.proposal != "none",
        }
        if o.posterior in ("mcmc", "auto")
        else None,
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
        unconverged_targets=unconverged if o.posterior in ("mcmc", "auto") else None,
        multimodal_targets=multimodal if o.posterior in ("mcmc", "auto") else None,
        mcmc_targets=by_mcmc if o.posterior == "auto" else None,  # auto: the targets its check sent to mcmc
        k_hat_below=_k_hat_below(k_hats),
        importance_ess=_ess_record(truth, draws, names, log10, esses),
        tarp=_tarp_record(joint),
        compare_mcmc=compared,
        flagged=split_by_flag(truth, draws, names, log10, flagged),
        require_coverage=o.require_coverage,
        coverage_misses=misses(calib, o.require_coverage) if o.require_coverage is not None else [],
        seconds=time.perf_counter() - t0,
        files={
            "json": str(rd.validate_json),
            "coverage": str(rd.validate_png("coverage")),
            "ranks": str(rd.validate_png("ranks")),
            "tarp": str(rd.validate_png("tarp")),
        },  # fmt: skip
    )
    title = f"{trained.cfg.name}: {o.posterior} posteriors of {o.n:,} simulated curves"
    note = f"{o.noise:g} relative errors, {o.points[0]}-{o.points[1]} points"
    save_figure(coverage_figure([c.name for c in calib], [c.coverage for c in calib], o.n, title=title, note=note),
                rd.validate_png("coverage"))  # fmt: skip
    save_figure(ranks_figure([c.name for c in calib], [c.ranks for c in calib], [c.sbc_p for c in calib],
                             title=f"{title}: SBC ranks"), rd.validate_png("ranks"))  # fmt: skip
    save_figure(tarp_figure(joint.alpha, joint.ecp, joint.band, n=o.n, names=joint.names, level=TARP_BAND,
                            title=f"{title}: TARP", note=note), rd.validate_png("tarp"))  # fmt: skip
    report = json_safe(report)
    atomic_write_json(rd.validate_json, report)
    return report


@dataclass
class World:
    """What validate simulates: the true values of the reported quantities (n, p), their observed curves, the
    quantities' names and which are calibrated in log10, and a sentence saying where they were drawn from."""

    truth: np.ndarray
    observations: list[Observation]
    names: list[str]
    log10: list[bool]
    what: str


def _world(trained: Trained, lm: LatentModel, n: int, noise: NoiseModel, seed: int) -> World:
    """A formula family's parameters drawn from the run's prior and its formula's curves; a data-only family's codes
    drawn from the training codes' density and their decoded curves (the model its latent posteriors assume:
    flow_spaces.LatentSpace), reported as the data set's parameters through the regressor where it has them."""
    fam, gen, grid = trained.family, torch.Generator().manual_seed(seed + 17), trained.grid.numpy()
    if fam.has_formula and fam.params:
        truth = sample_params(trained.cfg.family, n, gen).numpy()
        obs = simulate(fam, trained.cfg.family.options, grid, truth, noise, seed, "sim")
        return World(truth, obs, trained.param_names, fam.log_scale(), "parameters from the run's prior, the formula")
    z = lm.density.sample(n, gen)
    space = LatentSpace(trained, lm.density, None)

    def values_at(xs: list[np.ndarray]) -> list[np.ndarray]:
        out = []
        for a in range(0, n, VALUES_CHUNK):  # padded with each curve's last point, cut again
            part = xs[a : a + VALUES_CHUNK]
            width = max(len(x) for x in part)
            x = np.stack([np.pad(x, (0, width - len(x)), mode="edge") for x in part])
            v = space.values(torch.from_numpy(x), z[a : a + len(part)]).numpy()
            out += [v[i, : len(x)] for i, x in enumerate(part)]
        return out

    obs = simulate_with(values_at, grid, log_grid(trained), n, noise, seed, "sim")
    if trained.param_names:
        truth, names, log10 = lm.predict(z).numpy(), trained.param_names, list(lm.log_scale)
    else:
        truth, names, log10 = z.numpy(), [f"z{j + 1}" for j in range(z.shape[1])], [False] * z.shape[1]
    return World(truth, obs, names, log10, "codes from the training codes' density, the decoder's curves")


def _k_hat_below(k: np.ndarray) -> float | None:
    """The fraction of targets whose importance check passed (Pareto k-hat < KHAT_MAX); None without a check."""
    return None if np.isnan(k).all() else float(np.mean(k < KHAT_MAX))


def _ess_record(truth: np.ndarray, draws: np.ndarray, names: list[str], log10: list[bool],
                ess: np.ndarray) -> dict[str, Any] | None:  # fmt: skip
    """The importance check's effective draws (laplace, amortized; None without a check): their quartiles, and the
    coverage of the checked targets below LOW_ESS and of the others apart (split_by_flag): whether few effective
    draws mean too narrow an interval."""
    checked = np.isfinite(ess)
    if not checked.any():
        return None
    q = np.quantile(ess[checked], [0.1, 0.25, 0.5, 0.75])
    low = checked & (ess < LOW_ESS)
    return {"p10": q[0], "p25": q[1], "median": q[2], "p75": q[3], "low": LOW_ESS,
            "split_low": split_by_flag(truth, draws, names, log10, low)}  # fmt: skip


def _tarp_record(t: Tarp) -> dict[str, Any]:
    """validate.json's `tarp`: the curve and its summary (inversion/calibration.py's Tarp)."""
    return {
        "params": t.names,
        "references": "one per curve, uniform over the range of the true parameters (natural coordinates)",
        "alpha": t.alpha.round(6).tolist(),
        "ecp": t.ecp.tolist(),
        "band": t.band,
        "band_level": TARP_BAND,
        "bootstrap": TARP_BOOTSTRAP,
        "max_deviation": t.max_deviation,
        "at_alpha": t.at_alpha,
        "atc": t.atc,
        "within_band": t.within,
    }


def _compare_mcmc(trained: Trained, observations: list[Observation], draws: np.ndarray, inv: InvertConfig,
                  lm: LatentModel | None, names: list[str], log10: list[bool]) -> dict[str, Any]:  # fmt: skip
    """mcmc on the first curves (the amortized draws' first rows are theirs), and how far apart the two are."""
    t0, m = time.perf_counter(), len(observations)
    post = invert_batch(trained, pad(observations, "validate"), inv, lm).posterior
    unconverged = int(post.unconverged.sum()) if post.unconverged is not None else 0
    agree = agreement(draws[:m], post.samples, names, log10)
    return {
        "targets": m,
        # the reference does not use the flow it is compared with
        "sampling": {**{k: getattr(inv, k) for k in SAMPLING}, "proposal": "none"},
        "mcmc_unconverged": unconverged,
        "seconds": time.perf_counter() - t0,
        "params": {
            a.name: {"median_shift_sigma": a.shift, "width_ratio": a.width_ratio, "tails_off_share": a.tails_off}
            for a in agree
        },
    }
