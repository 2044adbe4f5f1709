"""The benchmark and reproduction code runs at a tiny size, so it cannot rot. No timing assertions."""

from __future__ import annotations

from pathlib import Path

import pytest

from benchmarks import reproduce
from benchmarks import run as bench


@pytest.mark.slow
def test_every_benchmark_row_runs_at_tiny_scale(tmp_path: Path) -> None:
    out = tmp_path / "BENCH.md"
    assert bench.main(["--scale", "0.005", "--repeats", "1", "--out", str(out)]) == 0
    text = out.read_text()
    for name in ("generate", "training epoch", "notebook quality", "memory", "PCA", "sweep trials per minute"):
        assert name in text
    assert "| row | funcae | notebook-style | ratio | target |" in text
    assert "step engine: " in text and "native kernels:" in text  # which engine wins is measured, not assumed


def test_unknown_row_is_a_usage_error() -> None:
    with pytest.raises(SystemExit) as e:
        bench.main(["--rows", "nope", "--out", ""])
    assert e.value.code == 2


@pytest.mark.slow
def test_reproduce_quick_writes_the_table(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "REPRO.md"
    assert reproduce.main(["--quick", "--only", "rotation", "--out", str(out), "--runs", str(tmp_path / "r")]) == 0
    text = out.read_text()
    assert "004 rotation-curve AE" in text and "val MSE (global std)" in text
    assert (tmp_path / "r" / "rotation_reference" / "metrics.json").exists()
