"""`train.engine: auto` times the engines that can train the model, caches the fastest per CPU and shape."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
import torch

from funcae_cli.config import load_config
from funcae_cli.models import build_model
from funcae_cli.native import kernels as native
from funcae_cli.training import engine_choice, engines
from funcae_cli.training.engines import ENGINES, Engine, candidates, choose_engine
from funcae_cli.training.loop import model_args
from funcae_cli.training.native.step import native_problem
from funcae_cli.training.optim import FlatParams
from funcae_cli.training.steps import MLPStep

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
CPU = torch.device("cpu")
needs_compiler = pytest.mark.skipif(
    native_problem(build_model(model_args(load_config(CONFIGS / "smoke.yaml"), 20)), CPU) is not None,
    reason="native kernels unavailable (no C compiler)",
)


@pytest.fixture
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A fresh cache folder for the engine choice (the kernels already loaded in this process stay loaded)."""
    folder = tmp_path / "cache"
    monkeypatch.setenv("FUNCAE_CACHE_DIR", str(folder))
    return folder / engine_choice.CACHE_FILE


def _train(cli, name: str, *overrides: str) -> dict:
    sets = [a for o in ("train.epochs=2", *overrides) for a in ("--set", o)]
    r = cli("train", "configs/smoke.yaml", "-q", "--no-plots", "--json", "--run-dir", f"runs/{name}", *sets)
    assert r.exit_code == 0, r.output
    return json.loads(r.stdout)


def _weights(rd: Path) -> dict[str, torch.Tensor]:
    return torch.load(rd / "checkpoints/last.pt", weights_only=True)["model"]


@pytest.mark.slow  # several real `funcae train` runs
@needs_compiler
def test_auto_times_once_per_cpu_and_shape_then_reads_the_cache(workdir: Path, cli, cache: Path) -> None:
    first = _train(cli, "a")["engine_choice"]
    names = candidates(build_model(model_args(load_config(CONFIGS / "smoke.yaml"), 64)), CPU)
    assert sorted(first["seconds"]) == sorted(names) == ["autograd", "mlp", "native"]
    assert first["timed"] and not first["cached"] and "timed now" in first["reason"]
    assert first["engine"] == min(first["seconds"], key=first["seconds"].get)
    assert cache.exists() and first["cache"] == str(cache)

    again = _train(cli, "b")["engine_choice"]  # same CPU, same shape: nothing timed
    assert again["cached"] and again["engine"] == first["engine"] and again["seconds"] == first["seconds"]
    assert "cached" in again["reason"]

    for override in ("model.hidden=[16,16]", "train.batch_size=64", "train.noise.kind=gaussian"):  # new shapes
        other = _train(cli, override.split("=")[0], override)["engine_choice"]
        assert other["timed"] and not other["cached"], override
    assert len(json.loads(cache.read_text())["choices"]) == 4
    assert _train(cli, "c", "train.batch_size=64")["engine_choice"]["cached"]


@pytest.mark.slow  # several real `funcae train` runs
@needs_compiler
def test_a_run_is_the_same_bits_with_the_cache_cold_or_warm_and_with_the_engine_named(
    workdir: Path, cli, cache: Path
) -> None:
    """Timing draws from no generator of the run and touches neither its weights nor its optimizer."""
    cold = _train(cli, "cold")
    warm = _train(cli, "warm")
    assert not cold["engine_choice"]["cached"] and warm["engine_choice"]["cached"]
    named = _train(cli, "named", f"train.engine={cold['engine']}")
    assert named["engine_choice"]["reason"] == "named by train.engine" and not named["engine_choice"]["timed"]
    ref = _weights(workdir / "runs/named")
    for run in ("cold", "warm"):
        got = _weights(workdir / f"runs/{run}")
        assert all(torch.equal(got[k], ref[k]) for k in ref), run
    assert json.loads((workdir / "runs/cold/history.json").read_text())[-1]["train_loss"] == pytest.approx(
        json.loads((workdir / "runs/named/history.json").read_text())[-1]["train_loss"], abs=0
    )


