"""`make bench`: funcae against notebook-style code, side by side in one process, ratios printed.

    python -m benchmarks.run [--scale 1.0] [--repeats 3] [--rows gen,epoch,...] [--out BENCHMARKS.md]

Every row times both sides back to back on the same machine and reports the median of `--repeats`.
`--scale` shrinks the problem sizes (tests use a tiny scale so this code cannot rot).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from benchmarks import baselines
from benchmarks.amortized_bench import bench_amortized
from benchmarks.inversion_bench import bench_inversion
from benchmarks.observed_bench import bench_observed, bench_one_call, bench_posterior
from benchmarks.report import Row
from benchmarks.sweep_bench import bench_sweep
from funcae_cli.config import load_config
from funcae_cli.data.dataset import generate
from funcae_cli.data.normalize import split_sizes
from funcae_cli.device import flush_denormals
from funcae_cli.native import kernels as native
from funcae_cli.training.engine_choice import time_engines
from funcae_cli.training.engines import ENGINES, candidates
from funcae_cli.training.evaluation import test_metrics
from funcae_cli.training.loop import Trainer
from funcae_cli.training.prepared import prepare

REPO = Path(__file__).resolve().parents[1]
CONFIGS = REPO / "configs"


def _seconds_in_fresh_process(code: str) -> float:
    """Run `code` (which sets t0 before the timed work) in a new interpreter, return the seconds."""
    prog = (
        "import time; from funcae_cli.device import flush_denormals; flush_denormals(); "
        f"{code}; print('SECONDS', time.perf_counter() - t0)"
    )
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    r = subprocess.run([sys.executable, "-c", prog], check=True, cwd=REPO, env=env, capture_output=True, text=True)
    return float(next(ln.split()[1] for ln in r.stdout.splitlines() if ln.startswith("SECONDS")))


def _normal_cfg(overrides: list[str]):
    return load_config(CONFIGS / "normal.yaml", overrides)


# --- rows -----------------------------------------------------------------------------------


def bench_generation(scale: float, repeats: int) -> Row:
    n = max(int(100_000 * scale), 100)
    cfg = _normal_cfg([f"data.n={n}"])
    assert generate(cfg, n=100).curves.shape == baselines.notebook_generate_normal(100).shape  # same problem
    # Each side in its own fresh process, alternating: in one long process the side that runs second
    # pays for the first side's memory (page faults on this VM cost ~3x more after another 400 MB
    # array was allocated), which is not what a user running either one sees.
    sides = {
        "funcae": f"from benchmarks.run import _normal_cfg; from funcae_cli.data.dataset import generate; "
        f"cfg = _normal_cfg(['data.n={n}']); t0 = time.perf_counter(); generate(cfg)",
        "notebook": f"from benchmarks.baselines import notebook_generate_normal as g; t0 = time.perf_counter(); g({n})",
        "torch loop": f"from benchmarks.baselines import notebook_generate_normal as g; t0 = time.perf_counter(); "
        f"g({n}, verbatim=False)",
    }
    times: dict[str, list[float]] = {k: [] for k in sides}
    for i in range(repeats):
        for name, code in sides.items():
            if name != "torch loop" or i < max(1, repeats // 2):
                times[name].append(_seconds_in_fresh_process(code))
    t_f, t_b, t_t = (statistics.median(times[k]) for k in sides)
    return Row(
        "1. generate normal curves",
        f"{t_f:.3f} s ({n:,} x 1000)",
        f"{t_b:.3f} s (per-curve loop)",
        t_b / t_f,
        ">= 20x; funcae < 1.5 s at full size",
        "python -m benchmarks.run --rows gen",
        [
            "notebook side: notebook 000's loop and expression verbatim (np.exp / np.sqrt applied to torch "
            "tensors, torch.distributions samplers, one curve per iteration)",
            "each side timed in its own fresh process (imports not counted), the sides alternating",
            f"the same loop with torch operations in place of numpy's: {t_t:.3f} s, {t_t / t_f:.1f}x funcae's time",
            "funcae evaluates in float64 (rounded once to float32); the notebook computes in float32",
        ],
    )


def _trainer_for(cfg, ds, **callbacks):

    prep = prepare(cfg, ds, torch.device("cpu"))
    return Trainer(cfg, prep, torch.device("cpu"), **callbacks)


def _epoch_flops(layers: list[tuple[int, int]], n_train: int, n_val: int) -> float:
    """FLOPs of one epoch: per training curve 2 i o for each layer's forward, 2 i o for its weight gradient and
    2 i o for its input gradient (none for the first layer); per validation curve the forward."""
    fwd = sum(2 * i * o for i, o in layers)
    return n_train * (3 * fwd - 2 * layers[0][0] * layers[0][1]) + n_val * fwd


def _matmul_rate(shapes: list[tuple[int, int, int]], repeats: int = 200) -> float:
    """The best float32 FLOP/s of torch.mm over `shapes` (m, k, n), each timed over `repeats` products."""
    best = 0.0
    for m, k, n in shapes:
        a, b = torch.randn(m, k), torch.randn(k, n)
        out = torch.empty(m, n)
        for _ in range(10):
            torch.mm(a, b, out=out)
        t0 = time.perf_counter()
        for _ in range(repeats):
            torch.mm(a, b, out=out)
        best = max(best, 2 * m * k * n * repeats / (time.perf_counter() - t0))
    return best


def bench_epoch(scale: float, repeats: int) -> Row:
    """Same model (hidden 16, tanh, latent 2), same data, batch 256, Adam: one epoch each."""

    n = max(int(100_000 * scale), 600)
    base = [f"data.n={n}", "data.normalize=none", "model.hidden=[16,16,16]", "model.activation=tanh",
            "train.batch_size=256", "train.epochs=1", "train.scheduler.name=exponential", "train.lr=1e-3"]  # fmt: skip
    cfg = _normal_cfg(base)
    named = {e: _normal_cfg([*base, f"train.engine={e}"]) for e in ("native", "mlp")}
    ds = generate(cfg)
    sizes = split_sizes(n, cfg.data.val_fraction, cfg.data.test_fraction)
    X = ds.curves[sizes.train].clone()
    n_train, n_points = X.shape
    choices = {}

    def ours(c=cfg):
        tr = _trainer_for(c, generate(c))
        choices[c.train.engine] = tr.engine_choice
        t0 = time.perf_counter()
        tr.run()
        return time.perf_counter() - t0

    def theirs():
        t0 = time.perf_counter()
        baselines.NotebookTraining(X).epoch()
        return time.perf_counter() - t0

    sides = [ours, *(lambda c=c: ours(c) for c in named.values()), theirs]
    [side() for side in sides]  # warm-up, not counted: first-call initialization of kernels and allocator
    runs = [[side() for side in sides] for _ in range(repeats)]  # interleaved: same machine state
    t_f, t_native, t_mlp, t_b = (statistics.median(r[i] for r in runs) for i in range(len(sides)))
    fastest_f, fastest_b = min(r[0] for r in runs), min(r[-1] for r in runs)

    tr = _trainer_for(cfg, generate(cfg))
    layers = [(m.in_features, m.out_features) for m in tr.model.modules() if isinstance(m, torch.nn.Linear)]
    flops = _epoch_flops(layers, n_train, len(range(n)[sizes.val]))
    wide = [(256, n_points, 16), (16, 256, n_points), (256, 16, n_points)]  # the epoch's products over the points
    rate, peak = _matmul_rate(wide), _matmul_rate([(1024, 1024, 1024)], repeats=5)
    names = candidates(tr.model, torch.device("cpu"))
    t0 = time.perf_counter()
    step_s = time_engines(names, lambda e, m, f: ENGINES[e].build(m, cfg.train, f, 256), tr.model, cfg.train, 256, X)
    choice_cost = time.perf_counter() - t0
    chosen = choices["auto"]
    return Row(
        "2. one training epoch (notebook 000 model)",
        f"{t_f:.3f} s",
        f"{t_b:.3f} s (Dataset/DataLoader loop)",
        t_b / t_f,
        ">= 3x",
        "python -m benchmarks.run --rows epoch",
        [
            f"{n_train:,} training curves x 1000 points, unnormalized as in the notebook, batch 256; funcae's "
            "epoch includes its validation pass (the notebook's has none); one warm-up round, then the sides "
            "alternate",
            f"funcae's step engine: {chosen.engine} (train.engine=auto: {chosen.reason})",
            f"each engine's epoch: native {t_native:.3f} s ({t_b / t_native:.1f}x the notebook), mlp {t_mlp:.3f} s "
            f"({t_b / t_mlp:.1f}x), auto {t_f:.3f} s ({t_b / t_f:.1f}x); auto's timing of {', '.join(names)} "
            f"took {choice_cost:.2f} s here (once per CPU and shape; then cached), per step: "
            + ", ".join(f"{e} {1e3 * s:.2f} ms" for e, s in step_s.items()),
            f"compute limit: one epoch is {flops / 1e9:.1f} GFLOP (forward + backward, validation forward); at "
            f"torch.mm's best rate on the epoch's wide shapes ({rate / 1e9:.1f} GFLOP/s; {peak / 1e9:.1f} GFLOP/s "
            f"on 1024^3) that is {flops / rate:.3f} s ({flops / peak:.3f} s): auto's epoch is "
            f"{t_f / (flops / rate):.1f}x the limit at the wide shapes' rate",
            f"medians of {len(runs)} rounds; the fastest round of each side: funcae {fastest_f:.3f} s, notebook "
            f"{fastest_b:.3f} s ({fastest_b / fastest_f:.1f}x). Both sides slow down when a neighbour takes CPU "
            "time: with a process busy 50% of each 10 ms pinned to one core (2026-11-22), funcae's epoch grew "
            "1.6x and the notebook loop's 1.8x",
            "both sides run with denormals flushed (funcae sets it at start; the notebook side shares the "
            "process): the normal pdf's float32 tails hold denormals that slow every matmul reading them",
        ],
    )


def bench_quality(scale: float, repeats: int, threshold: float = 0.0072) -> Row:
    """Seconds for configs/normal.yaml to reach per-curve SSE <= threshold vs the notebook's 200 epochs."""

    n = max(int(100_000 * scale), 600)
    over = [f"data.n={n}"] + ([] if scale >= 1 else ["train.epochs=3"])
    cfg = _normal_cfg(over)
    # Notebook side: a few epochs of its loop, extrapolated to its 200, each run right after one of
    # funcae's epochs 1, 4, 7, 10 (outside funcae's timed epochs), so that both sides see the same
    # spells of this shared machine.
    ds = generate(cfg)
    X = ds.curves[split_sizes(n, cfg.data.val_fraction, cfg.data.test_fraction).train].clone()  # raw curves
    nb = baselines.NotebookTraining(X)
    nb_times: list[float] = []
    after: list[int] = []
    k = 4 if scale >= 1 else 1

    def interleave(row: dict) -> None:
        if row["epoch"] % 3 == 1 and len(nb_times) < k:
            t0 = time.perf_counter()
            nb.epoch()
            nb_times.append(time.perf_counter() - t0)
            after.append(row["epoch"])

    tr = _trainer_for(cfg, ds, on_epoch=interleave)  # normalizes ds in place; X is a copy
    state = tr.run()
    elapsed, reached_epoch = 0.0, None
    for row in state.history:
        elapsed += row["seconds"]
        if row["val_sse"] <= threshold:
            reached_epoch = row["epoch"]
            break
    test = test_metrics(tr.model, tr.prep, cfg)
    per_epoch = statistics.median(nb_times)
    t_b = per_epoch * 200
    notes = [
        f"notebook: its first {len(nb_times)} epochs, run after funcae's epochs {', '.join(map(str, after))}, took "
        f"{', '.join(f'{t:.2f}' for t in nb_times)} s; their median extrapolated to its 200 epochs",
        f"funcae: final test per-curve SSE {test['sse_mean']:.5f} after {len(state.history)} epochs "
        f"({state.wall_seconds:.1f} s); PCA-2 {test['pca']['sse_mean']:.4f}",
    ]
    if reached_epoch is None:
        funcae = f"not reached in {state.wall_seconds:.1f} s"
        cmd = "python -m benchmarks.run --rows quality"
        return Row("3. time to notebook quality (SSE <= 0.0072)", funcae, f"{t_b:.0f} s", None, ">= 20x", cmd, notes)
    notes.insert(0, f"funcae reached val per-curve SSE <= {threshold} at epoch {reached_epoch}")
    return Row(
        "3. time to notebook quality (SSE <= 0.0072)",
        f"{elapsed:.1f} s",
        f"{t_b:.0f} s (extrapolated)",
        t_b / elapsed,
        ">= 20x; <= 90 s",
        "python -m benchmarks.run --rows quality",
        notes,
    )


