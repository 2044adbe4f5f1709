"""One training step: forward, loss and gradients into the flat gradient buffer.

Two implementations of `Step`, `step(x_in, x, kl_weight, gen) -> StepLosses`:

- `AutogradStep`: any model, any loss, through autograd.
- `MLPStep`: a hand-written forward and backward for plain MLP autoencoders (linear layers with
  tanh or relu between them, no dropout) under a squared-error loss. Every activation lives in a
  buffer allocated once, every matrix product writes into its destination (`out=`), and the loss
  gradient is formed in place on the output buffer. On a 2-core CPU this removes the autograd
  graph, ~90 tensor allocations per step and two passes over the (batch, n_points) output; the
  epoch of the notebook-000 model drops ~1.5x (`make bench` row 2). Gradients equal autograd's to
  float32 rounding (tests/test_steps.py).

`engines.select_step` picks among these and the native step (native/step.py).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import numpy as np
import torch
from torch import Tensor, nn

from funcae_cli.config import TrainConfig
from funcae_cli.models import AE
from funcae_cli.training.losses import BATCH_LOSSES, SQUARED_ERROR, weight_penalty
from funcae_cli.training.optim import FlatParams


class StepLosses(NamedTuple):
    """Detached scalars of one step: `loss` is recon + kl_weight * kl, `total` adds the weight penalty."""

    loss: Tensor
    recon: Tensor
    kl: Tensor
    total: Tensor


class Step:
    """The interface of a training step. The trainer binds the training set once, then per batch calls
    `gather` and the step on what it returned."""

    name: str

    def bind(self, x_train: Tensor) -> None:
        """Called once before training with the tensor every batch is gathered from; a step may compute
        per-row values there once (the native step: squared row norms)."""

    def gather(self, x_train: Tensor, rows: Tensor, out: Tensor) -> Tensor:
        """The batch x_train[rows], written into `out`; the trainer passes what this returns to the step.
        A step may start its work in the same pass over the rows (the native step does)."""
        return torch.index_select(x_train, 0, rows, out=out)

    def __call__(self, x_in: Tensor, x: Tensor, kl_weight: float, gen: torch.Generator | None) -> StepLosses:
        raise NotImplementedError


class AutogradStep(Step):
    name = "autograd"

    def __init__(self, model: nn.Module, t: TrainConfig, flat: FlatParams):
        self.model, self.t, self.flat = model, t, flat
        self.batch_loss = BATCH_LOSSES[t.loss]

    def __call__(self, x_in: Tensor, x: Tensor, kl_weight: float, gen: torch.Generator | None) -> StepLosses:
        o = self.model(x_in, gen)
        recon = self.batch_loss(o.recon, x, self.t)
        kl = o.kl.mean() if o.kl is not None else torch.zeros((), device=x.device)
        loss = recon + kl_weight * kl
        penalty = weight_penalty(self.model, self.t.weight_penalty)
        total = loss if penalty is None else loss + penalty
        self.flat.zero_grad()
        total.backward()
        return StepLosses(loss.detach(), recon.detach(), kl.detach(), total.detach())


# Activations the MLP step differentiates by hand: an in-place forward, and the product of the
# incoming gradient with the derivative written from the activation's *output* y, in place on g.
ActPair = tuple[Callable[[Tensor], Tensor], Callable[[Tensor, Tensor], Tensor]]
ACTIVATION_GRADS: dict[type[nn.Module], ActPair] = {
    nn.Tanh: (torch.tanh_, lambda g, y: torch.ops.aten.tanh_backward.grad_input(g, y, grad_input=g)),
    nn.ReLU: (torch.relu_, lambda g, y: torch.ops.aten.threshold_backward.grad_input(g, y, 0.0, grad_input=g)),
}


def _numpy_tanh_(y: Tensor) -> Tensor:
    a = y.numpy()
    np.tanh(a, out=a)
    return y


# CPU forwards that beat torch's kernel: numpy's SIMD float32 tanh takes 1.9 us for a 256x16 block
# where torch.tanh_ takes 9 us (6 us vs 23 us at 256x64), within 1.4 ulp of the exact value (torch's:
# 0.5 ulp); tests/test_steps.py holds it to torch's within 2 ulp.
CPU_FORWARDS: dict[type[nn.Module], Callable[[Tensor], Tensor]] = {nn.Tanh: _numpy_tanh_}


def activation_pair(act: type[nn.Module], device: torch.device) -> ActPair:
    forward, backward = ACTIVATION_GRADS[act]
    return (CPU_FORWARDS.get(act, forward) if device.type == "cpu" else forward), backward


class _Layer(NamedTuple):
    linear: nn.Linear
    act: type[nn.Module] | None  # activation applied to this layer's output


class Planned(NamedTuple):
    """One layer of the MLP step: parameter and gradient views, activation pair, buffers."""

    weight: Tensor
    weight_t: Tensor  # transposed view for the forward product
    bias: Tensor
    grad_weight: Tensor  # views into the flat gradient
    grad_bias: Tensor
    act: ActPair | None
    out: Tensor  # (batch, out_features): this layer's output
    grad_in: Tensor  # (batch, in_features): d loss / d this layer's input
    grad_out_t: Tensor  # (out_features, batch): transposed view of d loss / d this layer's output


def _link(layers: list[Planned]) -> list[Planned]:
    """Point each layer at the buffer holding the gradient of its output: the next layer's grad_in,
    or for the last layer its own output buffer (which becomes the residual)."""
    grads = [nxt.grad_in for nxt in layers[1:]] + [layers[-1].out]
    return [layer._replace(grad_out_t=g.t()) for layer, g in zip(layers, grads)]


def mlp_chain(model: nn.Module) -> list[_Layer] | str:
    """The AE as one chain of linear layers and activations, or the reason it is not one."""
    if not isinstance(model, AE):
        return f"model kind {model.args.kind!r} is not a plain autoencoder"
    layers: list[_Layer] = []
    for part in (model.encoder, model.decoder):
        for m in part.modules():
            if list(m.children()) or isinstance(m, nn.Identity):
                continue
            if isinstance(m, nn.Linear):
                layers.append(_Layer(m, None))
            elif type(m) in ACTIVATION_GRADS and layers and layers[-1].act is None:
                layers[-1] = _Layer(layers[-1].linear, type(m))
            else:
                return f"layer {type(m).__name__} has no hand-written gradient"
    return layers


class MLPStep(Step):
    name = "mlp"

    def __init__(self, model: nn.Module, t: TrainConfig, flat: FlatParams, batch: int):
        chain = mlp_chain(model)
        if isinstance(chain, str):
            raise ValueError(chain)
        self.model, self.chain, self.t, self.flat, self.batch = model, chain, t, flat, batch
        self.squared = SQUARED_ERROR[t.loss]
        w = next(model.parameters())
        new = lambda cols: torch.empty((batch, cols), dtype=w.dtype, device=w.device)  # noqa: E731
        self.plan = _link([
            Planned(
                lin.weight.detach(), lin.weight.detach().t(), lin.bias.detach(), lin.weight.grad, lin.bias.grad,
                activation_pair(act, w.device) if act is not None else None, new(lin.out_features),
                new(lin.in_features), w.new_empty(0),
            )
            for lin, act in chain
        ])  # fmt: skip
        self._short: dict[int, list[Planned]] = {}  # plans over the first rows of the buffers, by batch size
        self._zero = torch.zeros((), dtype=w.dtype, device=w.device)

    def _plan(self, rows: int) -> list[Planned]:
        """The plan for a batch of `rows` (an epoch's short last batch uses the buffers' first rows)."""
        if rows == self.batch:
            return self.plan
        if rows not in self._short:
            cut = [p._replace(out=p.out[:rows], grad_in=p.grad_in[:rows]) for p in self.plan]
            self._short = {rows: _link(cut)}
        return self._short[rows]

    @torch.no_grad()
    def __call__(self, x_in: Tensor, x: Tensor, kl_weight: float, gen: torch.Generator | None) -> StepLosses:
        nb, n_points = x.shape
        plan = self._plan(nb)
        h = x_in
        for layer in plan:
            torch.addmm(layer.bias, h, layer.weight_t, out=layer.out)
            if layer.act is not None:
                layer.act[0](layer.out)
            h = layer.out
        divisor, const = self.squared(nb, n_points, self.t)
        diff = h.sub_(x).view(-1)  # the output buffer becomes the residual: a linear last layer needs no output
        recon = torch.dot(diff, diff).mul_(1.0 / divisor)
        if const:
            recon.add_(const)
        alpha = 2.0 / divisor  # d loss / d output = alpha * residual: alpha is folded into the products
        for i in range(len(plan) - 1, -1, -1):
            layer = plan[i]
            torch.addmm(layer.grad_weight, layer.grad_out_t, plan[i - 1].out if i else x_in, beta=0, alpha=alpha,
                        out=layer.grad_weight)  # fmt: skip
            g = layer.grad_out_t.t()
            torch.sum(g, 0, out=layer.grad_bias)
            if alpha != 1.0:
                layer.grad_bias.mul_(alpha)
            if i == 0:
                break
            torch.addmm(layer.grad_in, g, layer.weight, beta=0, alpha=alpha, out=layer.grad_in)
            act = plan[i - 1].act
            if act is not None:
                act[1](layer.grad_in, plan[i - 1].out)
            alpha = 1.0
        return StepLosses(recon, recon, self._zero, self._penalize(plan, recon))

    def _penalize(self, plan: list[Planned], recon: Tensor) -> Tensor:
        """Add the weight penalty's gradient (gamma * mean(W^2) per layer: 2 gamma W / numel); the total loss."""
        gamma = self.t.weight_penalty
        if not gamma:
            return recon
        for layer in plan:
            layer.grad_weight.add_(layer.weight, alpha=2.0 * gamma / layer.weight.numel())
        return recon + weight_penalty(self.model, gamma)
