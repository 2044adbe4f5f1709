"""`funcae encode`: latent codes of the run's data set, or of given targets."""

from __future__ import annotations

import typer

from funcae_cli import console
from funcae_cli.commands.common import resolve_run, target_inputs
from funcae_cli.options import CurveOpt, CurvesOpt, DeviceOpt, JsonOpt, NameOpt, RunOpt, TargetsOpt


def encode(
    ctx: typer.Context,
    run: RunOpt = None,
    curve: CurveOpt = None,
    targets: TargetsOpt = None,
    curves: CurvesOpt = None,
    name: NameOpt = None,
    device: DeviceOpt = "auto",
    json_: JsonOpt = False,
) -> None:
    """Latent codes. No input: the run's whole data set -> latents.npz. Parameters (--mu 2.4 --sigma 1.7:
    options named after the family's parameters), --curve, --targets or --curves: their codes -> encode/."""
    from funcae_cli.jobs.encode import run_encode  # torch: loaded only when a command runs, not for --help

    rd = resolve_run(run)
    out = run_encode(rd, target_inputs(rd, ctx.args, curve, targets, curves), name, device)
    for w in out.get("warnings", []):
        console.warn(w)
    if json_:
        console.emit_json(out)
    elif "targets" not in out:
        console.info(
            f"encoded {out['n']:,} curves of {out['run']} in {out['seconds']:.2f}s -> {out['files']['latents']}"
        )
        for j, (m, s) in enumerate(zip(out["z_mean"], out["z_std"])):
            console.info(f"  z{j + 1}: mean {m:.4g}, std {s:.4g}, range [{out['z_min'][j]:.4g}, {out['z_max'][j]:.4g}]")
    else:
        for row in out["targets"][:10]:
            console.info(f"{row['name']}: z = [{', '.join(f'{v:.6g}' for v in row['z'])}]")
        if len(out["targets"]) > 10:
            console.info(f"... {len(out['targets']) - 10} more")
        console.info("wrote " + ", ".join(out["files"].values()))
