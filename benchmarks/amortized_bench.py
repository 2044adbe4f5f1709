"""Row 11: N observed rotation curves -> 500 amortized posterior draws each and their quantiles, in one
`funcae invert --posterior amortized` process (issue 23: N = 100,000 in <= 60 s wall, <= 120 s with the importance
check, peak memory <= 4 GiB), beside mcmc's per-target rate on a subset, and the flow's compute bound.

The curves: configs/rotation_curve_observed.yaml's family and priors, 10-40 irregular points each over part of
0.1-80 kpc, relative errors 2-10% (inversion/simulate.py's observation model). The run: a small AE of that config
(the amortized path uses only its encoder and regressor: `--method encoder --no-physics`) and a posterior network
trained briefly by `funcae amortize`. The unchecked cost depends on the flow's architecture, not on how long it
trained; the checked cost does: a target whose flow draws pass on fewer than ESS_MIN effective draws is weighed
again from a pool 2-8x larger, one that fails gets the third look (amortized.py), and a better-trained flow sends
fewer there. The full-scale figures in BENCHMARKS.md are on a run of the config as shipped; calibration is
`funcae validate --posterior amortized`'s business.
"""

from __future__ import annotations

import json
import math
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from benchmarks.observed import GRID, Galaxy, write_long_csv
from benchmarks.report import Row
from funcae_cli.config import load_config
from funcae_cli.config.families import FAMILIES, RotationOptions
from funcae_cli.inversion.amortized import CHUNK_ELEMENTS, ESS_MIN
from funcae_cli.inversion.physics import natural_bounds
from funcae_cli.inversion.simulate import NoiseModel, family_values, observation_points, observe
from funcae_cli.jobs.amortize import load_flow, run_amortize
from funcae_cli.jobs.train import run_train
from funcae_cli.store.rundir import RunDir
from funcae_cli.store.trained import load_trained

REPO = Path(__file__).resolve().parents[1]
CONFIG = REPO / "configs" / "rotation_curve_observed.yaml"
NOISE = NoiseModel(points=(10, 40), frac=(0.02, 0.1), floor=0.01, min_span=0.3)
DRAWS = 500
TARGET_S, TARGET_CHECK_S, TARGET_GIB = 60.0, 120.0, 4.0
FULL_N = 100_000
CHUNK_TARGETS = CHUNK_ELEMENTS // (DRAWS * 40)  # amortized_posterior's chunk on this row's curves (40 points)
PEAK = """
import sys
from funcae_cli.cli import main
try:
    code = main(sys.argv[1:])
finally:  # VmHWM: this process's own peak resident memory since exec
    hwm = [ln for ln in open("/proc/self/status") if ln.startswith("VmHWM")][0].split()[1]
    print("PEAK_KIB", hwm, file=sys.stderr)
sys.exit(code)
"""


def curves(n: int, seed: int, low: np.ndarray, high: np.ndarray, path: Path) -> int:
    """n galaxies with log-uniform parameters inside the prior, observed by NOISE, as a long CSV; its points."""
    rng = np.random.default_rng(seed)
    params = 10.0 ** rng.uniform(low, high, (n, 4))
    xs = observation_points(GRID, True, NOISE, rng, n)
    values = family_values(FAMILIES["rotation_curve"], RotationOptions(prior="independent"), xs, params)
    obs = observe(values, xs, NOISE, rng, [f"g{i:06d}" for i in range(n)])
    write_long_csv([Galaxy(o, "family", p) for o, p in zip(obs, params)], path)
    return sum(o.x.size for o in obs)


def train(scale: float, root: Path) -> tuple[RunDir, float]:
    """The AE run and its posterior network; the network's training seconds."""
    small = ["data.n=2000", "train.epochs=2", "model.hidden=[32,32]"]
    over = small if scale < 0.05 else ["data.n=6000", "train.epochs=12", "model.hidden=[64,64]"]
    rd = RunDir(root / "rot")
    run_train(load_config(CONFIG, over), rd, "cpu", force=True, plots=False)
    budget = {"epochs": 1, "steps": 5, "batch_size": 32} if scale < 0.05 else {"epochs": 10, "steps": 100}
    return rd, run_amortize(rd, budget)["seconds"]


def invert(rd: RunDir, csv: Path, cwd: Path, *extra: str) -> tuple[float, float, dict]:
    """One `funcae invert` process: wall seconds (exec to exit), peak GiB (VmHWM) and its record."""
    cmd = [sys.executable, "-c", PEAK, "invert", "--run", str(rd.root), "--curves", str(csv), "--no-plot",
           "--name", "bench", *extra]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    t0, cpu0 = time.perf_counter(), _children_cpu()
    r = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if r.returncode != 0:
        raise RuntimeError(r.stderr[-3000:])
    peak = int(next(ln.split()[1] for ln in r.stderr.splitlines() if ln.startswith("PEAK_KIB"))) / 1024**2
    rec = json.loads(rd.invert_json("bench").read_text())
    rec["cpu_seconds"] = _children_cpu() - cpu0
    return wall, peak, rec


