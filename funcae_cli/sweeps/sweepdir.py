"""SweepDir: the one place that knows a sweep folder's file names (runs/<study>/); each trial is a RunDir."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from funcae_cli.store.rundir import RUNS_ROOT, RunDir

PARTIAL = re.compile(r"\.(\d+)\.partial")


@dataclass(frozen=True)
class SweepDir:
    """Paths of a sweep's artefacts. Trials train in `trials/.<n>.partial/`, renamed to `trials/<n>/` when they
    end (complete, pruned or failed), so a `trials/<n>/` is never half-written."""

    root: Path

    @property
    def study_db(self) -> Path:
        """The embedded storage (SQLite), when no --storage is given."""
        return self.root / "study.db"

    @property
    def sweep_file(self) -> Path:
        """A copy of the SWEEP.yaml the sweep was last started from."""
        return self.root / "sweep.yaml"

    @property
    def trials(self) -> Path:
        return self.root / "trials"

    def trial(self, number: int) -> RunDir:
        return RunDir(self.trials / str(number))

    def partial(self, number: int) -> RunDir:
        """Where trial `number` trains until it ends."""
        return RunDir(self.trials / f".{number}.partial")

    def partials(self) -> dict[int, Path]:
        """Trial number -> its partial folder, for every one present."""
        if not self.trials.is_dir():
            return {}
        return {int(m.group(1)): p for p in self.trials.iterdir() if (m := PARTIAL.fullmatch(p.name))}

    def finished_trials(self) -> list[RunDir]:
        """The run directories of trials that ended, by number."""
        if not self.trials.is_dir():
            return []
        return [
            RunDir(p) for p in sorted((p for p in self.trials.iterdir() if p.name.isdigit()), key=lambda p: int(p.name))
        ]

    @property
    def best(self) -> Path:
        """The best complete trial's resolved config: `funcae train runs/<study>/best.yaml` retrains it."""
        return self.root / "best.yaml"

    @property
    def leaderboard(self) -> Path:
        return self.root / "leaderboard.json"

    @property
    def plots(self) -> Path:
        return self.root / "plots"

    def plot(self, kind: str) -> Path:
        return self.plots / f"{kind}.png"

    @property
    def tensorboard(self) -> Path:
        """The study's figures as TensorBoard images (its trials' event files are in trials/<n>/tensorboard)."""
        return self.root / "tensorboard"

    @property
    def turn_lock(self) -> Path:
        """flock'ed by this machine's workers while one of them picks its next trial (storage.FileTurn)."""
        return self.root / ".turn.lock"


def sweep_dir(study: str) -> SweepDir:
    return SweepDir(RUNS_ROOT / study)
