"""The training loop: tensors on the device, seeded permutation batches, exact resume.

`prepare(cfg, ds, device)` normalizes the data in place and splits it; `Trainer.run()` trains,
checkpointing through a callback, and returns the history. Nothing here prints.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from funcae_cli.config import Config, NoiseConfig
from funcae_cli.data import Dataset, Normalizer, moments, split_sizes
from funcae_cli.datasets import image_shape
from funcae_cli.device import flush_denormals
from funcae_cli.engines import select_step
from funcae_cli.errors import CheckpointError, DivergedError, Interrupted
from funcae_cli.losses import CORRUPTIONS, LOSSES, SQUARED_ERROR
from funcae_cli.models import ModelArgs, build_model
from funcae_cli.optim import OPTIMIZERS, FlatParams
from funcae_cli.schedules import SCHEDULES

LOSS_PARTS = ("loss", "recon", "kl")


@dataclass
class Prepared:
    """Data on the device, in training space, with its splits and normalizer."""

    x: Tensor  # (n, n_points) normalized, on device
    params: Tensor  # (n, n_params) float64, CPU
    normalizer: Normalizer  # on device
    train: slice
    val: slice
    test: slice
    global_std: float  # std of the raw training curves: notebook 004's MSE normalization
    grid: Tensor  # (n_points,) float64
    param_names: list[str] = field(default_factory=list)  # from the data set (file data may carry its own)
    labels: Tensor | None = None

    _raw_norms: dict[tuple[int, int], Tensor] = field(default_factory=dict, repr=False)

    @property
    def n_train(self) -> int:
        return self.train.stop - self.train.start

    def raw_norms(self, part: slice, chunk: int = 2048) -> Tensor:
        """Per-curve L2 norms in data units of one split (the rel_l2 denominators), computed once."""
        key = (part.start, part.stop)
        if key not in self._raw_norms:
            xs = self.x[part]
            self._raw_norms[key] = torch.cat(
                [torch.linalg.vector_norm(self.normalizer.decode(xs[i : i + chunk]), dim=1)
                 for i in range(0, xs.shape[0], chunk)] or [xs.new_zeros(0)]
            )  # fmt: skip
        return self._raw_norms[key]


def prepare(cfg: Config, ds: Dataset, device: torch.device) -> Prepared:
    splits = split_sizes(ds.curves.shape[0], cfg.data.val_fraction, cfg.data.test_fraction)
    raw_train = ds.curves[splits.train]
    sub = raw_train[: min(len(raw_train), 50_000)]  # the statistics need no more
    norm = Normalizer.fit(sub, cfg.data.transform, cfg.data.normalize)
    global_std = float(moments(sub)[1])
    x = ds.curves.to(device)  # one copy on the device (none on CPU)
    norm_dev = norm.to(device)
    norm_dev.encode_(x)
    return Prepared(
        x,
        ds.params,
        norm_dev,
        splits.train,
        splits.val,
        splits.test,
        global_std,
        ds.grid,
        list(ds.param_names),
        ds.labels,
    )


def model_args(cfg: Config, n_points: int) -> ModelArgs:
    m = cfg.model
    return ModelArgs(
        kind=m.kind,
        n_points=n_points,
        latent_dim=m.latent_dim,
        hidden=list(m.hidden),
        decoder_hidden=list(m.decoder_hidden) if m.decoder_hidden is not None else None,
        activation=m.activation,
        dropout=m.dropout,
        input_dropout=m.input_dropout,
    )


class StopFlag:
    """Set by a signal handler; the loop saves and stops at the next step boundary."""

    def __init__(self) -> None:
        self.signum: int | None = None

    def request(self, signum: int) -> None:
        self.signum = signum


@dataclass
class TrainState:
    epoch: int = 0  # epochs completed
    step: int = 0  # steps completed inside the current epoch (non-zero only after an interrupt)
    sums: list[float] = field(default_factory=lambda: [0.0, 0.0, 0.0, 0.0])  # loss, recon, kl, n
    epoch_seconds: float = 0.0
    history: list[dict[str, Any]] = field(default_factory=list)
    best_val: float = math.inf
    best_epoch: int = -1
    bad_epochs: int = 0
    wall_seconds: float = 0.0


def _sse(prep: Prepared, x: Tensor, recon: Tensor) -> Tensor:
    """Per-curve sum of squares in data units `(batch,)`; x and recon in training space."""
    return torch.linalg.vector_norm(prep.normalizer.decode(recon).sub_(prep.normalizer.decode(x)), dim=1).square_()


def _eval_noise_generator(prep: Prepared, cfg: Config) -> torch.Generator:
    """Fixed seed: evaluation corrupts the same entries every epoch, so epochs compare."""
    return torch.Generator(device=prep.x.device).manual_seed(cfg.seed + 2)


@torch.no_grad()
def evaluate(model: nn.Module, prep: Prepared, part: slice, cfg: Config, kl_weight: float) -> dict[str, Any]:
    """Per-curve losses on one split: training-space loss parts and data-unit SSE/MSE.

    Denoising runs (train.noise.kind != none) add `noisy_recon`, `noisy_sse` and `noisy_mse`: the
    same figures for corrupted inputs against the clean curves.
    """
    model.eval()
    loss_fn = LOSSES[cfg.train.loss]
    noise = cfg.train.noise if cfg.train.noise.kind != "none" else None
    gen = _eval_noise_generator(prep, cfg) if noise is not None else None
    xs = prep.x[part]
    raw_norms = prep.raw_norms(part)
    n_points = xs.shape[1]
    divisor, const = SQUARED_ERROR[cfg.train.loss](1, n_points, cfg.train)  # per-curve loss = |d|^2 / divisor + const
    scale = 1.0 / divisor
    linear = prep.normalizer.transform == "none"  # data units = training units * std + mean
    std = prep.normalizer.std
    std_sq = std.square() if linear and std.ndim == 0 else None  # one std for all points: SSE = |d|^2 std^2
    keys = ["loss", "recon", "kl", "sse", "mse", "rel_l2"] + (
        ["noisy_recon", "noisy_sse", "noisy_mse"] if noise else []
    )
    out: dict[str, list[Tensor]] = {k: [] for k in keys}
    for i in range(0, xs.shape[0], cfg.train.eval_batch_size):
        x = xs[i : i + cfg.train.eval_batch_size]
        o = model(x)
        # Few passes over (chunk, n_points): these run every epoch.
        d = o.recon - x
        sq = torch.linalg.vector_norm(d, dim=1).square_()
        recon = sq * scale + const
        kl = o.kl if o.kl is not None else torch.zeros_like(recon)
        if std_sq is not None:
            sse = sq.mul_(std_sq)
        elif linear:
            sse = torch.linalg.vector_norm(d.mul_(std), dim=1).square_()
        else:
            sse = _sse(prep, x, o.recon)
        out["loss"].append(recon + kl_weight * kl)
        out["recon"].append(recon)
        out["kl"].append(kl)
        out["sse"].append(sse)
        out["mse"].append(sse / x.shape[1])
        out["rel_l2"].append(sse.sqrt() / raw_norms[i : i + x.shape[0]].clamp_min(1e-30))
        if noise is not None:
            o_noisy = model(CORRUPTIONS[noise.kind](x, noise, gen))
            sse_noisy = _sse(prep, x, o_noisy.recon)
            out["noisy_recon"].append(loss_fn(o_noisy.recon, x, cfg.train))
            out["noisy_sse"].append(sse_noisy)
            out["noisy_mse"].append(sse_noisy / x.shape[1])
    return {k: torch.cat(v).double().cpu().numpy() for k, v in out.items()}


class Trainer:
    def __init__(
        self,
        cfg: Config,
        prep: Prepared,
        device: torch.device,
        stop: StopFlag | None = None,
        on_epoch: Callable[[dict[str, Any]], None] | None = None,
        on_step: Callable[[int, int], None] | None = None,
        save: Callable[[str, dict[str, Any]], None] | None = None,
    ):
        self.cfg, self.prep, self.device = cfg, prep, device
        self.stop = stop or StopFlag()
        self.on_epoch = on_epoch or (lambda row: None)
        self.on_step = on_step or (lambda step, total: None)
        self.save = save or (lambda which, payload: None)
        t = cfg.train
        flush_denormals()  # this thread; the CLI sets it before worker threads exist (see device.py)
        torch.manual_seed(cfg.seed)  # model init and dropout draw from the global generator
        self.args = model_args(cfg, prep.x.shape[1])
        self.model = build_model(self.args).to(device)
        self.flat = FlatParams(self.model)
        self.opt = OPTIMIZERS[t.optimizer](self.flat, t)
        self.noise_gen = torch.Generator(device=device).manual_seed(cfg.seed + 1)
        self.batch = prep.n_train if t.batch_size == "full" else min(int(t.batch_size), prep.n_train)
        self.step = select_step(self.model, t, self.flat, self.batch)
        self.steps_per_epoch = math.ceil(prep.n_train / self.batch)
        self.total_steps = self.steps_per_epoch * t.epochs
        self.state = TrainState()
        self.corrupt = CORRUPTIONS[t.noise.kind]
        # Checking the loss every step syncs the device; on CUDA check every few steps instead.
        self.check_every = 1 if device.type == "cpu" else 25

    # --- state ------------------------------------------------------------------------------

    def payload(self, with_optimizer: bool = True) -> dict[str, Any]:
        rng = {"torch": torch.get_rng_state(), "noise": self.noise_gen.get_state()}
        if self.device.type == "cuda":
            rng["cuda"] = torch.cuda.get_rng_state(self.device)
        s = self.state
        out = {
            "model_args": self.args.to_dict(),
            "model": {k: v.detach().cpu().clone() for k, v in self.model.state_dict().items()},
            "normalizer": self.prep.normalizer.state(),
            "config": self.cfg.to_dict(),
            "epoch": s.epoch,
            "step": s.step,
            "train_state": {
                "sums": list(s.sums),
                "epoch_seconds": s.epoch_seconds,
                "history": s.history,
                "best_val": s.best_val,
                "best_epoch": s.best_epoch,
                "bad_epochs": s.bad_epochs,
                "wall_seconds": s.wall_seconds,
            },
            "rng": rng,
            "data": self.data_summary(),
        }
        if with_optimizer:
            out["optimizer"] = self.opt.state_dict()
        return out

    def data_summary(self) -> dict[str, Any]:
        p = self.prep.params[self.prep.train]
        return {
            "param_names": list(self.prep.param_names),
            "param_min": p.min(dim=0).values.tolist() if p.numel() else [],
            "param_max": p.max(dim=0).values.tolist() if p.numel() else [],
            "grid": self.prep.grid.cpu(),
            "global_std": self.prep.global_std,
            "n": int(self.prep.x.shape[0]),
            "splits": [[sl.start, sl.stop] for sl in (self.prep.train, self.prep.val, self.prep.test)],
        }

    def load_state(self, ckpt: dict[str, Any]) -> None:
        self.model.load_state_dict(ckpt["model"])
        if "optimizer" in ckpt:
            if "kind" not in ckpt["optimizer"]:
                raise CheckpointError(
                    "cannot resume: the checkpoint's optimizer state is from an older funcae (per-parameter "
                    "torch.optim layout); start a new run or train with --force"
                )
            self.opt.load_state_dict(ckpt["optimizer"])
        ts = ckpt["train_state"]
        self.state = TrainState(
            epoch=int(ckpt["epoch"]),
            step=int(ckpt["step"]),
            sums=[float(v) for v in ts["sums"]],
            epoch_seconds=float(ts["epoch_seconds"]),
            history=list(ts["history"]),
            best_val=float(ts["best_val"]),
            best_epoch=int(ts["best_epoch"]),
            bad_epochs=int(ts["bad_epochs"]),
            wall_seconds=float(ts["wall_seconds"]),
        )
        torch.set_rng_state(ckpt["rng"]["torch"])
        self.noise_gen.set_state(ckpt["rng"]["noise"])
        if "cuda" in ckpt["rng"] and self.device.type == "cuda":
            torch.cuda.set_rng_state(ckpt["rng"]["cuda"], self.device)

    # --- loop -------------------------------------------------------------------------------

    def kl_weight(self, epoch: int) -> float:
        t = self.cfg.train
        if t.kl_warmup_epochs <= 0:
            return t.kl_weight
        return t.kl_weight * min(1.0, (epoch + 1) / t.kl_warmup_epochs)

    def permutation(self, epoch: int) -> Tensor:
        """The batch order of an epoch: a function of (seed, epoch) alone, so resume needs no state."""
        g = torch.Generator().manual_seed(self.cfg.seed * 1_000_003 + epoch)
        return torch.randperm(self.prep.n_train, generator=g).to(self.device)

    def params_finite(self) -> bool:
        return self.flat.finite()

    def run(self) -> TrainState:
        t, s, prep = self.cfg.train, self.state, self.prep
        x_train = prep.x[prep.train]
        xbuf = torch.empty((self.batch, x_train.shape[1]), dtype=x_train.dtype, device=self.device)
        self.step.bind(x_train)
        schedule = SCHEDULES[t.scheduler.name]
        while s.epoch < t.epochs:
            epoch = s.epoch
            kl_w = self.kl_weight(epoch)
            perm = self.permutation(epoch)
            self.model.train()
            t0 = time.perf_counter()
            acc = torch.tensor(s.sums[:3], dtype=torch.float64, device=self.device)
            n_seen = s.sums[3]
            lr = t.lr
            for step in range(s.step, self.steps_per_epoch):
                gstep = epoch * self.steps_per_epoch + step
                lr = self.opt.lr = schedule(t.scheduler, t.lr, gstep, epoch, self.total_steps)
                idx = perm[step * self.batch : (step + 1) * self.batch]
                x = self.step.gather(x_train, idx, xbuf[: idx.shape[0]])  # (batch, n_points)
                out = self.step(self.corrupt(x, t.noise, self.noise_gen), x, kl_w, self.noise_gen)
                if (step + 1) % self.check_every == 0 or step == self.steps_per_epoch - 1:
                    if not math.isfinite(out.total.item()):
                        raise DivergedError(
                            f"training diverged: non-finite loss at epoch {epoch + 1}, step {step + 1} "
                            f"(lr {lr:.3g}); lower train.lr or set train.grad_clip"
                        )
                if t.grad_clip is not None:
                    self.flat.clip_grad_norm_(t.grad_clip)
                self.opt.step()
                nb = x.shape[0]
                acc.add_(torch.stack(out[:3]), alpha=nb)  # float32 losses summed in float64
                n_seen += nb
                self.on_step(step + 1, self.steps_per_epoch)
                if self.stop.signum is not None and step + 1 < self.steps_per_epoch:
                    s.step = step + 1
                    s.sums = [*acc.tolist(), n_seen]
                    s.epoch_seconds += time.perf_counter() - t0
                    self._interrupt()
            if not self.params_finite():
                raise DivergedError(f"training diverged: non-finite weights after epoch {epoch + 1}")
            sums = acc.tolist()
            val = evaluate(self.model, prep, prep.val, self.cfg, kl_w)
            seconds = s.epoch_seconds + time.perf_counter() - t0
            row = {
                "epoch": epoch + 1,
                "lr": lr,
                **{f"train_{k}": v / n_seen for k, v in zip(LOSS_PARTS, sums)},
                **{f"val_{k}": float(val[k].mean()) for k in LOSS_PARTS},
                **{f"val_{k}": float(val[k].mean()) for k in ("noisy_recon", "noisy_sse", "noisy_mse") if k in val},
                "val_sse": float(val["sse"].mean()),
                "val_mse": float(val["mse"].mean()),
                "val_mse_std": float(val["mse"].mean()) / prep.global_std**2,
                "seconds": seconds,
            }
            if not math.isfinite(row["val_loss"]):
                raise DivergedError(f"training diverged: non-finite validation loss after epoch {epoch + 1}")
            s.history.append(row)
            s.epoch, s.step, s.sums, s.epoch_seconds = epoch + 1, 0, [0.0, 0.0, 0.0, 0.0], 0.0
            s.wall_seconds += seconds
            improved = row["val_loss"] < s.best_val
            if improved:
                s.best_val, s.best_epoch, s.bad_epochs = row["val_loss"], epoch + 1, 0
            else:
                s.bad_epochs += 1
            stop_early = t.patience is not None and s.bad_epochs >= t.patience
            last_epoch = s.epoch == t.epochs or stop_early
            if improved:
                self.save("best", self.payload(with_optimizer=False))
            if s.epoch % t.checkpoint_every == 0 or last_epoch or self.stop.signum is not None:
                self.save("last", self.payload())
            self.on_epoch(row)
            if self.stop.signum is not None and not last_epoch:
                self._interrupt(saved=True)
            if stop_early:
                break
        return s

    def _interrupt(self, saved: bool = False) -> None:
        if not saved:
            if not self.params_finite():
                raise DivergedError("training diverged: non-finite weights; no checkpoint written")
            self.save("last", self.payload())
        s = self.state
        name = {2: "SIGINT", 15: "SIGTERM"}.get(self.stop.signum, f"signal {self.stop.signum}")
        raise Interrupted(
            f"interrupted by {name} at epoch {s.epoch + 1}, step {s.step}; saved checkpoints/last.pt",
            self.stop.signum,
        )


def test_metrics(model: nn.Module, prep: Prepared, cfg: Config) -> dict[str, Any]:
    """Final figures on the held-out test split (val if there is no test split), data units.

    Image and denoising runs also carry `denoising`: see `denoising_figures`.
    """
    part = prep.test if prep.test.stop > prep.test.start else prep.val
    r = evaluate(model, prep, part, cfg, cfg.train.kl_weight)
    pca = pca_baseline(prep, cfg.model.latent_dim, part)
    out = {
        "split": "test" if part is prep.test else "val",
        "n_curves": int(len(r["sse"])),
        "sse_mean": float(r["sse"].mean()),
        "sse_median": float(np.median(r["sse"])),
        "sse_p95": float(np.percentile(r["sse"], 95)),
        "mse": float(r["mse"].mean()),
        "mse_global_std": float(r["mse"].mean()) / prep.global_std**2,
        "rel_l2_median": float(np.median(r["rel_l2"])),
        "rel_l2_mean": float(r["rel_l2"].mean()),
        "pca": pca,
    }
    noise = metrics_noise(cfg)
    if noise is not None:
        out["denoising"] = denoising_figures(model, prep, cfg, part, noise)
    return out


def metrics_noise(cfg: Config) -> NoiseConfig | None:
    """The corruption of the denoising figures: the run's own, else a 20% mask for image data, else none."""
    if cfg.train.noise.kind != "none":
        return cfg.train.noise
    if image_shape(cfg) is not None:
        return NoiseConfig(kind="mask")
    return None


