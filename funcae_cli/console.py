"""Terminal output: messages on stderr (rich, colour only on a terminal), results on stdout."""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from typing import Any

from rich.console import Console

from funcae_cli.files import json_chunks, json_safe

# Messages, warnings and progress go to stderr so that `--json` stdout stays machine-readable.
err = Console(stderr=True, highlight=False)


def info(msg: str) -> None:
    err.print(msg, markup=False, soft_wrap=True)


def warn(msg: str) -> None:
    err.print(f"warning: {msg}", style="yellow", markup=False, soft_wrap=True)


def error(msg: str) -> None:
    err.print(f"error: {msg}", style="red", markup=False, soft_wrap=True)


def counter(what: str, share: float = 0.1) -> Callable[[int, int], None]:
    """A progress callback (done, total) for long batched work: a line each time another `share` of the total is
    done, and one at the end."""
    last = [0]

    def report(done: int, total: int) -> None:
        if done >= total or done - last[0] >= max(1, int(total * share)):
            last[0] = done
            info(f"{what}: {done:,} of {total:,}")

    return report


def emit_json(obj: Any) -> None:
    """The one machine-readable result of a --json command, on stdout. (invert's record, a catalogue's, goes to
    stdout as its file is written: jobs.invert.run_invert's echo.)"""
    sys.stdout.writelines(json_chunks(json_safe(obj)))
    sys.stdout.flush()


def fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)


class TrainProgress:
    """A rich progress bar on a terminal; one plain line every few epochs elsewhere (CI logs)."""

    def __init__(self, quiet: bool = False):
        self.quiet = quiet
        self.live = err.is_terminal and not quiet
        self.progress: Any = None  # a rich Progress while a bar is live
        self.task = None
        self.every = 1
        self.t0 = time.perf_counter()

    def start(self, info_: dict[str, Any]) -> None:
        epochs, start = info_["epochs"], info_["start_epoch"]
        self.every = max(1, epochs // 20)
        if self.quiet:
            return
        info(
            f"training {info_['params']:,} parameters on {info_['device']} ({info_['engine']} step): "
            f"{info_['n_train']:,} curves, "
            f"{info_['steps_per_epoch']} steps/epoch, epochs {start + 1}..{epochs}"
        )
        if "engine_reason" in info_:
            info(f"{info_['engine']} step: {info_['engine_reason']}")
        for w in info_.get("warnings", []):
            warn(w)
        if self.live:
            # rich.progress: ~20 ms to import, needed only for a bar on a terminal
            from rich.progress import (
                BarColumn,
                MofNCompleteColumn,
                Progress,
                TextColumn,
                TimeElapsedColumn,
                TimeRemainingColumn,
            )

            self.progress = Progress(
                TextColumn("epoch"),
                MofNCompleteColumn(),
                BarColumn(),
                TextColumn("{task.fields[stats]}"),
                TimeElapsedColumn(),
                TimeRemainingColumn(),
                console=err,
                transient=False,
            )
            self.progress.start()
            self.task = self.progress.add_task("train", total=epochs, completed=start, stats="")

    def epoch(self, row: dict[str, Any]) -> None:
        stats = f"loss {row['train_loss']:.4g}  val {row['val_loss']:.4g}  sse {row['val_sse']:.3g}  lr {row['lr']:.2e}"
        if self.progress is not None:
            self.progress.update(self.task, completed=row["epoch"], stats=stats)
        elif not self.quiet and (row["epoch"] % self.every == 0 or row["epoch"] == 1):
            info(f"epoch {row['epoch']:>5}  {stats}  ({time.perf_counter() - self.t0:.1f}s)")

    def stop(self) -> None:
        if self.progress is not None:
            self.progress.stop()
            self.progress = None
