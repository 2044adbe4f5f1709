"""`funcae invert`: latent codes and physical parameters of target curves."""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Any

import typer

from funcae_cli import console
from funcae_cli.commands.common import resolve_run, target_inputs
from funcae_cli.jobs.figure_process import Figures
from funcae_cli.options import (
    BoundsOpt,
    BurnOpt,
    ClipOpt,
    CurveOpt,
    CurvesOpt,
    DeviceOpt,
    DrawsOpt,
    JsonOpt,
    LrOpt,
    MaxIterOpt,
    MaxStepsOpt,
    MethodOpt,
    NameOpt,
    NoCheckOpt,
    NoPhysicsOpt,
    PosteriorOpt,
    PriorOpt,
    ProposalOpt,
    RunOpt,
    SamplesOpt,
    SeedOpt,
    StartsOpt,
    StepsOpt,
    TargetsOpt,
    WalkersOpt,
)


def invert(
    ctx: typer.Context,
    run: RunOpt = None,
    curve: CurveOpt = None,
    targets: TargetsOpt = None,
    curves: CurvesOpt = None,
    method: MethodOpt = None,
    starts: StartsOpt = None,
    max_iter: MaxIterOpt = None,
    lr: LrOpt = None,
    prior: PriorOpt = None,
    bounds: BoundsOpt = None,
    no_physics: NoPhysicsOpt = False,
    posterior: PosteriorOpt = None,
    walkers: WalkersOpt = None,
    proposal: ProposalOpt = None,
    steps: StepsOpt = None,
    burn: BurnOpt = None,
    max_steps: MaxStepsOpt = None,
    draws: DrawsOpt = None,
    samples: SamplesOpt = None,
    no_check: NoCheckOpt = False,
    clip: ClipOpt = False,
    seed: SeedOpt = None,
    name: NameOpt = None,
    no_plot: bool = typer.Option(
        False,
        "--no-plot",
        help="Skip the figures (invert/<name>.png, _page.png, _summary.png): matplotlib is never imported.",
    ),
    device: DeviceOpt = "auto",
    json_: JsonOpt = False,
) -> None:
    """Latent codes and physical parameters of target curves: parameters (--mu 2.4 --sigma 1.7, options named
    after the family's parameters), observed curves (--curve obs.csv, repeatable; --curves long.csv, a folder
    or an .npz) or a table of parameters (--targets).

    All targets are solved together on the device: the encoder's code refined by batched L-BFGS (objective:
    chi^2 with yerr, else the L2 norm in training space; the training codes' density as the prior), then the
    family's own formula fitted to each target for the parameters (families with one). Every target gets its
    goodness of fit and flags (model mismatch, on a prior bound, off the manifold). Writes invert/<name>.json,
    .csv and figures.
    """
    from funcae_cli.jobs.invert import run_invert  # torch: loaded only when it runs

    rd = resolve_run(run)
    inputs = target_inputs(rd, ctx.args, curve, targets, curves, required=True, clip=clip)
    options = {"method": method, "starts": starts, "max_iter": max_iter, "lr": lr, "seed": seed, "prior": prior,
               "physics": False if no_physics else None, "bounds": bounds, "posterior": posterior,
               "walkers": walkers, "proposal": proposal, "steps": steps, "burn": burn, "max_steps": max_steps,
               "draws": draws, "check": False if no_check else None, "samples": samples}  # fmt: skip
    progress = None if json_ else console.counter("mcmc: targets sampled")
    rec = run_invert(rd, inputs, options, name=name, device=device, figures=None if no_plot else FIGURES,
                     progress=progress, echo=sys.stdout if json_ else None)  # fmt: skip
    # --json: the record's file text went to stdout as it was written (the same document)
    for w in rec["warnings"]:
        console.warn(w)
    if json_:
        sys.stdout.flush()
    else:
        console.info(report_text(rec))


def _figure_makers() -> Callable[..., dict[str, Any]]:
    """What draws invert's figures from its record."""
    from funcae_cli.jobs.results import invert_figure_makers  # matplotlib: only by a run that draws, where it draws

    return invert_figure_makers


def _warm_up_figure() -> Any:
    from funcae_cli.jobs.results import warm_up_figure  # matplotlib: only in the process that draws the figures

    return warm_up_figure()


FIGURES = Figures(_figure_makers, _warm_up_figure)  # invert's figures (jobs.figure_process)


FMT = ".5g"  # parameters in the summary


def _g(v: float | None, spec: str = ".4g") -> str:
    return "n/a" if v is None else format(v, spec)


def report_text(rec: dict) -> str:
    """The human-readable summary of an inversion record: up to five targets, then the batch."""
    decoder = "chi^2" if rec["objective_kind"] == "chi2" else "residual norm (training space)"
    lines = []
    if rec["regressor_fitted_now"]:
        lines.append(f"fitted the latent model of the run (missing or stale): {rec['latent_model_file']}")
    for row in rec["targets"][:5]:
        params = ", ".join(f"{k}={_g(v, FMT)}" for k, v in row.get("params", {}).items())
        z = ", ".join(_g(v, FMT) for v in row["z"])
        lines.append(f"{row['name']}: " + (f"{params} ({row['params_source']}); " if params else "") + f"z = [{z}]")
        fit = []
        if row.get("physics_objective") is not None:
            fit.append(f"family {rec['physics_measure']} {_g(row['physics_objective'])}")
        fit.append(f"decoder {decoder} {_g(row['objective'])} (encoder {_g(row['encoder_objective'])}), "
                   f"|fit - target| {_g(row['data_residual'])}")  # fmt: skip
        if row.get("reduced_chi2") is not None:
            fit.append(f"reduced chi^2 {_g(row['reduced_chi2'], '.3g')} (p {_g(row['p_value'], '.2g')})")
        if row.get("density_percentile") is not None:
            fit.append(f"code density percentile {100 * row['density_percentile']:.1f}")
        lines.append("  " + "; ".join(fit) + (f"; flags: {', '.join(row['flags'])}" if row["flags"] else ""))
        if "true_params" in row:
            lines.append("  true: " + ", ".join(f"{k}={_g(v, FMT)}" for k, v in row["true_params"].items()))
    if rec["n_targets"] > 5:
        s = rec["summary"]
        flagged = ", ".join(f"{v} {k}" for k, v in s.get("flags", {}).items() if v) or "none flagged"
        chi = f", median reduced chi^2 {_g(s['reduced_chi2']['median'], '.3g')}" if "reduced_chi2" in s else ""
        lines.append(f"{rec['n_targets']:,} targets{chi}; {flagged}")
    lines.append(
        f"{rec['method']} on {rec['device']}: {rec['seconds']:.3g}s ({rec['targets_per_second']:.4g} targets/s); "
        "wrote " + ", ".join(rec["files"].values())
    )
    return "\n".join(lines)
