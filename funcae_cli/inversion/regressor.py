"""Latent model of a run: a regressor from latent code to physical parameters, and the codes' distribution.

The regressor is local linear regression on the k nearest training codes (inverse-distance weights; an
exact search: a k-d tree in up to KDTREE_MAX_DIM dimensions, brute force in torch beyond and for a few queries;
either way the same neighbours, in the same order, at bitwise the same distances). The map code ->
parameters of a trained AE is smooth but far from simple: on the `normal` run a degree-7 polynomial ridge
fit reached validation R^2 0.95 for mu, while the local linear fit reaches 0.99999999 (median error 4e-5),
with nothing to train: fitting is storing the training codes (at most `MAX_CODES`) and picking k on the
validation split. Parameters with `log_scale` are regressed in log10. Predictions are clamped to the training
parameters' range widened by `OUTPUT_MARGIN` of its span: the regressor never extrapolates far (the commands
warn when a target lies outside the training ranges).

The stored training codes are also the AE's latent distribution, for random restarts of `invert`
and for `sample`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from funcae_cli.data.powers import exp10
from funcae_cli.inversion.density import CodeDensity, fit_code_density

KIND = "knn_local_linear"
NEIGHBOURS = (8, 16, 32, 64)  # candidate k, chosen on the validation split
MAX_CODES = 50_000  # training codes kept: the regressor's data and the AE's latent distribution
OUTPUT_MARGIN = 0.1  # predictions are clamped to the training range widened by this fraction of its span
QUERY_CHUNK = 1024  # queries per batched local solve: bounds memory at (chunk, k, d + 1) arrays
# codes in up to this many dimensions are searched by a k-d tree: 5,000 queries of 50,000 Gaussian codes took
# 0.08 / 0.48 / 2.6 s by the tree in 4 / 8 / 12 dimensions, 1.4 / 1.6 / 1.8 s by brute force (AMD EPYC, 2026-12-06)
KDTREE_MAX_DIM = 8
BRUTE_FORCE_PAIRS = 50_000_000  # query-code pairs a search answers by brute force before it builds a k-d tree
SEARCH_CHUNK = 128  # queries per distance matrix: (chunk, N) float64, 51 MB for N = 50,000
RIDGE = 1e-8  # added to the local fit's normal equations (offsets in [-1, 1]); `funcae export` ships it


def model_signature(model: nn.Module) -> float:
    """A cheap fingerprint of the weights: tells a regressor fitted on other weights (stale) apart."""
    with torch.no_grad():
        return float(sum(p.detach().double().abs().sum() for p in model.state_dict().values()))


class Neighbours:
    """Exact k-nearest-neighbour search among codes (N, d) float64: brute force in chunks (torch.cdist with exact
    differences) until the queries asked of it reach `brute_force_pairs` query-code pairs, then a k-d tree (scipy's
    cKDTree, built then, once) in up to KDTREE_MAX_DIM dimensions. A few queries never pay for the tree: importing
    scipy.spatial alone takes ~0.4 s, longer than brute force's 0.3 ms per query against 50,000 codes; a catalogue
    pays brute force for its first ~1,000. Either search's neighbours are sorted by distances computed here, one
    formula for both, so that the answer does not depend on which ran (nor on the batch, nor on what was asked
    before): the same indices in the same order and bitwise the same distances."""

    def __init__(self, codes: np.ndarray, brute_force_pairs: int = BRUTE_FORCE_PAIRS):
        self.codes = np.ascontiguousarray(codes, dtype=np.float64)
        self.tree = None
        self.brute_force_pairs = brute_force_pairs
        self.pairs = 0  # query-code pairs asked so far

    def query(self, query: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Distances and indices (q, k) of each query's k nearest codes, nearest first (equal distances: lower
        index first)."""
        q = np.ascontiguousarray(query, dtype=np.float64)
        self.pairs += q.shape[0] * self.codes.shape[0]
        if self.tree is None and self.codes.shape[1] <= KDTREE_MAX_DIM and self.pairs > self.brute_force_pairs:
            from scipy.spatial import cKDTree  # scipy.spatial (~0.4 s): imported only where many queries are asked

            self.tree = cKDTree(self.codes)
        idx = self._nearest(q, k)
        diff = self.codes[idx] - q[:, None, :]  # (q, k, d)
        sq = diff[..., 0] ** 2
        for j in range(1, diff.shape[2]):  # summed in coordinate order, element by element
            sq += diff[..., j] ** 2
        dist = np.sqrt(sq)
        order = np.lexsort((idx, dist), axis=-1)
        return np.take_along_axis(dist, order, axis=1), np.take_along_axis(idx, order, axis=1)

    def _nearest(self, q: np.ndarray, k: int) -> np.ndarray:
        """Indices (q, k) of each query's k nearest codes, in any order."""
        if self.tree is not None:
            return self.tree.query(q, k=k, workers=-1)[1].reshape(len(q), k)  # every core: each query its own
        codes, qt = torch.from_numpy(self.codes), torch.from_numpy(q)
        idx = []
        for a in range(0, qt.shape[0], SEARCH_CHUNK):
            d = torch.cdist(qt[a : a + SEARCH_CHUNK], codes, compute_mode="donot_use_mm_for_euclid_dist")
            idx.append(torch.topk(d, k, dim=1, largest=False, sorted=False)[1])
        return torch.cat(idx).numpy() if idx else np.empty((0, k), dtype=np.int64)


