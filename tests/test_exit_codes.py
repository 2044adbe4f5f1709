"""Stable exit codes: 0 ok, 1 bug (traceback), 2 usage/config/input, 130/143 SIGINT/SIGTERM.

Config errors must exit 2 with the dotted path in a one-line message, and create no run directory.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from funcae_cli.cli import main

from .conftest import usage_error

ROTTEN = {
    "unknown_key": ("model:\n  latnet_dim: 3\n", [], ["model.latnet_dim", "did you mean model.latent_dim?"]),
    "wrong_type": ("data:\n  n: many\n", [], ["data.n", "many"]),
    "bad_range": (
        "family:\n  name: normal\n  params:\n    sigma: {dist: uniform, low: -1, high: 2}\n",
        [],
        ["family.params.sigma.low", "-1"],
    ),
    "malformed_yaml": ("name: x\nseed: 0\nmodel:\n  latent_dim: 2\n hidden: [8]\n", [], ["line 5"]),
    "missing_file": (None, [], ["nope.yaml"]),
    "unknown_family": ("family:\n  name: gauss\n", [], ["family.name", "gauss", "normal", "beta", "rotation_curve"]),
    "grid_range": ("grid: {kind: linspace, start: 0, stop: 1, num: 1}\n", [], ["grid.num"]),
    "several": (
        "model:\n  latnet_dim: 3\ntrain:\n  lr: -1\ndata:\n  n: many\n",
        [],
        ["model.latnet_dim", "train.lr", "data.n"],
    ),
    "set_syntax": ("name: x\n", ["--set", "foo"], ["--set", "foo"]),
    "set_unknown_key": ("name: x\n", ["--set", "model.latnet_dim=3"], ["model.latnet_dim", "did you mean"]),
    "set_range": ("name: x\n", ["--set", "train.lr=-1e-3"], ["train.lr"]),
}


@pytest.fixture
def restore_signals():
    """main() installs SIGINT/SIGTERM handlers; put pytest's back afterwards."""
    old = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    yield
    for s, h in old.items():
        signal.signal(s, h)


@pytest.mark.parametrize("command", ["generate", "train", "config show"])
@pytest.mark.parametrize("case", list(ROTTEN))
def test_config_error_exits_2_with_the_path_and_writes_nothing(cli, workdir, command, case):
    text, extra, expected = ROTTEN[case]
    path = workdir / "configs" / ("nope.yaml" if text is None else "rotten.yaml")
    if text is not None:
        path.write_text(text)
    run_dir = [] if command == "config show" else ["--run-dir", "out/run"]
    result = cli(*command.split(), path, *extra, *run_dir)
    assert result.exit_code == 2, result.output
    for piece in expected:
        assert piece in result.stderr, f"{piece!r} not in {result.stderr!r}"
    assert "Traceback" not in result.output
    assert result.stdout == ""
    assert not (workdir / "runs").exists() or not any((workdir / "runs").iterdir())
    assert not (workdir / "out").exists()


def test_error_message_is_prefixed_and_on_stderr(cli, workdir):
    (workdir / "configs" / "rotten.yaml").write_text("model:\n  latnet_dim: 3\n")
    result = cli("generate", "configs/rotten.yaml")
    assert result.stderr.startswith("error:")
    assert "configs/rotten.yaml" in result.stderr  # the file the problem is in


@pytest.mark.parametrize(
    "argv, code",
    [
        (["--version"], 0),
        (["config", "check", "configs/smoke.yaml"], 0),
        (["generate", "configs/smoke.yaml", "--n", "20"], 0),
        (["generate", "configs/nope.yaml"], 2),
        (["generate"], 2),
        (["generate", "configs/smoke.yaml", "--bogus"], 2),
        (["generate", "configs/smoke.yaml", "--n", "many"], 2),
        (["no-such-command"], 2),
        (["generate", "configs/smoke.yaml", "--seed", str(2**70)], 2),
    ],
    ids=lambda v: " ".join(v) if isinstance(v, list) else None,
)
def test_main_returns_the_exit_code(workdir, restore_signals, capsys, argv, code):
    assert main(argv) == code, capsys.readouterr()


