"""The training loop: tensors on the device, seeded permutation batches, exact resume.

`Trainer.run()` trains on a `Prepared` data set (prepared.py), saving checkpoints through a callback,
and returns the state with its history. Each step is computed by the engine `engines.choose_engine` picks
(engines.py says which runs when, and why). Nothing here prints.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from funcae_cli.config import Config
from funcae_cli.device import flush_denormals
from funcae_cli.errors import CheckpointError, DivergedError, Interrupted
from funcae_cli.models import ModelArgs, build_model
from funcae_cli.stop import StopFlag
from funcae_cli.training.engines import build_step, choose_engine
from funcae_cli.training.evaluation import evaluate
from funcae_cli.training.losses import CORRUPTIONS
from funcae_cli.training.optim import OPTIMIZERS, FlatParams
from funcae_cli.training.prepared import Prepared
from funcae_cli.training.schedules import SCHEDULES

LOSS_PARTS = ("loss", "recon", "kl")
TRAIN_NOISE_SEED = 1  # offset of the input-corruption (and VAE sampling) generator's seed from the run's


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


class Trainer:
    def __init__(
        self,
        cfg: Config,
        prep: Prepared,
        device: torch.device,
        stop: StopFlag | None = None,
        on_epoch: Callable[[dict[str, Any]], None] | None = None,
        save: Callable[[str, dict[str, Any]], None] | None = None,
    ):
        self.cfg, self.prep, self.device = cfg, prep, device
        self.stop = stop or StopFlag()
        self.on_epoch = on_epoch or (lambda row: None)
        self.save = save or (lambda which, payload: None)
        t = cfg.train
        flush_denormals()  # this thread; the CLI sets it before worker threads exist (see device.py)
        torch.manual_seed(cfg.seed)  # model init and dropout draw from the global generator
        self.args = model_args(cfg, prep.x.shape[1])
        self.model = build_model(self.args).to(device)
        self.flat = FlatParams(self.model)
        self.opt = OPTIMIZERS[t.optimizer](self.flat, t)
        self.noise_gen = torch.Generator(device=device).manual_seed(cfg.seed + TRAIN_NOISE_SEED)
        self.batch = prep.n_train if t.batch_size == "full" else min(int(t.batch_size), prep.n_train)
        # auto times the engines on a copy of the model and the run's curves; no generator of the run draws
        self.engine_choice = choose_engine(self.model, t, self.batch, prep.x[prep.train])
        self.step = build_step(self.engine_choice.engine, self.model, t, self.flat, self.batch)
        self.steps_per_epoch = math.ceil(prep.n_train / self.batch)
        self.total_steps = self.steps_per_epoch * t.epochs
        self.state = TrainState()
        self.corrupt = CORRUPTIONS[t.noise.kind]
        # Checking the loss every step syncs the device; on CUDA check every few steps instead.
        self.check_every = 1 if device.type == "cpu" else 25

    # --- state ------------------------------------------------------------------------------

    def payload(self, with_optimizer: bool = True) -> dict[str, Any]:
        # Generator states are CPU byte tensors whose layout depends on the device type (a CPU Mersenne
        # twister, a CUDA Philox seed and offset): the device type is saved with them (load_state).
        rng = {"torch": torch.get_rng_state(), "noise": self.noise_gen.get_state(), "device": self.device.type}
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

    def load_state(self, ckpt: dict[str, Any]) -> list[str]:
        """Restore a `last.pt` payload; returns warnings (a resume on another device type is not bit-exact)."""
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
        rng = ckpt["rng"]
        torch.set_rng_state(rng["torch"])
        saved_on = rng.get("device", "cpu")  # older checkpoints: CPU runs (CUDA runs could not resume)
        if saved_on == self.device.type:
            self.noise_gen.set_state(rng["noise"])
            if "cuda" in rng and self.device.type == "cuda":
                torch.cuda.set_rng_state(rng["cuda"], self.device)
            return []
        # Another device type's generator state cannot be restored here: reseed, from the epoch reached.
        self.noise_gen.manual_seed(self.cfg.seed + TRAIN_NOISE_SEED + 1_000_003 * self.state.epoch)
        return [
            f"resumed on {self.device.type} a run saved on {saved_on}: the weights, optimizer and batch order "
            "continue exactly, but the input-noise and sampling generator restarts from the seed (its "
            "state does not carry across device types), so the result differs from an uninterrupted run"
        ]

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
                "val_mse_std": prep.per_std2(float(val["mse"].mean())),
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
