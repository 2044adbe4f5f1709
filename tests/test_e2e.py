"""End to end through the real CLI: train the smoke config and assert the exact run directory."""

from __future__ import annotations

import json
from pathlib import Path

EXPECTED_TRAIN_FILES = {
    "config.yaml",
    "checkpoints/best.pt",
    "checkpoints/last.pt",
    "checkpoints/regressor.pt",
    "history.csv",
    "history.json",
    "metrics.json",
    "plots/decoder_grid.png",
    "plots/latent.png",
    "plots/loss.png",
    "plots/reconstruction.png",
    "status.json",
}


def _files(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*") if p.is_file()}


def test_train_writes_exactly_the_documented_files(workdir: Path, cli) -> None:
    r = cli("train", "configs/smoke.yaml", "--json")
    assert r.exit_code == 0, r.output
    metrics = json.loads(r.stdout)  # --json: stdout is one JSON document
    run = workdir / "runs" / "smoke"
    assert _files(run) == EXPECTED_TRAIN_FILES
    assert (workdir / "runs" / "latest").resolve() == run.resolve()
    assert metrics["test"]["sse_mean"] == json.loads((run / "metrics.json").read_text())["test"]["sse_mean"]
    assert len(json.loads((run / "history.json").read_text())) == 20


def test_pipeline_train_invert_sample_encode_plot(workdir: Path, cli) -> None:
    assert cli("train", "configs/smoke.yaml", "-q").exit_code == 0
    run = workdir / "runs" / "smoke"
    r = cli("invert", "--mu", "0.5", "--sigma", "1.2", "--json")
    assert r.exit_code == 0, r.output
    json.loads(r.stdout)
    assert list((run / "invert").glob("*.json")) and list((run / "invert").glob("*.png"))
    assert cli("sample", "-n", "8").exit_code == 0
    assert (run / "samples.npz").exists() and (run / "samples.png").exists()
    assert cli("encode").exit_code == 0
    assert (run / "latents.npz").exists()
    r = cli("plot", "--json")
    assert r.exit_code == 0, r.output
    written = set(json.loads(r.stdout)["written"])
    kinds = {"loss", "latent", "decoder_grid", "reconstruction", "corner", "invert", "samples", "pca", "data"}
    assert kinds <= written
    for kind in kinds:
        assert (run / "plots" / f"{kind}.png").stat().st_size > 5000