_PEAK_WRAPPER = """
import sys
from funcae_cli.cli import main
try:
    code = main(sys.argv[1:])
finally:
    # VmHWM is this process's own peak RSS since exec (getrusage would also count the
    # pre-exec fork of a large parent), read from /proc.
    hwm = [ln for ln in open("/proc/self/status") if ln.startswith("VmHWM")][0].split()[1]
    print("PEAK_KIB", hwm, file=sys.stderr)
sys.exit(code)
"""


def bench_memory(scale: float, repeats: int) -> Row:
    """Peak RSS of `funcae train configs/normal.yaml` (2 epochs: the peak is reached in the first)."""
    n = max(int(100_000 * scale), 600)
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [sys.executable, "-c", _PEAK_WRAPPER, "train", str(CONFIGS / "normal.yaml"), "--run-dir", f"{tmp}/run",
               "--set", f"data.n={n}", "--set", "train.epochs=2", "-q", "--no-plots"]  # fmt: skip
        env = {**os.environ, "PYTHONPATH": str(REPO)}
        r = subprocess.run(cmd, check=True, cwd=tmp, env=env, capture_output=True, text=True)
    peak_kib = int(next(ln.split()[1] for ln in r.stderr.splitlines() if ln.startswith("PEAK_KIB")))
    peak = peak_kib / 1024**2
    data_gib = n * 1000 * 4 / 1024**3
    return Row(
        "5. peak memory of `funcae train configs/normal.yaml`",
        f"{peak:.2f} GiB",
        "1.50 GiB (target)",
        1.5 / peak,
        "<= 1.5 GiB (ratio = target / peak, >= 1 meets it)",
        "python -m benchmarks.run --rows memory",
        [f"the float32 data alone is {data_gib:.2f} GiB; peak RSS (VmHWM) of the training process, 2 epochs"],
    )


