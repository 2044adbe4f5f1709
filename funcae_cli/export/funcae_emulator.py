"""A funcae emulator with numpy alone: decode latent codes to curves, encode curves, predict parameters.

This file is shipped verbatim inside every folder `funcae export RUN` writes. It needs numpy and the
Python standard library only (no torch, no funcae, no safetensors package), so a likelihood in cobaya,
CosmoSIS or a script can call a trained emulator:

    import sys; sys.path.insert(0, "runs/normal/export")
    from funcae_emulator import Emulator
    emu = Emulator("runs/normal/export")
    curves = emu.decode(z)          # (n, latent_dim) -> (n, n_points) on emu.x, in the family's units
    z = emu.encode(curves)          # the encoder (a VAE: the posterior mean)
    params = emu.params(z)          # the run's regressor: code -> emu.param_names (when the run has one)

The folder holds `emulator.json` (what the networks are: layer by layer, the normalization, the grid,
the parameters; versioned) and `weights.safetensors` (every array: an 8-byte little-endian header length,
a JSON header, raw little-endian buffers), which `read_safetensors` parses here.

Arithmetic is float64 on funcae's float32 weights, so curves agree with funcae's float32 decode to
float32 rounding.
"""

from __future__ import annotations

import json
import math
import struct
from pathlib import Path

import numpy as np

FORMAT = "funcae-emulator"
SCHEMA_VERSION = 1  # emulator.json's layout; a loader reads every version <= its own
DESCRIPTION = "emulator.json"
WEIGHTS = "weights.safetensors"

DTYPES = {"F64": "<f8", "F32": "<f4", "F16": "<f2", "I64": "<i8", "I32": "<i4", "I16": "<i2", "I8": "i1",
          "U8": "u1", "BOOL": "?"}  # fmt: skip

_erf = np.vectorize(math.erf, otypes=[np.float64])  # exact GELU (numpy has no erf); only GELU models use it


def _silu(x: np.ndarray) -> np.ndarray:
    with np.errstate(over="ignore"):
        return x / (1.0 + np.exp(-x))


ACTIVATIONS = {
    "tanh": np.tanh,
    "relu": lambda x: np.maximum(x, 0.0),
    "gelu": lambda x: 0.5 * x * (1.0 + _erf(x / math.sqrt(2.0))),
    "silu": _silu,
}
# pointwise transform of the curves before standardization: (forward, inverse)
TRANSFORMS = {"none": (lambda x: x, lambda y: y), "log": (np.log, np.exp)}


def read_safetensors(path: str | Path) -> dict[str, np.ndarray]:
    """Every tensor of a .safetensors file as a numpy array (native byte order, a copy)."""
    data = Path(path).read_bytes()
    if len(data) < 8:
        raise ValueError(f"{path}: not a safetensors file (shorter than its 8-byte header length)")
    (n,) = struct.unpack("<Q", data[:8])
    if 8 + n > len(data):
        raise ValueError(f"{path}: header length {n} exceeds the file's {len(data)} bytes")
    header = json.loads(data[8 : 8 + n].decode("utf-8"))
    body = memoryview(data)[8 + n :]
    out = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        if info["dtype"] not in DTYPES:
            raise ValueError(f"{path}: tensor {name}: dtype {info['dtype']} is not one numpy reads")
        begin, end = info["data_offsets"]
        dt = np.dtype(DTYPES[info["dtype"]])
        shape = tuple(info["shape"])
        if end - begin != dt.itemsize * math.prod(shape) or end > len(body):
            raise ValueError(f"{path}: tensor {name}: offsets {begin}..{end} do not match shape {list(shape)}")
        arr = np.frombuffer(body[begin:end], dtype=dt).reshape(shape)
        out[name] = arr.astype(dt.newbyteorder("="), copy=True)
    return out


class Network:
    """A chain of steps from emulator.json: `linear` (x @ W.T + b) and `activation`."""

    def __init__(self, steps: list[dict], tensors: dict[str, np.ndarray]):
        self.layers: list = []
        for s in steps:
            if s["op"] == "linear":
                w = tensors[s["weight"]].astype(np.float64)
                b = tensors[s["bias"]].astype(np.float64)
                self.layers.append(("linear", w.T.copy(), b))
            elif s["op"] == "activation":
                if s["name"] not in ACTIVATIONS:
                    raise ValueError(f"activation {s['name']!r}: this loader knows {sorted(ACTIVATIONS)}")
                self.layers.append(("activation", ACTIVATIONS[s["name"]], None))
            else:
                raise ValueError(f"step {s['op']!r}: this loader knows linear and activation")

    def __call__(self, x: np.ndarray) -> np.ndarray:
        for kind, a, b in self.layers:
            x = x @ a + b if kind == "linear" else a(x)
        return x


