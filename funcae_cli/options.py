"""Shared CLI option types (Annotated aliases), so every command spells them the same way."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

ConfigArg = Annotated[Path, typer.Argument(help="Experiment YAML (e.g. configs/normal.yaml or runs/X/config.yaml).")]
SetOpt = Annotated[
    Optional[list[str]],
    typer.Option("--set", "-s", help="Override a config field: key.path=value (YAML value). Repeatable."),
]
RunDirOpt = Annotated[Optional[Path], typer.Option("--run-dir", help="Run directory (default: runs/<config name>).")]
RunOpt = Annotated[Optional[Path], typer.Option("--run", "-r", help="Trained run directory (default: runs/latest).")]
DeviceOpt = Annotated[str, typer.Option("--device", "-d", help="auto, cpu, cuda or cuda:N.")]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print the result as JSON on stdout (nothing else on stdout).")]
ForceOpt = Annotated[bool, typer.Option("--force", help="Overwrite an existing run directory.")]
QuietOpt = Annotated[bool, typer.Option("--quiet", "-q", help="Print only the final summary.")]
SeedOpt = Annotated[Optional[int], typer.Option("--seed", help="Random seed (default: the config's).")]
