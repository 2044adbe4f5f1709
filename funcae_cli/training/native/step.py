"""The MLP training step with its narrow middle in native code (CPU).

`MLPStep` runs every layer through torch. For a curve AE that is five wide products (n_points in
or out, MKL on all cores) and ~40 tiny ones between them (hidden widths of 16, a latent of 2),
whose cost on the CPU is dispatch: ~6 us each, whatever their size. `NativeMLPStep` hands everything
between the wide products to native/mlp.c: one call forward through the chain, one
backward. The wide products stay in torch, except the Gram form's first one (below).

When the target is the input itself (an AE without input noise), the last layer runs in Gram form
(mlp.c, "The last layer in Gram form"): its gradients and loss are written as products of x with
narrow matrices, so a step makes two products over x (x [W_first^T | W_last] and
[h_k; 1; g0] x) instead of five, and never forms the (batch, n_points) output. On the notebook-000
model that is ~15% of a step. The identities are exact; in float32 the Gram form's big terms cancel:
- the loss keeps about 1e-8 |x|^2 / |r|^2 of relative accuracy (measured 4e-5 relative to float64 on
  notebook 000's trained model, |x|^2 / |r|^2 ~ 2500). Where |r|^2 < EXACT_LOSS_BELOW |x|^2 the step forms the
  output and sums the loss directly (~90 us more), so the reported loss stays within ~5e-4.
- the gradients lose ~sqrt(batch) more than the direct form's (measured on the same model: 1.1e-4
  against 6e-5 relative to float64), far below the noise of a minibatch.
With input noise (a denoising AE) the step takes the direct form: five products and a loss pass.

In the Gram form the first product is C too (mlp.c, fae_project), made in the same pass as the batch's
gather: the trainer gets its batch from `gather()`, which reads each row from memory once, copies it
and multiplies it while it is in L1 (~100 us against ~190 us for torch.index_select then MKL, 256 x
1000 into 32 columns on 2 cores). The second product stays in MKL, which a hand-written kernel only
matched.

Inside the chain, activations are feature-major `(width, batch)` buffers owned by this step; the
wide layers read and write them through transposed views, in the layouts MKL runs fastest
(measured: batch-major `x @ W^T` beats `W @ x^T` by ~25%). The tanh is within 1.3 ulp of the exact
value (tests/test_native.py).

Used where `native_problem` finds nothing wrong: a plain MLP AE (see `steps.mlp_chain`), on the
CPU, with middle layers at most `MAX_WIDTH` wide, and kernels that compiled.
"""

from __future__ import annotations

import ctypes
import math

import torch
from torch import Tensor, nn

from funcae_cli.config import TrainConfig
from funcae_cli.native import kernels as native
from funcae_cli.training.optim import FlatParams
from funcae_cli.training.steps import MLPStep, Planned, StepLosses, mlp_chain

# Middle layers wider than this stay in torch. The kernels run one core near its FMA rate, MKL runs
# two: for a [w, w, w] AE the kernels' forward + backward take 67 us at w = 16, 212 us at w = 32
# (the epoch still ~10% faster than `mlp`) and 775 us at w = 64 (slower than `mlp`).
MAX_WIDTH = 32
# The Gram form's loss is a sum of terms ~|x|^2 that cancel to |r|^2, with an error of ~1e-8 |x|^2
# (measured ~3e-8 on notebook 000's trained model). Below this |r|^2 / |x|^2 the step forms the output and
# sums the loss directly, so the loss it reports stays within ~5e-4 of the exact one however good the fit.
EXACT_LOSS_BELOW = 1e-4
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


def _float32_scalar(value: float) -> Tensor:
    """A float64 loss as a float32 scalar: beyond float32's range it is inf (divergence), not an error."""
    return torch.scalar_tensor(value, dtype=torch.float64).to(torch.float32)


