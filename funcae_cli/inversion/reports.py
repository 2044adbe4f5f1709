"""Inversion results as JSON-ready records: one dict per target, and medians and percentiles over the batch."""

from __future__ import annotations

from typing import Any

import numpy as np

from funcae_cli.files import finite_or_none
from funcae_cli.inversion.invert import InvertResult
from funcae_cli.inversion.targets import Targets
from funcae_cli.runs.trained import Trained


def result_rows(trained: Trained, targets: Targets, res: InvertResult, with_curves: int = 16) -> list[dict[str, Any]]:
    """One JSON-ready dict per target; the first `with_curves` carry their target and fit curves."""
    names = trained.param_names
    rows = []
    for i in range(res.n):
        row: dict[str, Any] = {
            "index": i,
            "name": targets.names[i] if i < len(targets.names) else f"target {i}",
            "z": res.z[i].tolist(),
            "objective": float(res.objective[i]),
            "residual_norm": float(res.residual_norm[i]),
            "data_residual": float(res.data_residual[i]),
            "rel_l2": float(res.rel_l2[i]),
            "encoder_z": res.encoder_z[i].tolist(),
            "encoder_objective": float(res.encoder_objective[i]),
            "encoder_rel_l2": float(res.encoder_rel_l2[i]),
            "iterations": int(res.iterations[i]),
            "converged": bool(res.converged[i]),
            "start": int(res.start[i]),
            "seconds": float(res.seconds[i]),
        }
        if res.chi2 is not None:
            row["chi2"] = float(res.chi2[i])
            row["reduced_chi2"] = finite_or_none(res.reduced_chi2[i])
        if res.params_est is not None:
            row["estimated_params"] = {k: float(v) for k, v in zip(names, res.params_est[i])}
        if targets.params is not None:
            true = targets.params[i].tolist()
            row["true_params"] = dict(zip(names, true))
            if res.params_est is not None:
                row["param_error"] = {k: float(e) - t for k, e, t in zip(names, res.params_est[i], true)}
                row["param_rel_error"] = {
                    k: abs(float(e) - t) / abs(t) if t != 0 else None for k, e, t in zip(names, res.params_est[i], true)
                }
        if i < with_curves:
            row["target"] = targets.y[i].tolist()
            row["fit"] = res.fit[i].tolist()
            if targets.yerr is not None:
                row["yerr"] = targets.yerr[i].tolist()
        rows.append(row)
    return rows


def _nanmedian(a: np.ndarray) -> float | None:
    a = a[np.isfinite(a)]
    return float(np.median(a)) if a.size else None


def summarize(res: InvertResult, targets: Targets, names: list[str]) -> dict[str, Any]:
    """Medians and percentiles over the batch."""

    def stats(a: np.ndarray) -> dict[str, float | None]:
        a = a[np.isfinite(a)]
        if a.size == 0:
            return {"median": None, "p90": None, "max": None}
        return {"median": float(np.median(a)), "p90": float(np.percentile(a, 90)), "max": float(a.max())}

    out: dict[str, Any] = {
        "objective": stats(res.objective),
        "residual_norm": stats(res.residual_norm),
        "data_residual": stats(res.data_residual),
        "rel_l2": stats(res.rel_l2),
        "encoder_objective": stats(res.encoder_objective),
        "encoder_rel_l2": stats(res.encoder_rel_l2),
        "iterations": stats(res.iterations.astype(np.float64)),
        "converged_fraction": float(res.converged.mean()),
        "restart_won_fraction": float((res.start > 0).mean()),
    }
    if res.reduced_chi2 is not None:
        out["reduced_chi2"] = stats(res.reduced_chi2)
    if res.params_est is not None and targets.params is not None:
        true = targets.params.numpy()
        err = np.abs(res.params_est - true)
        with np.errstate(divide="ignore", invalid="ignore"):
            rel = np.where(true != 0, err / np.abs(true), np.nan)
        out["param_abs_error_median"] = {k: float(np.median(err[:, j])) for j, k in enumerate(names)}
        out["param_rel_error_median"] = {k: _nanmedian(rel[:, j]) for j, k in enumerate(names)}
    return out
