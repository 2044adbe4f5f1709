"""The study: created or resumed (one sweep per study), counted, and one worker's loop.

A study needs N finished trials: complete, pruned, or failed with an error (a diverged run, an invalid
combination of values). Trials that failed without one (a worker killed: its heartbeat went stale; a worker
stopped by a signal) are re-queued with the same parameters and do not count. A worker loops, taking turns
with the others (storage.turn_lock): fail stale trials and re-queue them, remove the partial folders of trials
no longer running, count; when finished + running < N, run one more trial (a re-queued one first: Optuna's
`ask` pops waiting trials), else wait while the running ones may still fail, until N are finished.
"""

from __future__ import annotations

import datetime as dt
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import optuna
import torch
from optuna.pruners import BasePruner, HyperbandPruner, MedianPruner, NopPruner
from optuna.samplers import BaseSampler, GridSampler, RandomSampler, TPESampler
from optuna.storages import RDBStorage
from optuna.trial import FrozenTrial, TrialState

from funcae_cli.errors import FuncaeError, Interrupted, OptionError
from funcae_cli.stop import StopFlag
from funcae_cli.sweeps.objective import (
    ATTR_ERROR,
    ATTR_INTERRUPTED,
    ATTR_WORKER,
    TrialContext,
    run_trial,
)
from funcae_cli.sweeps.spec import PrunerSpec, SweepSpec
from funcae_cli.sweeps.storage import (
    Requeue,
    display_url,
    open_storage,
    quiet_optuna,
    study_names,
    turn_lock,
)
from funcae_cli.sweeps.sweepdir import SweepDir

# The study's user attributes: which sweep it holds.
ATTR_FINGERPRINT = "funcae.fingerprint"
ATTR_SWEEP = "funcae.sweep"
ATTR_METRIC = "funcae.metric"

ORPHAN_MARGIN_S = 60  # a trial created this long past the grace period without starting: its worker died

SAMPLERS: dict[str, Callable[[SweepSpec, int | None], BaseSampler]] = {
    # constant_liar: a running trial counts as a bad one, so parallel workers do not all sample one spot
    "tpe": lambda s, seed: TPESampler(seed=seed, n_startup_trials=s.sampler.startup_trials, constant_liar=True),
    "random": lambda s, seed: RandomSampler(seed=seed),
    "grid": lambda s, seed: GridSampler(s.grid(), seed=seed),
}
PRUNERS: dict[str, Callable[[PrunerSpec], BasePruner]] = {
    "median": lambda p: MedianPruner(n_startup_trials=p.startup_trials, n_warmup_steps=p.warmup_epochs),
    "hyperband": lambda p: HyperbandPruner(
        min_resource=max(1, p.warmup_epochs), max_resource="auto", reduction_factor=p.reduction_factor
    ),
    "none": lambda p: NopPruner(),
}


# Leaderboard order: complete trials by objective, then the others by state, each by trial number.
STATE_ORDER = ["complete", "pruned", "failed", "lost", "interrupted", "running", "waiting"]


def trial_state(t: FrozenTrial) -> str:
    """complete, pruned, failed (with an error: counted), lost (its worker died: re-queued), interrupted
    (stopped by a signal: re-queued), running, waiting (queued, not started)."""
    if t.state == TrialState.FAIL:
        if ATTR_ERROR in t.user_attrs:
            return "failed"
        return "interrupted" if ATTR_INTERRUPTED in t.user_attrs else "lost"
    return t.state.name.lower()


@dataclass
class Census:
    complete: int = 0
    pruned: int = 0
    failed: int = 0  # failed with an error: finished, counted
    lost: int = 0  # the worker died: re-queued (or replaced), not counted
    interrupted: int = 0  # stopped by a signal: re-queued, not counted
    running: int = 0
    waiting: int = 0

    @property
    def finished(self) -> int:
        return self.complete + self.pruned + self.failed


def census(trials: list[FrozenTrial]) -> Census:
    c = Census()
    for t in trials:
        state = trial_state(t)
        setattr(c, state, getattr(c, state) + 1)
    return c


