"""Shared fixtures: a CLI runner that goes through the real Typer app, and one trained smoke run."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from funcae_cli.cli import app

REPO = Path(__file__).resolve().parents[1]

if os.environ.get("PYTEST_XDIST_WORKER"):  # `make test` runs one worker per core: one thread each, subprocesses too
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    torch.set_num_threads(1)
CONFIGS = REPO / "configs"


@contextmanager
def torch_threads(n: int) -> Iterator[None]:
    """torch's intra-op threads set to n inside the block (restored after): a test of what depends on them."""
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def ok(result) -> None:
    assert result.exit_code == 0, result.stdout + result.stderr


def usage_error(result, *pieces: str) -> None:
    """Exit 2, one clear line on stderr naming what was wrong, nothing on stdout."""
    assert result.exit_code == 2, result.stdout + result.stderr
    assert result.stderr.startswith("error:") and "Traceback" not in result.stderr
    for piece in pieces:
        assert piece in result.stderr, f"{piece!r} not in {result.stderr!r}"
    assert result.stdout == ""


class Cli:
    """`cli("train", "configs/smoke.yaml")` -> click Result (exit_code, stdout, stderr)."""

    def __init__(self) -> None:
        self.runner = CliRunner()

    def __call__(self, *args: str):
        return self.runner.invoke(app, [str(a) for a in args], catch_exceptions=False)


@pytest.fixture(scope="session", autouse=True)
def native_cache(tmp_path_factory: pytest.TempPathFactory):
    """Native kernels compile into a per-session folder, not the user's ~/.cache (subprocesses inherit it)."""
    old = os.environ.get("FUNCAE_CACHE_DIR")
    os.environ["FUNCAE_CACHE_DIR"] = str(tmp_path_factory.mktemp("native-cache"))
    yield
    if old is None:
        os.environ.pop("FUNCAE_CACHE_DIR", None)
    else:
        os.environ["FUNCAE_CACHE_DIR"] = old


POSTGRES_ENV = "FUNCAE_TEST_POSTGRES_URL"


@pytest.fixture
def postgres_url() -> str:
    """The URL of a real PostgreSQL server (`.ci/run` starts one; locally: `source .ci/postgres.sh`)."""
    url = os.environ.get(POSTGRES_ENV)
    if not url:
        pytest.skip(f"no PostgreSQL server: {POSTGRES_ENV} is unset (`source .ci/postgres.sh` starts one)")
    return url


@pytest.fixture
def cli() -> Cli:
    return Cli()


@pytest.fixture
def workdir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A fresh working directory holding a copy of configs/; runs/ is created there."""
    shutil.copytree(CONFIGS, tmp_path / "configs")
    monkeypatch.chdir(tmp_path)
    return tmp_path


@pytest.fixture(scope="session")
def smoke_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A run trained once per test session from configs/smoke.yaml (read-only for tests: copy to modify)."""
    root = tmp_path_factory.mktemp("smoke")
    shutil.copytree(CONFIGS, root / "configs")
    cwd = os.getcwd()
    os.chdir(root)
    try:
        result = CliRunner().invoke(app, ["train", "configs/smoke.yaml", "--quiet"], catch_exceptions=False)
        assert result.exit_code == 0, result.output
    finally:
        os.chdir(cwd)
    return root / "runs" / "smoke"


@pytest.fixture
def smoke_copy(smoke_run: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A private, writable copy of the smoke run; the working directory is its parent's parent."""
    dst = tmp_path / "runs" / "smoke"
    shutil.copytree(smoke_run, dst, symlinks=True)
    (tmp_path / "runs" / "latest").symlink_to("smoke")
    shutil.copytree(CONFIGS, tmp_path / "configs")
    monkeypatch.chdir(tmp_path)
    return dst


@pytest.fixture(scope="session")
def rotation_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small run of configs/rotation_curve_observed.yaml (its priors and grid, a smaller model and data set),
    trained once per session (read-only for tests: copy to modify)."""
    root = tmp_path_factory.mktemp("rotation")
    shutil.copytree(CONFIGS, root / "configs")
    cwd = os.getcwd()
    os.chdir(root)
    try:
        args = ["train", "configs/rotation_curve_observed.yaml", "--quiet", "--no-plots",
                "--set", "data.n=6000", "--set", "train.epochs=12", "--set", "model.hidden=[64,64]",
                "--set", "train.lr=3e-3", "--set", "train.batch_size=256"]  # fmt: skip
        result = CliRunner().invoke(app, args, catch_exceptions=False)
        assert result.exit_code == 0, result.output
    finally:
        os.chdir(cwd)
    return root / "runs" / "rotation_curve_observed"


@pytest.fixture
def rotation_copy(rotation_run: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A copy of the session's rotation-curve run under tmp_path/runs/rot, the working directory tmp_path."""
    dst = tmp_path / "runs" / "rot"
    shutil.copytree(rotation_run, dst)
    monkeypatch.chdir(tmp_path)
    return dst
