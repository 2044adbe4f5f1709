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
    Space,
    checkpoint_payload,
    flow_args,
    net_from_checkpoint,
    train_flow,
)
from funcae_cli.inversion.flow_spaces import FormulaSpace, LatentSpace
from funcae_cli.inversion.objective import log_grid
from funcae_cli.jobs.common import open_run, run_info
from funcae_cli.jobs.fitted import latent_model_for
from funcae_cli.store.checkpoint import load_checkpoint, save_checkpoint
from funcae_cli.store.rundir import RunDir
from funcae_cli.store.trained import Trained


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
    state = load_checkpoint(rd.amortized) if rd.amortized.exists() else None
    if state is not None and (force or state["config"] != _as_dict(cfg)):
        state = None  # retrain: asked to, or the settings changed
    elif state is not None and state["done"]:
        raise InputError(f"{rd.amortized} is already trained with these settings; --force trains it again")
    space = space_for(trained)
    sim = Simulator(space, flow_args(space, trained.grid, log_grid(trained), cfg), cfg)
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


def space_for(trained: Trained) -> Space:
    """What the run's posterior network is over (inversion/flow_spaces.py): a formula family's parameters, or a
    data-only family's latent codes (its training codes' density the prior, the decoder the simulator)."""
    fam = trained.family
    if fam.has_formula and fam.params:
        return FormulaSpace.of(trained)
    lm, _ = latent_model_for(trained)
    return LatentSpace(trained, lm.density, lm.predict if trained.param_names else None)


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