@torch.no_grad()
def denoising_figures(model: nn.Module, prep: Prepared, cfg: Config, part: slice, noise: NoiseConfig) -> dict[str, Any]:
    """Error on corrupted inputs against the clean curves, data units, for the same corrupted inputs:
    the model, PCA with latent_dim components fitted on the clean training split, and the corrupted
    input itself (no denoising at all)."""
    model.eval()
    gen = _eval_noise_generator(prep, cfg)
    mean, axes = pca_fit(prep, cfg.model.latent_dim)
    xs = prep.x[part]
    out: dict[str, list[Tensor]] = {"model": [], "pca": [], "corrupted_input": []}
    for i in range(0, xs.shape[0], cfg.train.eval_batch_size):
        x = xs[i : i + cfg.train.eval_batch_size]
        xc = CORRUPTIONS[noise.kind](x, noise, gen)
        pca_recon = ((xc.double() - mean) @ axes @ axes.T + mean).to(x.dtype)
        out["model"].append(_sse(prep, x, model(xc).recon))
        out["pca"].append(_sse(prep, x, pca_recon))
        out["corrupted_input"].append(_sse(prep, x, xc))
    d = xs.shape[1]
    figures = {k: torch.cat(v).double().cpu().numpy() for k, v in out.items()}
    noise_desc = {"kind": noise.kind, **({"rate": noise.rate} if noise.kind == "mask" else {"std": noise.std})}
    return {
        "noise": noise_desc,  # applied in training space (after data.transform and data.normalize)
        "pca_components": int(axes.shape[1]),
        **{
            k: {"sse_mean": float(v.mean()), "sse_median": float(np.median(v)), "mse": float(v.mean()) / d}
            for k, v in figures.items()
        },
    }


