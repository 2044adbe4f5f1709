"""Models, checkpoints and the trainer: shapes, round trips, reproducibility, resume, signals, guards."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from funcae_cli.config import load_config
from funcae_cli.errors import CheckpointError
from funcae_cli.models import ModelArgs, build_model
from funcae_cli.store.checkpoint import load_checkpoint, save_checkpoint
from funcae_cli.store.rundir import RunDir
from funcae_cli.store.trained import load_trained

from .conftest import CONFIGS, REPO

TIMING_KEYS = {"seconds"}


def _funcae(*args: str, cwd: Path, **kw) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.Popen(
        [sys.executable, "-m", "funcae_cli", *args],
        cwd=cwd,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        **kw,
    )


def _run(*args: str, cwd: Path, timeout: float = 300) -> subprocess.CompletedProcess:
    p = _funcae(*args, cwd=cwd)
    out, err = p.communicate(timeout=timeout)
    return subprocess.CompletedProcess(p.args, p.returncode, out.decode(), err.decode())


def _weights(path: Path) -> dict[str, torch.Tensor]:
    return load_checkpoint(path)["model"]


def _assert_same_weights(a: Path, b: Path) -> None:
    wa, wb = _weights(a), _weights(b)
    assert wa.keys() == wb.keys()
    for k in wa:
        assert torch.equal(wa[k], wb[k]), k


def _history(rd: Path) -> list[dict]:
    rows = json.loads((rd / "history.json").read_text())
    return [{k: v for k, v in r.items() if k not in TIMING_KEYS} for r in rows]


# --- models ---------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["ae", "vae"])
def test_model_shapes_and_finite_losses(kind: str) -> None:
    args = ModelArgs(kind=kind, n_points=30, latent_dim=3, hidden=[16, 8], activation="gelu")
    model = build_model(args)
    x = torch.randn(5, 30)
    out = model(x, torch.Generator().manual_seed(0))
    assert out.recon.shape == (5, 30)
    assert out.z.shape == (5, 3)
    assert model.encode(x).shape == (5, 3)
    assert model.decode(torch.zeros(2, 3)).shape == (2, 30)
    if kind == "vae":
        assert out.kl.shape == (5,) and bool((out.kl >= 0).all())
        assert out.mean.shape == out.logvar.shape == (5, 3)
    else:
        assert out.kl is None
    assert torch.isfinite(out.recon).all()


def test_decoder_mirrors_encoder_unless_given() -> None:
    m = build_model(ModelArgs(kind="ae", n_points=10, latent_dim=2, hidden=[8, 4]))
    widths = [layer.out_features for layer in m.decoder.net if isinstance(layer, torch.nn.Linear)]
    assert widths == [4, 8, 10]
    m2 = build_model(ModelArgs(kind="ae", n_points=10, latent_dim=2, hidden=[8, 4], decoder_hidden=[16]))
    widths = [layer.out_features for layer in m2.decoder.net if isinstance(layer, torch.nn.Linear)]
    assert widths == [16, 10]


def test_vae_kl_matches_closed_form() -> None:
    m = build_model(ModelArgs(kind="vae", n_points=6, latent_dim=2, hidden=[4]))
    x = torch.randn(3, 6)
    out = m(x, torch.Generator().manual_seed(1))
    sigma2 = out.logvar.exp()
    expected = (0.5 * (out.mean**2 + sigma2 - 1 - torch.log(sigma2))).sum(dim=1)
    torch.testing.assert_close(out.kl, expected)


def test_checkpoint_round_trip_is_exact(tmp_path: Path) -> None:
    m = build_model(ModelArgs(kind="vae", n_points=12, latent_dim=2, hidden=[8, 8]))
    path = tmp_path / "c.pt"
    save_checkpoint(path, {"model": m.state_dict(), "model_args": m.args.to_dict(), "extra": [1, 2.5, "x"]})
    ck = load_checkpoint(path)
    m2 = build_model(ck["model_args"])
    m2.load_state_dict(ck["model"])
    for (k, a), (k2, b) in zip(m.state_dict().items(), m2.state_dict().items()):
        assert k == k2 and torch.equal(a, b)
    assert ck["extra"] == [1, 2.5, "x"]
    assert not list(tmp_path.glob(".*tmp")), "atomic write left a temp file"


# --- checkpoints that must be refused --------------------------------------------------------


class _Evil:
    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_pickle_payload_is_refused_and_never_executed(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    path = tmp_path / "last.pt"
    torch.save({"format": "funcae-checkpoint", "version": 1, "model": _Evil(str(marker))}, path)
    with pytest.raises(CheckpointError, match="refused"):
        load_checkpoint(path)
    assert not marker.exists()


def test_truncated_and_foreign_checkpoints(tmp_path: Path) -> None:
    good = tmp_path / "good.pt"
    save_checkpoint(good, {"model": {"w": torch.ones(1000)}})
    trunc = tmp_path / "trunc.pt"
    trunc.write_bytes(good.read_bytes()[:200])
    with pytest.raises(CheckpointError, match="truncated or not a checkpoint"):
        load_checkpoint(trunc)
    foreign = tmp_path / "foreign.pt"
    torch.save({"state_dict": {}}, foreign)
    with pytest.raises(CheckpointError, match="foreign"):
        load_checkpoint(foreign)
    text = tmp_path / "text.pt"
    text.write_text("hello")
    with pytest.raises(CheckpointError):
        load_checkpoint(text)


# --- training through the CLI ----------------------------------------------------------------


def test_smoke_run_learns_and_is_complete(smoke_run: Path) -> None:
    hist = json.loads((smoke_run / "history.json").read_text())
    assert hist[-1]["val_loss"] < 0.5 * hist[0]["val_loss"]
    assert hist[-1]["train_loss"] < hist[0]["train_loss"]
    metrics = json.loads((smoke_run / "metrics.json").read_text())
    for key in ("sse_mean", "sse_median", "sse_p95", "rel_l2_median", "pca", "mse_global_std"):
        assert key in metrics["test"]
    for key in ("epochs", "wall_seconds", "curves_per_second", "device", "seed", "versions"):
        assert key in metrics
    ck = load_checkpoint(smoke_run / "checkpoints" / "last.pt")
    for key in ("model", "model_args", "normalizer", "config", "optimizer", "epoch", "rng", "versions", "data"):
        assert key in ck
    header = (smoke_run / "history.csv").read_text().splitlines()[0].split(",")
    assert {"epoch", "lr", "train_loss", "val_loss", "val_sse", "val_mse", "seconds"} <= set(header)


def test_train_refuses_to_overwrite_without_force(smoke_copy: Path, cli) -> None:
    before = (smoke_copy / "checkpoints" / "last.pt").read_bytes()
    r = cli("train", "configs/smoke.yaml")
    assert r.exit_code == 2
    assert "--force" in r.output
    assert (smoke_copy / "checkpoints" / "last.pt").read_bytes() == before


def test_device_cuda_without_cuda_exits_2(workdir: Path, cli) -> None:
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    r = cli("train", "configs/smoke.yaml", "--device", "cuda")
    assert r.exit_code == 2
    assert "CUDA is not available" in r.output
    assert not (workdir / "runs").exists()


def test_bad_device_string_exits_2(workdir: Path, cli) -> None:
    r = cli("train", "configs/smoke.yaml", "--device", "tpu")
    assert r.exit_code == 2 and "--device" in r.output


def test_same_seed_gives_bitwise_identical_weights(workdir: Path, cli) -> None:
    for name in ("a", "b"):
        r = cli("train", "configs/smoke.yaml", "--run-dir", f"runs/{name}", "-q", "--no-plots")
        assert r.exit_code == 0, r.output
    _assert_same_weights(workdir / "runs/a/checkpoints/last.pt", workdir / "runs/b/checkpoints/last.pt")
    assert _history(workdir / "runs/a") == _history(workdir / "runs/b")
    r = cli("train", "configs/smoke.yaml", "--run-dir", "runs/c", "-q", "--no-plots", "--set", "seed=1")
    a, c = _weights(workdir / "runs/a/checkpoints/last.pt"), _weights(workdir / "runs/c/checkpoints/last.pt")
    assert any(not torch.equal(a[k], c[k]) for k in a)


def test_divergence_exits_4_without_nonfinite_checkpoint(workdir: Path, cli) -> None:
    r = cli("train", "configs/smoke.yaml", "--set", "train.optimizer=sgd", "--set", "train.lr=1e4", "-q")
    assert r.exit_code == 4, r.output
    assert "diverged" in r.output and "epoch" in r.output and "step" in r.output
    for ck in (workdir / "runs/smoke/checkpoints").glob("*.pt"):
        for v in load_checkpoint(ck)["model"].values():
            assert torch.isfinite(v).all()


def test_vae_trains_with_kl_parts(workdir: Path, cli) -> None:
    r = cli(
        "train", "configs/smoke.yaml", "-q", "--no-plots", "--set", "model.kind=vae", "--set", "train.loss=gaussian",
        "--set", "train.eta=0.1", "--set", "train.kl_warmup_epochs=3",
    )  # fmt: skip
    assert r.exit_code == 0, r.output
    hist = json.loads((workdir / "runs/smoke/history.json").read_text())
    assert all(row["train_kl"] > 0 for row in hist)
    assert hist[-1]["val_recon"] < hist[0]["val_recon"]


@pytest.mark.parametrize(
    "override",
    ["train.batch_size=full", "train.scheduler.name=exponential", "train.scheduler.name=cosine", "train.optimizer=sgd",
     "train.optimizer=adamw", "train.grad_clip=1.0", "train.patience=2", "data.normalize=per_point",
     "data.normalize=global", "model.dropout=0.1", "train.noise.kind=mask", "train.weight_penalty=1e-3"],
)  # fmt: skip
def test_training_options_run(workdir: Path, cli, override: str) -> None:
    r = cli("train", "configs/smoke.yaml", "-q", "--no-plots", "--set", override, "--set", "train.epochs=3")
    assert r.exit_code == 0, r.output
    metrics = json.loads((workdir / "runs/smoke/metrics.json").read_text())
    assert metrics["test"]["sse_mean"] > 0


def test_decoded_curves_are_in_family_units(smoke_run: Path) -> None:
    """With per-point normalization the decoder still returns curves in the family's units."""
    trained = load_trained(RunDir(smoke_run), torch.device("cpu"))
    z = torch.zeros(1, trained.cfg.model.latent_dim)
    y = trained.decode(z)
    assert y.shape == (1, trained.grid.shape[0])


