"""Shared CLI option types (Annotated aliases), so every command spells them the same way.

Choices listed in help texts come from the config's Literal types (config.py), which the library's
registries implement (a test checks that they agree): no torch is needed to show them.
"""

from __future__ import annotations

import typing
from pathlib import Path
from typing import Annotated, Optional

import typer

from funcae_cli.config import InvertConfig


def choices(cls: type, name: str) -> tuple[str, ...]:
    """The allowed values of a config field typed as a Literal."""
    return typing.get_args(typing.get_type_hints(cls)[name])


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
SeedOpt = Annotated[Optional[int], typer.Option("--seed", min=0, help="Random seed (default: the config's).")]
NameOpt = Annotated[
    Optional[str], typer.Option("--name", help="File name (slug) of the outputs [default: from the target].")
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

# --- inversion ---------------------------------------------------------------------------------------
MethodOpt = Annotated[
    Optional[str],
    typer.Option("--method", help=f"{' | '.join(choices(InvertConfig, 'method'))} [default: the run's invert.method]."),
]
StartsOpt = Annotated[
    Optional[int],
    typer.Option("--starts", min=0, help="Extra random starts from the latent distribution; the best is kept."),
]
MaxIterOpt = Annotated[Optional[int], typer.Option("--max-iter", min=1, help="Iterations of the refinement.")]
LrOpt = Annotated[Optional[float], typer.Option("--lr", callback=_positive, help="adam: step size (> 0).")]
PriorOpt = Annotated[
    Optional[str],
    typer.Option(
        "--prior",
        help=f"Latent prior, {' | '.join(choices(InvertConfig, 'prior'))}: density = the training codes' density "
        "(MAP: the code stays where the decoder was trained) [default: the run's invert.prior].",
    ),
]
BoundsOpt = Annotated[
    Optional[str],
    typer.Option(
        "--bounds",
        help=f"Physics refit, {' | '.join(choices(InvertConfig, 'bounds'))}: inside the run's prior support, or "
        "anywhere in the family's domain [default: the run's invert.bounds].",
    ),
]
PosteriorOpt = Annotated[
    Optional[str],
    typer.Option(
        "--posterior",
        help=f"Uncertainty, {' | '.join(choices(InvertConfig, 'posterior'))}: a Gaussian at the optimum, or MCMC "
        "samples (an ensemble sampler over all targets at once) [default: the run's invert.posterior].",
    ),
]
WalkersOpt = Annotated[
    Optional[int], typer.Option("--walkers", min=4, help="mcmc: walkers per target (a multiple of 2 x invert.groups).")
]
StepsOpt = Annotated[
    Optional[str],
    typer.Option(
        "--steps",
        help="mcmc: steps kept per walker (>= 10), or auto: each target until >= 50 autocorrelation times and "
        "R-hat < 1.01 across its independent ensembles, at most invert.max_steps [default: the run's invert.steps].",
    ),
]
BurnOpt = Annotated[Optional[int], typer.Option("--burn", min=0, help="mcmc: steps discarded first.")]
NoPhysicsOpt = Annotated[
    bool, typer.Option("--no-physics", help="Report the regressor's parameters; skip fitting the family's formula.")
]

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
