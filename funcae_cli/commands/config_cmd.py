"""`funcae config show` and `config check` (no torch needed)."""

from __future__ import annotations

import sys
from typing import Annotated

import typer

from funcae_cli import console
from funcae_cli.config import dump_config, explain, load_config
from funcae_cli.options import ConfigArg, JsonOpt, SetOpt


def _cell(v: object) -> str:
    return "-" if v is None else str(v)


def show(
    config: ConfigArg,
    set_: SetOpt = None,
    explain_: Annotated[
        bool, typer.Option("--explain", help="Every field with its type, default, allowed range and help.")
    ] = False,
    json_: JsonOpt = False,
) -> None:
    """Print the resolved config (defaults filled in, overrides applied) as YAML; --explain documents each field."""
    cfg = load_config(config, set_ or [])
    if not explain_:
        sys.stdout.write(dump_config(cfg))
        return
    docs = explain(cfg)
    if json_:
        console.emit_json([vars(d) for d in docs])
        return
    for d in docs:
        allowed = f"; allowed {d.allowed}" if d.allowed else ""
        default = "" if d.default == d.value else f" (default {_cell(d.default)})"
        sys.stdout.write(f"{d.key} = {_cell(d.value)}{default}\n    {d.type}{allowed}. {d.help}\n")


def check(config: ConfigArg, set_: SetOpt = None) -> None:
    """Validate a config; exit 0 when it is valid, 2 with every problem listed otherwise."""
    cfg = load_config(config, set_ or [])
    typer.echo(f"{config}: ok ({cfg.family.name}, {cfg.model.kind}, latent {cfg.model.latent_dim})")