def test_log_transform_requires_positive_data(workdir: Path, cli) -> None:
    r = cli("train", "configs/smoke.yaml", "--set", "data.transform=log", "-q", "--no-plots")
    assert r.exit_code == 0, r.output  # the normal pdf is positive everywhere on the grid
    r = cli(
        "train", "configs/beta_vae.yaml", "--set", "data.transform=log", "--set", "data.n=200", "--run-dir", "runs/b",
    )  # fmt: skip
    assert r.exit_code == 2 and "data.transform" in r.output  # log-pdf values are negative
    assert not (workdir / "runs/b").exists()


# --- interruption and resume (real processes) -------------------------------------------------

LONG = ["--set", "train.epochs=400", "--set", "data.n=3000", "--no-plots"]


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The LONG run trained without interruption, once for the module's interrupt tests (read-only)."""
    tmp = tmp_path_factory.mktemp("uninterrupted")
    r = _run("train", str(CONFIGS / "smoke.yaml"), "--run-dir", "runs/full", "-q", *LONG, cwd=tmp)
    assert r.returncode == 0, r.stderr
    return tmp / "runs/full"


def _wait_for(path: Path, proc: subprocess.Popen, timeout: float = 60) -> None:
    t0 = time.time()
    while not path.exists():
        assert proc.poll() is None, proc.communicate()
        assert time.time() - t0 < timeout
        time.sleep(0.05)


