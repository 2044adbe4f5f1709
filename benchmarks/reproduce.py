"""`make reproduce`: train every notebook's exact settings and the tuned configs; write REPRODUCTION.md.

    python -m benchmarks.reproduce [--only normal,beta,...] [--quick] [--out REPRODUCTION.md]

For each notebook: the figure the notebook reports, the figure funcae gets with the notebook's
own settings (configs/reference/), and with the tuned config (configs/), with wall time for each.
Runs are written under runs/reproduce/ so their figures can be looked at.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from funcae_cli.config import load_config
from funcae_cli.device import flush_denormals
from funcae_cli.jobs.heldout import inversion_residual
from funcae_cli.jobs.train import run_train
from funcae_cli.store.rundir import RunDir
from funcae_cli.store.trained import load_trained

REPO = Path(__file__).resolve().parents[1]
CONFIGS = REPO / "configs"


@dataclass
class Experiment:
    key: str
    notebook: str
    reference: str  # configs/reference/<file>
    tuned: str  # configs/<file>
    figures: dict[str, float | None]  # what the notebook reports, by metric name
    explain: str  # how the notebook's figure maps to ours


EXPERIMENTS = [
    Experiment(
        "normal", "000 normal-pdf AE", "reference/normal_000.yaml", "normal.yaml",
        {"per-curve SSE": 1.8446 / 256, "invert residual (median of 200)": 0.0467},
        "notebook: final average per-batch SSE 1.8446 over batches of 256 (training set) = per-curve SSE "
        "0.0072; funcae: mean per-curve SSE on the held-out test split. Notebook inversion: one target "
        "(mu=2.3721, sigma=1.6699) with Nelder-Mead; funcae: median over 200 random targets.",
    ),
    Experiment(
        "beta", "001 Beta log-pdf VAE", "reference/beta_vae_001.yaml", "beta_vae.yaml",
        {"per-curve SSE": 2 * 515762.4912 / 10_000 - 100, "invert residual (median of 200)": 0.138},
        "notebook: final epoch 'total log loss' 515762 = sum over 10,000 curves of 0.5*||x - (x_hat + eta*xi)||^2 "
        "with eta = 1 noise added to the reconstruction, so per-curve SSE ~ 2*51.58 - 100 (the noise's "
        "expected contribution over 100 points) = 3.15; funcae: test per-curve SSE of the posterior-mean "
        "reconstruction. Notebook inversion: one target (alpha=2.2155, beta=2.5044). funcae with the "
        "notebook's settings as shown (lr 1e-4 decaying x0.99 per epoch, batch 256) learns far less: the "
        "notebook's own log is already flat from epoch 50 (log loss 517,561 -> 515,762 over 1,950 epochs), "
        "so its model was most likely trained before the shown cell, e.g. with its train() defaults "
        "(lr 1e-3) and the batch-32 loader it defines earlier. Evidence: `--set train.lr=1e-3 --set "
        "train.batch_size=32` reaches a per-curve KL of 5.3 after 50 epochs, the notebook's 53,777/10,000 = "
        "5.4, and test SSE 1.1 after 200 epochs. We did not reproduce the notebook's hidden first stage.",
    ),
    Experiment(
        "rotation", "004 rotation-curve AE", "reference/rotation_curve_004.yaml", "rotation_curve.yaml",
        {"val MSE (global std)": 4.95e-4},
        "notebook: validation MSE of curves standardized by one global mean/std, after 1,000 full-batch "
        "epochs on 800 curves; funcae reports the same normalization whatever it trains with. With the "
        "notebook's settings funcae lands at 5.1e-4 to 5.5e-4 (the range over funcae versions whose float "
        "rounding differs) against 4.95e-4: one random draw of 1,000 curves and initial weights; the "
        "notebook's own log swings by 2x between epochs (e.g. 1.92e-3 at 750).",
    ),
    Experiment(
        "rotation_vae", "003 rotation-curve VAE", "reference/rotation_curve_vae_003.yaml",
        "rotation_curve_vae.yaml", {"val MSE (global std)": None},
        "notebook 003 shows its architecture but no training run or figure; funcae reports what it gets. "
        "Its ELBO adds a per-curve KL to a per-point MSE, so the KL term dominates and the posterior nearly "
        "collapses (0.42 with the notebook's settings); the tuned config uses a Gaussian likelihood with "
        "eta = 0.05 in standardized log-velocity space.",
    ),
]  # fmt: skip


def figures_of(rd: RunDir, exp: Experiment) -> dict[str, float | None]:
    m = json.loads(rd.metrics.read_text())
    out: dict[str, float | None] = {}
    for name in exp.figures:
        if name == "per-curve SSE":
            out[name] = m["test"]["sse_mean"]
        elif name.startswith("invert"):
            out[name] = inversion_residual(load_trained(rd, torch.device("cpu")))["residual_median"]
        elif name.startswith("val MSE"):
            out[name] = m["final"]["val_mse_std"] if m.get("best_epoch", 0) == m["epochs"] else _best_val_mse(rd)
    return out


def _best_val_mse(rd: RunDir) -> float:
    hist = json.loads(rd.history_json.read_text())
    best = min(hist, key=lambda r: r["val_loss"])
    return best["val_mse_std"]


def train_one(config: Path, run_dir: Path, overrides: list[str]) -> tuple[RunDir, float]:
    cfg = load_config(config, overrides)
    rd = RunDir(run_dir)
    t0 = time.perf_counter()
    run_train(cfg, rd, torch.device("cpu"), force=True)
    return rd, time.perf_counter() - t0


def fmt(v: float | None) -> str:
    return "—" if v is None else f"{v:.4g}"


def main(argv: list[str] | None = None) -> int:
    flush_denormals()  # as `funcae` does at start, before torch's worker threads exist
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--only", default="", help="comma-separated subset of " + ",".join(e.key for e in EXPERIMENTS))
    ap.add_argument("--quick", action="store_true", help="2 epochs on small data: checks the pipeline only")
    ap.add_argument("--out", default="REPRODUCTION.md")
    ap.add_argument("--runs", default="runs/reproduce")
    args = ap.parse_args(argv)
    keys = {k for k in args.only.split(",") if k} or {e.key for e in EXPERIMENTS}
    over = ["train.epochs=2", "data.n=400"] if args.quick else []
    lines = [
        "# Reproduction of the reference notebooks",
        "",
        "For each notebook: the figure it reports, funcae with the notebook's exact settings",
        "(`configs/reference/`), and funcae with the tuned config (`configs/`). CPU, "
        f"{torch.get_num_threads()} threads, torch {torch.__version__}. Reproduce: `make reproduce`.",
        "",
        "| notebook | metric | notebook | funcae, notebook settings | funcae, tuned | wall s (reference / tuned) |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    notes = []
    log: Callable[[str], None] = lambda s: print(s, file=sys.stderr, flush=True)  # noqa: E731
    for exp in EXPERIMENTS:
        if exp.key not in keys:
            continue
        results = {}
        for which, cfg in (("reference", exp.reference), ("tuned", exp.tuned)):
            log(f"{exp.key}: training {cfg} ...")
            rd, secs = train_one(CONFIGS / cfg, Path(args.runs) / f"{exp.key}_{which}", over)
            results[which] = (figures_of(rd, exp), secs)
            log(f"  {results[which]}")
        for name, nb in exp.figures.items():
            ref, t_ref = results["reference"]
            tun, t_tun = results["tuned"]
            cells = [exp.notebook, name, fmt(nb), fmt(ref[name]), fmt(tun[name]), f"{t_ref:.0f} / {t_tun:.0f}"]
            lines.append("| " + " | ".join(cells) + " |")
        notes.append(f"- **{exp.notebook}**: {exp.explain}")
    text = "\n".join(lines + ["", "## How the figures compare", "", *notes, ""])
    Path(args.out).write_text(text)
    log(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