def local_linear(
    codes: np.ndarray, targets: np.ndarray, query: np.ndarray, k: int, search: Neighbours | None = None
) -> np.ndarray:
    """Weighted linear fit of the targets on the k nearest codes of each query, evaluated at the query.

    codes (N, d), targets (N, p), query (q, d) -> (q, p). Weights 1/distance; offsets scaled by each
    query's k-th distance so the small ridge term means the same at every density.
    """
    k = min(k, codes.shape[0])
    out = np.empty((query.shape[0], targets.shape[1]))
    d = codes.shape[1]
    eye = np.eye(d + 1)
    search = search if search is not None else Neighbours(codes)
    for a in range(0, query.shape[0], QUERY_CHUNK):
        q = query[a : a + QUERY_CHUNK]
        dist, idx = search.query(q, k)
        radius = np.maximum(dist[:, -1:], 1e-12)  # (q, 1)
        w = 1.0 / np.maximum(dist / radius, 1e-9)
        w /= w.sum(axis=1, keepdims=True)
        off = (codes[idx] - q[:, None, :]) / radius[:, :, None]  # (q, k, d) in [-1, 1]
        design = np.concatenate([np.ones((len(q), k, 1)), off], axis=2) * np.sqrt(w)[..., None]
        rhs = targets[idx] * np.sqrt(w)[..., None]  # (q, k, p)
        gram = np.einsum("qki,qkj->qij", design, design) + RIDGE * eye
        coef = np.linalg.solve(gram, np.einsum("qki,qkj->qij", design, rhs))  # (q, d + 1, p)
        out[a : a + len(q)] = coef[:, 0, :]  # the intercept: the fit at the query
    return out


@dataclass
class LatentModel:
    """Code -> parameters regressor plus the distribution of the training codes (stored codes and their
    density, a Gaussian mixture: density.py)."""

    param_names: list[str]
    log_scale: list[bool]
    k: int  # neighbours of the local fit
    codes: Tensor  # (N, d) float32: training codes (a random subset when there are more than MAX_CODES)
    targets: Tensor  # (N, n_params) float64: their parameters, log10 for log-scale ones
    y_low: Tensor  # (n_params,) clamp of the predictions, regression space
    y_high: Tensor
    val_r2: dict[str, float | None]  # validation R^2 per parameter (log10 space for log-scale ones)
    code_mean: Tensor  # (d,) of all training codes
    code_cov: Tensor  # (d, d)
    signature: float  # model_signature() of the weights it was fitted on
    n_train: int
    density: CodeDensity  # of the training codes: the latent search's prior and the off-manifold test
    _search: Neighbours | None = field(default=None, repr=False, compare=False)  # built on first use, not stored

    @property
    def dim(self) -> int:
        return int(self.codes.shape[1])

    def predict_regression_space(self, z: Tensor | np.ndarray) -> np.ndarray:
        q = np.asarray(z.detach().cpu() if isinstance(z, Tensor) else z, dtype=np.float64).reshape(-1, self.dim)
        if not self.param_names:
            return np.zeros((q.shape[0], 0))
        q = np.where(np.isfinite(q), q, 0.0)
        if self._search is None:  # one search for every call: a catalogue's chunks build the k-d tree once
            self._search = Neighbours(self.codes.double().numpy())
        y = local_linear(self._search.codes, self.targets.numpy(), q, self.k, self._search)
        return np.clip(y, self.y_low.numpy(), self.y_high.numpy())

    def predict(self, z: Tensor | np.ndarray) -> Tensor:
        """Codes (n, d) -> parameters (n, n_params), float64 on the CPU, in the family's units."""
        y = torch.from_numpy(self.predict_regression_space(z))
        return torch.where(torch.tensor(self.log_scale, dtype=torch.bool), exp10(y), y)

    def summary(self) -> dict[str, Any]:
        return {
            "kind": KIND,
            "k": self.k,
            "n_train": self.n_train,
            "n_stored": int(self.codes.shape[0]),
            "val_r2": self.val_r2,
            "log10": [n for n, lg in zip(self.param_names, self.log_scale) if lg],
        }

    def state(self) -> dict[str, Any]:
        """Plain tensors and numbers: loadable with weights_only=True."""
        out: dict[str, Any] = {"kind": KIND}
        for name in self.__dataclass_fields__:
            if not name.startswith("_"):
                v = getattr(self, name)
                out[name] = v.clone() if isinstance(v, Tensor) else v
        out["density"] = self.density.state()
        return out

    @classmethod
    def from_state(cls, s: dict[str, Any]) -> LatentModel:
        if s.get("kind") != KIND:
            raise KeyError(f"kind {s.get('kind')!r}")
        fields = {name: s[name] for name in cls.__dataclass_fields__ if not name.startswith("_")}
        return cls(**{**fields, "density": CodeDensity.from_state(s["density"])})


