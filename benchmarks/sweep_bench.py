"""Row 10: trials per minute of `funcae sweep` with 1 and with 2 worker processes (each a fresh `funcae` process)."""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.report import Row

REPO = Path(__file__).resolve().parents[1]
CONFIGS = REPO / "configs"


SWEEP_WORKERS = (1, 2)


def _sweep_once(folder: Path, sweep: Path, workers: int, study: str) -> dict:
    """`funcae sweep` in a fresh process; its --json result (wall_seconds: from the workers' start to their end)."""
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    cmd = [sys.executable, "-m", "funcae_cli", "sweep", str(sweep), "--workers", str(workers), "--study", study,
           "--device", "cpu", "--json"]  # fmt: skip
    t0 = time.perf_counter()
    r = subprocess.run(cmd, check=True, cwd=folder, env=env, capture_output=True, text=True)
    out = json.loads(r.stdout)
    out["command_seconds"] = time.perf_counter() - t0
    return out


def bench_sweep(scale: float, repeats: int):
    """Trials per minute of `funcae sweep` with 1 and with 2 worker processes, on smoke.yaml's model."""

    full = scale >= 1
    trials = 12 if full else 2
    n, epochs = (2000, 20) if full else (600, 2)
    doc = {
        "base": str(CONFIGS / "smoke.yaml"),
        "overrides": {"data.n": n, "train.epochs": epochs},
        "space": {"train.lr": {"log_uniform": [1.0e-3, 1.0e-2]}},  # the same work in every trial
        "sampler": {"name": "random", "seed": 0},
        "pruner": {"name": "none"},
        "trials": trials,
        "plots": full,  # the tiny scale (tests) checks the code path only: no figures per trial
    }
    rounds = min(repeats, 3) if full else 1
    runs: dict[int, list[dict]] = {k: [] for k in SWEEP_WORKERS}
    with tempfile.TemporaryDirectory() as tmp:
        sweep = Path(tmp) / "bench_sweep.yaml"
        sweep.write_text(json.dumps(doc))  # JSON is YAML
        for i in range(rounds):
            for k in SWEEP_WORKERS:  # alternating: both see the same spells of a shared machine
                runs[k].append(_sweep_once(Path(tmp), sweep, k, f"bench-{k}-{i}"))
    for r in (r for rs in runs.values() for r in rs):
        assert r["census"]["finished"] == trials and r["census"]["failed"] == 0, r
    tpm = {k: statistics.median(trials / r["wall_seconds"] * 60 for r in rs) for k, rs in runs.items()}
    cmd_s = {k: statistics.median(r["command_seconds"] for r in rs) for k, rs in runs.items()}
    cores = os.cpu_count()
    return Row(
        "10. sweep trials per minute, 1 vs 2 workers",
        f"{tpm[2]:.1f} trials/min (2 workers)",
        f"{tpm[1]:.1f} trials/min (1 worker)",
        tpm[2] / tpm[1],
        "2 workers faster than 1 on this machine (ratio > 1)",
        "python -m benchmarks.run --rows sweep",
        [
            f"`funcae sweep` of {trials} trials of configs/smoke.yaml's model ({n:,} curves x 64 points, {epochs} "
            "epochs, lr drawn at random: the same work in every trial), embedded SQLite storage, no pruning; each "
            f"trial is a whole run: training, test metrics, latent model{' and the 4 default figures' if full else ''}",
            f"torch threads split: 1 worker with {cores} threads, 2 workers with {max(1, (cores or 1) // 2)} each "
            "(spawned processes; their start-up is inside the measured time)",
            f"trials/min from the sweep's own wall time (workers' start to end); the whole command (imports, "
            f"results and Optuna's figures included) took {cmd_s[1]:.1f} s with 1 worker, {cmd_s[2]:.1f} s with 2",
            f"medians of {rounds} round(s), the two alternating",
        ],
    )
