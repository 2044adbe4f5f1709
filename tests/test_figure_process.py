"""jobs.figure_process: a forked process draws a record's figures, byte for byte what this process draws; a failure
there leaves the figures to the caller; a process not sent a record, or whose parent dies, leaves and writes
nothing; none is left behind."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from matplotlib.figure import Figure

from funcae_cli import files
from funcae_cli.files import ForkedWrite, atomic_write_chunks, atomic_write_json, json_text, save_figure
from funcae_cli.jobs.figure_process import MAX_TARGETS, FigureProcess
from funcae_cli.plotting.base import warm_up_figure  # and its rcParams here, as in the process
from tests.test_save_figures import _no_children_left

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the process is forked: Linux only")


def _figure(values: list[float], title: str) -> Figure:
    fig = Figure(figsize=(4, 3))
    ax = fig.subplots()
    ax.loglog(np.arange(1, len(values) + 1), values, "o-", label="values")
    ax.set_title(title)
    ax.legend()
    return fig


def _draw(record: dict) -> dict:
    """What a command's figure function returns: {kind: a figure, or a function that builds it}."""
    if record.get("broken"):
        raise ValueError("cannot draw this record")
    return {"first": _figure(record["values"], "first"), "second": lambda: _figure(record["values"][::-1], "second")}


def _start(tmp_path: Path) -> FigureProcess:
    process = FigureProcess.start(lambda: _draw, warm_up_figure, lambda kind: tmp_path / f"{kind}.png")
    if process is None:  # one core, or another thread in this test process: nothing to test here
        pytest.skip("FigureProcess.start declined to fork here (one core or other threads)")
    return process


def test_the_process_draws_the_bytes_this_process_draws(tmp_path: Path) -> None:
    record = {"values": np.array([1.0, 3.0, 2.0, 5.0]), "targets": [{"name": "a"}]}  # sent as JSON: a list there
    process = _start(tmp_path)
    assert process.send(record)
    assert process.result() == ["first", "second"]
    process.close()  # idempotent after the result
    assert _no_children_left()
    here = tmp_path / "here"
    here.mkdir()
    save_figure(_figure(record["values"], "first"), here / "first.png")
    save_figure(_figure(list(record["values"][::-1]), "second"), here / "second.png")
    for kind in ("first", "second"):
        drawn = (tmp_path / f"{kind}.png").read_bytes()
        assert drawn[:8] == b"\x89PNG\r\n\x1a\n"
        assert drawn == (here / f"{kind}.png").read_bytes()


def test_a_failure_there_is_none_and_writes_nothing(tmp_path: Path) -> None:
    process = _start(tmp_path)
    assert process.send({"values": [1.0, 2.0], "broken": True})
    assert process.result() is None  # the caller draws here, and so raises the error here
    assert _no_children_left()
    assert list(tmp_path.iterdir()) == []


def test_a_process_never_sent_a_record_is_stopped_at_once_and_writes_nothing(tmp_path: Path) -> None:
    process = _start(tmp_path)
    t0 = time.perf_counter()
    process.close()  # e.g. the command failed on its input: no wait for the process's imports
    assert time.perf_counter() - t0 < 5
    process.close()
    assert _no_children_left()
    assert list(tmp_path.iterdir()) == []


def test_a_record_too_large_to_send_is_left_to_the_caller(tmp_path: Path) -> None:
    process = _start(tmp_path)
    assert not process.send({"values": [1.0], "targets": [{}] * (MAX_TARGETS + 1)})
    assert _no_children_left()
    assert list(tmp_path.iterdir()) == []


def test_the_process_leaves_when_its_parent_is_killed(tmp_path: Path) -> None:
    """A command killed for real (SIGKILL) while it solves: its figure process reads the end of the pipe and leaves
    without drawing."""
    script = f"""
import os, pathlib, signal, time
from funcae_cli.jobs.figure_process import FigureProcess
from funcae_cli.plotting.base import warm_up_figure
out = pathlib.Path({str(tmp_path)!r})
p = FigureProcess.start(lambda: dict, warm_up_figure, lambda kind: out / (kind + ".png"))
print(p.pid if p is not None else "none", flush=True)
time.sleep(1.0)
os.kill(os.getpid(), signal.SIGKILL)
"""
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert out.returncode == -9, out.stderr
    pid = out.stdout.strip()
    if pid == "none":
        pytest.skip("FigureProcess.start declined to fork here (one core)")

    def gone() -> bool:
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except FileNotFoundError:
            return True
        return state in ("Z", "X")  # exited (a zombie until whoever adopted it reaps it)

    deadline = time.monotonic() + 60
    while not gone() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert gone()
    assert list(tmp_path.iterdir()) == []