def _slowed(build, seconds: float):
    """A builder whose steps sleep `seconds` before each step of the engine's own."""

    def make(*args):
        step = build(*args)
        engine = type(step)

        class Slow(engine):
            def __call__(self, *a):
                time.sleep(seconds)
                return engine.__call__(self, *a)

        step.__class__ = Slow
        return step

    return make


@needs_compiler
@pytest.mark.parametrize("slowed", [("native",), ("mlp", "autograd")])
def test_auto_takes_what_it_measures_fastest_not_a_fixed_order(slowed, cache: Path, monkeypatch) -> None:
    """An engine made 20 ms slower per step loses, whichever it is (auto's order is native, mlp, autograd)."""
    for name in slowed:
        monkeypatch.setitem(ENGINES, name, Engine(ENGINES[name].problem, _slowed(ENGINES[name].build, 0.02)))
    cfg = load_config(CONFIGS / "smoke.yaml")
    model = build_model(model_args(cfg, 64))
    sample = torch.randn(500, 64, generator=torch.Generator().manual_seed(0))
    choice = choose_engine(model, cfg.train, 128, sample)
    assert choice.engine not in slowed and not choice.cached
    for name in slowed:
        assert choice.seconds[name] >= 0.02 > choice.seconds[choice.engine]


@pytest.mark.parametrize("engine", ["native", "mlp", "autograd"])
def test_a_named_engine_is_used_as_named_and_nothing_is_timed(engine: str, cache: Path, monkeypatch) -> None:
    if engine == "native" and native_problem(build_model(model_args(load_config(CONFIGS / "smoke.yaml"), 20)), CPU):
        pytest.skip("native kernels unavailable (no C compiler)")
    monkeypatch.setattr(engine_choice, "time_engines", lambda *a: pytest.fail("timed a named engine"))
    cfg = load_config(CONFIGS / "smoke.yaml", [f"train.engine={engine}"])
    model = build_model(model_args(cfg, 64))
    choice = choose_engine(model, cfg.train, 128, torch.zeros(500, 64))
    assert (choice.engine, choice.timed, choice.cached) == (engine, False, False)
    assert not cache.exists()


def test_a_model_only_one_engine_can_train_is_not_timed(cache: Path, monkeypatch) -> None:
    monkeypatch.setattr(engine_choice, "time_engines", lambda *a: pytest.fail("timed a single candidate"))
    cfg = load_config(CONFIGS / "smoke.yaml", ["model.kind=vae"])
    choice = choose_engine(build_model(model_args(cfg, 64)), cfg.train, 128, torch.zeros(500, 64))
    assert choice.engine == "autograd" and "only engine" in choice.reason and "not a plain autoencoder" in choice.reason


@needs_compiler
def test_a_damaged_cache_file_is_timed_over_and_rewritten(cache: Path) -> None:
    cache.parent.mkdir(parents=True)
    cache.write_text('{"version": 1, "choices": ')  # a half-written file from another tool
    cfg = load_config(CONFIGS / "smoke.yaml")
    model = build_model(model_args(cfg, 64))
    choice = choose_engine(model, cfg.train, 128, torch.randn(300, 64))
    assert choice.timed and not choice.cached
    assert list(json.loads(cache.read_text())["choices"].values())[0]["engine"] == choice.engine
    assert choose_engine(model, cfg.train, 128, torch.randn(300, 64)).cached


def test_candidates_follow_what_each_engine_can_train(monkeypatch) -> None:
    cfg = load_config(CONFIGS / "smoke.yaml")
    wide = load_config(CONFIGS / "smoke.yaml", ["model.hidden=[64]"])
    assert candidates(build_model(model_args(wide, 20)), CPU) == ["mlp", "autograd"]
    monkeypatch.setenv("FUNCAE_NATIVE", "0")
    native.reset()
    try:
        assert candidates(build_model(model_args(cfg, 20)), CPU) == ["mlp", "autograd"]
    finally:
        native.reset()
    assert engines.engine_for(build_model(model_args(cfg, 20)), "auto", torch.device("meta")) == "mlp"
    model = build_model(model_args(wide, 20))  # no training data to time on: the first candidate
    assert isinstance(engines.select_step(model, wide.train, FlatParams(model), 16), MLPStep)
