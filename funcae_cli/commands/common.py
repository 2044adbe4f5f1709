"""What several commands need to turn their options into library inputs (light: no torch)."""

from __future__ import annotations

import os
from pathlib import Path

from funcae_cli.config import Config, load_config
from funcae_cli.config.families import Family
from funcae_cli.config.userfamilies import TRUST_ENV, run_code_trusted
from funcae_cli.data.numbers import finite_number
from funcae_cli.errors import InputError
from funcae_cli.jobs.inputs import TargetInputs
from funcae_cli.store.rundir import LATEST, RUNS_ROOT, RunDir, default_run_dir

TARGET_FLAGS = {"params": "parameters", "curve_files": "--curve", "params_table": "--targets", "curves": "--curves"}


def config_and_run_dir(config: Path, overrides: list[str] | None, run_dir: Path | None) -> tuple[Config, RunDir]:
    """Validate the config first: a bad config creates no directory."""
    cfg = load_config(config, overrides or [])
    rd = RunDir(run_dir) if run_dir is not None else default_run_dir(cfg.name)
    if rd.root.exists() and not rd.root.is_dir():
        raise InputError(f"--run-dir: {rd.root} exists and is not a directory")
    return cfg, rd


def resolve_run(run: Path | None) -> RunDir:
    """`--run DIR`, or runs/latest. Clear errors when there is no trained run."""
    if run is None:
        latest = RUNS_ROOT / LATEST
        if not latest.exists():
            raise InputError("no trained run; run `funcae train CONFIG` first (or pass --run DIR)")
        rd = RunDir(latest.resolve())
    else:
        rd = RunDir(Path(run))
        if not rd.root.is_dir():
            raise InputError(f"--run: {run} is not a run directory")
    if not rd.is_trained():
        raise InputError(f"--run: {rd.root} has no checkpoint; run `funcae train CONFIG` first")
    return rd


def trust_run_code_in_this_process() -> None:
    """`funcae --trust-run-code`: import-path families recorded in run directories may be imported (here and in
    the workers this process starts, through the environment)."""
    os.environ[TRUST_ENV] = "1"


def run_family(rd: RunDir) -> Family:
    """The family of a trained run, from its config.yaml (no checkpoint to load)."""
    return load_config(rd.config, trust_code=run_code_trusted()).family.family


def _param_list(family: Family) -> str:
    return ", ".join(f"--{n}" for n in family.param_names)


def parse_param_args(family: Family, args: list[str]) -> dict[str, float]:
    """Extra command-line args `['--mu', '2.4', '--sigma=1.7']` -> {'mu': 2.4, 'sigma': 1.7} ({} when none).

    Every family parameter must be given once; an unknown name or a stray argument is an error.
    """
    values: dict[str, float] = {}
    need = f"family {family.name} takes {_param_list(family)}"
    i = 0
    while i < len(args):
        tok = args[i]
        if not tok.startswith("--") or tok == "--":
            raise InputError(f"unexpected argument {tok!r}; {need}")
        name, eq, text = tok[2:].partition("=")
        if name not in family.param_names:
            raise InputError(f"unknown option --{name}; {need}")
        if not eq:
            if i + 1 >= len(args):
                raise InputError(f"--{name}: missing value; {need}")
            text = args[i + 1]
            i += 1
        if name in values:
            raise InputError(f"--{name}: given twice")
        values[name] = finite_number(text, f"--{name}")
        i += 1
    if values:
        missing = [n for n in family.param_names if n not in values]
        if missing:
            raise InputError(f"missing {', '.join('--' + n for n in missing)}; {need}")
    return values


def target_inputs(
    rd: RunDir,
    param_args: list[str],
    curve: list[Path] | None,
    targets: Path | None,
    curves: Path | None,
    required: bool = False,
    clip: bool = False,
) -> TargetInputs:
    """The targets named on the command line (at most one kind); `required`: none at all is an error."""
    family = run_family(rd)
    inputs = TargetInputs(parse_param_args(family, param_args), list(curve or []), targets, curves, clip)
    kinds = inputs.kinds()
    if len(kinds) > 1:
        raise InputError(f"give one kind of target, got {' and '.join(TARGET_FLAGS[k] for k in kinds)}")
    if required and not kinds:
        params = f"{' '.join(f'--{p} VALUE' for p in family.param_names)} ({family.name}), " if family.params else ""
        raise InputError(f"give a target: {params}--curve FILE.csv, --targets FILE.csv or --curves FILE")
    return inputs
