"""The flat-buffer optimizers follow torch.optim step for step; gradients land in the flat buffer."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from funcae_cli.config import TrainConfig
from funcae_cli.training.optim import OPTIMIZERS, Adam, FlatParams


def _model(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(7, 5), nn.Tanh(), nn.Linear(5, 3))


TORCH_TWINS = {
    "adam": lambda ps, t: torch.optim.Adam(ps, lr=t.lr, weight_decay=t.weight_decay, foreach=False),
    "adamw": lambda ps, t: torch.optim.AdamW(ps, lr=t.lr, weight_decay=t.weight_decay, foreach=False),
    "sgd": lambda ps, t: torch.optim.SGD(ps, lr=t.lr, momentum=t.momentum, weight_decay=t.weight_decay),
}


@pytest.mark.parametrize("name", [*sorted(OPTIMIZERS), "adam-explicit", "adamw-explicit"])
@pytest.mark.parametrize("weight_decay", [0.0, 0.05])
def test_flat_optimizer_matches_torch_optim(name: str, weight_decay: float) -> None:
    """Fused kernel and the explicit fallback both follow torch.optim."""
    base = name.removesuffix("-explicit")
    t = TrainConfig(optimizer=base, lr=0.05, weight_decay=weight_decay, momentum=0.8)
    ours, theirs = _model(), _model()
    flat = FlatParams(ours)
    opt, ref = OPTIMIZERS[base](flat, t), TORCH_TWINS[base](theirs.parameters(), t)
    if name.endswith("-explicit"):
        opt.kernel = None
    elif base.startswith("adam"):
        assert opt.kernel is not None  # torch 2.13 on CPU has the fused kernel: the fast path is the tested one
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(11, 7, generator=gen)
    for step in range(6):
        for m in (ours, theirs):
            loss = m(x).square().sum() * (step + 1)
            if m is ours:
                flat.zero_grad()
            else:
                ref.zero_grad()
            loss.backward()
        opt.step()
        ref.step()
    for a, b in zip(ours.parameters(), theirs.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_parameters_and_gradients_are_views_of_the_flat_buffers() -> None:
    m = _model()
    before = copy.deepcopy(m.state_dict())
    flat = FlatParams(m)
    assert flat.data.numel() == sum(p.numel() for p in m.parameters())
    for k, v in m.state_dict().items():  # values unchanged by flattening
        torch.testing.assert_close(v, before[k])
    flat.data.add_(1.0)
    for k, v in m.state_dict().items():
        torch.testing.assert_close(v, before[k] + 1.0)
    m(torch.ones(2, 7)).sum().backward()  # autograd accumulates into the flat gradient
    assert flat.grad.abs().sum() > 0
    assert all(p.grad.data_ptr() >= flat.grad.data_ptr() for p in m.parameters())
    m.load_state_dict(before)  # load_state_dict copies in place: the views survive
    torch.testing.assert_close(flat.data, torch.cat([v.reshape(-1) for v in before.values()]))


def test_clip_grad_norm_matches_torch() -> None:
    a, b = _model(), _model()
    flat = FlatParams(a)
    for m in (a, b):
        (m(torch.ones(3, 7)).sum() * 100).backward()
    na = flat.clip_grad_norm_(0.5)
    nb = nn.utils.clip_grad_norm_(b.parameters(), 0.5)
    torch.testing.assert_close(na, nb)
    for p, q in zip(a.parameters(), b.parameters()):
        torch.testing.assert_close(p.grad, q.grad)


def test_state_dict_round_trip_and_kind_check() -> None:
    m = _model()
    flat = FlatParams(m)
    opt = Adam(flat, 0.1)
    m(torch.ones(2, 7)).sum().backward()
    opt.step()
    sd = opt.state_dict()
    other = Adam(FlatParams(_model()), 0.1)
    other.load_state_dict(sd)
    assert other.steps == 1
    torch.testing.assert_close(other.state["exp_avg"], opt.state["exp_avg"])
    sgd = OPTIMIZERS["sgd"](FlatParams(_model()), TrainConfig(optimizer="sgd"))
    with pytest.raises(ValueError, match="Adam"):
        sgd.load_state_dict(sd)
