"""RunDir: the ONE place that knows a run directory's file names; finding a trained run (`--run`, runs/latest)."""

from __future__ import annotations

import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path

from funcae_cli.errors import InputError, OptionError

RUNS_ROOT = Path("runs")
LATEST = "latest"


def slugify(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("_")[:80] or "target"


@dataclass(frozen=True)
class RunDir:
    """Paths of every artefact of one run."""

    root: Path

    # inputs and provenance
    @property
    def config(self) -> Path:
        return self.root / "config.yaml"

    @property
    def data(self) -> Path:
        return self.root / "data.npz"

    @property
    def data_preview(self) -> Path:
        return self.root / "data_preview.png"

    # training
    @property
    def checkpoints(self) -> Path:
        return self.root / "checkpoints"

    @property
    def last(self) -> Path:
        return self.checkpoints / "last.pt"

    @property
    def best(self) -> Path:
        return self.checkpoints / "best.pt"

    @property
    def regressor(self) -> Path:
        return self.checkpoints / "regressor.pt"

    @property
    def amortized(self) -> Path:
        """The posterior network (`funcae amortize`): a conditional flow q(parameters | observation)."""
        return self.checkpoints / "amortized.pt"

    @property
    def history_csv(self) -> Path:
        return self.root / "history.csv"

    @property
    def history_json(self) -> Path:
        return self.root / "history.json"

    @property
    def metrics(self) -> Path:
        return self.root / "metrics.json"

    @property
    def status(self) -> Path:
        """status.json: how training ended (running, complete, interrupted, diverged), by whom, since when."""
        return self.root / "status.json"

    # using the model
    @property
    def latents(self) -> Path:
        return self.root / "latents.npz"

    @property
    def encodings(self) -> Path:
        return self.root / "encode"

    def encode_json(self, slug: str) -> Path:
        return self.encodings / f"{slug}.json"

    def encode_csv(self, slug: str) -> Path:
        return self.encodings / f"{slug}.csv"

    @property
    def invert_dir(self) -> Path:
        return self.root / "invert"

    def invert_json(self, slug: str) -> Path:
        return self.invert_dir / f"{slug}.json"

    def invert_png(self, slug: str, kind: str = "png") -> Path:
        """The inversion's figures: `png` the targets in detail, `page` a page of small panels, `summary`."""
        return self.invert_dir / (f"{slug}.png" if kind == "png" else f"{slug}_{kind}.png")

    def invert_samples(self, slug: str) -> Path:
        """The posterior draws of an inversion (--posterior laplace | mcmc)."""
        return self.invert_dir / f"{slug}_samples.npz"

    def invert_results(self) -> list[Path]:
        """Every inversion's record (invert/<slug>.json), newest first."""
        return self._newest_first("*.json")

    def posterior_samples(self) -> list[Path]:
        """Every inversion's posterior draws (invert/<slug>_samples.npz), newest first."""
        return self._newest_first("*_samples.npz")

    def _newest_first(self, pattern: str) -> list[Path]:
        if not self.invert_dir.is_dir():
            return []
        return sorted(self.invert_dir.glob(pattern), key=lambda p: p.stat().st_mtime, reverse=True)

    @property
    def validate_dir(self) -> Path:
        return self.root / "validate"

    @property
    def validate_json(self) -> Path:
        return self.validate_dir / "validate.json"

    def validate_png(self, kind: str) -> Path:
        """`coverage` (empirical against nominal) or `ranks` (simulation-based calibration histograms)."""
        return self.validate_dir / f"{kind}.png"

    def invert_csv(self, slug: str) -> Path:
        return self.invert_dir / f"{slug}.csv"

    @property
    def samples(self) -> Path:
        return self.root / "samples.npz"

    @property
    def samples_png(self) -> Path:
        return self.root / "samples.png"

    @property
    def plots(self) -> Path:
        return self.root / "plots"

    def plot(self, kind: str, fmt: str = "png") -> Path:
        return self.plots / f"{kind}.{fmt}"

    @property
    def export(self) -> Path:
        """`funcae export`'s default folder: the emulator (emulator.json, weights.safetensors, funcae_emulator.py)."""
        return self.root / "export"

    @property
    def tensorboard(self) -> Path:
        """TensorBoard event files (`train --track tensorboard`; `tensorboard --logdir runs` shows every run)."""
        return self.root / "tensorboard"

    # a sweep's trial (funcae sweep: runs/<study>/trials/<number>/)
    @property
    def trial(self) -> Path:
        """trial.json: the trial's state (complete, pruned, failed), number, parameters and objective."""
        return self.root / "trial.json"

    def trained_folders(self) -> list[Path]:
        """What training and the later commands wrote: removed when a run is retrained over (force)."""
        return [
            self.checkpoints,
            self.plots,
            self.invert_dir,
            self.encodings,
            self.validate_dir,
            self.export,
            self.tensorboard,
        ]

    def trained_files(self) -> list[Path]:
        return [
            self.metrics, self.history_csv, self.history_json, self.latents, self.samples, self.samples_png,
            self.status,
        ]  # fmt: skip

    def looks_like_run(self) -> bool:
        """Whether the folder holds anything a run writes (a damaged or partial run included)."""
        files = (self.config, self.metrics, self.history_json, self.history_csv, self.status, self.trial)
        return any(p.is_file() for p in files) or self.checkpoints.is_dir()

    @property
    def compare_png(self) -> Path:
        """`funcae runs compare`'s default figure, in the first compared run: the loss curves overlaid."""
        return self.plot("compare")

    # state
    def is_trained(self) -> bool:
        return self.last.exists() or self.best.exists()

    def checkpoint(self) -> Path:
        """The checkpoint used by encode/invert/plot: best if present, else last."""
        for p in (self.best, self.last):
            if p.exists():
                return p
        raise InputError(f"{self.root}: no checkpoint in {self.checkpoints}; run `funcae train CONFIG` first")

    def refuse_overwrite(self, force: bool, what: str, exists: bool) -> None:
        """OptionError unless the run directory is free or `force` allows overwriting what it holds."""
        if exists and not force:
            raise OptionError("force", f"{self.root} already holds {what}; pass it to overwrite")

    def clear(self) -> None:
        """--force: remove the previous contents (only after the new config validated)."""
        if self.root.is_symlink() or self.root.is_file():
            raise InputError(f"{self.root}: exists and is not a run directory")
        if self.root.exists():
            shutil.rmtree(self.root)


def mlflow_store() -> tuple[Path, Path]:
    """The default MLflow store when none is configured: (SQLite database, artifact folder), under runs/."""
    return RUNS_ROOT / "mlflow.db", RUNS_ROOT / "mlartifacts"


def default_run_dir(name: str) -> RunDir:
    return RunDir(RUNS_ROOT / name)


def point_latest(rd: RunDir) -> None:
    """Make runs/latest a symlink to this run (relative when inside runs/), atomically."""
    root = RUNS_ROOT
    root.mkdir(parents=True, exist_ok=True)
    target = rd.root.resolve()
    try:
        rel = os.path.relpath(target, root.resolve())
    except ValueError:
        rel = str(target)
    tmp = root / f".latest.{os.getpid()}.tmp"
    tmp.unlink(missing_ok=True)
    os.symlink(rel, tmp)
    os.replace(tmp, root / LATEST)
