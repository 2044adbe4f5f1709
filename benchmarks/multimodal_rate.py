"""How often `multimodal` fires on simulated targets of a trained run, and what the MCMC posterior costs.

Draws parameters from the run's prior, simulates observed curves as `funcae validate` does (its noise model and
points), inverts them with `--posterior mcmc` at the run's invert defaults, and prints the targets flagged
`multimodal`, those with a dropped minor mode (< 1% of the mass), `unconverged`, the steps and the seconds.
On a family whose posteriors are unimodal (configs/smoke.yaml's normal) every flag is a false positive.

    python -m benchmarks.multimodal_rate RUN_DIR [--n 200] [--seed 1] [--set invert.KEY=VALUE ...]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch

from funcae_cli.config import override
from funcae_cli.data.grids import sample_params
from funcae_cli.inversion.invert import invert_batch
from funcae_cli.inversion.simulate import NoiseModel, simulate
from funcae_cli.inversion.targets import pad
from funcae_cli.jobs.fitted import latent_model_for
from funcae_cli.store.rundir import RunDir
from funcae_cli.store.trained import load_trained


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run", type=Path)
    ap.add_argument("--n", type=int, default=200)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--set", action="append", default=[], help="invert.KEY=VALUE over the run's invert section")
    a = ap.parse_args()
    trained = load_trained(RunDir(a.run), torch.device("cpu"))
    sets = {k.removeprefix("invert."): v for k, v in (s.split("=", 1) for s in a.set)}
    options = override(trained.cfg.invert, {"posterior": "mcmc", **{k: _value(v) for k, v in sets.items()}})
    v = trained.cfg.validate
    truth = sample_params(trained.cfg.family, a.n, torch.Generator().manual_seed(a.seed)).numpy()
    noise = NoiseModel(points=tuple(v.points), frac=(v.noise, v.noise))
    obs = simulate(trained.family, trained.cfg.family.options, trained.grid.numpy(), truth, noise, a.seed, "sim")
    lm, _ = latent_model_for(trained)
    t0 = time.perf_counter()
    res = invert_batch(trained, pad(obs, "sim"), options, lm)
    seconds = time.perf_counter() - t0
    post = res.posterior
    steps = np.asarray(post.steps)
    print(f"{a.run.name}: {a.n} simulated targets, mcmc ({options.walkers} walkers, {options.groups} ensembles, "
          f"steps {options.steps}): {seconds:.1f} s; steps median {np.median(steps):.0f}, "
          f"max {steps.max()}")  # fmt: skip
    print(f"unconverged: {int(post.unconverged.sum())} ({post.unconverged.mean():.1%})")
    if getattr(post, "multimodal", None) is not None:  # (absent before the modes were weighed)
        modes = np.isfinite(post.mode_weight).sum(axis=1)
        print(f"multimodal: {int(post.multimodal.sum())} ({post.multimodal.mean():.1%}); ensembles settled apart "
              f"(a minor mode < 1% dropped, not flagged): {int(((modes > 1) & ~post.multimodal).sum())}")  # fmt: skip
        for i in np.nonzero(modes > 1)[0][:20]:
            found = np.isfinite(post.mode_weight[i])
            print(f"  {res.assessment.flags[i]} target {i}: truth {truth[i].round(3).tolist()}, weights "
                  f"{np.round(post.mode_weight[i][found], 4).tolist()}, medians "
                  f"{post.mode_median[i][found].round(3).tolist()}")  # fmt: skip


def _value(text: str) -> int | str:
    return int(text) if text.isdigit() else text


if __name__ == "__main__":
    main()
