"""`funcae train`: train an AE/VAE from a config (or resume a run)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from funcae_cli import console
from funcae_cli.commands.common import config_and_run_dir
from funcae_cli.errors import InputError, Interrupted
from funcae_cli.options import DeviceOpt, ForceOpt, JsonOpt, QuietOpt, RunDirOpt, SetOpt, TrackOpt
from funcae_cli.stop import graceful_stop
from funcae_cli.store.rundir import RunDir


def train(
    config: Annotated[Optional[Path], typer.Argument(help="Experiment YAML (omit with --resume).")] = None,
    run_dir: RunDirOpt = None,
    device: DeviceOpt = "auto",
    set_: SetOpt = None,
    resume: Annotated[
        Optional[Path], typer.Option("--resume", help="Continue the run in DIR from checkpoints/last.pt.")
    ] = None,
    force: ForceOpt = False,
    quiet: QuietOpt = False,
    json_: JsonOpt = False,
    no_plots: Annotated[bool, typer.Option("--no-plots", help="Skip the default figures at the end.")] = False,
    track: TrackOpt = None,
) -> None:
    """Train an AE/VAE from a config; write checkpoints, history, metrics and figures to the run directory."""
    from funcae_cli.jobs.train import Callbacks, run_train  # torch: loaded only when a command runs

    if resume is not None and (config is not None or set_):
        raise InputError("--resume: the run's own config is used; drop CONFIG and --set")
    if resume is None and config is None:
        raise InputError("train: give a CONFIG file, or --resume RUN_DIR")
    cfg, rd = (None, RunDir(resume)) if resume is not None else config_and_run_dir(config, set_, run_dir)
    progress = console.TrainProgress(quiet=quiet or json_)
    try:
        with graceful_stop() as stop:
            metrics = run_train(
                cfg, rd, device, force=force, resume=resume is not None, stop=stop, plots=not no_plots,
                callbacks=Callbacks(on_start=progress.start, on_epoch=progress.epoch), source=str(config or ""),
                track=track,
            )  # fmt: skip
    except Interrupted as e:
        raise Interrupted(f"{e}; resume with: funcae train --resume {rd.root}", e.exit_code - 128) from None
    finally:
        progress.stop()
    for w in metrics.get("tracking", {}).get("warnings", []):
        console.warn(w)
    if json_:
        console.emit_json(metrics)
        return
    t = metrics["test"]
    console.info(
        f"done: {metrics['epochs']} epochs in {metrics['wall_seconds']:.1f}s on {metrics['device']}; "
        f"{t['split']} per-curve SSE mean {t['sse_mean']:.4g} (median {t['sse_median']:.4g}, p95 {t['sse_p95']:.4g}), "
        f"PCA-{t['pca']['components']} {t['pca']['sse_mean']:.4g}; rel. L2 {t['rel_l2_median']:.3g}"
    )
    console.info(f"run directory: {rd.root}")
