"""`funcae amortize`: train a run's posterior network for `invert --posterior amortized`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from funcae_cli import console
from funcae_cli.commands.common import resolve_run
from funcae_cli.options import AmortizeBatchOpt, AmortizeEpochsOpt, AmortizeStepsOpt, JsonOpt, QuietOpt


def amortize(
    run: Annotated[Path, typer.Argument(help="Trained run directory (a family with a formula).")],
    epochs: AmortizeEpochsOpt = None,
    steps: AmortizeStepsOpt = None,
    batch_size: AmortizeBatchOpt = None,
    force: Annotated[bool, typer.Option("--force", help="Train again over a finished network.")] = False,
    json_: JsonOpt = False,
    quiet: QuietOpt = False,
) -> None:
    """Train the run's amortized posterior: a conditional normalizing flow q(parameters | observed points) on
    observations simulated fresh each step from the run's prior and its `amortized` section's observation model
    (points per curve, radii, errors); for a data-only family q(latent code | observed points), the codes drawn
    from the training codes' density and their curves decoded. Writes checkpoints/amortized.pt after every epoch
    (an interrupted run resumes). Then `funcae invert --posterior amortized` samples any number of curves in one
    pass."""
    from funcae_cli.jobs.amortize import run_amortize  # torch: loaded only when it runs

    def progress(h: dict) -> None:
        console.info(f"epoch {h['epoch']}: loss {h['loss']:.4g} ({h['seconds']:.1f}s)")

    options = {"epochs": epochs, "steps": steps, "batch_size": batch_size}
    rec = run_amortize(resolve_run(run), options, force, on_epoch=None if json_ or quiet else progress)
    if json_:
        console.emit_json(rec)
    else:
        console.info(f"trained the posterior network in {rec['seconds']:.1f}s; wrote {rec['files']['checkpoint']}")