def test_a_forked_write_writes_the_bytes_written_here_and_a_failure_writes_nothing(tmp_path: Path) -> None:
    lines = [f"{i},{i * 0.5!r}\n" for i in range(20_000)]
    writer = ForkedWrite.start(tmp_path / "forked.csv", lambda: iter(lines))
    if writer is None:
        pytest.skip("ForkedWrite.start declined to fork here (one core or other threads)")
    atomic_write_chunks(tmp_path / "here.csv", iter(lines))
    assert writer.wait() and not writer.wait()  # reaped once
    assert (tmp_path / "forked.csv").read_bytes() == (tmp_path / "here.csv").read_bytes()

    def broken():
        yield "a,b\n"
        raise ValueError("cannot make this table")

    failing = ForkedWrite.start(tmp_path / "broken.csv", broken)
    assert failing is not None and not failing.wait()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["forked.csv", "here.csv"]  # no temp file either
    assert _no_children_left()


def test_a_long_records_rows_encoded_half_in_a_forked_process_are_the_text_of_one_process(
    tmp_path: Path, monkeypatch
) -> None:
    """A catalogue's JSON record: its rows' second half encoded by a forked process gives the bytes this process
    gives alone (and json's own reading of them); a failed process leaves that half to this one, the same bytes."""
    rows = [{"index": i, "name": f"g{i:05d}", "q": [i * 0.1, None, 1e-300], "flag": ["x"] * (i % 3)}
            for i in range(301)]  # fmt: skip
    record = {"run": "r", "targets": rows, "files": {"json": "a.json"}}
    monkeypatch.setattr(files, "FORKED_JSON_ROWS", 10**9)
    atomic_write_json(tmp_path / "alone.json", record, rows="targets")
    monkeypatch.setattr(files, "FORKED_JSON_ROWS", 100)
    forks = []
    monkeypatch.setattr(files, "fork_child", lambda work, real=files.fork_child: forks.append(1) or real(work))
    atomic_write_json(tmp_path / "forked.json", record, rows="targets")
    if not forks:
        pytest.skip("the rows were not forked here (one core or other threads)")
    alone = (tmp_path / "alone.json").read_bytes()
    assert (tmp_path / "forked.json").read_bytes() == alone
    assert json.loads(alone) == json.loads(json_text(record))

    def failing(work, real=files.fork_child):  # a process that dies before it writes
        return real(lambda: os._exit(3))

    monkeypatch.setattr(files, "fork_child", failing)
    atomic_write_json(tmp_path / "failed.json", record, rows="targets")
    assert (tmp_path / "failed.json").read_bytes() == alone
    assert _no_children_left()


@pytest.mark.slow
def test_invert_draws_its_figures_and_writes_its_csv_in_processes_byte_for_byte_as_without(
    cli, rotation_copy: Path, monkeypatch
):
    """`funcae invert` on a batch: the figures come from the forked figure process and the CSV from a forked writer
    (not a silent fallback; both at once, so neither waits on the other's pipes), and they are the bytes the
    command writes in its own process."""
    import torch

    from benchmarks.observed import galaxies, write_long_csv
    from funcae_cli.inversion.physics import natural_bounds
    from funcae_cli.jobs import invert as invert_job
    from funcae_cli.store.rundir import RunDir
    from funcae_cli.store.trained import load_trained
    from tests.conftest import ok

    trained = load_trained(RunDir(rotation_copy), torch.device("cpu"))
    bounds = natural_bounds(trained, "prior")
    write_long_csv(galaxies(14, 3, bounds.low.numpy(), bounds.high.numpy()), "cat.csv")
    started, real_figures, real_write = [], FigureProcess.start, ForkedWrite.start

    def spy(real):
        def start(*args, **kwargs):
            started.append(real(*args, **kwargs))
            return started[-1]

        return staticmethod(start)

    monkeypatch.setattr(FigureProcess, "start", spy(real_figures))
    monkeypatch.setattr(ForkedWrite, "start", spy(real_write))
    monkeypatch.setattr(invert_job, "FORKED_CSV_TARGETS", 0)  # a catalogue's path on 14 targets
    ok(cli("invert", "--run", rotation_copy, "--curves", "cat.csv", "--name", "forked"))
    if None in started or len(started) != 2:
        pytest.skip("a process was declined here (one core or other threads)")
    monkeypatch.setattr(FigureProcess, "start", staticmethod(lambda *args, **kwargs: None))
    monkeypatch.setattr(invert_job, "FORKED_CSV_TARGETS", 10**9)
    ok(cli("invert", "--run", rotation_copy, "--curves", "cat.csv", "--name", "here"))
    inv = rotation_copy / "invert"
    for kind in ("", "_page", "_summary"):
        forked = (inv / f"forked{kind}.png").read_bytes()
        assert forked[:4] == b"\x89PNG" and forked == (inv / f"here{kind}.png").read_bytes(), kind
    assert (inv / "forked.csv").read_bytes() == (inv / "here.csv").read_bytes()
    assert _no_children_left()
