"""Shared CLI option types (Annotated aliases), so every command spells them the same way.

Choices listed in help texts come from the config's Literal types (config.py), which the library's
registries implement (a test checks that they agree): no torch is needed to show them.
"""

from __future__ import annotations

import dataclasses
import typing
from pathlib import Path
from typing import Annotated, Optional

import typer

from funcae_cli.config import AmortizedConfig, InvertConfig, SampleConfig, ValidateConfig
from funcae_cli.tracking import TRACKERS


def choices(cls: type, name: str) -> tuple[str, ...]:
    """The allowed values of a config field typed as a Literal."""
    return typing.get_args(typing.get_type_hints(cls)[name])


def help_of(cls: type, name: str) -> str:
    """A config field's help text, for the option that overrides it (the record's rules check the value)."""
    f = next(f for f in dataclasses.fields(cls) if f.name == name)
    return f.metadata["help"][:1].upper() + f.metadata["help"][1:] + "."


def _record_option(cls: type, name: str, flag: str, *aliases: str, typ: type = int) -> object:
    """An option overriding field `name` of a config record; no range check here: the record's rules check it."""
    section = {InvertConfig: "invert", SampleConfig: "sample", ValidateConfig: "validate",
               AmortizedConfig: "amortized"}[cls]  # fmt: skip
    text = help_of(cls, name)
    lits = choices(cls, name) if typing.get_origin(typing.get_type_hints(cls)[name]) is typing.Literal else ()
    if lits:
        text = f"{' | '.join(lits)}: {text}"
    return Annotated[Optional[typ], typer.Option(flag, *aliases, help=f"{text} [default: the run's {section}.{name}]")]


def _positive(value: float | None) -> float | None:
    if value is not None and not value > 0:
        raise typer.BadParameter(f"must be > 0, got {value:g}")
    return value


# --- configs and run directories -----------------------------------------------------------------
ConfigArg = Annotated[Path, typer.Argument(help="Experiment YAML (e.g. configs/normal.yaml or runs/X/config.yaml).")]
SetOpt = Annotated[
    Optional[list[str]],
    typer.Option("--set", "-s", help="Override a config field: key.path=value (YAML value). Repeatable."),
]
RunDirOpt = Annotated[Optional[Path], typer.Option("--run-dir", help="Run directory (default: runs/<config name>).")]
RunOpt = Annotated[Optional[Path], typer.Option("--run", "-r", help="Trained run directory (default: runs/latest).")]
ForceOpt = Annotated[bool, typer.Option("--force", help="Overwrite an existing run directory.")]

# --- how a command runs and reports -----------------------------------------------------------------
DeviceOpt = Annotated[str, typer.Option("--device", "-d", help="auto, cpu, cuda or cuda:N.")]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print the result as JSON on stdout (nothing else on stdout).")]
QuietOpt = Annotated[bool, typer.Option("--quiet", "-q", help="Print only the final summary.")]
ConfigSeedOpt = Annotated[Optional[int], typer.Option("--seed", help="Random seed (default: the config's `seed`).")]
NameOpt = Annotated[
    Optional[str], typer.Option("--name", help="File name (slug) of the outputs [default: from the target].")
]

TrackOpt = Annotated[
    Optional[list[str]],
    typer.Option(
        "--track",
        help=f"Log the run to {' | '.join(TRACKERS)} (besides the config's `track` section; needs "
        "`pip install 'funcae[tracking]'`). Repeatable.",
    ),
]

# --- targets of encode and invert (the family's parameters, --mu 2.4 --sigma 1.7, arrive as extra args) ----
CurveOpt = Annotated[
    Optional[list[Path]],
    typer.Option(
        "--curve",
        help="CSV of one observed curve: columns x,y[,yerr]; x anywhere inside the grid's range. Repeatable: "
        "each file is one target, with its own x.",
    ),
]
TargetsOpt = Annotated[
    Optional[Path], typer.Option("--targets", help="CSV of parameters: a header naming each family parameter.")
]
CurvesOpt = Annotated[
    Optional[Path],
    typer.Option(
        "--curves",
        help="Many curves: .csv in long format (columns id,x,y[,yerr]: each id its own x), a folder of "
        "per-object CSV files (x,y[,yerr]), or .npz with `curves` (n, m) [and `x` (m,), `yerr`, `params`].",
    ),
]
ClipOpt = Annotated[
    bool,
    typer.Option("--clip", help="Drop observed points outside the run's grid (with a warning) instead of failing."),
]

