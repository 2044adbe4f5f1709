"""`funcae validate`: are a run's posteriors calibrated? Coverage and SBC on curves simulated from its prior."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from funcae_cli import console
from funcae_cli.commands.common import resolve_run
from funcae_cli.errors import OptionError
from funcae_cli.options import BurnOpt, DeviceOpt, JsonOpt, SeedOpt, StepsOpt, WalkersOpt

EXIT_MISCALIBRATED = 1  # --require-coverage: a coverage missed its nominal level by more than the tolerance


def _points(text: str) -> tuple[int, int]:
    try:
        lo, _, hi = text.partition(":")
        return int(lo), int(hi or lo)
    except ValueError:
        raise OptionError("points", f"expected MIN:MAX points per curve, e.g. 10:40, got {text!r}") from None


def validate(
    run: Annotated[Path, typer.Argument(help="Trained run directory.")],
    n: Annotated[int, typer.Option("--n", "-n", min=1, help="Simulated curves.")] = 1000,
    noise: Annotated[float, typer.Option("--noise", help="Relative one-sigma error of the simulated points.")] = 0.05,
    points: Annotated[str, typer.Option("--points", help="Points per simulated curve, MIN:MAX.")] = "10:40",
    posterior: Annotated[str, typer.Option("--posterior", help="laplace | mcmc.")] = "mcmc",
    require_coverage: Annotated[
        Optional[float],
        typer.Option("--require-coverage", help="Exit 1 when a coverage misses its nominal level by more than this."),
    ] = None,
    walkers: WalkersOpt = None,
    steps: StepsOpt = None,
    burn: BurnOpt = None,
    seed: SeedOpt = None,
    device: DeviceOpt = "auto",
    json_: JsonOpt = False,
) -> None:
    """Draw parameters from the run's prior, simulate observed curves (irregular points, noise), invert them
    with posteriors; report per parameter the coverage of the 50/68/95% intervals, SBC rank histograms, the
    median's bias and spread. Writes validate/validate.json, coverage.png and ranks.png. Exit 0 when it ran."""
    from funcae_cli.runs.validate import ValidateOptions, run_validate  # torch: loaded only when a command runs

    options = ValidateOptions(n, noise, _points(points), posterior, walkers, steps, burn, seed, require_coverage)
    progress = None if json_ else (lambda done, total: console.info(f"validated {done:,} of {total:,} curves"))
    rep = run_validate(resolve_run(run), options, device, on_chunk=progress)
    if json_:
        console.emit_json(rep)
    else:
        for name, p in rep["params"].items():
            cov = ", ".join(f"{float(k):.0%}: {v:.3f}" for k, v in p["coverage"].items())
            console.info(f"{name}: coverage {cov}; SBC p {p['sbc']['p_value']:.3g}; median bias "
                         f"{p['median_bias']:.3g} ({p['scale']}), spread {p['median_spread']:.3g}")  # fmt: skip
        console.info(f"{rep['n']:,} curves in {rep['seconds']:.1f}s; wrote " + ", ".join(rep["files"].values()))
    if rep["coverage_misses"]:
        console.error(f"coverage off by more than {require_coverage:g}: " + "; ".join(rep["coverage_misses"]))
        raise typer.Exit(EXIT_MISCALIBRATED)