def open_study(spec: SweepSpec, storage: RDBStorage, name: str, url: str, sd: SweepDir) -> optuna.Study:
    """Create the study, or load it when it exists and holds this sweep (same base config, space, objective).

    OptionError (exit 2) when it holds another sweep, or is new while runs/<study>/trials/ already holds trials
    (of an earlier study of the same name whose storage was deleted)."""
    if name not in study_names(storage):
        if sd.finished_trials():
            raise OptionError(
                "study",
                f"{name!r} is a new study in {display_url(url)} but {sd.trials} holds run directories of an "
                "earlier one; remove that folder or pick another --study",
            )
        with quiet_optuna():
            study = optuna.create_study(
                storage=storage, study_name=name, direction=spec.objective.direction, load_if_exists=True
            )
            study.set_metric_names([spec.objective.metric])
    else:
        study = optuna.load_study(study_name=name, storage=storage)
    fingerprint = study.user_attrs.get(ATTR_FINGERPRINT)
    if fingerprint is None:
        if study.get_trials(deepcopy=False):
            raise OptionError("study", f"{name!r} in {display_url(url)} holds trials funcae sweep did not make")
        study.set_user_attr(ATTR_FINGERPRINT, spec.fingerprint)
        study.set_user_attr(ATTR_SWEEP, spec.source)
        study.set_user_attr(ATTR_METRIC, spec.objective.metric)
    elif fingerprint != spec.fingerprint:
        raise OptionError(
            "study",
            f"{name!r} in {display_url(url)} holds a sweep with another base config, space or objective (made "
            f"from {study.user_attrs.get(ATTR_SWEEP, '?')}); use that file, or pick another --study",
        )
    return study


@dataclass
class WorkerJob:
    """One worker's orders (plain data: it travels to a spawned process)."""

    spec: SweepSpec
    storage_url: str
    study: str
    sweep_root: str
    trials: int  # finished trials the study needs
    timeout: float | None  # seconds after which this worker starts no new trial
    device: str
    index: int = 0  # this worker's number on this machine
    workers: int = 1  # how many this machine runs (events name the worker when more than one)
    threads: int | None = None  # torch threads (None: leave torch's default)
    report: Callable[[dict[str, Any]], None] | None = None  # events: start, end (module-level: picklable)
    poll_s: float = field(default=1.0)  # how often a waiting worker looks at the study again
    track: list[str] | None = None  # `--track`: trackers each trial logs to (besides the config's)


def _sampler_seed(job: WorkerJob) -> int | None:
    """Worker i of a machine samples with seed + i, so that parallel workers do not draw the same values; the
    grid sampler takes the seed as is in every worker: it shuffles the grid with it, and each worker must see
    the same order (trial number n runs grid point n)."""
    seed = job.spec.sampler.seed
    if job.spec.sampler.name == "grid":
        return seed or 0
    return None if seed is None else seed + job.index


def _fail_orphans(study: optuna.Study, storage: RDBStorage, trials: list[FrozenTrial], grace_s: int) -> None:
    """Fail (and re-queue) RUNNING trials that never started: their worker died between Optuna's `ask` and
    the first heartbeat, which Optuna's stale check cannot see (no heartbeat at all). `datetime_start` is the
    asking machine's clock: ORPHAN_MARGIN_S covers the skew between machines."""
    cutoff = dt.datetime.now() - dt.timedelta(seconds=grace_s + ORPHAN_MARGIN_S)
    orphans = [
        t
        for t in trials
        if t.state == TrialState.RUNNING and ATTR_WORKER not in t.user_attrs and t.datetime_start is not None
        and t.datetime_start < cutoff
    ]  # fmt: skip
    if not orphans:
        return
    study_id = storage.get_study_id_from_name(study.study_name)
    for t in orphans:
        trial_id = storage.get_trial_id_from_study_id_trial_number(study_id, t.number)
        try:
            failed = storage.set_trial_state_values(trial_id, state=TrialState.FAIL)
        except optuna.exceptions.UpdateFinishedTrialError:  # another worker got there first
            continue
        callback = storage.get_heartbeat_stale_trial_callback()
        if failed and callback is not None:
            callback(study, storage.get_trial(trial_id))


def _trial(study: optuna.Study, storage: RDBStorage, number: int) -> FrozenTrial:
    study_id = storage.get_study_id_from_name(study.study_name)
    return storage.get_trial(storage.get_trial_id_from_study_id_trial_number(study_id, number))


