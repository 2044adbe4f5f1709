from __future__ import annotations

import signal
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Optional

import typer

from funcae_cli import console
from funcae_cli.commands.common import config_and_run_dir
from funcae_cli.device import resolve_device
from funcae_cli.errors import InputError, Interrupted
from funcae_cli.options import DeviceOpt, ForceOpt, JsonOpt, QuietOpt, RunDirOpt, SetOpt
from funcae_cli.rundir import RunDir
from funcae_cli.runs import Callbacks, run_train
from funcae_cli.train import StopFlag


@contextmanager
def graceful_stop():
    """SIGINT/SIGTERM set a flag; the trainer saves at the next step boundary. A second SIGINT aborts."""
    flag = StopFlag()

    def handler(signum, frame):
        if flag.signum is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt
        flag.request(signum)

    old = {s: signal.signal(s, handler) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield flag
    finally:
        for s, h in old.items():
            signal.signal(s, h)


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
) -> None:
    """Train an AE/VAE from a config; write checkpoints, history, metrics and figures to the run directory."""
    dev = resolve_device(device)
    if resume is not None:
        if config is not None or set_:
            raise InputError("--resume: the run's own config is used; drop CONFIG and --set")
        cfg, rd = None, RunDir(resume)
    elif config is None:
        raise InputError("train: give a CONFIG file, or --resume RUN_DIR")
    else:
        cfg, rd = config_and_run_dir(config, set_, run_dir)
    progress = console.TrainProgress(quiet=quiet or json_)
    callbacks = Callbacks(on_epoch=progress.epoch, on_start=progress.start)
    try:
        with graceful_stop() as stop:
            metrics = run_train(
                cfg, rd, dev, force=force, resume=resume is not None, stop=stop, callbacks=callbacks,
                source=str(config) if config is not None else None,
            )  # fmt: skip
    except Interrupted as e:
        progress.stop()
        raise Interrupted(f"{e}; resume with: funcae train --resume {rd.root}", e.exit_code - 128) from None
    finally:
        progress.stop()
    if not no_plots:
        plots = _default_plots(rd)
        metrics["plots"] = [str(p) for p in plots]
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


def _default_plots(rd: RunDir) -> list:
    try:
        from funcae_cli.plotting import plot_run
    except ImportError:
        return []
    return plot_run(rd, kinds=None, default_only=True)