def test_existing_run_directory_is_exit_2(workdir, restore_signals, capsys):
    assert main(["generate", "configs/smoke.yaml", "--n", "20"]) == 0
    assert main(["generate", "configs/smoke.yaml", "--n", "20"]) == 2
    assert "--force" in capsys.readouterr().err


# --- real processes: a bug is exit 1 with a traceback; signals are 130/143 ----------------------

PATCHED = """
import sys, time
import funcae_cli.jobs.generate as g  # the job the command runs

def replacement(*args, **kwargs):
    {body}

g.run_generate = replacement
from funcae_cli.cli import main
sys.exit(main(["generate", "configs/smoke.yaml"]))
"""


def _spawn(workdir: Path, body: str) -> subprocess.Popen:
    code = textwrap.dedent(PATCHED).format(body=body)
    env = {k: v for k, v in os.environ.items() if k not in ("FORCE_COLOR", "CLICOLOR_FORCE", "TTY_COMPATIBLE")}
    return subprocess.Popen(
        [sys.executable, "-c", code],
        cwd=workdir,
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


@pytest.mark.slow
def test_unexpected_exception_is_exit_1_with_a_traceback(workdir):
    proc = _spawn(workdir, "raise RuntimeError('boom from a bug')")
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 1, err
    assert "Traceback" in err and "boom from a bug" in err


@pytest.mark.slow
@pytest.mark.parametrize("signum, code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)], ids=["SIGINT", "SIGTERM"])
def test_signal_exit_codes(workdir, signum, code):
    proc = _spawn(workdir, "print('ready', flush=True); time.sleep(60)")
    try:
        assert proc.stdout.readline().strip() == "ready", proc.stderr.read()
        proc.send_signal(signum)
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == code, err
    assert "Traceback" not in err
    assert not (workdir / "runs").exists()


# --- requests that cannot fit, and options out of range: exit 2 before anything is allocated or written ---


@pytest.mark.parametrize(
    "override, pieces",
    [
        ("grid.num=1000000000000", ["grid.num", "PiB", "available on this machine"]),
        ("data.n=1000000000000", ["data.n", "TiB", "available on this machine"]),
    ],
)
@pytest.mark.parametrize("command", ["generate", "train"])
def test_a_data_set_that_cannot_fit_is_exit_2_before_allocating(cli, workdir, command, override, pieces):
    result = cli(command, "configs/smoke.yaml", "--set", override, "--run-dir", "out/run")
    usage_error(result, *pieces)
    assert not (workdir / "out").exists()


def test_sampling_more_curves_than_fit_is_exit_2(cli, smoke_copy):
    before = sorted(p.name for p in smoke_copy.iterdir())
    usage_error(cli("sample", "-n", "1000000000000"), "--n", "TiB")
    assert sorted(p.name for p in smoke_copy.iterdir()) == before


@pytest.mark.parametrize(
    "args, pieces",
    [
        (["--method", "adam", "--lr", "-1"], ["--lr", "must be > 0"]),
        (["--lr", "0"], ["--lr", "must be > 0"]),
        (["--starts", "-1"], ["--starts"]),
        (["--max-iter", "0"], ["--max-iter"]),
        (["--seed", "-3"], ["--seed"]),
    ],
)
def test_invert_options_out_of_range_are_exit_2(cli, smoke_copy, args, pieces):
    usage_error(cli("invert", "--mu", "0", "--sigma", "1", *args), *pieces)
    assert not (smoke_copy / "invert").exists()


def test_an_empty_config_file_is_exit_2_and_trains_nothing(cli, workdir):
    (workdir / "configs" / "empty.yaml").write_text("# nothing yet\n")
    usage_error(cli("train", "configs/empty.yaml", "--run-dir", "out/run"), "empty config", "empty.yaml")
    assert not (workdir / "out").exists()