def _remove_stale_partials(sd: SweepDir, trials: list[FrozenTrial]) -> None:
    """Partial folders of trials not running any more (their worker was killed): never renamed, safe to drop."""
    running = {t.number for t in trials if t.state == TrialState.RUNNING}
    for number, path in sd.partials().items():
        if number not in running:
            shutil.rmtree(path, ignore_errors=True)


def _end_event(job: WorkerJob, trial: FrozenTrial) -> dict[str, Any]:
    seconds = (
        (trial.datetime_complete - trial.datetime_start).total_seconds()
        if trial.datetime_complete and trial.datetime_start
        else None
    )
    return {
        "event": "end",
        "worker": _tag(job),
        "trial": trial.number,
        "state": trial_state(trial),
        "value": trial.value if trial.state == TrialState.COMPLETE else None,
        "metric": job.spec.objective.metric,
        "epochs": max(trial.intermediate_values, default=None),
        "seconds": seconds,
        "error": trial.user_attrs.get(ATTR_ERROR),
    }


def _tag(job: WorkerJob) -> int | None:
    return job.index if job.workers > 1 else None


def _wait(stop: StopFlag, seconds: float) -> None:
    end = time.monotonic() + seconds
    while stop.signum is None and time.monotonic() < end:
        time.sleep(min(0.1, seconds))


def run_worker(job: WorkerJob, stop: StopFlag) -> int:
    """Run trials until the study has `job.trials` finished ones (or the timeout passes); returns how many this
    worker ran. Interrupted (exit 130/143) when a signal stops it: its trial is re-queued first."""
    spec = job.spec
    if job.threads is not None:
        torch.set_num_threads(job.threads)
    sd = SweepDir(Path(job.sweep_root))  # a str travels to spawned workers
    ran = 0
    t0 = time.monotonic()
    with quiet_optuna():
        storage = open_storage(job.storage_url, spec.heartbeat)
        study = optuna.load_study(
            study_name=job.study,
            storage=storage,
            sampler=SAMPLERS[spec.sampler.name](spec, _sampler_seed(job)),
            pruner=PRUNERS[spec.pruner.name](spec.pruner),
        )
        turn = turn_lock(job.storage_url, job.study, sd.turn_lock)
        on_start = None
        if job.report is not None:
            report = job.report
            on_start = lambda n, values: report({"event": "start", "worker": _tag(job), "trial": n, "values": values})  # noqa: E731
        on_warning = None
        if job.report is not None:
            on_warning = lambda n, w: report({"event": "warning", "worker": _tag(job), "trial": n, "message": w})  # noqa: E731
        ctx = TrialContext(spec, job.study, sd, job.device, stop, on_start, track=job.track, on_warning=on_warning)
        started: list[int] = []

        def objective(trial: optuna.Trial) -> float:
            turn.release()  # the trial exists now: the next worker may count it and pick its own
            started.append(trial.number)
            return run_trial(trial, ctx)

        while True:
            if stop.signum is not None:
                raise Interrupted(f"interrupted by {_signame(stop.signum)}", stop.signum)
            if job.timeout is not None and time.monotonic() - t0 >= job.timeout:
                break
            go = False
            turn.acquire()
            try:
                optuna.storages.fail_stale_trials(study)
                trials = study.get_trials(deepcopy=False)
                _fail_orphans(study, storage, trials, spec.heartbeat.grace_seconds)
                trials = study.get_trials(deepcopy=False)
                _remove_stale_partials(sd, trials)
                c = census(trials)
                if c.finished >= job.trials:
                    break
                go = c.finished + c.running < job.trials
                if go:
                    started.clear()
                    study.optimize(objective, n_trials=1, catch=(FuncaeError,))
            finally:
                turn.release()
            if not go:
                _wait(stop, job.poll_s)
                continue
            ran += 1
            trial = _trial(study, storage, started[-1]) if started else None
            if trial is not None and job.report is not None:
                job.report(_end_event(job, trial))
            if stop.signum is not None:
                if trial is not None and trial.state == TrialState.FAIL and ATTR_INTERRUPTED in trial.user_attrs:
                    Requeue(None)(study, trial)
                raise Interrupted(f"interrupted by {_signame(stop.signum)}", stop.signum)
    return ran


def _signame(signum: int) -> str:
    return {2: "SIGINT", 15: "SIGTERM"}.get(signum, f"signal {signum}")
