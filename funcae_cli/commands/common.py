"""Helpers shared by the command modules."""

from __future__ import annotations

from pathlib import Path

from funcae_cli.config import Config, load_config
from funcae_cli.errors import InputError
from funcae_cli.rundir import RunDir, default_run_dir


def config_and_run_dir(config: Path, overrides: list[str] | None, run_dir: Path | None) -> tuple[Config, RunDir]:
    """Validate the config first: a bad config creates no directory."""
    cfg = load_config(config, overrides or [])
    rd = RunDir(run_dir) if run_dir is not None else default_run_dir(cfg.name)
    if rd.root.exists() and not rd.root.is_dir():
        raise InputError(f"--run-dir: {rd.root} exists and is not a directory")
    return cfg, rd
