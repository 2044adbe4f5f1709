"""Training-step engines, by name, and the choice among them (`train.engine`): which runs when, and why.

- `native` (native/step.py) runs when the model is a plain MLP AE (tanh or ReLU, no dropout) on the CPU with
  middle layers at most 32 wide (`MAX_WIDTH`) and the C kernels compiled (a C compiler; `FUNCAE_NATIVE` not
  0). Why: the ~40 tiny middle products of a curve AE cost dispatch, not arithmetic; two C calls per step do
  them, and without input noise the last layer runs in Gram form.
- `mlp` (steps.MLPStep) runs for a plain MLP AE on any device. Why: a hand-written forward and backward in
  torch ops, with no autograd graph and no allocation per step.
- `autograd` (steps.AutogradStep) runs anything else: VAEs, GELU, dropout, other losses' models.

`auto` (the default) considers every engine of `AUTO_ORDER` that can train the model (`ENGINES[name].problem`
says why one cannot): on the CPU, where two or more can, it times a few steps of each on the run's batch and
keeps the fastest, cached per CPU and shape (engine_choice.py: which engine is fastest depends on the CPU and
its load); elsewhere, or given no training data, the first. Naming an engine that cannot is a config error,
raised before anything is written. All three give the same training up to float32 rounding
(tests/test_steps.py, tests/test_native.py).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import torch
from torch import Tensor, nn

from funcae_cli.config import TrainConfig
from funcae_cli.errors import ConfigError
from funcae_cli.training.engine_choice import EngineChoice, measured_choice
from funcae_cli.training.native.step import NativeMLPStep, native_problem
from funcae_cli.training.optim import FlatParams
from funcae_cli.training.steps import AutogradStep, MLPStep, Step, mlp_chain


def _mlp_problem(model: nn.Module, device: torch.device) -> str | None:
    chain = mlp_chain(model)
    return chain if isinstance(chain, str) else None


class Engine(NamedTuple):
    problem: Callable[[nn.Module, torch.device], str | None]  # why it cannot train the model, or None
    build: Callable[[nn.Module, TrainConfig, FlatParams, int], Step]


ENGINES: dict[str, Engine] = {
    "native": Engine(native_problem, NativeMLPStep),
    "mlp": Engine(_mlp_problem, MLPStep),
    "autograd": Engine(lambda model, device: None, lambda model, t, flat, batch: AutogradStep(model, t, flat)),
}
AUTO_ORDER = ("native", "mlp", "autograd")


def candidates(model: nn.Module, device: torch.device) -> list[str]:
    """The engines that can train `model` on `device`, in `AUTO_ORDER`."""
    return [name for name in AUTO_ORDER if ENGINES[name].problem(model, device) is None]


def engine_for(model: nn.Module, engine: str, device: torch.device) -> str:
    """`engine` itself if it can train `model` (else a ConfigError saying why); for `auto`, the first candidate
    (what `auto` takes where nothing is timed)."""
    if engine == "auto":
        return candidates(model, device)[0]
    problem = ENGINES[engine].problem(model, device)
    if problem is not None:
        raise ConfigError([f"train.engine: {engine!r} cannot train this model ({problem}); use auto"])
    return engine


def choose_engine(model: nn.Module, t: TrainConfig, batch: int, sample: Tensor | None = None) -> EngineChoice:
    """The engine that will train `model` on batches of `batch` rows of `sample` (the training curves), and why."""
    device = next(model.parameters()).device
    if t.engine != "auto":
        return EngineChoice(engine_for(model, t.engine, device), "named by train.engine")
    names = candidates(model, device)
    if len(names) == 1:
        others = "; ".join(f"{n}: {ENGINES[n].problem(model, device)}" for n in AUTO_ORDER if n not in names)
        return EngineChoice(names[0], f"the only engine that can train this model ({others})")
    if device.type != "cpu" or sample is None:
        why = "no training data given to time on" if sample is None else "engines are timed on the CPU only"
        return EngineChoice(names[0], f"first of {', '.join(names)} ({why})")

    def build(name: str, twin: nn.Module, flat: FlatParams) -> Step:
        return ENGINES[name].build(twin, t, flat, batch)

    return measured_choice(names, build, model, t, batch, sample)


def build_step(engine: str, model: nn.Module, t: TrainConfig, flat: FlatParams, batch: int) -> Step:
    return ENGINES[engine].build(model, t, flat, batch)


def select_step(model: nn.Module, t: TrainConfig, flat: FlatParams, batch: int, sample: Tensor | None = None) -> Step:
    return build_step(choose_engine(model, t, batch, sample).engine, model, t, flat, batch)
