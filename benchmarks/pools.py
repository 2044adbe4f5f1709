"""mcmc's pools side by side: validate's curves inverted in separate calls of `--chunk` targets (each call's slow
targets run to the end alone, as validate did before its pools) and in one call (ensemble.sample: pools, whose slow
targets continue together after a quarter of the step cap). Prints the two wall times, their ratio, and whether every
target's quantiles, steps and unconverged flag are the same both ways (they must be: a target's chain is its own).

    python -m benchmarks.pools RUN [--n 500] [--chunk 250] [--threads 2] [--set KEY=VALUE ...] [--json F]

RUN: a trained run of a family with a formula (its network, where trained, is mcmc's proposal as in `validate`);
--set: invert options (e.g. max_steps=2000). 500 rotation_curve_observed curves take ~18 min on 2 cores.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
import yaml

from funcae_cli.config import override
from funcae_cli.data.grids import sample_params
from funcae_cli.device import flush_denormals
from funcae_cli.inversion.invert import invert_batch
from funcae_cli.inversion.simulate import NoiseModel, simulate
from funcae_cli.inversion.targets import pad
from funcae_cli.jobs.amortize import flow_for
from funcae_cli.jobs.fitted import latent_model_for
from funcae_cli.store.rundir import RunDir
from funcae_cli.store.trained import load_trained


def main(argv: list[str] | None = None) -> int:
    flush_denormals()  # as `funcae` does at start
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("run")
    ap.add_argument("--n", type=int, default=500)
    ap.add_argument("--chunk", type=int, default=250, help="targets per call the old way (validate's former chunk)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="an invert option (repeatable)")
    ap.add_argument("--json", default="", help="also write the figures to this file")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    trained = load_trained(RunDir(Path(args.run)), torch.device("cpu"))
    sets = dict(s.split("=", 1) for s in args.set)
    inv = override(trained.cfg.invert, {k: yaml.safe_load(v) for k, v in sets.items()}, "invert")
    inv = replace(inv, seed=trained.cfg.seed, posterior="mcmc")
    flow = flow_for(RunDir(Path(args.run)), "mcmc", inv.proposal)
    o = trained.cfg.validate  # validate's curves: its prior draws and observation model
    truth = sample_params(trained.cfg.family, args.n, torch.Generator().manual_seed(trained.cfg.seed + 17)).numpy()
    noise = NoiseModel(points=tuple(o.points), frac=(o.noise, o.noise))
    obs = simulate(trained.family, trained.cfg.family.options, trained.grid.numpy(), truth, noise, trained.cfg.seed,
                   "sim")  # fmt: skip
    lm, _ = latent_model_for(trained)
    out = {}
    for way in ("calls", "pooled"):
        t0 = time.perf_counter()
        if way == "calls":
            parts = [invert_batch(trained, pad(obs[a : a + args.chunk], "calls"), inv, lm, flow).posterior
                     for a in range(0, args.n, args.chunk)]  # fmt: skip
        else:
            parts = [invert_batch(trained, pad(obs, "pooled"), inv, lm, flow).posterior]
        seconds = time.perf_counter() - t0
        keys = parts[0].quantiles
        out[way] = {"seconds": seconds, "q": {k: np.concatenate([p.quantiles[k] for p in parts]) for k in keys},
                    "steps": np.concatenate([p.steps for p in parts]),
                    "unconverged": np.concatenate([p.unconverged for p in parts])}  # fmt: skip
        r = out[way]
        print(f"{way}: {seconds:.1f} s, {int(r['unconverged'].sum())} unconverged, steps median "
              f"{np.median(r['steps']):.0f}, max {r['steps'].max()}", file=sys.stderr, flush=True)  # fmt: skip
    a, b = out["calls"], out["pooled"]
    same = (all(np.array_equal(a["q"][k], b["q"][k]) for k in a["q"]) and np.array_equal(a["steps"], b["steps"])
            and np.array_equal(a["unconverged"], b["unconverged"]))  # fmt: skip
    rec = {"run": args.run, "n": args.n, "chunk": args.chunk, "threads": args.threads, "options": sets,
           "calls_s": a["seconds"], "pooled_s": b["seconds"], "ratio": a["seconds"] / b["seconds"],
           "identical": bool(same), "unconverged": int(b["unconverged"].sum())}  # fmt: skip
    print(
        f"{args.n} curves: in calls of {args.chunk} {rec['calls_s']:.1f} s, in one call (pools) "
        f"{rec['pooled_s']:.1f} s: {rec['ratio']:.2f}x; every target's quantiles, steps and flag the same: {same}"
    )
    if args.json:
        Path(args.json).write_text(json.dumps(rec, indent=1))
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())
