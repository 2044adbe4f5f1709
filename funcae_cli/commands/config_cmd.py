from __future__ import annotations

import sys

import typer

from funcae_cli.config import dump_config, load_config
from funcae_cli.options import ConfigArg, SetOpt


def show(config: ConfigArg, set_: SetOpt = None) -> None:
    """Print the resolved config (defaults filled in, overrides applied) as YAML."""
    sys.stdout.write(dump_config(load_config(config, set_ or [])))


def check(config: ConfigArg, set_: SetOpt = None) -> None:
    """Validate a config; exit 0 when it is valid, 2 with every problem listed otherwise."""
    cfg = load_config(config, set_ or [])
    typer.echo(f"{config}: ok ({cfg.family.name}, {cfg.model.kind}, latent {cfg.model.latent_dim})")