def _regression_targets(params: Tensor, log_scale: list[bool]) -> Tensor:
    p = params.detach().cpu().double()
    logs = torch.tensor(log_scale, dtype=torch.bool)
    return torch.where(logs, torch.log10(p.clamp_min(1e-300)), p)


def _r2(pred: np.ndarray, y: np.ndarray) -> list[float | None]:
    ss_res = ((pred - y) ** 2).sum(axis=0)
    ss_tot = ((y - y.mean(axis=0)) ** 2).sum(axis=0)
    # a constant parameter (dist: fixed) has no variance to explain: R^2 undefined
    return [1.0 - float(r) / float(t) if t > 1e-30 * max(1, len(y)) else None for r, t in zip(ss_res, ss_tot)]


def fit_latent_model(
    codes_train: Tensor,
    params_train: Tensor,
    codes_val: Tensor,
    params_val: Tensor,
    param_names: list[str],
    log_scale: list[bool],
    signature: float = 0.0,
    seed: int = 0,
) -> LatentModel:
    """Store the training codes and pick k by mean validation R^2 (ties: the smaller k).

    codes_*: (n, d); params_*: (n, n_params) in the parameters' units, log_scale ones regressed in log10;
    any device.
    """
    zt_all = codes_train.detach().cpu().double()
    yt_all = _regression_targets(params_train, log_scale)
    keep = torch.arange(zt_all.shape[0])
    if zt_all.shape[0] > MAX_CODES:
        keep = torch.randperm(zt_all.shape[0], generator=torch.Generator().manual_seed(seed))[:MAX_CODES]
    zt, yt = zt_all[keep], yt_all[keep]
    y_min, y_max = yt_all.min(dim=0).values, yt_all.max(dim=0).values
    dim = zt.shape[1]
    lm = LatentModel(
        param_names=list(param_names),
        log_scale=log_scale,
        k=NEIGHBOURS[0],
        codes=zt.float(),
        targets=yt,
        y_low=y_min - OUTPUT_MARGIN * (y_max - y_min),
        y_high=y_max + OUTPUT_MARGIN * (y_max - y_min),
        val_r2={},
        code_mean=zt_all.mean(dim=0),
        code_cov=torch.cov(zt_all.T).reshape(dim, dim) if len(zt_all) > 1 else torch.eye(dim, dtype=torch.float64),
        signature=signature,
        n_train=int(zt_all.shape[0]),
        density=fit_code_density(codes_train, codes_val, seed),
    )
    zv = codes_val.detach().cpu().double().numpy()
    yv = _regression_targets(params_val, log_scale).numpy()
    if not param_names or len(zv) == 0:
        lm.val_r2 = {n: None for n in param_names}
        return lm
    best: tuple[float, int, list[float | None]] | None = None
    for k in NEIGHBOURS:
        if k > len(zt) and best is not None:
            break
        lm.k = k
        r2 = _r2(lm.predict_regression_space(zv), yv)
        known = [r for r in r2 if r is not None]
        score = sum(known) / len(known) if known else 0.0
        if best is None or score > best[0] + 1e-9:
            best = (score, k, r2)
    assert best is not None
    lm.k, lm.val_r2 = best[1], dict(zip(param_names, best[2]))
    return lm


# --- on disk ---------------------------------------------------------------------------------
