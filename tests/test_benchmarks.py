"""The benchmark and reproduction code runs at a tiny size, so it cannot rot. No timing assertions."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from benchmarks import pools, reproduce, seed_band
from benchmarks import run as bench

# each row in its own test, so the test processes (make test: one per core) share them out
ROW_TITLES = {"gen": "generate", "epoch": "training epoch", "quality": "notebook quality", "invert": "invert",
              "memory": "memory", "pca": "PCA", "observed": "observed", "one_call": "one `funcae invert` call",
              "posterior": "posterior", "sweep": "sweep trials per minute",
              "amortized": "amortized posteriors of observed curves"}  # fmt: skip


def test_every_row_is_tested() -> None:
    assert set(ROW_TITLES) == set(bench.ROWS)


@pytest.mark.slow
@pytest.mark.parametrize("row", list(ROW_TITLES))
def test_every_benchmark_row_runs_at_tiny_scale(row: str, tmp_path: Path) -> None:
    out = tmp_path / "BENCH.md"
    scale = "0.001" if row == "amortized" else "0.005"  # amortized: 100 curves (its untrained flow takes every look)
    assert bench.main(["--rows", row, "--scale", scale, "--repeats", "1", "--out", str(out)]) == 0
    text = out.read_text()
    assert ROW_TITLES[row] in text
    assert "| row | funcae | notebook-style | ratio | target |" in text and "native kernels:" in text
    if row == "epoch":
        assert "step engine: " in text  # which engine wins is measured, not assumed


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


@pytest.mark.slow
def test_seed_band_quick_writes_the_table(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rows = tmp_path / "rows.json"
    argv = ["--quick", "--only", "rotation", "--common", "500", "--runs", str(tmp_path / "r"), "--json", str(rows),
            "--set", "model.hidden=[16,16]"]  # fmt: skip
    assert seed_band.main(argv) == 0
    table = capsys.readouterr().out
    assert (
        "| rotation_curve.yaml | common-set global-std MSE |" in table
        and "| rotation_curve.yaml | test global" in table
    )
    got = json.loads(rows.read_text())["rows"]
    assert [len(r["seeds"]) for r in got] == [3, 3]
    common = got[0]["seeds"]
    assert len(set(common)) == 3 and all(v > 0 for v in common)  # three trainings, three models
    assert got[0]["max_over_min"] == pytest.approx(max(common) / min(common))
    cfg = yaml.safe_load((tmp_path / "r" / "rotation_seed1" / "config.yaml").read_text())
    assert cfg["seed"] == 1 and cfg["model"]["hidden"] == [16, 16]  # the override reached every training


@pytest.mark.slow
def test_pools_compares_calls_with_one_call(smoke_run: Path, tmp_path: Path) -> None:
    """benchmarks.pools at a tiny size: validate's curves in calls of 5 and in one call, the same answers."""
    rec = tmp_path / "pools.json"
    argv = [str(smoke_run), "--n", "12", "--chunk", "5", "--set", "max_steps=300", "--set", "walkers=16",
            "--json", str(rec)]  # fmt: skip
    assert pools.main(argv) == 0
    got = json.loads(rec.read_text())
    assert got["identical"] is True and got["n"] == 12 and got["calls_s"] > 0 and got["pooled_s"] > 0
