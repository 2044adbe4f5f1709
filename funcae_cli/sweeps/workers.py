"""`funcae sweep`: open (or resume) the study, run K workers on this machine, write the results.

One worker runs in this process; K > 1 run as K spawned processes, each with cores // K torch threads, each in
its own process group: a terminal's Ctrl-C reaches this process alone, which passes each signal on once, so a
worker sees one SIGINT (stop the trial cleanly) and a second Ctrl-C is a second SIGINT (abort), as with
`funcae train`. Other machines run the same command with the same --storage and --study.
"""

from __future__ import annotations

import multiprocessing
import os
import signal
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from funcae_cli.config import NAME_RE, config_from_dict
from funcae_cli.cores import cpu_count
from funcae_cli.device import resolve_device
from funcae_cli.errors import FuncaeError, Interrupted, OptionError, user_message
from funcae_cli.files import atomic_write_text
from funcae_cli.stop import StopFlag, graceful_stop
from funcae_cli.store.rundir import mlflow_store
from funcae_cli.sweeps.results import ResultFiles, track_study, write_results
from funcae_cli.sweeps.setup_lock import setup_lock
from funcae_cli.sweeps.spec import load_sweep
from funcae_cli.sweeps.storage import display_url, normalize_url, open_storage, sqlite_url
from funcae_cli.sweeps.study import Census, WorkerJob, census, open_study, run_worker
from funcae_cli.sweeps.sweepdir import sweep_dir
from funcae_cli.tracking import open_tracking, with_tracks

STOP_WAIT_S = 120  # after a second Ctrl-C: how long workers get to mark their trials before they are killed


