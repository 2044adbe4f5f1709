"""The hand-written MLP training steps (torch and native) compute autograd's losses and gradients."""

from __future__ import annotations

import copy
import os
import shutil
from pathlib import Path

import pytest
import torch

from funcae_cli.config import load_config
from funcae_cli.models import build_model
from funcae_cli.training.engines import select_step
from funcae_cli.training.loop import model_args
from funcae_cli.training.native.step import NativeMLPStep
from funcae_cli.training.optim import FlatParams
from funcae_cli.training.steps import ACTIVATION_GRADS, CPU_FORWARDS, AutogradStep, MLPStep, mlp_chain

from .conftest import CONFIGS


def _cfg(*overrides: str):
    return load_config(CONFIGS / "smoke.yaml", ["model.hidden=[12,9]", *overrides])


needs_compiler = pytest.mark.skipif(
    shutil.which(os.environ.get("CC") or "cc") is None, reason="no C compiler: the native step cannot be built"
)
HAND_WRITTEN = [pytest.param(MLPStep, id="mlp"), pytest.param(NativeMLPStep, id="native", marks=needs_compiler)]


def _pair(cfg, n_points: int = 20, batch: int = 16, step=MLPStep):
    """The autograd step and a hand-written `step` on two copies of one model."""
    torch.manual_seed(0)
    a = build_model(model_args(cfg, n_points))
    b = copy.deepcopy(a)
    fa, fb = FlatParams(a), FlatParams(b)
    return AutogradStep(a, cfg.train, fa), step(b, cfg.train, fb, batch), fa, fb


@pytest.mark.parametrize("step", HAND_WRITTEN)
@pytest.mark.parametrize("activation", ["tanh", "relu"])
@pytest.mark.parametrize("loss", ["sse", "mse", "gaussian"])
@pytest.mark.parametrize("penalty", [0.0, 1e-2])
@pytest.mark.parametrize("rows", [16, 5])  # a full batch and an epoch's short last batch
@pytest.mark.parametrize("corrupted", [False, True], ids=["x->x", "noisy->x"])  # native: Gram and direct forms
def test_hand_written_steps_equal_autograd(
    step, activation: str, loss: str, penalty: float, rows: int, corrupted: bool
) -> None:
    cfg = _cfg(
        f"model.activation={activation}", f"train.loss={loss}", "train.eta=0.2", f"train.weight_penalty={penalty}"
    )
    ref, fast, fa, fb = _pair(cfg, step=step)
    gen = torch.Generator().manual_seed(3)
    x = torch.randn(rows, 20, generator=gen)
    x_in = x + 0.1 * torch.randn(rows, 20, generator=gen) if corrupted else x  # a denoising AE's input, or x
    for _ in range(2):  # twice: the buffers are reused, the gradient is overwritten, not accumulated
        a, b = ref(x_in, x, 1.0, None), fast(x_in, x, 1.0, None)
    for k in ("loss", "recon", "kl", "total"):
        torch.testing.assert_close(getattr(b, k), getattr(a, k), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(fb.grad, fa.grad, rtol=1e-4, atol=1e-6)
    assert fb.grad.abs().sum() > 0


@pytest.mark.parametrize("act", list(CPU_FORWARDS))
def test_cpu_activation_forwards_match_torch(act) -> None:
    x = torch.linspace(-12, 12, 200_001)
    y = x.clone()
    ours, torchs = CPU_FORWARDS[act](y), ACTIVATION_GRADS[act][0](x.clone())
    assert ours.data_ptr() == y.data_ptr()  # in place on its argument, like torch's
    ulp = torch.finfo(torch.float32).eps * torchs.abs().clamp_min(torch.finfo(torch.float32).tiny)
    assert ((y - torchs).abs() <= 2 * ulp).all() and not torch.equal(y, x)


@pytest.mark.parametrize(
    ("override", "reason"),
    [("model.kind=vae", "not a plain autoencoder"), ("model.dropout=0.1", "Dropout"),
     ("model.activation=gelu", "GELU"), ("model.input_dropout=0.2", "Dropout")],
)  # fmt: skip
def test_models_without_a_hand_written_step_fall_back_to_autograd(override: str, reason: str) -> None:
    cfg = _cfg(override)
    model = build_model(model_args(cfg, 20))
    chain = mlp_chain(model)
    assert isinstance(chain, str) and reason in chain
    assert isinstance(select_step(model, cfg.train, FlatParams(model), 16), AutogradStep)


def test_mlp_and_autograd_engines_can_be_forced() -> None:
    for engine, kind in (("mlp", MLPStep), ("autograd", AutogradStep)):
        cfg = _cfg(f"train.engine={engine}")
        model = build_model(model_args(cfg, 20))
        assert type(select_step(model, cfg.train, FlatParams(model), 16)) is kind


def test_resume_of_a_checkpoint_with_per_parameter_optimizer_state_exits_2(smoke_copy: Path, cli) -> None:
    """Checkpoints from before the flat optimizers hold torch.optim's layout: refused clearly, run untouched."""
    last = smoke_copy / "checkpoints/last.pt"
    ck = torch.load(last, weights_only=True)
    ck["optimizer"] = {"state": {}, "param_groups": [{"lr": 1e-3, "params": [0, 1]}]}
    ck["epoch"] = 1
    torch.save(ck, last)
    before = last.read_bytes()
    r = cli("train", "--resume", str(smoke_copy), "-q", "--no-plots")
    assert r.exit_code == 2, r.output
    assert r.stderr.startswith("error:") and "older funcae" in r.stderr and "Traceback" not in r.stderr
    assert last.read_bytes() == before


@pytest.mark.parametrize("loss", ["sse", "mse", "gaussian"])
def test_squared_error_form_matches_each_loss(loss: str) -> None:
    """steps.py and evaluate() compute losses as |d|^2 / divisor + const: the same numbers as LOSSES."""
    from funcae_cli.config import TrainConfig
    from funcae_cli.training.losses import LOSSES, SQUARED_ERROR

    cfg = TrainConfig(loss=loss, eta=0.3)
    r, x = torch.randn(9, 13, generator=torch.Generator().manual_seed(0)), torch.randn(9, 13)
    divisor, const = SQUARED_ERROR[loss](9, 13, cfg)
    torch.testing.assert_close((r - x).square().sum() / divisor + const, LOSSES[loss](r, x, cfg).mean())


def test_funcae_flushes_denormals_before_torch_starts_threads(tmp_path) -> None:
    """The normal pdf's float32 tails are denormal; every job resolves its device first, which turns on
    flush-to-zero before any torch work (the cheap commands, which never load torch, need not)."""
    import subprocess
    import sys

    run = ["train", str(CONFIGS / "smoke.yaml"), "--run-dir", str(tmp_path / "r"), "-q", "--no-plots",
           "--set", "train.epochs=1"]  # fmt: skip
    code = (
        "import sys, torch; from funcae_cli.cli import main; before = float(torch.tensor([1e-40]) * 1.0); "
        f"code = main({run!r}); print(before, float(torch.tensor([1e-40]) * 1.0)); sys.exit(code)"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=tmp_path)
    before, after = map(float, r.stdout.split()[-2:])
    assert before > 0 and after == 0.0
