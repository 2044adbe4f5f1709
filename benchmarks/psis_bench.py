"""PSIS for a catalogue: funcae's batched psis (inversion/psis.py) on 100,000 targets x 500 draws, beside ArviZ's
psislw (a loop over targets in numpy) on a subset, rates compared.

    python -m benchmarks.psis_bench [--targets 100000] [--draws 500] [--arviz-targets 2000]
"""

from __future__ import annotations

import argparse
import time
import warnings

import numpy as np
import torch

from funcae_cli.inversion.psis import psis


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--targets", type=int, default=100_000)
    ap.add_argument("--draws", type=int, default=500)
    ap.add_argument("--arviz-targets", type=int, default=2000)
    a = ap.parse_args()
    rng = np.random.default_rng(0)
    lw = rng.standard_t(3.0, (a.targets, a.draws)) * rng.uniform(0.1, 2.0, (a.targets, 1))
    t0, c0 = time.perf_counter(), time.process_time()
    _, k = psis(torch.as_tensor(lw))
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    print(f"funcae psis: {a.targets:,} x {a.draws}: {wall:.2f} s wall, {cpu:.2f} s CPU ({torch.get_num_threads()} "
          f"threads), {a.targets / wall:,.0f} targets/s; median k-hat {float(k.median()):.3f}")  # fmt: skip
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        import arviz as az
    sub = lw[: a.arviz_targets].copy()
    t0 = time.perf_counter()
    az.psislw(sub)
    ref = time.perf_counter() - t0
    print(f"arviz psislw: {len(sub):,} x {a.draws}: {ref:.2f} s wall, {len(sub) / ref:,.0f} targets/s; "
          f"funcae / arviz rate: {(a.targets / wall) / (len(sub) / ref):.1f}x")  # fmt: skip


if __name__ == "__main__":
    main()