class NativeMLPStep(MLPStep):
    name = "native"

    def __init__(self, model: nn.Module, t: TrainConfig, flat: FlatParams, batch: int):
        problem = native_problem(model, next(model.parameters()).device)
        if problem is not None:
            raise ValueError(problem)
        super().__init__(model, t, flat, batch)
        self.lib = native.kernels()
        first, middle, last = self.plan[0], self.plan[1:-1], self.plan[-1]
        dims = [first.out.shape[1]] + [p.out.shape[1] for p in middle]
        d0, dk, n_points = dims[0], dims[-1], last.weight.shape[0]
        self.d0, self.dk = d0, dk
        new = lambda rows: torch.empty((rows, batch), dtype=torch.float32)  # noqa: E731
        # [h_k; 1; g0] (feature-major): the chain's output, a row of ones and the gradient of the first
        # layer's output, stacked so that one product with x gives h_k^T x, the column sums of x and
        # the first layer's weight gradient (mlp.c, "The last layer in Gram form").
        self.stack = new(dk + 1 + d0)
        self.stack[dk].fill_(1.0)
        self.h = [new(d) for d in dims[:-1]] + [self.stack[:dk]]  # the chain's activations
        self.g0 = self.stack[dk + 1 :]
        width = max(dims[1:], default=1)
        self.s0, self.s1, self.gk = new(width), new(width), new(dk)
        self.ldf = 32 * math.ceil((d0 + dk) / 32)  # fae_project's column blocks
        self.fused = torch.empty((n_points, self.ldf))  # [W_first^T | W_last | 0]: x @ fused is both products
        self.fused_out = torch.empty((batch, self.ldf))  # x [W_first^T | W_last]
        self.last_t = torch.empty((dk, n_points))  # W_last^T (fae_gram_backward reads it along the points)
        self.z = torch.empty((dk + 1 + d0, n_points))  # [h_k; 1; g0] x
        self.gram = torch.empty((dk + 1, dk + 1), dtype=torch.float64)  # [W_last b_last]^T [W_last b_last]
        self.wide = torch.empty((dk + 1, n_points), dtype=torch.float64)  # its factor, in float64
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
        self.row_sumsq: Tensor | None = None  # |x_r|^2 of the training set given to bind()
        self.bound: Tensor | None = None  # that tensor (held: its memory cannot be reused by another)
        self.exact_losses = 0  # steps whose loss the Gram form could not give to EXACT_LOSS_BELOW's accuracy
        self.projected: Tensor | None = None  # the batch gather() returned, its first product already made
        self.projected_xx: float | None = None  # and its |x|^2, where gather() read a bound training set

    def bind(self, x_train: Tensor) -> None:
        """Squared norms of the training curves, once (~10 ms per 100,000 x 1000), for the Gram form's loss:
        per batch, |x|^2 is then a sum over its rows (a pass over the batch costs ~23 us)."""
        x_train = x_train.contiguous()
        self.row_sumsq = torch.empty(x_train.shape[0], dtype=torch.float64)
        self.lib.fae_row_sumsq(x_train.data_ptr(), *x_train.shape, self.row_sumsq.data_ptr())
        self.bound = x_train

    def gather(self, x_train: Tensor, rows: Tensor, out: Tensor) -> Tensor:
        """The batch, and for the Gram form its first product in the same pass over the rows (mlp.c,
        fae_project: each row is read from memory once, ~100 us against ~190 us for a gather then a product)."""
        if self.t.noise.kind != "none" or x_train.dtype != torch.float32:  # the direct form reads the corrupted input
            return super().gather(x_train, rows, out)
        if rows.shape[0] > self.batch:
            raise ValueError(f"a batch of {rows.shape[0]} rows; this step's buffers hold {self.batch}")
        x_train, rows = x_train.contiguous(), rows.contiguous()
        b = self.bound
        bound = b is not None and b.data_ptr() == x_train.data_ptr() and b.shape == x_train.shape
        self._prepare(x_train.shape[1])
        xx = self.lib.fae_project(
            x_train.data_ptr(), rows.data_ptr(), rows.shape[0], x_train.shape[1], self.fused.data_ptr(), self.ldf,
            out.data_ptr(), self.fused_out.data_ptr(), self.row_sumsq.data_ptr() if bound else None,
        )  # fmt: skip
        self.projected, self.projected_xx = out, xx if bound else None
        return out

    def _prepare(self, n_points: int) -> None:
        """The last layer's Gram matrix in float64, and the weights in the layouts the kernels read."""
        first, last = self.plan[0], self.plan[-1]
        self.lib.fae_gram_prepare(
            self.fused.data_ptr(), self.ldf, self.last_t.data_ptr(), first.weight.data_ptr(), last.weight.data_ptr(),
            last.bias.data_ptr(), n_points, self.d0, self.dk, self.gram.data_ptr(), self.wide.data_ptr(),
        )  # fmt: skip

    @torch.no_grad()
    def __call__(self, x_in: Tensor, x: Tensor, kl_weight: float, gen: torch.Generator | None) -> StepLosses:
        x = x.contiguous()
        nb, n_points = x.shape
        plan = self._plan(nb)
        divisor, const = self.squared(nb, n_points, self.t)
        alpha = 2.0 / divisor  # d loss / d output = alpha * residual
        if x_in is x:  # an autoencoder's own input as the target: the Gram form shares the products over x
            sq = self._gram_step(plan, x, alpha)
        else:
            sq = self._direct_step(plan, x_in.contiguous(), x, alpha)
        recon = _float32_scalar(sq / divisor + const)
        return StepLosses(recon, recon, self._zero, self._penalize(plan, recon))

    def _gram_step(self, plan: list[Planned], x: Tensor, alpha: float) -> float:
        """Two products over x (see mlp.c, "The last layer in Gram form"); the output is never formed.
        Returns the batch's sum of squared residuals."""
        nb, n_points = x.shape
        first, last = plan[0], plan[-1]
        dims, weights, biases, h, grad_weights, grad_biases, acts = self.args
        lib, ld, d0, dk, ptr = self.lib, self.batch, self.d0, self.dk, Tensor.data_ptr
        xx = None
        if self.projected is x:  # gather() made the first product (and the Gram matrix) with this batch
            self.projected, xx = None, self.projected_xx
        else:
            self._prepare(n_points)
            lib.fae_project(ptr(x), None, nb, n_points, ptr(self.fused), self.ldf, None, ptr(self.fused_out), None)
        y = self.fused_out
        lib.fae_chain_forward(self.k, nb, ld, dims, weights, biases, h, acts, ptr(y), self.ldf, ptr(first.bias))
        hk = ptr(self.stack)
        s_h = lib.fae_gram_forward(nb, ld, dk, hk, ptr(y) + 4 * d0, self.ldf, ptr(self.gram), alpha, ptr(self.gk))
        lib.fae_chain_backward(
            self.k, nb, ld, dims, weights, h, grad_weights, grad_biases, acts, ptr(self.gk), 1, ld,
            ptr(self.g0), ptr(self.s0), ptr(self.s1),
        )  # fmt: skip
        torch.mm(self.stack[:, :nb], x, out=self.z)
        tb = lib.fae_gram_backward(
            nb, ld, dk, n_points, hk, ptr(self.z), ptr(self.last_t), ptr(last.bias), alpha,
            ptr(last.grad_weight), ptr(last.grad_bias), d0, ptr(first.grad_weight),
        )  # fmt: skip
        if xx is None:  # not a batch of the bound training set: a pass over it
            xx = lib.fae_sumsq(ptr(x), x.numel())
        sq = s_h - 2.0 * tb + xx
        if sq < EXACT_LOSS_BELOW * xx:  # the terms cancelled to a few digits: form the output after all
            torch.addmm(last.bias, self.h[-1][:, :nb].t(), last.weight_t, out=last.out)
            sq = lib.fae_sse(ptr(last.out), ptr(x), x.numel())
            self.exact_losses += 1
        return sq

    def _direct_step(self, plan: list[Planned], x_in: Tensor, x: Tensor, alpha: float) -> float:
        """A corrupted input (denoising): the first layer reads x_in, the loss x; five products.
        Returns the batch's sum of squared residuals."""
        nb, n_points = x.shape
        first, last = plan[0], plan[-1]
        dims, weights, biases, h, grad_weights, grad_biases, acts = self.args
        lib, ld, ptr = self.lib, self.batch, Tensor.data_ptr
        torch.addmm(first.bias, x_in, first.weight_t, out=first.out)
        lib.fae_chain_forward(self.k, nb, ld, dims, weights, biases, h, acts, ptr(first.out), self.d0, None)
        hk = self.h[-1][:, :nb].t()  # (nb, width) view of the chain's output
        torch.addmm(last.bias, hk, last.weight_t, out=last.out)
        sq = lib.fae_residual(ptr(last.out), ptr(x), nb, n_points, ptr(last.grad_bias), alpha)
        torch.addmm(last.grad_weight, last.out.t(), hk, beta=0, alpha=alpha, out=last.grad_weight)
        torch.addmm(last.grad_in, last.out, last.weight, beta=0, alpha=alpha, out=last.grad_in)
        lib.fae_chain_backward(
            self.k, nb, ld, dims, weights, h, grad_weights, grad_biases, acts, ptr(last.grad_in), self.dk, 1,
            ptr(self.g0), ptr(self.s0), ptr(self.s1),
        )  # fmt: skip
        torch.addmm(first.grad_weight, self.g0[:, :nb], x_in, beta=0, out=first.grad_weight)
        return sq