def _local_linear(codes: np.ndarray, targets: np.ndarray, query: np.ndarray, k: int, ridge: float) -> np.ndarray:
    """funcae's regressor: a weighted (1/distance) linear fit of the targets on the k nearest codes of each
    query, evaluated at the query; offsets scaled by the k-th distance. codes (N, d), targets (N, p)."""
    n, d = codes.shape
    k = min(k, n)
    out = np.empty((query.shape[0], targets.shape[1]))
    eye = np.eye(d + 1)
    rows = max(1, (1 << 22) // max(n * d, 1))  # queries per distance block: ~32 MB of float64
    for a in range(0, query.shape[0], rows):
        q = query[a : a + rows]
        dist = np.sqrt(((q[:, None, :] - codes[None, :, :]) ** 2).sum(axis=2))  # (q, N), exact differences
        idx = np.argpartition(dist, k - 1, axis=1)[:, :k] if k < n else np.broadcast_to(np.arange(n), (len(q), n))
        dk = np.take_along_axis(dist, idx, axis=1)
        radius = np.maximum(dk.max(axis=1, keepdims=True), 1e-12)
        w = 1.0 / np.maximum(dk / radius, 1e-9)
        w /= w.sum(axis=1, keepdims=True)
        off = (codes[idx] - q[:, None, :]) / radius[:, :, None]
        design = np.concatenate([np.ones((len(q), k, 1)), off], axis=2) * np.sqrt(w)[..., None]
        rhs = targets[idx] * np.sqrt(w)[..., None]
        gram = np.einsum("qki,qkj->qij", design, design) + ridge * eye
        out[a : a + len(q)] = np.linalg.solve(gram, np.einsum("qki,qkj->qij", design, rhs))[:, 0, :]
    return out


class Emulator:
    """A trained funcae run as numpy arrays; `folder` defaults to the folder holding this file."""

    def __init__(self, folder: str | Path | None = None):
        self.folder = Path(folder) if folder is not None else Path(__file__).resolve().parent
        self.description = json.loads((self.folder / DESCRIPTION).read_text())
        d = self.description
        if d.get("format") != FORMAT:
            raise ValueError(f"{self.folder / DESCRIPTION}: not a funcae emulator (format {d.get('format')!r})")
        if int(d.get("schema_version", 0)) > SCHEMA_VERSION:
            raise ValueError(
                f"{self.folder / DESCRIPTION}: schema_version {d['schema_version']} is newer than this loader's "
                f"{SCHEMA_VERSION}; use the funcae_emulator.py shipped beside it"
            )
        t = read_safetensors(self.folder / d["weights"])
        self.tensors = t
        self.x = t[d["grid"]["x"]].astype(np.float64)  # (n_points,) the grid the curves live on
        self.latent_dim = int(d["model"]["latent_dim"])
        self.param_names = list(d["parameters"]["names"])
        norm = d["normalization"]
        self._forward, self._inverse = TRANSFORMS[norm["transform"]]
        self._mean = t[norm["mean"]].astype(np.float64)
        self._std = t[norm["std"]].astype(np.float64)
        self._decoder = Network(d["decoder"]["steps"], t)
        self._encoder = Network(d["encoder"]["steps"], t) if d.get("encoder") else None
        self._regressor = d.get("regressor")

    @property
    def has_encoder(self) -> bool:
        return self._encoder is not None

    @property
    def has_regressor(self) -> bool:
        return self._regressor is not None

    def decode(self, z) -> np.ndarray:
        """Codes (n, latent_dim) -> curves (n, n_points) on `x`, in the family's units."""
        z = np.atleast_2d(np.asarray(z, dtype=np.float64))
        if z.shape[1] != self.latent_dim:
            raise ValueError(f"codes have {z.shape[1]} columns; this emulator's latent_dim is {self.latent_dim}")
        return self._inverse(self._decoder(z) * self._std + self._mean)

    def encode(self, curves) -> np.ndarray:
        """Curves (n, n_points) on `x`, in the family's units -> codes (n, latent_dim) (a VAE: posterior means)."""
        if self._encoder is None:
            raise ValueError("this export holds no encoder")
        c = np.atleast_2d(np.asarray(curves, dtype=np.float64))
        if c.shape[1] != self.x.shape[0]:
            raise ValueError(f"curves have {c.shape[1]} points; this emulator's grid has {self.x.shape[0]}")
        return self._encoder((self._forward(c) - self._mean) / self._std)

    def params(self, z) -> np.ndarray:
        """Codes (n, latent_dim) -> parameters (n, len(param_names)) by the run's regressor (funcae's
        local linear fit on the stored training codes), clamped to its range; log10 ones returned in units."""
        r = self._regressor
        if r is None:
            raise ValueError("this export holds no regressor (the run has no parameters or no regressor file)")
        q = np.atleast_2d(np.asarray(z, dtype=np.float64))
        q = np.where(np.isfinite(q), q, 0.0)
        codes = self.tensors[r["codes"]].astype(np.float64)
        y = _local_linear(codes, self.tensors[r["targets"]].astype(np.float64), q, int(r["k"]), float(r["ridge"]))
        y = np.clip(y, self.tensors[r["y_low"]], self.tensors[r["y_high"]])
        with np.errstate(over="ignore"):
            return np.where(np.asarray(r["log10"], dtype=bool), 10.0**y, y)


def load(folder: str | Path | None = None) -> Emulator:
    return Emulator(folder)
