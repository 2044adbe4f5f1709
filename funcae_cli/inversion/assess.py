"""Whether to trust an inversion, per target: goodness of fit, and flags with the warnings that name them.

- `model_mismatch`: even the fitted parameters leave a reduced chi^2 above MISMATCH_REDUCED_CHI2 with a p-value
  below MISMATCH_P: the family cannot describe these data (with few points a reduced chi^2 of 3 happens by
  chance, hence both conditions). Needs yerr.
- `on_bound`: a fitted parameter sits on a bound of the prior and the data pull it outward (physics.py): the
  prior may be too narrow for this target (`--bounds domain` lifts it).
- `local_minimum`: the physics refit ended on a bound, its restarts from elsewhere in the prior (physics.py's
  plateau escapes) ended more than a few chi^2 apart, and only one reached the best: another start might do better.
- `off_manifold`: the latent code's log density under the training codes' density falls below their 0.1%
  quantile: the decoder is extrapolating, and its curve may not be one of the family's.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

MISMATCH_REDUCED_CHI2 = 3.0
MISMATCH_P = 1e-3
# laplace_unreliable: set after the posterior by laplace_check.py (Laplace's k-hat >= 0.7), which words its warning;
# multimodal: by posterior.py (mcmc: two or more posterior modes of >= 1% of the mass each), likewise
FLAGS = ("model_mismatch", "on_bound", "local_minimum", "off_manifold", "laplace_unreliable", "multimodal",
         "amortized_unreliable", "amortized_off_range", "amortized_missed_mode")  # fmt: skip
NAMED_IN_WARNING = 5  # targets named in one warning; the rest are counted


def chi2_p_value(chi2: np.ndarray, dof: np.ndarray) -> np.ndarray:
    """P(X >= chi2) for X ~ chi^2(dof), elementwise (NaN where dof < 1): the regularized upper gamma function."""
    dof = np.asarray(dof, dtype=np.float64)
    good = dof >= 1
    out = np.full(np.shape(chi2), np.nan)
    a = torch.as_tensor(np.where(good, dof, 1.0) / 2)
    x = torch.as_tensor(np.asarray(chi2, dtype=np.float64) / 2)
    out[good] = torch.special.gammaincc(a, x).numpy()[good]
    return out


@dataclass
class Assessment:
    """Per target (arrays over targets)."""

    reduced_chi2: np.ndarray | None  # (n,) chi^2 / dof at the reported parameters (yerr only)
    p_value: np.ndarray | None  # (n,)
    dof: np.ndarray  # (n,) points - fitted parameters
    flags: list[list[str]]  # per target, a subset of FLAGS
    bound_notes: list[str]  # per target: which parameter sits on which bound ("" when none)
    warnings: list[str]


def assess(
    names: list[str],
    chi2: np.ndarray | None,
    dof: np.ndarray,
    on_bound: np.ndarray | None,
    param_names: list[str],
    log_density: np.ndarray | None,
    off_manifold_below: float | None,
    local_minimum: np.ndarray | None = None,
) -> Assessment:
    """Flags and warnings from the reported fit: chi2 (n,) or None, dof (n,), on_bound (n, p) -1/0/+1 or None,
    log_density (n,) of the codes or None."""
    n = len(names)
    flags: list[list[str]] = [[] for _ in range(n)]
    reduced = p = None
    if chi2 is not None:
        with np.errstate(divide="ignore", invalid="ignore"):
            reduced = np.where(dof >= 1, chi2 / np.maximum(dof, 1), np.nan)
        p = chi2_p_value(chi2, dof)
        for i in np.nonzero((reduced > MISMATCH_REDUCED_CHI2) & (p < MISMATCH_P))[0]:
            flags[i].append("model_mismatch")
    notes = [""] * n
    if on_bound is not None:
        for i in np.nonzero((on_bound != 0).any(axis=1))[0]:
            flags[i].append("on_bound")
            notes[i] = ", ".join(
                f"{name} at the prior's {'lower' if side < 0 else 'upper'} bound"
                for name, side in zip(param_names, on_bound[i])
                if side
            )
    if local_minimum is not None:
        for i in np.nonzero(local_minimum)[0]:
            flags[i].append("local_minimum")
    if log_density is not None and off_manifold_below is not None:
        for i in np.nonzero(log_density < off_manifold_below)[0]:
            flags[i].append("off_manifold")
    return Assessment(reduced, p, dof, flags, notes, _warnings(names, flags, reduced, notes, off_manifold_below))


def _warnings(
    names: list[str], flags: list[list[str]], reduced: np.ndarray | None, notes: list[str], below: float | None
) -> list[str]:
    out = []
    what = {
        "model_mismatch": "the family cannot fit {} (reduced chi^2 > 3, p < 0.001: model mismatch)",
        "on_bound": "{} fit on a bound of the run's prior (the prior may be too narrow; --bounds domain lifts it)",
        "local_minimum": "the physics fit of {} may be a local minimum (restarts from elsewhere in the prior "
        "ended more than a few chi^2 apart and only one reached the best)",
        "off_manifold": f"the latent code of {{}} is off the decoder's manifold (log density below the training "
        f"codes' 0.1% quantile, {below if below is None else format(below, '.3g')})",
    }
    for flag in FLAGS:
        hit = [i for i, f in enumerate(flags) if flag in f]
        if not hit:
            continue
        shown = []
        for i in hit[:NAMED_IN_WARNING]:
            detail = f"reduced chi^2 {reduced[i]:.3g}" if flag == "model_mismatch" and reduced is not None else ""
            detail = notes[i] if flag == "on_bound" else detail
            shown.append(f"{names[i]} ({detail})" if detail else names[i])
        more = f" and {len(hit) - NAMED_IN_WARNING} more" if len(hit) > NAMED_IN_WARNING else ""
        out.append(what[flag].format(", ".join(shown) + more))
    return out
