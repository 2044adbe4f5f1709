"""`funcae runs [DIR]` (a table of the run directories under runs/ or DIR) and `funcae runs compare A B ...`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from funcae_cli import console
from funcae_cli.jobs.catalog import COLUMNS, STATUSES, cell, list_runs, runs_text
from funcae_cli.options import JsonOpt
from funcae_cli.store.rundir import RUNS_ROOT

KEYS = ", ".join(COLUMNS)


def list_(
    folder: Annotated[
        Optional[Path], typer.Argument(help="Folder searched for run directories, recursively (default: runs/).")
    ] = None,
    sort: Annotated[Optional[str], typer.Option("--sort", help=f"Sort by a column: {KEYS}.")] = None,
    reverse: Annotated[bool, typer.Option("--reverse", help="Sort in descending order.")] = False,
    filter_: Annotated[
        Optional[list[str]],
        typer.Option("--filter", help="KEY=VALUE: keep the runs showing VALUE in column KEY (repeatable: all hold)."),
    ] = None,
    json_: JsonOpt = False,
) -> None:
    """List the run directories under runs/ (or FOLDER, sweeps' trials included): family, model, latent
    dimension, epochs, best validation loss, test SSE, its ratio to PCA's, wall time, created, status."""
    records = list_runs(folder if folder is not None else RUNS_ROOT, sort, filter_ or [], reverse)
    if json_:
        console.emit_json([r.row() for r in records])
        return
    typer.echo(runs_text(records), nl=False)
    for r in records:
        if r.problem:
            console.warn(f"{r.name}: {r.problem}")


list_.__doc__ = (list_.__doc__ or "") + " Statuses: " + "; ".join(f"{k}: {v}" for k, v in STATUSES.items()) + "."


def compare(
    runs: Annotated[list[Path], typer.Argument(help="Two or more run directories (or names under runs/).")],
    out: Annotated[
        Optional[Path],
        typer.Option("--out", "-o", help="The loss figure (.png, .pdf, .svg; default: FIRST_RUN/plots/compare.png)."),
    ] = None,
    json_: JsonOpt = False,
) -> None:
    """Compare runs: the config keys that differ, their metrics side by side, and a figure overlaying their
    training and validation losses."""
    from funcae_cli.jobs.compare import compare_runs  # matplotlib: loaded only when a comparison runs

    result = compare_runs(runs, out)
    if json_:
        console.emit_json(result.to_dict())
        return
    typer.echo(runs_text(result.runs), nl=False)
    typer.echo("config keys that differ:" if result.differences else "configs: identical")
    names = [r.name for r in result.runs]
    for key, values in result.differences.items():
        typer.echo(f"  {key}: " + ", ".join(f"{n}={cell(v)}" for n, v in zip(names, values)))
    if result.figure is not None:
        console.info(f"loss curves: {result.figure}")
    for name in result.without_curves:
        console.warn(f"{name}: no loss history to draw")