def _children_cpu() -> float:
    """User + system CPU seconds of this process's finished children: on a shared machine a figure that other
    processes' load inflates less than the wall's."""
    ru = resource.getrusage(resource.RUSAGE_CHILDREN)
    return ru.ru_utime + ru.ru_stime


def flow_products(rd: RunDir, columns: int = 26_000, repeats: int = 10) -> tuple[float, float, float]:
    """The flow's per-draw products (flow_sampling.py: weight (rows, cols) @ activations (cols, draws)): their
    multiply-adds per draw, torch.mm's FLOP/s on exactly those shapes on one core (`columns` draws at a time, ~ one
    chunk), and zuko's own sampling's multiply-adds per draw (every pass and the log-determinant's, context
    included)."""
    net = load_flow(rd)
    weights = [layer.weight for plan in net.sampler().plans for grp in plan.groups for layer in grp.layers]
    acts = [torch.randn(w.shape[1], columns) for w in weights]
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # one core's rate: two threads on a shared machine wait on each other (~10x slower)
    try:
        for w, a in zip(weights, acts):
            w @ a
        t0 = time.perf_counter()
        for _ in range(repeats):
            for w, a in zip(weights, acts):
                w @ a
        seconds = time.perf_counter() - t0
    finally:
        torch.set_num_threads(threads)
    macs = sum(w.numel() for w in weights)
    rate = 2 * macs * columns * repeats / seconds
    zuko = 0
    for t in net.flow.transform.transforms:  # `passes` evaluations of the hyper network, and one for the ladj
        zuko += (getattr(t, "passes", 0) + 1) * sum(m.weight.numel() for m in t.hyper if isinstance(m, torch.nn.Linear))
    return float(macs), rate, float(zuko)


def chunk_seconds(rd: RunDir, targets: int = CHUNK_TARGETS, repeats: int = 10) -> float:
    """Seconds per draw of the flow's inverse (flow_sampling.FlowSampler.sample) on one chunk of `targets` x DRAWS
    draws on one core: products and element-wise arithmetic together, as the unchecked row runs them (two chunks at
    once on two cores: inversion/threads.py)."""
    net = load_flow(rd)
    sampler, gen = net.sampler(), torch.Generator().manual_seed(0)
    context = torch.randn(targets, net.args.embed, generator=gen)
    eps = torch.randn(targets, DRAWS, net.args.q, generator=gen)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        sampler.sample(context, eps)
        t0 = time.perf_counter()
        for _ in range(repeats):
            sampler.sample(context, eps)
        return (time.perf_counter() - t0) / (repeats * targets * DRAWS)
    finally:
        torch.set_num_threads(threads)


def matmul_rate(rows: int = 32_000, width: int = 64, repeats: int = 20) -> float:
    """float32 FLOP/s of torch.mm on a wide product, (rows, width) @ (width, width), with torch's threads."""
    a, b = torch.randn(rows, width), torch.randn(width, width)
    torch.mm(a, b)
    t0 = time.perf_counter()
    for _ in range(repeats):
        torch.mm(a, b)
    return 2 * rows * width * width * repeats / (time.perf_counter() - t0)


def bench_amortized(scale: float, repeats: int) -> Row:
    with tempfile.TemporaryDirectory() as tmp:
        rd, train_s = train(scale, Path(tmp))
        return measure(rd, max(int(FULL_N * scale), 40), max(int(200 * scale), 4), train_s, Path(tmp))


