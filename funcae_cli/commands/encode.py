from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from funcae_cli import console
from funcae_cli.device import resolve_device
from funcae_cli.jobs import run_encode
from funcae_cli.options import DeviceOpt, JsonOpt, RunOpt
from funcae_cli.rundir import resolve_run
from funcae_cli.runs import load_trained
from funcae_cli.targets import targets_from_inputs

# Family parameters (--mu, --md, ...) depend on the run's family: they arrive as extra arguments.
CONTEXT = {"allow_extra_args": True, "ignore_unknown_options": True}

CurveOpt = Annotated[
    Optional[Path], typer.Option("--curve", help="CSV curve: columns x,y[,yerr]; x anywhere inside the grid's range.")
]
TargetsOpt = Annotated[
    Optional[Path], typer.Option("--targets", help="CSV of parameters: a header naming each family parameter.")
]
CurvesOpt = Annotated[
    Optional[Path], typer.Option("--curves", help=".npz with `curves` (n, m) [and `x` (m,), `yerr`, `params`].")
]
NameOpt = Annotated[
    Optional[str], typer.Option("--name", help="File name (slug) of the outputs [default: from the target].")
]


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
    rd = resolve_run(run)
    trained = load_trained(rd, resolve_device(device))
    tg, slug = targets_from_inputs(trained, ctx.args, curve, targets, curves)
    out = run_encode(trained, tg, name or slug)
    for w in out.get("warnings", []):
        console.warn(w)
    if json_:
        console.emit_json(out)
        return
    if tg is None:
        console.info(
            f"encoded {out['n']:,} curves of {out['run']} in {out['seconds']:.2f}s -> {out['files']['latents']}"
        )
        for j, (m, s) in enumerate(zip(out["z_mean"], out["z_std"])):
            console.info(f"  z{j + 1}: mean {m:.4g}, std {s:.4g}, range [{out['z_min'][j]:.4g}, {out['z_max'][j]:.4g}]")
        return
    for row in out["targets"][:10]:
        console.info(f"{row['name']}: z = [{', '.join(f'{v:.6g}' for v in row['z'])}]")
    if len(out["targets"]) > 10:
        console.info(f"... {len(out['targets']) - 10} more")
    console.info("wrote " + ", ".join(out["files"].values()))
