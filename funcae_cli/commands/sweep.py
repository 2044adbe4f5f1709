"""`funcae sweep SWEEP.yaml` (run or resume a hyperparameter search on Optuna) and `funcae sweep show`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Optional

import typer

from funcae_cli import console
from funcae_cli.errors import Interrupted, TrialsFailed
from funcae_cli.options import (
    DeviceOpt,
    JsonOpt,
    QuietOpt,
    StorageOpt,
    StudyOpt,
    SweepArg,
    TimeoutOpt,
    TrackOpt,
    TrialsOpt,
    WorkersOpt,
)
from funcae_cli.stop import graceful_stop


def _values(values: dict[str, Any]) -> str:
    return ", ".join(f"{k}={console.fmt(v)}" for k, v in values.items())


def report_event(event: dict[str, Any]) -> None:
    """One stderr line per worker event (module-level: spawned workers call it too)."""
    tag = "" if event.get("worker") is None else f"[w{event['worker']}] "
    kind = event["event"]
    if kind == "workers":
        console.info(f"{len(event['pids'])} workers (pids {', '.join(map(str, event['pids']))}), "
                     f"{event['threads']} torch thread(s) each")  # fmt: skip
    elif kind == "start":
        console.info(f"{tag}trial {event['trial']} started: {_values(event['values'])}")
    elif kind == "end":
        seconds = "" if event["seconds"] is None else f" in {event['seconds']:.1f}s"
        what = {
            "complete": f"{event['metric']} {console.fmt(event['value'])}",
            "pruned": f"at epoch {event['epochs']}",
            "failed": event["error"] or "",
            "interrupted": "re-queued: it runs again when the sweep resumes",
        }.get(event["state"], "")
        console.info(f"{tag}trial {event['trial']} {event['state']}{seconds}: {what}")
    elif kind == "error":
        console.error(f"{tag}{event['message']}")
    elif kind == "warning":
        console.warn(f"{tag}trial {event['trial']}: {event['message']}")


def run(
    sweep: SweepArg,
    storage: StorageOpt = None,
    study: StudyOpt = None,
    trials: TrialsOpt = None,
    timeout: TimeoutOpt = None,
    workers: WorkersOpt = 1,
    device: DeviceOpt = "auto",
    quiet: QuietOpt = False,
    json_: JsonOpt = False,
    track: TrackOpt = None,
) -> None:
    """Run a sweep (or resume it) until its study has N finished trials; each trial is a run directory in
    runs/<study>/trials/<n>/. Then writes best.yaml, leaderboard.json and plots/ there. Exit 3 when trials
    failed (the others ran) or the study ended short of N; 130 on Ctrl-C (run again to resume)."""
    from funcae_cli.sweeps.workers import run_sweep  # torch, optuna: loaded only when a command runs

    try:
        with graceful_stop() as stop:
            result = run_sweep(
                sweep, storage, study, trials, timeout, workers, device, stop=stop,
                report=None if quiet or json_ else report_event, track=track,
            )  # fmt: skip
    except Interrupted as e:
        raise Interrupted(f"{e}; run the same command again to resume the study", e.exit_code - 128) from None
    for w in result.tracking_warnings:
        console.warn(w)
    if json_:
        console.emit_json(result.to_dict())
    else:
        c = result.census
        console.info(
            f"sweep {result.study}: {c.finished} of {result.trials} trials finished ({c.complete} complete, "
            f"{c.pruned} pruned, {c.failed} failed) in {result.wall_seconds:.1f}s; storage {result.storage}"
        )
        if result.best is not None:
            console.info(f"best: trial {result.best['trial']}, objective {console.fmt(result.best['objective'])} "
                         f"({_values(result.best['params'])}); config {result.files.best}")  # fmt: skip
        if result.timed_out:
            console.info("--timeout reached: run the same command again to continue the study")
    if result.problems:
        raise TrialsFailed("; ".join(result.problems))


def show(
    sweep: Annotated[
        Optional[Path], typer.Argument(help="Sweep YAML or its folder runs/<study> (or use --storage/--study).")
    ] = None,
    storage: StorageOpt = None,
    study: StudyOpt = None,
    json_: JsonOpt = False,
) -> None:
    """Print a sweep's leaderboard: rank, trial, objective, seconds, state, parameters (read from the storage)."""
    from funcae_cli.sweeps.results import board_text, show_sweep  # optuna: loaded only when a command runs

    board = show_sweep(sweep, storage, study)
    if json_:
        console.emit_json(board.to_dict())
        return
    typer.echo(board_text(board), nl=False)
