"""The non-CPU branches, run without a GPU: device placement on torch's `meta` device (tensors without data:
any tensor made on the CPU by mistake fails to mix with them), checkpoints of plain CPU tensors, and a resume
on another device type than the one a run was saved on.

What this does not cover: the CUDA kernels themselves, and a GPU run's numbers (no GPU in CI)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from funcae_cli.config import load_config
from funcae_cli.inversion.objective import Problem
from funcae_cli.inversion.targets import Targets
from funcae_cli.models import build_model
from funcae_cli.store.checkpoint import load_checkpoint, save_checkpoint
from funcae_cli.store.rundir import RunDir
from funcae_cli.store.trained import load_trained
from funcae_cli.training.engines import engine_for, select_step
from funcae_cli.training.loop import model_args
from funcae_cli.training.optim import OPTIMIZERS, FlatParams

from .conftest import CONFIGS, ok

META = torch.device("meta")


def _tensors(obj, path: str = ""):
    if isinstance(obj, torch.Tensor):
        yield path, obj
    elif isinstance(obj, dict):
        for k, v in obj.items():
            yield from _tensors(v, f"{path}.{k}")
    elif isinstance(obj, (list, tuple)):
        for i, v in enumerate(obj):
            yield from _tensors(v, f"{path}[{i}]")


@pytest.mark.parametrize("engine", ["auto", "mlp", "autograd"])
@pytest.mark.parametrize("kind", ["ae", "vae"])
def test_a_training_step_runs_on_a_non_cpu_device(engine: str, kind: str) -> None:
    """Every buffer a step allocates is on the model's device: a CPU tensor among meta tensors raises."""
    if kind == "vae" and engine == "mlp":
        pytest.skip("the mlp engine trains plain AEs only")
    cfg = load_config(CONFIGS / "smoke.yaml", [f"model.kind={kind}", f"train.engine={engine}"])
    model = build_model(model_args(cfg, 64)).to(META)
    flat = FlatParams(model)
    opt = OPTIMIZERS[cfg.train.optimizer](flat, cfg.train)
    step = select_step(model, cfg.train, flat, 32)
    assert step.name != "native"  # the compiled kernels are CPU-only: never chosen for another device
    x = torch.empty(32, 64, device=META)
    gen = torch.Generator()  # the VAE's noise: drawn on the model's device (meta has no generator to seed)
    out = step(x, x, 1.0, gen if kind == "ae" else None)
    opt.step()
    assert out.loss.device == META and flat.grad.device == META and flat.data.device == META


def test_auto_never_picks_the_native_engine_off_the_cpu() -> None:
    cfg = load_config(CONFIGS / "smoke.yaml")
    model = build_model(model_args(cfg, 64))
    assert engine_for(model, "auto", META) == "mlp"


def test_the_inversion_objective_runs_on_a_non_cpu_device(smoke_run: Path) -> None:
    trained = load_trained(RunDir(smoke_run), torch.device("cpu"))
    trained.model.to(META)
    trained.normalizer = trained.normalizer.to(META)
    trained.device = META
    x = torch.linspace(-4, 4, 17, dtype=torch.float64).expand(3, -1)  # points off the grid: the interpolation path
    targets = Targets(torch.ones(3, 17), x, torch.full((3, 17), 0.1), names=["a", "b", "c"])
    problem = Problem(trained, targets)
    z = torch.empty(3, 2, device=META)
    assert problem.residual(z).shape == (3, 17) and problem.residual(z).device == META
    assert problem.loss(z, None).device == META


def test_checkpoints_hold_only_cpu_tensors(smoke_run: Path) -> None:
    """Loaded without map_location, a checkpoint of plain CPU tensors loads on any machine (weights, optimizer
    moments, generator states: a GPU run saves them the same way)."""
    for name in ("last.pt", "best.pt", "regressor.pt"):
        ckpt = torch.load(smoke_run / "checkpoints" / name, weights_only=True)
        tensors = list(_tensors(ckpt))
        assert tensors
        assert all(t.device.type == "cpu" for _, t in tensors), [p for p, t in tensors if t.device.type != "cpu"]
    last = torch.load(smoke_run / "checkpoints" / "last.pt", weights_only=True)
    assert last["rng"]["device"] == "cpu" and "exp_avg" in last["optimizer"]


def _as_if_saved_on_cuda(run: Path) -> None:
    """Rewrite last.pt's generator states as a CUDA run saves them: Philox (seed, offset), 16 bytes each."""
    ckpt = load_checkpoint(run / "checkpoints" / "last.pt")
    philox = torch.tensor([7, 0, 0, 0, 0, 0, 0, 0, 64, 0, 0, 0, 0, 0, 0, 0], dtype=torch.uint8)
    ckpt["rng"].update(device="cuda", noise=philox.clone(), cuda=philox.clone())
    save_checkpoint(run / "checkpoints" / "last.pt", {k: v for k, v in ckpt.items() if k not in ("format", "version")})


@pytest.mark.parametrize("noise", ["none", "gaussian"])
def test_resume_on_another_device_type_continues_with_a_warning(tmp_path: Path, cli, monkeypatch, noise: str) -> None:
    """Train on a GPU, resume on a laptop: the weights, optimizer and batch order continue; the input-noise
    generator's state cannot cross device types, so it restarts from the seed, and the run says so."""
    shutil.copytree(CONFIGS, tmp_path / "configs")
    monkeypatch.chdir(tmp_path)
    over = ["--set", "train.epochs=6", "--set", f"train.noise.kind={noise}", "--no-plots", "-q"]
    ok(cli("train", "configs/smoke.yaml", *over))
    run = tmp_path / "runs" / "smoke"
    ckpt = load_checkpoint(run / "checkpoints" / "last.pt")
    ckpt["epoch"], ckpt["train_state"]["history"] = 3, ckpt["train_state"]["history"][:3]  # as if stopped at 3
    save_checkpoint(run / "checkpoints" / "last.pt", {k: v for k, v in ckpt.items() if k not in ("format", "version")})
    _as_if_saved_on_cuda(run)
    r = cli("train", "--resume", str(run), "--json")
    ok(r)
    assert "resumed on cpu a run saved on cuda" in r.stderr or "resumed on cpu a run saved on cuda" in r.stdout
    metrics = json.loads(r.stdout)
    assert metrics["epochs"] == 6 and any("saved on cuda" in w for w in metrics["warnings"])
    assert load_checkpoint(run / "checkpoints" / "last.pt")["rng"]["device"] == "cpu"
