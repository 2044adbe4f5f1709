"""`funcae export`: the emulator folder, read back by its shipped numpy loader in a process where torch and
funcae cannot be imported, against funcae's own decode/encode/regressor (torch, float32) on the test split."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors import safe_open
from safetensors.numpy import load_file, save_file
from typer.testing import CliRunner

from funcae_cli import __version__
from funcae_cli.cli import app
from funcae_cli.inversion.regressor import LatentModel
from funcae_cli.jobs.fitted import latent_model_for
from funcae_cli.store.dataset import dataset_for
from funcae_cli.store.fitted import load_latent_state, save_latent_state
from funcae_cli.store.rundir import RunDir
from funcae_cli.store.trained import load_trained
from tests.conftest import CONFIGS, ok, usage_error

RTOL = 1e-6  # the bar: float32 rounding, relative to each curve's (code's) largest value
NUMPY_ONLY = """
import sys
for name in ("torch", "funcae_cli", "safetensors", "scipy"):
    sys.modules[name] = None  # importing any of them now raises ImportError
folder, inp, out = sys.argv[1:4]
sys.path.insert(0, folder)
import numpy as np
from funcae_emulator import Emulator
emu = Emulator(folder)
a = np.load(inp)
res = {"x": emu.x, "decoded": emu.decode(a["z"]), "encoded": emu.encode(a["curves"])}
if emu.has_regressor:
    res["params"] = emu.params(a["z"])
np.savez(out, **res)
print(sorted(m for m in ("torch", "funcae_cli", "safetensors") if sys.modules.get(m) is not None))
"""

# (name, config, overrides): together every transform and normalization, both model kinds, three activations
TINY = {
    "gelu_log_per_point": ["--set", "data.transform=log", "--set", "data.normalize=per_point",
                           "--set", "model.activation=gelu"],
    "vae_silu_log_global": ["--set", "model.kind=vae", "--set", "data.transform=log", "--set", "data.normalize=global",
                            "--set", "model.activation=silu", "--set", "train.loss=gaussian"],
}  # fmt: skip


@pytest.fixture(scope="session")
def tiny_runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Two tiny runs of the smoke config's family (seconds each), trained once per session (read-only)."""
    root = tmp_path_factory.mktemp("export-runs")
    shutil.copytree(CONFIGS, root / "configs")
    cwd = os.getcwd()
    os.chdir(root)
    try:
        for name, extra in TINY.items():
            tiny = ["--set", "data.n=600", "--set", "train.epochs=3", "--set", "model.hidden=[16,16]"]
            args = ["train", "configs/smoke.yaml", "--quiet", "--no-plots", "--run-dir", f"runs/{name}", *tiny, *extra]
            result = CliRunner().invoke(app, args, catch_exceptions=False)
            assert result.exit_code == 0, result.output
    finally:
        os.chdir(cwd)
    return {name: root / "runs" / name for name in TINY}


@pytest.fixture(params=["smoke", *TINY])
def run_copy(request, smoke_run: Path, tiny_runs: dict[str, Path], tmp_path: Path) -> Path:
    src = smoke_run if request.param == "smoke" else tiny_runs[request.param]
    dst = tmp_path / request.param
    shutil.copytree(src, dst, symlinks=True)
    return dst


def _reference(run: Path) -> dict[str, np.ndarray]:
    """funcae's own answers on the run's test split: codes, decoded curves, parameters (torch, float32)."""
    trained = load_trained(RunDir(run), torch.device("cpu"))
    ds = dataset_for(trained.cfg, trained.rd)
    a, b = trained.data["splits"][2]
    curves = ds.curves[a:b]
    z = trained.encode(curves)
    ref = {"curves": curves.numpy(), "z": z.numpy(), "decoded": trained.decode(z).numpy(), "x": trained.grid.numpy()}
    lm, _ = latent_model_for(trained)
    ref["params"] = lm.predict(z).numpy()
    return ref


def _numpy_only(folder: Path, ref: dict[str, np.ndarray], tmp: Path) -> dict[str, np.ndarray]:
    np.savez(tmp / "in.npz", z=ref["z"], curves=ref["curves"])
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}  # nothing of the repository on the path
    r = subprocess.run([sys.executable, "-c", NUMPY_ONLY, str(folder), str(tmp / "in.npz"), str(tmp / "out.npz")],
                       capture_output=True, text=True, cwd=tmp, env=env)  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "[]"
    return dict(np.load(tmp / "out.npz"))


def _rel(got: np.ndarray, want: np.ndarray) -> float:
    """Largest difference relative to the largest value of the same row."""
    return float((np.abs(got - want) / np.abs(want).max(axis=1, keepdims=True)).max())


def test_numpy_loader_reproduces_funcae(cli, run_copy: Path, tmp_path: Path) -> None:
    out = tmp_path / "emulator"
    ok(cli("export", run_copy, "--out", out))
    assert sorted(p.name for p in out.iterdir()) == ["emulator.json", "funcae_emulator.py", "weights.safetensors"]
    shipped = Path(__file__).resolve().parents[1] / "funcae_cli" / "export" / "funcae_emulator.py"
    assert (out / "funcae_emulator.py").read_bytes() == shipped.read_bytes()
    with safe_open(out / "weights.safetensors", "np") as f:  # one key, so the bytes do not depend on hash order
        assert f.metadata() == {"format": "funcae-emulator/1"}
    ref = _reference(run_copy)
    got = _numpy_only(out, ref, tmp_path)
    assert np.array_equal(got["x"], ref["x"])
    assert got["decoded"].shape == ref["decoded"].shape
    assert _rel(got["decoded"], ref["decoded"]) < RTOL
    assert _rel(got["encoded"], ref["z"]) < RTOL
    np.testing.assert_allclose(got["params"], ref["params"], rtol=1e-9)
    assert not np.allclose(got["decoded"], got["decoded"][:1])  # the test set's curves differ: not a constant


