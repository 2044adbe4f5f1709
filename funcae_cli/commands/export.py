"""`funcae export`: a trained run as a portable emulator folder that numpy alone can use."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from funcae_cli import console
from funcae_cli.commands.common import resolve_run
from funcae_cli.options import JsonOpt

FORMAT_HELP = (
    "safetensors | onnx: safetensors = emulator.json, weights.safetensors and funcae_emulator.py (numpy only); "
    "onnx = the same plus decoder.onnx and encoder.onnx (needs the onnx package)."
)


def export(
    run: Annotated[Path, typer.Argument(help="Trained run directory.")],
    out: Annotated[Optional[Path], typer.Option("--out", "-o", help="Folder to write (default: RUN/export).")] = None,
    format_: Annotated[str, typer.Option("--format", help=FORMAT_HELP)] = "safetensors",
    force: Annotated[bool, typer.Option("--force", help="Overwrite an existing export folder.")] = False,
    json_: JsonOpt = False,
) -> None:
    """Write the decoder, encoder, normalization, grid and regressor as safetensors arrays with a versioned JSON
    description, and funcae_emulator.py, a loader that needs numpy alone (`Emulator(folder).decode(z)`)."""
    from funcae_cli.jobs.export import run_export  # torch: loaded only when a command runs, not for --help

    res = run_export(resolve_run(run), out, format_, force)
    if not res["regressor"]:
        console.warn(f"no regressor exported: {res['regressor_note']}")
    if json_:
        console.emit_json(res)
        return
    console.info(f"exported {res['run']} ({res['model']}, latent {res['latent_dim']}, {res['n_points']} points) "
                 f"to {res['export']}: " + ", ".join(Path(f).name for f in res["files"].values()))  # fmt: skip
