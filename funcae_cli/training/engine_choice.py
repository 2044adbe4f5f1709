"""`train.engine: auto` on the CPU: time the engines that can train the model, keep the fastest, cache it.

Which step engine is fastest depends on the CPU, its load and the model's shape: on one Xeon the native
kernels beat the torch-only `mlp` step by ~1.4x on the notebook-000 model, on another machine (or the same
one under load) `mlp` took ~0.6x native's time (BENCHMARKS.md row 2). So `auto` measures instead of assuming:

- the candidates (every engine that can train the model) each get a step built on a deep copy of the model
  and its own flat buffers, so the run's weights, gradients and optimizer are never touched;
- the batch is `batch` rows of the run's own training curves (the real shape and values: denormals in the
  data slow products), in an order from a private generator; the run's generators (torch's global one and
  the noise generator) draw nothing, so a run is the same bits whichever engine wins or whether the choice
  was cached (tests/test_engine_choice.py);
- each round runs one gather + step of every engine, in an order that rotates round to round, so a spell
  of load on this shared machine falls on all of them alike; `WARMUP_ROUNDS` are not counted (first-call
  allocation, MKL's kernel selection), then rounds until `ROUNDS` or `BUDGET_SECONDS`; an engine's time
  is the median of its rounds. An engine whose fastest step is `DROP_SLOWER` times the best median stops
  (autograd's first ~10 steps can take 0.3 s each on a loaded machine). The optimizer's update is the
  same code for all engines: not timed.
- the winner is cached in `engines.json` in the kernels' cache folder (native/kernels.py: `$FUNCAE_CACHE_DIR`,
  default ~/.cache/funcae), keyed by the CPU (model name and feature flags), torch's version and thread
  count, the candidates and the shape (layers, activations, batch, noise, loss): a second run with the same
  key reads it and times nothing. The file is rewritten atomically; a damaged one is timed over.

The choice (`EngineChoice`) says which engine, why, and each candidate's seconds per step;
`funcae train` prints the reason and `--json` carries it (`engine_choice`).
"""

from __future__ import annotations

import copy
import datetime as dt
import hashlib
import json
import statistics
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from funcae_cli.config import TrainConfig
from funcae_cli.files import atomic_write_json
from funcae_cli.native import kernels as native
from funcae_cli.training.losses import CORRUPTIONS
from funcae_cli.training.optim import FlatParams
from funcae_cli.training.steps import Step

WARMUP_ROUNDS = 3  # first calls allocate and pick kernels: mlp 195 ms, 16 ms, then 0.2 ms on a loaded VM
ROUNDS = 9  # timed rounds at most; the median of them is each engine's time
MIN_ROUNDS = 3  # timed rounds at least, unless one round alone would take BUDGET_SECONDS
BUDGET_SECONDS = 0.6  # wall time of the timed rounds (all engines together), after warm-up
DROP_SLOWER = 3.0  # an engine whose fastest timed step is this many times the best median runs no more rounds
CACHE_FILE = "engines.json"
CACHE_VERSION = 1
TIMING_SEED = 0  # the private generator's seed: the timing batch's rows, input noise


@dataclass
class EngineChoice:
    engine: str
    reason: str
    timed: bool = False  # whether the candidates were timed (now or, when cached, in an earlier run)
    cached: bool = False  # whether the choice came from the cache file, with nothing timed now
    seconds: dict[str, float] = field(default_factory=dict)  # median seconds per step, by engine
    cache: str | None = None  # the cache file

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# (engine name, model copy, its flat buffers) -> a step of that engine
Builder = Callable[[str, nn.Module, FlatParams], Step]


def cache_path() -> Path:
    return native.cache_dir() / CACHE_FILE


def _cpu_identity() -> str:
    """The CPU's model name and feature flags (/proc/cpuinfo), else the platform's name for it."""
    name = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith(("model name", "Model")) and not name:
                name = line.split(":", 1)[1].strip()
    except OSError:
        pass
    return f"{name} | {native._cpu_fingerprint()}"


def shape_of(model: nn.Module, t: TrainConfig, batch: int) -> dict[str, Any]:
    """What the step's cost depends on, besides the machine: layers in order, batch, input noise, loss."""
    layers = [
        [type(m).__name__, *((m.in_features, m.out_features) if isinstance(m, nn.Linear) else ())]
        for m in model.modules()
        if not list(m.children()) and not isinstance(m, nn.Identity)
    ]
    dtype = str(next(model.parameters()).dtype)
    return {"layers": layers, "batch": batch, "noise": t.noise.kind, "loss": t.loss, "dtype": dtype}


def cache_key(candidates: list[str], shape: dict[str, Any]) -> str:
    kernels = ""
    if "native" in candidates:  # new kernels or flags deserve a new timing
        kernels = native.library_path(getattr(native.kernels(), "threaded", False)).name
    ident = {
        "cpu": _cpu_identity(),
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "kernels": kernels,
        "candidates": candidates,
        "shape": shape,
    }
    return hashlib.sha256(json.dumps(ident, sort_keys=True).encode()).hexdigest()[:24]