FAMILY_CONFIGS = ["normal.yaml", "beta_vae.yaml", "rotation_curve.yaml", "rotation_curve_vae.yaml"]


def bench_pca(scale: float, repeats: int) -> Row:
    """Per-curve test SSE of the AE against PCA with as many components, on every shipped family config."""

    lines = []
    ratios = []
    for name in FAMILY_CONFIGS:
        cfg = load_config(CONFIGS / name, [] if scale >= 1 else ["data.n=600", "train.epochs=2"])
        tr = _trainer_for(cfg, generate(cfg))
        tr.run()
        m = test_metrics(tr.model, tr.prep, cfg)
        ratio = m["pca"]["sse_mean"] / m["sse_mean"]
        ratios.append(ratio)
        lines.append(
            f"{name}: AE ({cfg.model.kind}, latent {cfg.model.latent_dim}) {m['sse_mean']:.4g} vs "
            f"PCA-{m['pca']['components']} {m['pca']['sse_mean']:.4g} -> PCA/AE = {ratio:.1f}x"
        )
    return Row(
        "6. AE vs PCA (same components), per-curve test SSE",
        "see notes",
        "see notes",
        float(np.exp(np.mean(np.log(ratios)))),
        "AE below PCA (ratio = geometric mean of PCA/AE)",
        "python -m benchmarks.run --rows pca",
        lines,
    )