def worker_threads(workers: int, cores: int | None = None) -> int:
    """Torch threads per worker: the machine's cores split between the K workers."""
    return max(1, (cores or cpu_count()) // workers)


def worker_device(device: str, index: int, cuda_devices: int | None = None) -> str:
    """Workers spread over the GPUs: with `cuda` (or `auto` on a CUDA machine) and G GPUs, worker i uses
    cuda:(i mod G); any other choice (cpu, cuda:N) is every worker's."""
    n = torch.cuda.device_count() if cuda_devices is None else cuda_devices
    if device.strip().lower() in ("cuda", "auto") and n > 1:
        return f"cuda:{index % n}"
    return device


@dataclass
class SweepResult:
    study: str
    storage: str  # the URL, password hidden
    folder: str  # runs/<study>
    trials: int  # finished trials the study needs
    census: Census
    workers: int
    threads: int | None
    wall_seconds: float
    timed_out: bool
    worker_exits: list[int | None]  # each worker's exit code (negative: killed by that signal)
    files: ResultFiles
    best: dict[str, Any] | None = None  # trial, value, values
    problems: list[str] = field(default_factory=list)  # why the exit code is not 0
    tracking_warnings: list[str] = field(default_factory=list)  # the study's run on the trackers

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["census"]["finished"] = self.census.finished
        return out


def worker_process(job: WorkerJob) -> None:
    """A spawned worker's main: its own process group, signals as `funcae train`, an exit code."""
    os.setpgrp()
    with graceful_stop() as stop:
        try:
            run_worker(job, stop)
        except Interrupted as e:  # its trial's event said so; the parent reports the interruption once
            sys.exit(e.exit_code)
        except FuncaeError as e:
            if job.report is not None:
                job.report(
                    {
                        "event": "error",
                        "worker": job.index if job.workers > 1 else None,
                        "message": user_message(e),
                        "code": e.exit_code,
                    }
                )
            sys.exit(e.exit_code)
        except KeyboardInterrupt:
            sys.exit(130)


def _run_processes(jobs: list[WorkerJob], stop: StopFlag, report: Any) -> list[int | None]:
    ctx = multiprocessing.get_context("spawn")
    procs = [ctx.Process(target=worker_process, args=(job,), name=f"funcae-sweep-w{job.index}") for job in jobs]
    for p in procs:
        p.start()
    if report is not None:
        report({"event": "workers", "pids": [p.pid for p in procs], "threads": jobs[0].threads})
    forwarded: int | None = None
    try:
        while any(p.is_alive() for p in procs):
            if stop.signum is not None and forwarded is None:
                forwarded = stop.signum
                _signal_alive(procs, stop.signum)
            for p in procs:
                p.join(0.05)
    except KeyboardInterrupt:  # a second Ctrl-C: the workers abort their trials (marked failed; new ones replace them)
        _signal_alive(procs, signal.SIGINT)
        deadline = time.monotonic() + STOP_WAIT_S
        for p in procs:
            p.join(max(0.0, deadline - time.monotonic()))
            if p.is_alive():
                p.kill()
        raise
    return [p.exitcode for p in procs]


def _signal_alive(procs: list[Any], signum: int) -> None:
    for p in procs:
        if p.is_alive() and p.pid is not None:
            try:
                os.kill(p.pid, signum)
            except ProcessLookupError:
                pass


def _problems(c: Census, n: int, exits: list[int | None], timed_out: bool) -> list[str]:
    out = []
    if c.failed:
        out.append(f"{c.failed} of {c.finished} finished trials failed (see `funcae sweep show`)")
    if c.finished < n and not timed_out:
        dead = [
            f"worker {i} {'was killed by signal ' + str(-code) if code < 0 else f'exited with {code}'}"
            for i, code in enumerate(exits)
            if code not in (0, None)
        ]
        why = f" ({'; '.join(dead)})" if dead else ""
        out.append(f"the study has {c.finished} of {n} finished trials{why}; run the command again to resume it")
    return out


def run_sweep(
    path: str | Path,
    storage: str | None = None,
    study: str | None = None,
    trials: int | None = None,
    timeout: float | None = None,
    workers: int = 1,
    device: str = "auto",
    stop: StopFlag | None = None,
    report: Any = None,
    track: list[str] | None = None,
) -> SweepResult:
    """Run (or resume) the sweep in SWEEP.yaml until its study has N finished trials, then write best.yaml,
    leaderboard.json and the figures into runs/<study>/. Everything the user gave is checked before anything
    is written or any trial starts (ConfigError, OptionError: exit 2). `report` gets each worker's events
    (a module-level function: it travels to spawned workers)."""
    stop = stop or StopFlag()
    spec = load_sweep(path)
    # a tracker's library missing is exit 2 now, not a failure of every trial
    open_tracking(with_tracks(config_from_dict(spec.base_raw, str(path)).track, track), mlflow_store())
    name = study if study is not None else spec.name
    if not NAME_RE.fullmatch(name) or len(name) > 100:
        raise OptionError("study", f"must be 1-100 letters, digits, '.', '_' or '-', got {name!r}")
    n = trials if trials is not None else spec.trials
    if spec.sampler.name == "grid" and n > spec.grid_size():
        raise OptionError("trials", f"the grid of {path} has {spec.grid_size()} points, got {n}")
    resolve_device(worker_device(device, 0))  # a bad --device is exit 2 before anything is written
    sd = sweep_dir(name)
    url = normalize_url(storage) if storage else sqlite_url(sd.study_db)
    if not storage:
        sd.root.mkdir(parents=True, exist_ok=True)
    with setup_lock(url):  # workers that start together on an empty database take turns to create it
        rdb = open_storage(url, spec.heartbeat)
        optuna_study = open_study(spec, rdb, name, url, sd)
    sd.trials.mkdir(parents=True, exist_ok=True)
    atomic_write_text(sd.sweep_file, Path(path).read_text())
    threads = worker_threads(workers) if workers > 1 else None
    jobs = [
        WorkerJob(
            spec,
            url,
            name,
            str(sd.root),
            n,
            timeout,
            worker_device(device, i),
            index=i,
            workers=workers,
            threads=threads,
            report=report,
            poll_s=min(1.0, spec.heartbeat.interval),
            track=track,
        )
        for i in range(workers)
    ]
    t0 = time.monotonic()
    if workers == 1:
        run_worker(jobs[0], stop)  # Interrupted propagates: exit 130/143
        exits: list[int | None] = [0]
    else:
        exits = _run_processes(jobs, stop, report)
        if stop.signum is not None:
            name_ = {2: "SIGINT", 15: "SIGTERM"}.get(stop.signum, f"signal {stop.signum}")
            raise Interrupted(f"interrupted by {name_}; the workers' trials were re-queued", stop.signum)
    wall = time.monotonic() - t0
    c = census(optuna_study.get_trials(deepcopy=False))
    timed_out = timeout is not None and wall >= timeout and c.finished < n
    files = write_results(optuna_study, sd)
    tracking_warnings = track_study(spec, name, sd, files, c, track)
    return SweepResult(
        study=name,
        storage=display_url(url),
        folder=str(sd.root),
        trials=n,
        census=c,
        workers=workers,
        threads=threads,
        wall_seconds=wall,
        timed_out=timed_out,
        worker_exits=exits,
        files=files,
        best=files.best_trial,
        problems=_problems(c, n, exits, timed_out),
        tracking_warnings=tracking_warnings,
    )