def _read_cache(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    if not isinstance(data, dict) or data.get("version") != CACHE_VERSION or not isinstance(data.get("choices"), dict):
        return {}
    return data["choices"]


def _write_cache(path: Path, key: str, entry: dict[str, Any]) -> bool:
    """Add `entry` under `key` (re-reading the file first: another run may have added its own); False if the
    folder cannot be written (the choice then holds for this run only)."""
    choices = _read_cache(path)
    choices[key] = entry
    try:
        atomic_write_json(path, {"version": CACHE_VERSION, "choices": choices})
    except OSError:
        return False
    return True


def _timing_batch(sample: Tensor, batch: int, t: TrainConfig) -> tuple[Tensor, Tensor, torch.Generator]:
    """(source rows, the rows to gather, a private generator): up to 4 batches of the run's curves."""
    gen = torch.Generator().manual_seed(TIMING_SEED)
    source = sample[: 4 * batch].contiguous()
    rows = torch.randperm(source.shape[0], generator=gen)[:batch].to(source.device)
    if rows.shape[0] < batch:  # fewer curves than a batch: the trainer's batch is then all of them
        rows = torch.arange(batch, device=source.device) % source.shape[0]
    return source, rows, gen


def time_engines(
    names: list[str], build: Builder, model: nn.Module, t: TrainConfig, batch: int, sample: Tensor
) -> dict[str, float]:
    """Median seconds of one gather + step of each engine (see the module docstring for how it is fair)."""
    source, rows, gen = _timing_batch(sample, batch, t)
    steps = {}
    for name in names:
        twin = copy.deepcopy(model)
        steps[name] = build(name, twin, FlatParams(twin))
        steps[name].bind(source)
    buf = torch.empty((batch, source.shape[1]), dtype=source.dtype, device=source.device)
    corrupt = CORRUPTIONS[t.noise.kind]
    times: dict[str, list[float]] = {name: [] for name in names}
    racing = list(names)
    rounds, spent, r = WARMUP_ROUNDS + ROUNDS, 0.0, 0
    while r < rounds:
        t_round = time.perf_counter()
        for i in range(len(racing)):
            name = racing[(r + i) % len(racing)]
            step = steps[name]
            t0 = time.perf_counter()
            x = step.gather(source, rows, buf)
            x_in = corrupt(x, t.noise, gen)  # the same for every engine, but what the step reads
            step(x_in, x, t.kl_weight, gen)
            times[name].append(time.perf_counter() - t0)
        r += 1
        seconds = time.perf_counter() - t_round
        if r == WARMUP_ROUNDS and seconds > BUDGET_SECONDS:
            rounds = WARMUP_ROUNDS + 1  # one round costs the whole budget: time one round only
        if r > WARMUP_ROUNDS:
            spent += seconds
            medians = {n: statistics.median(times[n][WARMUP_ROUNDS:]) for n in racing}
            best = min(medians.values())
            racing = [n for n in racing if min(times[n][WARMUP_ROUNDS:]) <= DROP_SLOWER * best]
            if spent >= BUDGET_SECONDS and r - WARMUP_ROUNDS >= MIN_ROUNDS:
                break
    return {name: statistics.median(ts[WARMUP_ROUNDS:]) for name, ts in times.items()}


def _listing(seconds: dict[str, float]) -> str:
    return ", ".join(f"{name} {1e3 * s:.2f} ms" for name, s in sorted(seconds.items(), key=lambda kv: kv[1]))


def measured_choice(
    names: list[str], build: Builder, model: nn.Module, t: TrainConfig, batch: int, sample: Tensor
) -> EngineChoice:
    """The fastest of `names` (at least two) on this CPU for this shape: from the cache, else timed now."""
    shape = shape_of(model, t, batch)
    key, path = cache_key(names, shape), cache_path()
    hit = _read_cache(path).get(key)
    if isinstance(hit, dict) and hit.get("engine") in names and isinstance(hit.get("seconds"), dict):
        seconds = {k: float(v) for k, v in hit["seconds"].items()}
        return EngineChoice(
            hit["engine"],
            f"fastest per step on this CPU and shape when timed {hit.get('when', '')} ({_listing(seconds)}; "
            f"cached in {path})",
            timed=True, cached=True, seconds=seconds, cache=str(path),
        )  # fmt: skip
    seconds = time_engines(names, build, model, t, batch, sample)
    engine = min(names, key=lambda n: (seconds[n], names.index(n)))
    when = dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    entry = {"engine": engine, "seconds": seconds, "when": when, "cpu": _cpu_identity()[:200], "shape": shape,
             "threads": torch.get_num_threads()}  # fmt: skip
    saved = _write_cache(path, key, entry)
    where = f"cached in {path}" if saved else f"not cached: {path.parent} cannot be written"
    return EngineChoice(
        engine,
        f"fastest per step, timed now on this CPU with batch {batch} ({_listing(seconds)}; {where})",
        timed=True, cached=False, seconds=seconds, cache=str(path) if saved else None,
    )  # fmt: skip
