"""RunDir: the ONE place that knows a run directory's file names. Atomic writes live here too."""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from funcae_cli.errors import InputError

RUNS_ROOT = Path("runs")
LATEST = "latest"


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


FILE_MODE = 0o666 & ~_umask()  # what open() would give; mkstemp alone gives 0600


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Write to a temp file in the same folder, fsync, then os.replace: never half-written."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, FILE_MODE)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_text(path: str | Path, text: str) -> None:
    atomic_write_bytes(path, text.encode())


def atomic_write_json(path: str | Path, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, default=_json_default) + "\n")


def _json_default(o: Any) -> Any:
    if hasattr(o, "tolist"):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON serializable: {type(o).__name__}")


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
    def history_csv(self) -> Path:
        return self.root / "history.csv"

    @property
    def history_json(self) -> Path:
        return self.root / "history.json"

    @property
    def metrics(self) -> Path:
        return self.root / "metrics.json"

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

    def invert_png(self, slug: str) -> Path:
        return self.invert_dir / f"{slug}.png"

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

    # state
    def is_trained(self) -> bool:
        return self.last.exists() or self.best.exists()

    def checkpoint(self) -> Path:
        """The checkpoint used by encode/invert/plot: best if present, else last."""
        for p in (self.best, self.last):
            if p.exists():
                return p
        raise InputError(f"{self.root}: no checkpoint in {self.checkpoints}; run `funcae train CONFIG` first")

    def clear(self) -> None:
        """--force: remove the previous contents (only after the new config validated)."""
        if self.root.is_symlink() or self.root.is_file():
            raise InputError(f"{self.root}: exists and is not a run directory")
        if self.root.exists():
            shutil.rmtree(self.root)


def default_run_dir(name: str) -> RunDir:
    return RunDir(RUNS_ROOT / name)


def resolve_run(run: str | Path | None) -> RunDir:
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
