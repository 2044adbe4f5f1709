"""The MLP training step with its narrow middle in native code (CPU).

`MLPStep` runs every layer through torch. For a curve AE that is five wide products (n_points in
or out, MKL on all cores) and ~40 tiny ones between them (hidden widths of 16, a latent of 2),
whose cost on the CPU is dispatch: ~6 us each, whatever their size. `NativeMLPStep` keeps the wide
first and last layers in torch and hands everything between them to two calls into
funcae_cli/native/mlp.c, one forward and one backward; a third call does the loss pass of the last
layer (residual, sum of squares and bias gradient in one sweep instead of three).

Inside the chain, activations are feature-major `(width, batch)` buffers owned by this step; the
wide layers read and write them through transposed views, in the layouts MKL runs fastest
(measured: batch-major `x @ W^T` beats `W @ x^T` by ~25%). Gradients match autograd's to float32
rounding, and the tanh is within 1.3 ulp of the exact value (tests/test_native.py).

Used where `native_problem` finds nothing wrong: a plain MLP AE (see `steps.mlp_chain`), on the
CPU, with middle layers at most `MAX_WIDTH` wide, and kernels that compiled.
"""

from __future__ import annotations

import ctypes

import torch
from torch import Tensor, nn

from funcae_cli import native
from funcae_cli.config import TrainConfig
from funcae_cli.optim import FlatParams
from funcae_cli.steps import MLPStep, StepLosses, mlp_chain

# Middle layers wider than this stay in torch. The kernels run one core near its FMA rate, MKL runs
# two: for a [w, w, w] AE the kernels' forward + backward take 67 us at w = 16, 212 us at w = 32
# (the epoch still ~10% faster than `mlp`) and 775 us at w = 64 (slower than `mlp`).
MAX_WIDTH = 32
ACT_CODES: dict[type[nn.Module] | None, int] = {None: 0, nn.Tanh: 1, nn.ReLU: 2}  # mlp.c's ACT_*


def native_problem(model: nn.Module, device: torch.device) -> str | None:
    """Why the native step cannot train this model here, or None."""
    if device.type != "cpu":
        return f"the native kernels run on the CPU, not {device.type}"
    chain = mlp_chain(model)
    if isinstance(chain, str):
        return chain
    if len(chain) < 2:
        return "it needs at least two linear layers"
    if any(layer.linear.weight.dtype != torch.float32 for layer in chain):
        return "the native kernels are float32 only"
    wide = [layer.linear.out_features for layer in chain[:-1] if layer.linear.out_features > MAX_WIDTH]
    if wide:
        return f"a middle layer is {wide[0]} wide (the native kernels take up to {MAX_WIDTH})"
    try:
        native.kernels()
    except native.NativeUnavailable as e:
        return str(e)
    return None


def _pointers(tensors: list[Tensor]) -> ctypes.Array:
    return (ctypes.c_void_p * max(len(tensors), 1))(*[t.data_ptr() for t in tensors])


class NativeMLPStep(MLPStep):
    name = "native"

    def __init__(self, model: nn.Module, t: TrainConfig, flat: FlatParams, batch: int):
        problem = native_problem(model, next(model.parameters()).device)
        if problem is not None:
            raise ValueError(problem)
        super().__init__(model, t, flat, batch)
        self.lib = native.kernels()
        first, middle = self.plan[0], self.plan[1:-1]
        dims = [first.out.shape[1]] + [p.out.shape[1] for p in middle]
        new = lambda rows: torch.empty((rows, batch), dtype=torch.float32)  # noqa: E731
        self.h = [new(d) for d in dims]  # feature-major activations of the chain
        width = max(dims[1:], default=1)
        self.g0, self.s0, self.s1 = new(dims[0]), new(width), new(width)
        self.k = len(middle)
        self.args = (
            (ctypes.c_int64 * len(dims))(*dims),
            _pointers([p.weight for p in middle]),
            _pointers([p.bias for p in middle]),
            _pointers(self.h),
            _pointers([p.grad_weight for p in middle]),
            _pointers([p.grad_bias for p in self.plan[:-1]]),
            (ctypes.c_int32 * len(dims))(*[ACT_CODES[layer.act] for layer in self.chain[:-1]]),
        )

    @torch.no_grad()
    def __call__(self, x_in: Tensor, x: Tensor, kl_weight: float, gen: torch.Generator | None) -> StepLosses:
        x_in, x = x_in.contiguous(), x.contiguous()
        nb, n_points = x.shape
        plan = self._plan(nb)
        first, last = plan[0], plan[-1]
        dims, weights, biases, h, grad_weights, grad_biases, acts = self.args
        lib, ld = self.lib, self.batch
        torch.addmm(first.bias, x_in, first.weight_t, out=first.out)
        lib.fae_chain_forward(self.k, nb, ld, dims, weights, biases, h, acts, first.out.data_ptr())
        hk = self.h[-1][:, :nb].t()  # (nb, width) view of the chain's output
        torch.addmm(last.bias, hk, last.weight_t, out=last.out)
        divisor, const = self.squared(nb, n_points, self.t)
        alpha = 2.0 / divisor  # d loss / d output = alpha * residual
        sq = lib.fae_residual(last.out.data_ptr(), x.data_ptr(), nb, n_points, last.grad_bias.data_ptr(), alpha)
        torch.addmm(last.grad_weight, last.out.t(), hk, beta=0, alpha=alpha, out=last.grad_weight)
        torch.addmm(last.grad_in, last.out, last.weight, beta=0, alpha=alpha, out=last.grad_in)
        lib.fae_chain_backward(
            self.k, nb, ld, dims, weights, h, grad_weights, grad_biases, acts, last.grad_in.data_ptr(),
            self.g0.data_ptr(), self.s0.data_ptr(), self.s1.data_ptr(),
        )  # fmt: skip
        torch.addmm(first.grad_weight, self.g0[:, :nb], x_in, beta=0, out=first.grad_weight)
        recon = torch.scalar_tensor(sq / divisor + const, dtype=torch.float32)
        return StepLosses(recon, recon, self._zero, self._penalize(plan, recon))