def bench_observed_row(scale: float, repeats: int) -> Row:
    return bench_observed(scale, min(repeats, 3))


def bench_one_call_row(scale: float, repeats: int) -> Row:
    return bench_one_call(scale, min(repeats, 3))


ROWS: dict[str, Callable[[float, int], Row]] = {
    "gen": bench_generation,
    "epoch": bench_epoch,
    "quality": bench_quality,
    "invert": bench_inversion,
    "memory": bench_memory,
    "pca": bench_pca,
    "observed": bench_observed_row,
    "one_call": bench_one_call_row,
    "posterior": bench_posterior,
    "sweep": bench_sweep,
    "amortized": bench_amortized,
}


def native_info() -> str:
    """How funcae's native kernels were built here, or why they are not in use."""

    try:
        lib = native.kernels()
    except native.NativeUnavailable as e:
        return f"unavailable ({e}); rows 2 and 3 then run torch-only steps"
    version = subprocess.run([*native.compiler(), "--version"], capture_output=True, text=True).stdout
    flags = " ".join(f for f in native.flags(lib.threaded) if f not in ("-shared", "-fPIC"))
    return f"`{' '.join(native.compiler())} {flags}` ({version.splitlines()[0] if version else 'unknown version'})"


def machine() -> dict[str, str]:
    return {
        "native": native_info(),
        "date": dt.date.today().isoformat(),
        "cpu": platform.processor() or platform.machine(),
        "cores": str(os.cpu_count()),
        "torch": str(torch.__version__),
        "threads": str(torch.get_num_threads()),
        "python": platform.python_version(),
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none",
    }


