from __future__ import annotations

from typing import Annotated, Optional

import typer

from funcae_cli import console
from funcae_cli.commands.encode import CONTEXT, CurveOpt, CurvesOpt, NameOpt, TargetsOpt
from funcae_cli.device import resolve_device
from funcae_cli.errors import InputError
from funcae_cli.inversion import METHODS
from funcae_cli.jobs import run_invert
from funcae_cli.options import DeviceOpt, JsonOpt, RunOpt, SeedOpt
from funcae_cli.rundir import resolve_run
from funcae_cli.runs import load_trained
from funcae_cli.targets import targets_from_inputs

__all__ = ["CONTEXT", "invert"]


def invert(
    ctx: typer.Context,
    run: RunOpt = None,
    curve: CurveOpt = None,
    targets: TargetsOpt = None,
    curves: CurvesOpt = None,
    method: Annotated[
        Optional[str], typer.Option("--method", help=f"{' | '.join(METHODS)} [default: the run's invert.method].")
    ] = None,
    starts: Annotated[
        Optional[int], typer.Option("--starts", help="Extra random starts from the latent distribution; best kept.")
    ] = None,
    max_iter: Annotated[Optional[int], typer.Option("--max-iter", help="Iterations of the refinement.")] = None,
    lr: Annotated[Optional[float], typer.Option("--lr", help="adam: step size.")] = None,
    seed: SeedOpt = None,
    name: NameOpt = None,
    no_plot: Annotated[bool, typer.Option("--no-plot", help="Skip invert/<name>.png.")] = False,
    device: DeviceOpt = "auto",
    json_: JsonOpt = False,
) -> None:
    """Find the latent code (and physical parameters) of target curves: parameters (--mu 2.4 --sigma 1.7,
    options named after the family's parameters), --curve obs.csv, --targets params.csv or --curves file.npz.

    Starts from the encoder's code and refines it with batched L-BFGS on the device; objective: the L2 norm
    of (target - decoded) in training space, or chi^2 when the curve has yerr. Writes invert/<name>.json,
    .png and, for batches, .csv.
    """
    rd = resolve_run(run)
    trained = load_trained(rd, resolve_device(device))
    tg, slug = targets_from_inputs(trained, ctx.args, curve, targets, curves)
    if tg is None:
        fam = trained.family
        params = f"{' '.join(f'--{p} VALUE' for p in fam.param_names)} ({fam.name}), " if fam.param_names else ""
        raise InputError(f"invert: give a target: {params}--curve FILE.csv, --targets FILE.csv or --curves FILE.npz")
    ic = trained.cfg.invert
    rec = run_invert(
        trained,
        tg,
        name or slug,
        method=method or ic.method,
        starts=ic.starts if starts is None else starts,
        max_iter=ic.max_iter if max_iter is None else max_iter,
        lr=ic.lr if lr is None else lr,
        seed=trained.cfg.seed if seed is None else seed,
        plot=not no_plot,
    )
    for w in rec["warnings"]:
        console.warn(w)
    if rec["regressor_fitted_now"]:
        console.info(f"fitted the latent -> parameter regressor (missing or stale): {rd.regressor}")
    if json_:
        console.emit_json(rec)
        return
    what = "chi^2" if rec["objective_kind"] == "chi2" else "residual norm (training space)"
    for row in rec["targets"][:5]:
        line = (
            f"{row['name']}: z = [{', '.join(_g(v, '.5g') for v in row['z'])}]; {what} {_g(row['objective'])} "
            f"(encoder {_g(row['encoder_objective'])}); |fit - target| {_g(row['data_residual'])} in family units, "
            f"rel. L2 {_g(row['rel_l2'], '.3g')} (encoder {_g(row['encoder_rel_l2'], '.3g')})"
        )
        if "reduced_chi2" in row:
            line += f"; reduced chi^2 {_g(row['reduced_chi2'], '.3g')}"
        line += f"; {row['iterations']} iterations"
        console.info(line)
        if row.get("estimated_params"):
            est = ", ".join(f"{k}≈{_g(v, '.5g')}" for k, v in row["estimated_params"].items())
            if "true_params" in row:
                true = ", ".join(f"{k}={_g(v, '.5g')}" for k, v in row["true_params"].items())
                est += f" (true: {true})"
            console.info(f"  parameters: {est}")
    if rec["n_targets"] > 5:
        s = rec["summary"]
        console.info(
            f"{rec['n_targets']:,} targets: median {what} {_g(s['objective']['median'])} "
            f"(encoder {_g(s['encoder_objective']['median'])}), median |fit - target| "
            f"{_g(s['data_residual']['median'])}, median rel. L2 {_g(s['rel_l2']['median'], '.3g')}, "
            f"converged {100 * s['converged_fraction']:.1f}%"
        )
    console.info(
        f"{rec['method']} on {rec['device']}: {rec['seconds']:.3g}s ({rec['targets_per_second']:.4g} targets/s); "
        "wrote " + ", ".join(rec["files"].values())
    )


def _g(v: float | None, spec: str = ".4g") -> str:
    return "n/a" if v is None else format(v, spec)