@pytest.mark.slow
def test_sigkill_then_resume_equals_uninterrupted(tmp_path: Path, uninterrupted: Path) -> None:
    full = uninterrupted
    p = _funcae("train", str(CONFIGS / "smoke.yaml"), "--run-dir", "runs/k", "-q", *LONG, cwd=tmp_path)
    last = tmp_path / "runs/k/checkpoints/last.pt"
    _wait_for(last, p)
    time.sleep(0.7)
    p.send_signal(signal.SIGKILL)
    p.communicate()
    ck = load_checkpoint(last)  # loadable whatever the moment of the kill
    assert 0 < ck["epoch"] < 400, "the kill must land mid-run for this test to mean anything"
    r = _run("train", "--resume", "runs/k", "-q", "--no-plots", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    _assert_same_weights(full / "checkpoints/last.pt", tmp_path / "runs/k/checkpoints/last.pt")
    _assert_same_weights(full / "checkpoints/best.pt", tmp_path / "runs/k/checkpoints/best.pt")
    assert _history(full) == _history(tmp_path / "runs/k")


@pytest.mark.slow
@pytest.mark.parametrize("sig,code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_signal_saves_exits_and_resumes_exactly(tmp_path: Path, sig: int, code: int, uninterrupted: Path) -> None:
    full = uninterrupted
    p = _funcae("train", str(CONFIGS / "smoke.yaml"), "--run-dir", "runs/s", *LONG, cwd=tmp_path)
    _wait_for(tmp_path / "runs/s/checkpoints/last.pt", p)
    time.sleep(0.5)
    p.send_signal(sig)
    out, err = p.communicate(timeout=60)
    assert p.returncode == code, err.decode()
    err_text = err.decode()
    assert "funcae train --resume runs/s" in err_text
    assert "Traceback" not in err_text
    ck = load_checkpoint(tmp_path / "runs/s/checkpoints/last.pt")
    assert ck["epoch"] < 400
    r = _run("train", "--resume", "runs/s", "-q", "--no-plots", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    _assert_same_weights(full / "checkpoints/last.pt", tmp_path / "runs/s/checkpoints/last.pt")
    assert _history(full) == _history(tmp_path / "runs/s")


def test_resume_refuses_pickle_checkpoint(smoke_copy: Path, cli, tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    torch.save(
        {"format": "funcae-checkpoint", "version": 1, "x": _Evil(str(marker))}, smoke_copy / "checkpoints/last.pt"
    )
    r = cli("train", "--resume", str(smoke_copy))
    assert r.exit_code == 2 and "refused" in r.output
    assert not marker.exists()


def test_resume_without_checkpoint_exits_2(workdir: Path, cli) -> None:
    r = cli("train", "--resume", "runs/nothing")
    assert r.exit_code == 2 and "nothing to resume" in r.output


def test_train_reproduces_from_run_config(smoke_run: Path, workdir: Path) -> None:
    a = load_config(smoke_run / "config.yaml")
    b = load_config(CONFIGS / "smoke.yaml")
    assert a.to_dict() == b.to_dict()


@pytest.mark.parametrize("loss", ["sse", "mse", "gaussian"])
def test_fused_batch_loss_equals_mean_of_per_curve_loss(loss: str) -> None:
    from funcae_cli.config import TrainConfig
    from funcae_cli.training.losses import BATCH_LOSSES, LOSSES

    cfg = TrainConfig(loss=loss, eta=0.3)
    r, x = torch.randn(9, 13, generator=torch.Generator().manual_seed(0)), torch.zeros(9, 13)
    torch.testing.assert_close(BATCH_LOSSES[loss](r, x, cfg), LOSSES[loss](r, x, cfg).mean())


@pytest.mark.parametrize(
    ("transform", "normalize"), [("none", "none"), ("none", "global"), ("none", "per_point"), ("log", "global")]
)
def test_evaluate_sse_is_the_per_curve_sse_in_data_units(transform: str, normalize: str) -> None:
    """Each SSE path of evaluate() (one std, a std per point, a pointwise transform) is |decode(recon) - raw|^2."""
    from funcae_cli.data.dataset import generate
    from funcae_cli.training.evaluation import evaluate
    from funcae_cli.training.loop import model_args
    from funcae_cli.training.prepared import prepare

    cfg = load_config(
        CONFIGS / "smoke.yaml", ["data.n=300", f"data.transform={transform}", f"data.normalize={normalize}"]
    )
    prep = prepare(cfg, generate(cfg), torch.device("cpu"))
    torch.manual_seed(0)
    model = build_model(model_args(cfg, prep.x.shape[1])).eval()
    x = prep.x[prep.val]
    with torch.no_grad():
        expected = (prep.normalizer.decode(model(x).recon) - prep.normalizer.decode(x)).square().sum(dim=1)
    got = evaluate(model, prep, prep.val, cfg, 1.0)["sse"]
    torch.testing.assert_close(torch.as_tensor(got, dtype=torch.float32), expected, rtol=1e-4, atol=1e-6)
