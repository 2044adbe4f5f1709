"""Training-step engines, by name, and the choice among them (`train.engine`): which runs when, and why.

- `native` (native/step.py) runs when the model is a plain MLP AE (tanh or ReLU, no dropout) on the CPU with
  middle layers at most 32 wide (`MAX_WIDTH`) and the C kernels compiled (a C compiler; `FUNCAE_NATIVE` not
  0). Why: the ~40 tiny middle products of a curve AE cost dispatch, not arithmetic; two C calls per step do
  them, and without input noise the last layer runs in Gram form.
- `mlp` (steps.MLPStep) runs for a plain MLP AE on any device. Why: a hand-written forward and backward in
  torch ops, with no autograd graph and no allocation per step.
- `autograd` (steps.AutogradStep) runs anything else: VAEs, GELU, dropout, other losses' models.

`auto` (the default) takes the first of `AUTO_ORDER` that can train the model (`ENGINES[name].problem` says
why one cannot); naming an engine that cannot is a config error, raised before anything is written. All three
give the same training up to float32 rounding (tests/test_steps.py, tests/test_native.py).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import torch
from torch import nn

from funcae_cli.config import TrainConfig
from funcae_cli.errors import ConfigError
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


def engine_for(model: nn.Module, engine: str, device: torch.device) -> str:
    """The engine that will train `model`: `engine` itself, or for `auto` the first that can."""
    if engine == "auto":
        return next(name for name in AUTO_ORDER if ENGINES[name].problem(model, device) is None)
    problem = ENGINES[engine].problem(model, device)
    if problem is not None:
        raise ConfigError([f"train.engine: {engine!r} cannot train this model ({problem}); use auto"])
    return engine


def select_step(model: nn.Module, t: TrainConfig, flat: FlatParams, batch: int) -> Step:
    device = next(model.parameters()).device
    return ENGINES[engine_for(model, t.engine, device)].build(model, t, flat, batch)