def render(rows: list[Row], info: dict[str, str], argv: list[str]) -> str:
    out = [
        "# Benchmarks",
        "",
        f"Measured {info['date']} on {info['cores']} cores ({info['cpu']}), torch {info['torch']} with "
        f"{info['threads']} threads, Python {info['python']}, CUDA: {info['cuda']}; native kernels: {info['native']}.",
        f"Reproduce: `make bench` (this file came from `python -m benchmarks.run {' '.join(argv)}`).",
        "Each row runs both sides back to back (row 1: each side in a fresh process), alternating where it"
        " repeats; times are medians of the repeats.",
        "On a shared 2-core VM single rows vary between runs (seen on 2026-11-22: row 1 24-30x, row 2 3.6-4.0x"
        " with the gather and first product in one pass, 2.7-3.3x before it, row 3 22-25x); compare ratios from"
        " one run, not timings across runs.",
        "",
        "| row | funcae | notebook-style | ratio | target |",
        "| --- | --- | --- | --- | --- |",
    ]
    for r in rows:
        ratio = "n/a" if r.ratio is None else f"{r.ratio:.1f}x"
        out.append(f"| {r.name} | {r.funcae} | {r.baseline} | {ratio} | {r.target} |")
    out.append("")
    for r in rows:
        if r.notes:
            out.append(f"**{r.name}** (`{r.command}`)")
            out.extend(f"- {n}" for n in r.notes)
            out.append("")
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:

    flush_denormals()  # as `funcae` does at start; the notebook side's timed epochs are early, denormal-free
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--scale", type=float, default=1.0, help="problem size factor (1 = the issue's sizes)")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--rows", default=",".join(ROWS), help=f"comma-separated subset of {','.join(ROWS)}")
    ap.add_argument("--out", default="BENCHMARKS.md", help="markdown report ('' for none)")
    args = ap.parse_args(argv)
    names = [r.strip() for r in args.rows.split(",") if r.strip()]
    unknown = [n for n in names if n not in ROWS]
    if unknown:
        ap.error(f"unknown rows {unknown}; choose from {list(ROWS)}")
    rows = []
    for name in names:
        print(f"running {name} ...", file=sys.stderr, flush=True)
        row = ROWS[name](args.scale, args.repeats)
        rows.append(row)
        ratio = "n/a" if row.ratio is None else f"{row.ratio:.1f}x"
        print(
            f"{row.name}: funcae {row.funcae} | baseline {row.baseline} | ratio {ratio} | target {row.target}",
            flush=True,
        )
        for n in row.notes:
            print(f"    {n}", flush=True)
    if args.out:
        Path(args.out).write_text(render(rows, machine(), argv if argv is not None else sys.argv[1:]) + "\n")
        print(f"wrote {args.out}", file=sys.stderr)
    print(json.dumps({r.name: r.ratio for r in rows}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
