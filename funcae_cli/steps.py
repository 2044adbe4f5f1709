"""One training step: forward, loss and gradients into the flat gradient buffer.

Two implementations behind one call signature, `step(x_in, x, kl_weight, gen) -> StepLosses`:

- `AutogradStep`: any model, any loss, through autograd.
- `MLPStep`: a hand-written forward and backward for plain MLP autoencoders (linear layers with
  tanh or relu between them, no dropout) under a squared-error loss. Every activation lives in a
  buffer allocated once, every matrix product writes into its destination (`out=`), and the loss
  gradient is formed in place on the output buffer. On a 2-core CPU this removes the autograd
  graph, ~90 tensor allocations per step and two passes over the (batch, n_points) output; the
  epoch of the notebook-000 model drops ~1.5x (`make bench` row 2). Gradients equal autograd's to
  float32 rounding (tests/test_steps.py).

`select_step` picks the MLP step when the model and config allow it (`train.engine: auto`) and
says why not otherwise.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import torch
from torch import Tensor, nn

from funcae_cli.config import TrainConfig
from funcae_cli.losses import BATCH_LOSSES, SQUARED_ERROR, weight_penalty
from funcae_cli.models import AE
from funcae_cli.optim import FlatParams


class StepLosses(NamedTuple):
    """Detached scalars of one step: `loss` is recon + kl_weight * kl, `total` adds the weight penalty."""

    loss: Tensor
    recon: Tensor
    kl: Tensor
    total: Tensor


class AutogradStep:
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
ACTIVATION_GRADS: dict[type[nn.Module], tuple[Callable[[Tensor], Tensor], Callable[[Tensor, Tensor], Tensor]]] = {
    nn.Tanh: (torch.tanh_, lambda g, y: torch.ops.aten.tanh_backward.grad_input(g, y, grad_input=g)),
    nn.ReLU: (torch.relu_, lambda g, y: torch.ops.aten.threshold_backward.grad_input(g, y, 0.0, grad_input=g)),
}


class _Layer(NamedTuple):
    linear: nn.Linear
    act: type[nn.Module] | None  # activation applied to this layer's output


class _Planned(NamedTuple):
    """One layer of the MLP step: parameter and gradient views, activation pair, buffers."""

    weight: Tensor
    weight_t: Tensor  # transposed view for the forward product
    bias: Tensor
    grad_weight: Tensor  # views into the flat gradient
    grad_bias: Tensor
    act: tuple[Callable[[Tensor], Tensor], Callable[[Tensor, Tensor], Tensor]] | None
    out: Tensor  # (batch, out_features): this layer's output
    grad_in: Tensor  # (batch, in_features): d loss / d this layer's input


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


class MLPStep:
    name = "mlp"

    def __init__(self, model: nn.Module, t: TrainConfig, flat: FlatParams, batch: int):
        chain = mlp_chain(model)
        if isinstance(chain, str):
            raise ValueError(chain)
        self.model, self.t, self.flat, self.batch = model, t, flat, batch
        self.squared = SQUARED_ERROR[t.loss]
        w = next(model.parameters())
        new = lambda cols: torch.empty((batch, cols), dtype=w.dtype, device=w.device)  # noqa: E731
        self.plan = [
            _Planned(
                lin.weight.detach(), lin.weight.detach().t(), lin.bias.detach(), lin.weight.grad, lin.bias.grad,
                ACTIVATION_GRADS[act] if act is not None else None, new(lin.out_features), new(lin.in_features),
            )
            for lin, act in chain
        ]  # fmt: skip

    @torch.no_grad()
    def __call__(self, x_in: Tensor, x: Tensor, kl_weight: float, gen: torch.Generator | None) -> StepLosses:
        nb, n_points = x.shape
        full = nb == self.batch  # every batch but an epoch's last: use the buffers without slicing
        inputs = [x_in]
        h = x_in
        for layer in self.plan:
            out = layer.out if full else layer.out[:nb]
            torch.addmm(layer.bias, h, layer.weight_t, out=out)
            if layer.act is not None:
                layer.act[0](out)
            inputs.append(out)
            h = out
        divisor, const = self.squared(nb, n_points, self.t)
        scale = 1.0 / divisor
        diff = h.sub_(x).view(-1)  # the output buffer becomes the residual: a linear last layer needs no output
        recon = torch.dot(diff, diff).mul_(scale).add_(const)
        g, alpha = h, 2.0 * scale  # d loss / d output = alpha * residual: alpha is folded into the products
        for i in range(len(self.plan) - 1, -1, -1):
            layer = self.plan[i]
            torch.addmm(layer.grad_weight, g.t(), inputs[i], beta=0, alpha=alpha, out=layer.grad_weight)
            torch.sum(g, 0, out=layer.grad_bias)
            if alpha != 1.0:
                layer.grad_bias.mul_(alpha)
            if i == 0:
                break
            g_prev = layer.grad_in if full else layer.grad_in[:nb]
            torch.addmm(g_prev, g, layer.weight, beta=0, alpha=alpha, out=g_prev)
            act = self.plan[i - 1].act
            if act is not None:
                act[1](g_prev, inputs[i])
            g, alpha = g_prev, 1.0
        total = recon
        gamma = self.t.weight_penalty
        if gamma:  # gamma * mean(W^2) per layer: gradient 2 gamma W / numel
            for layer in self.plan:
                layer.grad_weight.add_(layer.weight, alpha=2.0 * gamma / layer.weight.numel())
            total = recon + weight_penalty(self.model, gamma)
        return StepLosses(recon, recon, torch.zeros((), device=x.device), total)


def select_step(model: nn.Module, t: TrainConfig, flat: FlatParams, batch: int) -> AutogradStep | MLPStep:
    if t.engine == "auto" and not isinstance(mlp_chain(model), str):
        return MLPStep(model, t, flat, batch)
    return AutogradStep(model, t, flat)
