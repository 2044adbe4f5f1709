"""`loss` figure: training and validation loss per epoch, the learning rate, and for a VAE the
reconstruction and KL terms apart (notebooks 000 and 001)."""

from __future__ import annotations

from typing import Any

import numpy as np
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from funcae_cli.plotting.base import log_scale, new_figure

# train.loss -> what one loss value is (per curve, in the model's training space)
LOSS_NAMES = {
    "sse": "per-curve SSE",
    "mse": "per-curve MSE",
    "gaussian": "per-curve Gaussian NLL",
}


def _train_val(ax, epochs, history: list[dict[str, Any]], part: str, ylabel: str, best: int | None) -> None:
    train = np.array([row[f"train_{part}"] for row in history], dtype=float)
    val = np.array([row[f"val_{part}"] for row in history], dtype=float)
    marker = "o" if len(epochs) <= 30 else None
    ax.plot(epochs, train, label="training", color="tab:blue", marker=marker, ms=3)
    ax.plot(epochs, val, label="validation", color="tab:orange", marker=marker, ms=3)
    if best is not None:
        ax.axvline(best, color="0.5", ls=":", lw=1, label=f"best validation (epoch {best})")
    log_scale(ax, np.concatenate([train, val]))
    ax.set_xlabel("epoch")
    ax.set_ylabel(ylabel)
    ax.legend(loc="upper right")
    ax.grid(True, which="major", alpha=0.3)


def loss_figure(
    history: list[dict[str, Any]],
    *,
    vae: bool = False,
    loss: str = "sse",
    kl_weight: float = 1.0,
    title: str = "",
) -> Figure:
    """Loss per epoch (log y) and the learning rate; a VAE adds its reconstruction and KL panels.

    history: the rows of history.json (epoch, lr, train_/val_ loss, recon, kl, ...).
    """
    if not history:
        raise ValueError("loss_figure: empty history")
    epochs = np.array([row["epoch"] for row in history])
    best = int(epochs[int(np.argmin([row["val_loss"] for row in history]))])
    recon_name = LOSS_NAMES.get(loss, loss)
    ncols = 4 if vae else 2
    fig, axes = new_figure(ncols=ncols, figsize=(4.4 * ncols, 4.0), sharex=True)
    total = f"recon. + {kl_weight:g} × KL" if vae else recon_name
    _train_val(axes[0], epochs, history, "loss", f"loss ({total})", best)
    axes[0].set_title("loss")
    if vae:
        _train_val(axes[1], epochs, history, "recon", f"reconstruction ({recon_name})", best)
        axes[1].set_title("reconstruction term")
        _train_val(axes[2], epochs, history, "kl", "KL(q(z|x) || N(0, I)) per curve", best)
        axes[2].set_title("KL term")
    ax = axes[-1]
    lr = np.array([row["lr"] for row in history], dtype=float)
    ax.plot(epochs, lr, color="tab:green")
    log_scale(ax, lr)
    ax.set_xlabel("epoch")
    ax.set_ylabel("learning rate (end of epoch)")
    ax.set_title("learning rate")
    ax.grid(True, which="major", alpha=0.3)
    last = history[-1]
    fig.suptitle(
        f"{title}\n{len(history)} epochs; last: training {last['train_loss']:.4g}, validation {last['val_loss']:.4g}; "
        f"best validation {min(r['val_loss'] for r in history):.4g} at epoch {best}"
    )
    return fig


def loss_overlay_figure(curves: dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]], title: str = "") -> Figure:
    """Several runs' losses on one axes (`funcae runs compare`): per run one colour, validation solid, training
    dashed, log y. curves: run label -> (epochs, training loss, validation loss), arrays of one length."""
    if not curves:
        raise ValueError("loss_overlay_figure: no curves")
    fig, ax = new_figure(figsize=(7.5, 4.5))
    values = []
    for i, (label, (epochs, train, val)) in enumerate(curves.items()):
        color = f"C{i % 10}"
        marker = "o" if len(epochs) <= 30 else None
        ax.plot(epochs, val, color=color, marker=marker, ms=3, label=f"{label} (validation)")
        ax.plot(epochs, train, color=color, ls="--", lw=1, label=f"{label} (training)")
        values += [np.asarray(train, dtype=float), np.asarray(val, dtype=float)]
    log_scale(ax, np.concatenate(values))
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("epoch")
    ax.set_ylabel("loss")
    ax.grid(True, which="major", alpha=0.3)
    ax.legend(loc="upper right")
    ax.set_title(title or f"loss of {len(curves)} runs")
    return fig