def test_description_is_versioned_and_a_newer_schema_is_refused(cli, smoke_run: Path, tmp_path: Path) -> None:
    out = tmp_path / "emulator"
    ok(cli("export", smoke_run, "--out", out))
    d = json.loads((out / "emulator.json").read_text())
    assert (d["format"], d["schema_version"], d["funcae_version"]) == ("funcae-emulator", 1, __version__)
    assert d["parameters"]["names"] == ["mu", "sigma"] and d["model"]["kind"] == "ae"
    d["schema_version"] += 1
    (out / "emulator.json").write_text(json.dumps(d))
    code = f"import sys; sys.path.insert(0, {str(out)!r}); from funcae_emulator import Emulator; Emulator({str(out)!r})"
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r.returncode == 1 and "schema_version 2 is newer" in r.stderr


def test_numpy_safetensors_reader_equals_the_safetensors_library(cli, smoke_run: Path, tmp_path: Path) -> None:
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "funcae_cli" / "export"))
    try:
        from funcae_emulator import read_safetensors
    finally:
        sys.path.pop(0)
    out = tmp_path / "emulator"
    ok(cli("export", smoke_run, "--out", out))
    rng = np.random.default_rng(0)
    mixed = {"f64": rng.normal(size=(3, 5)), "f32": rng.normal(size=7).astype(np.float32),
             "f16": rng.normal(size=(2, 2)).astype(np.float16), "i64": np.arange(-3, 9).reshape(3, 4),
             "u8": np.arange(5, dtype=np.uint8), "b": np.array([True, False]), "scalar": np.array(2.5)}  # fmt: skip
    save_file(mixed, tmp_path / "mixed.safetensors", metadata={"k": "v"})
    for path in (out / "weights.safetensors", tmp_path / "mixed.safetensors"):
        want, got = load_file(path), read_safetensors(path)
        assert sorted(got) == sorted(want)
        for k in want:
            assert got[k].dtype == want[k].dtype and got[k].shape == want[k].shape, k
            assert np.array_equal(got[k], want[k]), k


def test_onnx_export_runs_in_onnxruntime(cli, run_copy: Path, tmp_path: Path) -> None:
    ort = pytest.importorskip("onnxruntime", reason="onnxruntime is not installed (pip install onnxruntime)")
    out = tmp_path / "emulator"
    ok(cli("export", run_copy, "--out", out, "--format", "onnx"))
    ref = _reference(run_copy)
    decoded = ort.InferenceSession(str(out / "decoder.onnx")).run(None, {"z": ref["z"]})[0]
    encoded = ort.InferenceSession(str(out / "encoder.onnx")).run(None, {"curves": ref["curves"]})[0]
    assert _rel(decoded, ref["decoded"]) < RTOL
    assert _rel(encoded, ref["z"]) < RTOL


def test_a_run_without_a_regressor_exports_none(cli, smoke_run: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    shutil.copytree(smoke_run, run, symlinks=True)
    RunDir(run).regressor.unlink()
    r = cli("export", run, "--json")
    ok(r)
    assert json.loads(r.stdout)["regressor"] is False and "regressor.pt is missing" in r.stderr
    d = json.loads((RunDir(run).export / "emulator.json").read_text())
    assert d["regressor"] is None
    assert not (RunDir(run).regressor).exists()  # exporting never writes into the run


def test_a_stale_regressor_is_not_exported(cli, smoke_run: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    shutil.copytree(smoke_run, run, symlinks=True)
    lm = LatentModel.from_state(load_latent_state(RunDir(run).regressor))
    lm.signature *= 1.01  # as if fitted on other weights
    save_latent_state(RunDir(run).regressor, lm.state())
    r = cli("export", run, "--json")
    ok(r)
    assert json.loads(r.stdout)["regressor"] is False and "fitted on other weights" in r.stderr


def test_export_errors_are_one_line_exit_2(cli, smoke_run: Path, tmp_path: Path, monkeypatch) -> None:
    usage_error(cli("export", tmp_path), "has no checkpoint")
    run = tmp_path / "run"
    shutil.copytree(smoke_run, run, symlinks=True)
    ok(cli("export", run))
    before = (RunDir(run).export / "weights.safetensors").read_bytes()
    usage_error(cli("export", run), "--force", "already holds an export")
    ok(cli("export", run, "--force"))
    assert (RunDir(run).export / "weights.safetensors").read_bytes() == before
    assert [p.name for p in run.iterdir() if p.name.startswith(".export")] == []  # no temp folders left
    other = tmp_path / "other"
    other.mkdir()
    (other / "keep.txt").write_text("mine")
    usage_error(cli("export", run, "--out", other, "--force"), "--out", "holds no emulator")
    usage_error(cli("export", run, "--out", tmp_path / "x", "--format", "tflite"), "--format", "tflite")
    monkeypatch.setitem(sys.modules, "onnx", None)
    usage_error(cli("export", run, "--out", tmp_path / "y", "--format", "onnx"), "--format", "funcae[onnx]")
    assert not (tmp_path / "y").exists()
