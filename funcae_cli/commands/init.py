"""`funcae init [NAME] [DIR]`: copy a shipped config (or all of them) into a project; `--list` names them."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from funcae_cli import console
from funcae_cli.jobs import packaged
from funcae_cli.options import JsonOpt


def init(
    name: Annotated[
        Optional[str], typer.Argument(metavar="[NAME]", help="A shipped config (see --list), or 'all' [default: all].")
    ] = None,
    dir_: Annotated[Path, typer.Argument(metavar="[DIR]", help="The project folder: writes DIR/configs/.")] = Path("."),
    list_: Annotated[bool, typer.Option("--list", help="List the shipped configs and exit.")] = False,
    force: Annotated[bool, typer.Option("--force", help="Overwrite files there with other content.")] = False,
    json_: JsonOpt = False,
) -> None:
    """Write a shipped config (and the files it names) into DIR/configs/, ready for the command in its header."""
    if list_:
        files = packaged.shipped_files()
        rows = {n: packaged.describe(n + packaged.SUFFIX, files) for n in packaged.config_names(files)}
        if json_:
            console.emit_json(rows)
        else:
            width = max(map(len, rows))
            print("\n".join(f"{n:{width}}  {d}" for n, d in rows.items()))
        return
    out = packaged.init(name, dir_, force=force)
    if json_:
        console.emit_json({"files": [vars(f) for f in out.files], "commands": out.commands})
        return
    for f in out.files:
        console.info(f"{'kept' if f.state == 'same' else 'wrote'} {f.target}" + (" (as it was)" * (f.state == "same")))
    cd = "" if dir_.resolve() == Path.cwd().resolve() else f"cd {dir_} && "
    for command in out.commands or ["each config's header shows the command that runs it, from this folder"]:
        console.info(f"run: {cd}{command}" if out.commands else command)
