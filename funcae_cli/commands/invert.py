"""`funcae invert`: latent codes and physical parameters of target curves."""

from __future__ import annotations

import typer

from funcae_cli import console
from funcae_cli.commands.common import resolve_run, target_inputs
from funcae_cli.options import (
    CurveOpt,
    CurvesOpt,
    DeviceOpt,
    JsonOpt,
    LrOpt,
    MaxIterOpt,
    MethodOpt,
    NameOpt,
    RunOpt,
    SeedOpt,
    StartsOpt,
    TargetsOpt,
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
    seed: SeedOpt = None,
    name: NameOpt = None,
    no_plot: bool = typer.Option(False, "--no-plot", help="Skip invert/<name>.png."),
    device: DeviceOpt = "auto",
    json_: JsonOpt = False,
) -> None:
    """Find the latent code (and physical parameters) of target curves: parameters (--mu 2.4 --sigma 1.7,
    options named after the family's parameters), --curve obs.csv, --targets params.csv or --curves FILE.

    Starts from the encoder's code and refines it with batched L-BFGS on the device; objective: the L2 norm
    of (target - decoded) in training space, or chi^2 when the curve has yerr. Writes invert/<name>.json,
    .png and, for batches, .csv.
    """
    from funcae_cli.runs.invert import InvertOptions, run_invert  # torch: loaded only when it runs

    rd = resolve_run(run)
    inputs = target_inputs(rd, ctx.args, curve, targets, curves, required=True)
    options = InvertOptions(method=method, starts=starts, max_iter=max_iter, lr=lr, seed=seed)
    rec = run_invert(rd, inputs, options, name=name, device=device, plot=not no_plot)
    for w in rec["warnings"]:
        console.warn(w)
    if json_:
        console.emit_json(rec)
    else:
        console.info(report_text(rec))


def _g(v: float | None, spec: str = ".4g") -> str:
    return "n/a" if v is None else format(v, spec)


def report_text(rec: dict) -> str:
    """The human-readable summary of an inversion record: up to five targets, then the batch."""
    what = "chi^2" if rec["objective_kind"] == "chi2" else "residual norm (training space)"
    lines = []
    if rec["regressor_fitted_now"]:
        lines.append(f"fitted the latent model of the run (missing or stale): {rec['latent_model_file']}")
    for row in rec["targets"][:5]:
        line = (
            f"{row['name']}: z = [{', '.join(_g(v, '.5g') for v in row['z'])}]; {what} {_g(row['objective'])} "
            f"(encoder {_g(row['encoder_objective'])}); |fit - target| {_g(row['data_residual'])} in family units, "
            f"rel. L2 {_g(row['rel_l2'], '.3g')} (encoder {_g(row['encoder_rel_l2'], '.3g')})"
        )
        if "reduced_chi2" in row:
            line += f"; reduced chi^2 {_g(row['reduced_chi2'], '.3g')}"
        lines.append(line + f"; {row['iterations']} iterations")
        if row.get("estimated_params"):
            est = ", ".join(f"{k}≈{_g(v, '.5g')}" for k, v in row["estimated_params"].items())
            if "true_params" in row:
                true = ", ".join(f"{k}={_g(v, '.5g')}" for k, v in row["true_params"].items())
                est += f" (true: {true})"
            lines.append(f"  parameters: {est}")
    if rec["n_targets"] > 5:
        s = rec["summary"]
        lines.append(
            f"{rec['n_targets']:,} targets: median {what} {_g(s['objective']['median'])} "
            f"(encoder {_g(s['encoder_objective']['median'])}), median |fit - target| "
            f"{_g(s['data_residual']['median'])}, median rel. L2 {_g(s['rel_l2']['median'], '.3g')}, "
            f"converged {100 * s['converged_fraction']:.1f}%"
        )
    lines.append(
        f"{rec['method']} on {rec['device']}: {rec['seconds']:.3g}s ({rec['targets_per_second']:.4g} targets/s); "
        "wrote " + ", ".join(rec["files"].values())
    )
    return "\n".join(lines)
