"""`funcae plot`: a trained run's figures."""

from __future__ import annotations

from typing import Annotated, Optional

import typer

from funcae_cli import console
from funcae_cli.commands.common import resolve_run
from funcae_cli.options import DeviceOpt, JsonOpt, RunOpt

KINDS_HELP = (
    "Figure kind, repeatable or comma-separated: data, loss, latent, decoder_grid, reconstruction, filters, corner, "
    "invert, samples, posterior, pca (default: all that apply)."
)


def plot(
    run: RunOpt = None,
    kind: Annotated[Optional[list[str]], typer.Option("--kind", "-k", help=KINDS_HELP)] = None,
    color_by: Annotated[
        Optional[str], typer.Option("--color-by", help="Parameter colouring codes and curves (default: the first).")
    ] = None,
    format_: Annotated[str, typer.Option("--format", "-f", help="File format: png, pdf or svg.")] = "png",
    dpi: Annotated[int, typer.Option("--dpi", help="Resolution of PNG output.")] = 110,
    range_: Annotated[
        Optional[float],
        typer.Option(
            "--range", help="decoder_grid: half-width R of the [-R, R] square (default: 1 for an AE, 3 for a VAE)."
        ),
    ] = None,
    device: DeviceOpt = "auto",
    json_: JsonOpt = False,
) -> None:
    """Draw a trained run's figures into RUN/plots/<kind>.<format>; kinds that do not apply are skipped.

    Prints the paths written on stdout (with --json: {written, skipped, seconds}); skipped kinds and why
    on stderr.
    """
    from funcae_cli.jobs.plot import PlotOptions, render_plots  # matplotlib, torch: loaded only when it runs

    rd = resolve_run(run)
    report = render_plots(
        rd,
        kind,
        options=PlotOptions(color_by=color_by, latent_range=range_, fmt=format_.lower(), dpi=dpi),
        device=device,
        on_written=None if json_ else lambda k, p: typer.echo(str(p)),  # the paths, on stdout
        on_skip=lambda k, why: console.info(f"skipped {k}: {why}"),  # stderr, also with --json
    )
    if json_:
        console.emit_json(report.to_dict())
        return
    console.info(f"{len(report.written)} figure(s) in {rd.plots} ({sum(report.seconds.values()):.1f}s)")
