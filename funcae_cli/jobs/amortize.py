"""The `amortize` job: train a run's posterior network (inversion/amortized.py) from its own simulator and write
checkpoints/amortized.pt (atomic, weights_only; after every epoch, so an interrupted run resumes); load it for
`invert --posterior amortized` and `validate --posterior amortized`, and as mcmc's proposal (`flow_for`)."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict
from importlib.util import find_spec
from typing import Any

from funcae_cli.config import override
from funcae_cli.errors import InputError
from funcae_cli.inversion.amortized import (
    FlowTraining,
    PosteriorNet,
    Simulator,
    checkpoint_payload,
    flow_args,
    net_from_checkpoint,
    train_flow,
)
from funcae_cli.inversion.physics import natural_bounds
from funcae_cli.jobs.common import open_run, run_info
from funcae_cli.store.checkpoint import load_checkpoint, save_checkpoint
from funcae_cli.store.rundir import RunDir


def run_amortize(
    rd: RunDir,
    options: dict[str, Any] | None = None,
    force: bool = False,
    on_epoch: Callable[[dict[str, float]], None] | None = None,
) -> dict[str, Any]:
    """Train (or resume training) the posterior network; return a record: the run's facts, the options, history,
    seconds, file. options: AmortizedConfig fields over the run's `amortized` section (checked by its rules).
    A finished network is kept unless force; an unfinished one (an interrupted run) is resumed."""
    trained = open_run(rd, "cpu")
    cfg = override(trained.cfg.amortized, options or {}, "amortized")
    fam = trained.family
    if not fam.has_formula or not fam.params:
        raise InputError(f"{rd.root}: the {fam.name} family has no formula and prior to simulate from; amortize runs "
                         "of a family with a formula (normal, beta, rotation_curve)")  # fmt: skip
    state = load_checkpoint(rd.amortized) if rd.amortized.exists() else None
    if state is not None and (force or state["config"] != _as_dict(cfg)):
        state = None  # retrain: asked to, or the settings changed
    elif state is not None and state["done"]:
        raise InputError(f"{rd.amortized} is already trained with these settings; --force trains it again")
    bounds = natural_bounds(trained, "prior")
    log_x = bool(fam.x_log and float(trained.grid[0]) > 0)
    sim = Simulator(trained.cfg.family, bounds, flow_args(bounds, trained.grid, log_x, cfg), cfg)
    t0 = time.perf_counter()

    def save(run: FlowTraining) -> None:
        save_checkpoint(rd.amortized, checkpoint_payload(run, cfg, done=len(run.history) == cfg.epochs))
        if on_epoch:
            on_epoch(run.history[-1])

    run = train_flow(sim, cfg, trained.cfg.seed, state, save)
    rec = run_info(trained)
    rec.update(options=_as_dict(cfg), history=run.history, resumed_from=0 if state is None else len(state["history"]),
               seconds=time.perf_counter() - t0, files={"checkpoint": str(rd.amortized)})  # fmt: skip
    return rec


def _as_dict(cfg: Any) -> dict[str, Any]:
    return asdict(cfg)


def flow_for(rd: RunDir, posterior: str, proposal: str) -> PosteriorNet | None:
    """The run's posterior network where the inversion uses it: posterior amortized or auto (required), mcmc's
    proposal flow (required) or auto (where the run has a finished one and zuko is installed); else None."""
    if posterior in ("amortized", "auto") or (posterior == "mcmc" and proposal == "flow"):
        return load_flow(rd)  # exit 2 naming `funcae amortize`
    if posterior == "mcmc" and proposal == "auto" and find_spec("zuko") is not None:
        ckpt = _finished(rd)
        return None if ckpt is None else net_from_checkpoint(ckpt)
    return None


def load_flow(rd: RunDir) -> PosteriorNet:
    """The run's trained posterior network; InputError (exit 2) naming the command that trains one."""
    if not rd.amortized.exists():
        raise InputError(f"{rd.root}: no trained posterior network ({rd.amortized}); train one with "
                         f"`funcae amortize {rd.root}`")  # fmt: skip
    ckpt = _finished(rd)
    if ckpt is None:
        raise InputError(f"{rd.amortized}: the posterior network's training was interrupted; finish it with "
                         f"`funcae amortize {rd.root}`")  # fmt: skip
    return net_from_checkpoint(ckpt)


def _finished(rd: RunDir) -> dict[str, Any] | None:
    """The run's posterior network checkpoint where it exists and its training finished, else None."""
    if not rd.amortized.exists():
        return None
    ckpt = load_checkpoint(rd.amortized)
    return ckpt if ckpt.get("done") else None