def measure(rd: RunDir, n: int, n_mcmc: int, train_s: float, root: Path) -> Row:
    """The row for a trained run with a posterior network: n curves amortized, n_mcmc by mcmc."""
    trained = load_trained(rd, torch.device("cpu"))
    bounds = natural_bounds(trained, "prior")
    low, high = bounds.low.numpy(), bounds.high.numpy()
    csv, sub = root / "observed.csv", root / "subset.csv"
    points = curves(n, 2023, low, high, csv)
    curves(n_mcmc, 2024, low, high, sub)
    fast = ["--posterior", "amortized", "--draws", str(DRAWS), "--method", "encoder", "--no-physics"]
    wall, peak, rec = invert(rd, csv, root, *fast, "--no-check")
    wall_c, peak_c, rec_c = invert(rd, csv, root, *fast)
    quick = ["--steps", "60", "--burn", "20"] if n_mcmc < 20 else []  # tiny scale: the code runs, nothing is timed
    wall_m, _, rec_m = invert(rd, sub, root, "--posterior", "mcmc", *quick)
    floor = min(_seconds(["-c", "import torch, scipy.special, funcae_cli.cli"]) for _ in range(2))
    ours, rate, zuko = flow_products(rd)
    wide = matmul_rate()
    per_draw = chunk_seconds(rd)
    passes = load_flow(rd).args.passes
    factor = FULL_N / n
    k = np.array([t.get("k_hat", math.nan) for t in rec_c["targets"]], dtype=float)
    mcmc_rate = n_mcmc / rec_m["seconds"]
    amort_rate = n / rec_c["seconds"]
    cores = os.cpu_count() or 1
    bound = FULL_N * DRAWS * 2 * ours / (rate * cores)
    evals = rec_c["summary"]["posterior"]["flow_evaluations_mean"]
    scaled = "" if n == FULL_N else f" (N = {n:,}; x{factor:.0f}: {wall * factor:.0f} s, {wall_c * factor:.0f} s)"
    return Row(
        "11. amortized posteriors of observed curves, one `funcae invert` call",
        f"{wall:.1f} s wall, {wall_c:.1f} s checked{scaled}",
        f"{mcmc_rate:.2f} targets/s (mcmc)",
        amort_rate / mcmc_rate,
        f"100,000 x {DRAWS} draws: <= {TARGET_S:.0f} s, <= {TARGET_CHECK_S:.0f} s checked, <= {TARGET_GIB:.0f} GiB "
        "(ratio = amortized / mcmc targets per second, both checked)",
        "python -m benchmarks.run --rows amortized",
        [
            f"{n:,} simulated rotation curves (10-40 irregular points each, {points:,} in all, errors 2-10%) -> "
            f"{DRAWS} draws each + quantiles: `funcae invert --posterior amortized --method encoder --no-physics "
            f"--no-plot` (`--no-check` for the first figure), wall from exec to exit; the process's own record "
            f"says {rec['seconds']:.1f} s and {rec_c['seconds']:.1f} s checked (reading, writing and imports are the "
            f"rest; `import torch, scipy.special, funcae_cli.cli` alone takes {floor:.1f} s here)",
            f"full scale N = {FULL_N:,}: {wall * factor:.0f} s unchecked, {wall_c * factor:.0f} s checked "
            + ("(measured)" if n == FULL_N else f"(extrapolated linearly from N = {n:,})")
            + f"; CPU time of the processes {rec['cpu_seconds']:.1f} s and {rec_c['cpu_seconds']:.1f} s "
            f"({1e6 * rec['cpu_seconds'] / (n * DRAWS):.2f} and {1e6 * rec_c['cpu_seconds'] / (n * DRAWS):.2f} us "
            f"per draw; load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores at the end)",
            f"the importance check costs {wall_c - wall:.1f} s for {n:,} targets "
            f"({1e6 * (wall_c - wall) / (n * DRAWS):.2f} us per draw); k-hat < 0.7 for {100 * np.mean(k < 0.7):.0f}% "
            f"of targets (a flow trained for {train_s:.0f} s; calibration is `funcae validate`'s)",
            f"peak memory (VmHWM): {peak:.2f} GiB, {peak_c:.2f} GiB checked (target <= {TARGET_GIB:.0f} GiB at full "
            "scale; the draws kept in memory, 500 x 4 float32 per target, grow with N; their .npz is written only "
            "up to 256 MB, `--samples auto`)",
            f"mcmc on {n_mcmc} other curves of the same kind (`invert --posterior mcmc`, its defaults): "
            f"{rec_m['seconds']:.1f} s in the process's record, {wall_m:.1f} s wall; the amortized call replaces "
            f"{amort_rate / mcmc_rate:.0f}x mcmc's targets per second",
            f"compute bound: the flow's inverse (passes={passes}) costs {ours:,.0f} multiply-adds per draw in the "
            f"products that depend on the draw ({zuko:,.0f} in zuko's own sampling: every pass and the "
            f"log-determinant's, context included); torch.mm on those shapes runs {rate / 1e9:.1f} GFLOP/s on one "
            f"core here ({wide / 1e9:.1f} GFLOP/s on (32000 x 64) @ (64 x 64) with {torch.get_num_threads()} "
            f"threads), so 100,000 x {DRAWS} draws need >= {bound:.1f} s of products on {cores} cores; the rest of "
            "the sampling is the splines' element-wise arithmetic (~60 torch operations per transform over the "
            "chunk's draws, memory-bound) and, checked, the likelihood at every point",
            f"what bounds the unchecked time: the flow's inverse on one chunk ({DRAWS} draws of {CHUNK_TARGETS} "
            f"targets) takes {1e6 * per_draw:.2f} us per draw on one core, of it {1e6 * 2 * ours / rate:.2f} us of "
            "products and "
            f"{1e6 * (per_draw - 2 * ours / rate):.2f} us of element-wise arithmetic; {FULL_N:,} x {DRAWS} draws on "
            f"{cores} cores so need >= {FULL_N * DRAWS * per_draw / cores:.0f} s of sampling before reading, "
            "encoding and writing",
            f"what bounds the checked time: the check evaluated the flow {evals:,.0f} times per target on average "
            f"({evals / DRAWS:.1f}x the reported draws: the draws of the larger pools its targets of fewer than "
            f"{ESS_MIN} effective draws get, and the looks' pools and densities; each target's count is its "
            f"record's flow_evaluations), so {FULL_N:,} targets need >= {FULL_N * evals * per_draw / cores:.0f} s of "
            f"the flow on {cores} cores at the rate above (a density costs what a draw does: the same network and "
            "splines), before the likelihood and the smoothing of the weights",
        ],
    )


def _seconds(args: list[str]) -> float:
    t0 = time.perf_counter()
    subprocess.run([sys.executable, *args], check=True, cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)},
                   capture_output=True)  # fmt: skip
    return time.perf_counter() - t0