# --- inversion, sampling, validation: each option overrides its field of the run's config section -------------
MethodOpt = _record_option(InvertConfig, "method", "--method", typ=str)
StartsOpt = _record_option(InvertConfig, "starts", "--starts")
MaxIterOpt = _record_option(InvertConfig, "max_iter", "--max-iter")
LrOpt = _record_option(InvertConfig, "lr", "--lr", typ=float)
PriorOpt = _record_option(InvertConfig, "prior", "--prior", typ=str)
BoundsOpt = _record_option(InvertConfig, "bounds", "--bounds", typ=str)
PosteriorOpt = _record_option(InvertConfig, "posterior", "--posterior", typ=str)
WalkersOpt = _record_option(InvertConfig, "walkers", "--walkers", typ=str)  # an integer or auto
StepsOpt = _record_option(InvertConfig, "steps", "--steps", typ=str)  # an integer or auto
BurnOpt = _record_option(InvertConfig, "burn", "--burn")
MaxStepsOpt = _record_option(InvertConfig, "max_steps", "--max-steps")
ProposalOpt = _record_option(InvertConfig, "proposal", "--proposal", typ=str)
SeedOpt = _record_option(InvertConfig, "seed", "--seed")
DrawsOpt = _record_option(InvertConfig, "draws", "--draws")
SamplesOpt = _record_option(InvertConfig, "samples", "--samples", typ=str)
NoCheckOpt = Annotated[
    bool,
    typer.Option("--no-check", help="Amortized: skip the importance check (no k-hat, the flow's draws as they are)."),
]
AmortizeEpochsOpt = _record_option(AmortizedConfig, "epochs", "--epochs")
AmortizeStepsOpt = _record_option(AmortizedConfig, "steps", "--steps")
AmortizeBatchOpt = _record_option(AmortizedConfig, "batch_size", "--batch-size")
NoPhysicsOpt = Annotated[
    bool, typer.Option("--no-physics", help="Report the regressor's parameters; skip fitting the family's formula.")
]
SampleNOpt = _record_option(SampleConfig, "n", "--n", "-n")
LatentOpt = _record_option(SampleConfig, "latent", "--latent", typ=str)
SampleSeedOpt = _record_option(SampleConfig, "seed", "--seed")
ValidateNOpt = _record_option(ValidateConfig, "n", "--n", "-n")
NoiseOpt = _record_option(ValidateConfig, "noise", "--noise", typ=float)
ValidatePosteriorOpt = _record_option(ValidateConfig, "posterior", "--posterior", typ=str)
RequireCoverageOpt = _record_option(ValidateConfig, "require_coverage", "--require-coverage", typ=float)
CompareMcmcOpt = _record_option(ValidateConfig, "compare_mcmc", "--compare-mcmc")

# --- sweeps ------------------------------------------------------------------------------------------
SweepArg = Annotated[Path, typer.Argument(help="Sweep YAML (e.g. configs/sweeps/normal.yaml).")]
StorageOpt = Annotated[
    Optional[str],
    typer.Option(
        "--storage",
        help="Optuna storage URL shared by every machine, e.g. postgresql://user:pw@host/db "
        "[default: sqlite:///runs/<study>/study.db].",
    ),
]
StudyOpt = Annotated[
    Optional[str],
    typer.Option("--study", help="Study name; runs/<study>/ holds its trials [default: the sweep's name]."),
]
TrialsOpt = Annotated[
    Optional[int], typer.Option("--trials", min=1, help="Finished trials the study needs [default: the sweep's].")
]
TimeoutOpt = Annotated[
    Optional[float],
    typer.Option("--timeout", callback=_positive, help="Seconds after which no new trial starts (running ones end)."),
]
WorkersOpt = Annotated[
    int, typer.Option("--workers", "-w", min=1, help="Worker processes on this machine (torch threads split).")
]
