"""`funcae validate`: are a run's posteriors calibrated? Coverage and SBC on curves simulated from its prior."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from funcae_cli import console
from funcae_cli.commands.common import resolve_run
from funcae_cli.errors import MissedRequirement, OptionError
from funcae_cli.options import (
    BurnOpt,
    CompareMcmcOpt,
    DeviceOpt,
    JsonOpt,
    MaxStepsOpt,
    NoiseOpt,
    ProposalOpt,
    RequireCoverageOpt,
    SeedOpt,
    StepsOpt,
    ValidateNOpt,
    ValidatePosteriorOpt,
    WalkersOpt,
)


def _points(text: str | None) -> list[int] | None:
    if text is None:
        return None
    try:
        lo, _, hi = text.partition(":")
        return [int(lo), int(hi or lo)]
    except ValueError:
        raise OptionError("points", f"expected MIN:MAX points per curve, e.g. 10:40, got {text!r}") from None


def validate(
    run: Annotated[Path, typer.Argument(help="Trained run directory.")],
    n: ValidateNOpt = None,
    noise: NoiseOpt = None,
    points: Annotated[
        Optional[str], typer.Option("--points", help="Points per simulated curve, MIN:MAX [default: the run's].")
    ] = None,
    posterior: ValidatePosteriorOpt = None,
    require_coverage: RequireCoverageOpt = None,
    compare_mcmc: CompareMcmcOpt = None,
    walkers: WalkersOpt = None,
    proposal: ProposalOpt = None,
    steps: StepsOpt = None,
    burn: BurnOpt = None,
    max_steps: MaxStepsOpt = None,
    seed: SeedOpt = None,
    device: DeviceOpt = "auto",
    json_: JsonOpt = False,
) -> None:
    """Draw parameters from the run's prior, simulate observed curves (irregular points, noise), invert them
    with posteriors; report per parameter the coverage of the 50/68/95% intervals, SBC rank histograms, the
    median's bias and spread, and TARP's expected coverage of the joint posterior; an amortized posterior is also
    compared with mcmc on the first --compare-mcmc curves. Writes validate/validate.json, coverage.png, ranks.png
    and tarp.png. Exit 0 when it ran; with --require-coverage, exit 5 when a coverage misses by more than the
    tolerance."""
    from funcae_cli.jobs.validate import run_validate  # torch: loaded only when a command runs

    options = {"n": n, "noise": noise, "points": _points(points), "posterior": posterior,
               "require_coverage": require_coverage, "compare_mcmc": compare_mcmc}  # fmt: skip
    sampling = {"walkers": walkers, "proposal": proposal, "steps": steps, "burn": burn, "max_steps": max_steps,
                "seed": seed}  # fmt: skip
    progress = None if json_ else console.counter("mcmc: curves sampled")
    rep = run_validate(resolve_run(run), options, sampling, device, progress=progress)
    if json_:
        console.emit_json(rep)
    else:
        _summary(rep)
    if rep["coverage_misses"]:
        raise MissedRequirement(
            f"coverage off by more than {rep['require_coverage']:g}: " + "; ".join(rep["coverage_misses"])
        )


def _summary(rep: dict) -> None:
    for name, p in rep["params"].items():
        cov = ", ".join(f"{float(k):.0%}: {v:.3f}" for k, v in p["coverage"].items())
        console.info(f"{name}: coverage {cov}; SBC p {p['sbc']['p_value']:.3g}; median bias "
                     f"{p['median_bias']:.3g} ({p['scale']}), spread {p['median_spread']:.3g}")  # fmt: skip
    t = rep["tarp"]
    console.info(f"TARP ({', '.join(t['params'])}): max |expected coverage - credibility| {t['max_deviation']:.3f} "
                 f"at {t['at_alpha']:.2f}, {'within' if t['within_band'] else 'OUTSIDE'} its {t['band_level']:.0%} "
                 f"band (+-{t['band']:.3f}); ATC {t['atc']:+.3f} (> 0 too wide, < 0 too narrow)")  # fmt: skip
    if rep.get("k_hat_below") is not None:
        console.info(f"importance check: Pareto k-hat < 0.7 for {rep['k_hat_below']:.1%} of the curves")
    if (c := rep.get("compare_mcmc")) is not None:
        each = "; ".join(f"{name}: shift {_num(a['median_shift_sigma'])} mcmc sigma, width ratio "
                         f"{_num(a['width_ratio'])}, 95% ends > 1 sigma apart on {_pct(a['tails_off_share'])}"
                         for name, a in c["params"].items())  # fmt: skip
        console.info(f"amortized against mcmc on {c['targets']:,} curves (shifts and width ratios: medians over "
                     f"curves): {each} "
                     f"({c['mcmc_unconverged']} mcmc unconverged; {c['seconds']:.1f}s)")  # fmt: skip
    console.info(f"{rep['n']:,} curves in {rep['seconds']:.1f}s; wrote " + ", ".join(rep["files"].values()))


def _num(v: float | None) -> str:
    return "n/a" if v is None else f"{v:.3g}"


def _pct(v: float | None) -> str:
    return "n/a" if v is None else f"{v:.0%} of curves"