@torch.no_grad()
def pca_fit(prep: Prepared, k: int, max_rows: int = 20_000) -> tuple[Tensor, Tensor]:
    """Top-k principal axes of the training split in training space: (mean (d,), axes (d, k))."""
    xt = prep.x[prep.train][:max_rows]
    mean = moments(xt, per_point=True)[0]
    d = xt.shape[1]
    cov = torch.zeros(d, d, dtype=torch.float64, device=xt.device)
    for i in range(0, xt.shape[0], 4096):  # chunked: no float64 copy of the rows
        c = xt[i : i + 4096].double() - mean
        cov += c.T @ c
    _, vecs = torch.linalg.eigh(cov)  # ascending eigenvalues
    return mean, vecs[:, -k:].flip(1)


@torch.no_grad()
def pca_baseline(prep: Prepared, k: int, part: slice) -> dict[str, Any]:
    mean, axes = pca_fit(prep, k)
    x = prep.x[part].double()
    recon = (x - mean) @ axes @ axes.T + mean
    raw = prep.normalizer.decode(x.float()).double()
    raw_hat = prep.normalizer.decode(recon.float()).double()
    sse = (raw_hat - raw).square().sum(dim=1).cpu().numpy()
    return {
        "components": k,
        "sse_mean": float(sse.mean()),
        "sse_median": float(np.median(sse)),
        "sse_p95": float(np.percentile(sse, 95)),
    }
