"""A trained run as named arrays and a versioned JSON description that funcae_emulator.py (numpy only) reads.

Networks are written as chains of steps (`linear`: x @ W.T + b, `activation`), walked from the torch modules
in their forward order, so what the loader runs is what the model runs in eval mode (dropout is the identity).
Array names are the model's state_dict keys; weights stay float32 as trained.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
from torch import Tensor, nn

from funcae_cli._version import __version__
from funcae_cli.config import config_to_dict
from funcae_cli.errors import InputError
from funcae_cli.export import funcae_emulator as loader
from funcae_cli.inversion.regressor import KIND, RIDGE, LatentModel
from funcae_cli.models import ACTIVATIONS
from funcae_cli.store.checkpoint import versions
from funcae_cli.store.trained import Trained

ACTIVATION_NAMES = {cls: name for name, cls in ACTIVATIONS.items()}
GRID, MEAN, STD = "grid", "normalizer.mean", "normalizer.std"


@dataclass
class Export:
    description: dict[str, Any]  # emulator.json
    tensors: dict[str, np.ndarray]  # weights.safetensors


def _array(t: Tensor) -> np.ndarray:
    return np.ascontiguousarray(t.detach().cpu().numpy())


Steps = list[dict[str, Any]]


def _linear(m: nn.Linear, name: str, tensors: dict[str, np.ndarray]) -> Steps:
    tensors[f"{name}.weight"], tensors[f"{name}.bias"] = _array(m.weight), _array(m.bias)  # (out, in), (out,)
    return [{"op": "linear", "weight": f"{name}.weight", "bias": f"{name}.bias", "in": m.in_features,
             "out": m.out_features}]  # fmt: skip


def _activation(m: nn.Module, name: str, tensors: dict[str, np.ndarray]) -> Steps:
    if getattr(m, "approximate", "none") != "none":
        raise InputError(f"{name}: GELU(approximate={m.approximate!r}) has no export; the loader runs the exact GELU")
    return [{"op": "activation", "name": ACTIVATION_NAMES[type(m)]}]


def _sequential(m: nn.Module, name: str, tensors: dict[str, np.ndarray]) -> Steps:
    return [s for child, c in m.named_children() for s in network_steps(c, f"{name}.{child}", tensors)]


def _identity(m: nn.Module, name: str, tensors: dict[str, np.ndarray]) -> Steps:
    return []  # dropout in eval mode, an absent input dropout


LAYERS: dict[type, Callable[[Any, str, dict[str, np.ndarray]], Steps]] = {
    nn.Sequential: _sequential,
    nn.Linear: _linear,
    nn.Dropout: _identity,
    nn.Identity: _identity,
    **{cls: _activation for cls in ACTIVATION_NAMES},
}


def network_steps(module: nn.Module, name: str, tensors: dict[str, np.ndarray]) -> Steps:
    """The forward chain of `module` as steps; its arrays added to `tensors` under `name`-prefixed keys."""
    if type(module) not in LAYERS:
        raise InputError(f"{name}: a {type(module).__name__} layer has no export (known: linear, activations)")
    return LAYERS[type(module)](module, name, tensors)


# the modules each model kind encodes with, in order (a VAE: the posterior mean, its deterministic code)
ENCODERS: dict[str, Callable[[nn.Module], list[tuple[str, nn.Module]]]] = {
    "ae": lambda m: [("encoder", m.encoder)],
    "vae": lambda m: [("trunk", m.trunk), ("to_mean", m.to_mean)],
}


def _parameters(trained: Trained) -> dict[str, Any]:
    known = {p.name: p for p in trained.family.params}
    names = trained.param_names
    return {
        "names": names,
        "labels": [known[n].label if n in known else n for n in names],
        "units": [known[n].unit if n in known else "" for n in names],
        "log10": trained.family.log_scale(trained.param_names),  # regressed (and best read) in log10
        "train_min": list(trained.data.get("param_min", [])),
        "train_max": list(trained.data.get("param_max", [])),
        "prior": config_to_dict(trained.cfg)["family"].get("params", {}),
    }


def _regressor(lm: LatentModel, tensors: dict[str, np.ndarray]) -> dict[str, Any]:
    tensors.update({
        "regressor.codes": _array(lm.codes),  # (N, latent_dim) float32: the stored training codes
        "regressor.targets": _array(lm.targets),  # (N, n_params) float64, log10 for log-scale parameters
        "regressor.y_low": _array(lm.y_low),  # (n_params,) clamp of the predictions, same space
        "regressor.y_high": _array(lm.y_high),
    })  # fmt: skip
    return {"kind": KIND, "k": lm.k, "ridge": RIDGE, "log10": list(lm.log_scale), "codes": "regressor.codes",
            "targets": "regressor.targets", "y_low": "regressor.y_low", "y_high": "regressor.y_high",
            "val_r2": lm.val_r2, "n_train": lm.n_train}  # fmt: skip


def build_export(trained: Trained, lm: LatentModel | None) -> Export:
    """The run's decoder, encoder, normalization, grid (and the regressor `lm`, when given) as arrays and a
    description. `trained` must be on the CPU in eval mode."""
    m, a = trained.model, trained.model.args
    tensors: dict[str, np.ndarray] = {
        GRID: _array(trained.grid),  # (n_points,) float64
        MEAN: _array(trained.normalizer.mean).reshape(-1),  # (1,) global or (n_points,) per point, float32
        STD: _array(trained.normalizer.std).reshape(-1),
    }
    decoder = network_steps(m.decoder.net, "decoder.net", tensors)
    encoder = [s for name, mod in ENCODERS[a.kind](m) for s in network_steps(mod, name, tensors)]
    cfg = config_to_dict(trained.cfg)
    description = {
        "format": loader.FORMAT,
        "schema_version": loader.SCHEMA_VERSION,
        "funcae_version": __version__,
        "versions": versions(),
        "run": trained.cfg.name,
        "family": {"name": trained.family.name, "config": cfg["family"]},
        "model": {
            "kind": a.kind,
            "latent_dim": a.latent_dim,
            "n_points": a.n_points,
            "hidden": list(a.hidden),
            "decoder_hidden": a.decoder_hidden,
            "activation": a.activation,
        },  # fmt: skip
        "grid": {"x": GRID, "n_points": int(trained.grid.shape[0]), "config": cfg["grid"]},
        "normalization": {
            "transform": trained.normalizer.transform,
            "normalize": trained.cfg.data.normalize,
            "mean": MEAN,
            "std": STD,
            "training_space": "y = (T(curve) - mean) / std; curve = T^-1(y * std + mean); T: none | log",
        },
        "parameters": _parameters(trained),
        "decoder": {"input": "z (n, latent_dim)", "output": "y (n, n_points), training space", "steps": decoder},
        "encoder": {"input": "y (n, n_points), training space", "output": "z (n, latent_dim)", "steps": encoder},
        "regressor": _regressor(lm, tensors) if lm is not None else None,
        "weights": loader.WEIGHTS,
    }
    return Export(description, tensors)
