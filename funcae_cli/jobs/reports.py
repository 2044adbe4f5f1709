"""Inversion results as JSON-ready records and CSV tables: one row per target, and the batch's summary."""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import Any

import numpy as np
import torch

from funcae_cli.data.formulas import FORMULAS
from funcae_cli.files import finite_or_none
from funcae_cli.inversion.assess import FLAGS
from funcae_cli.inversion.invert import InvertResult
from funcae_cli.inversion.modes import MIN_WEIGHT
from funcae_cli.inversion.posterior import QUANTILES, Posterior
from funcae_cli.inversion.targets import Targets
from funcae_cli.store.trained import Trained

WITH_CURVES = 16  # targets whose curves the record carries (for the figures and `funcae plot --kind invert`)


def _f(a: np.ndarray | None, i: int) -> float | None:
    return None if a is None else finite_or_none(a[i])


def physics_measure(res: InvertResult) -> str:
    """What physics_objective measures."""
    return "chi2" if res.objective_kind == "chi2" else "l2 (family units)"


def figure_curves(trained: Trained, targets: Targets, res: InvertResult, k: int = WITH_CURVES) -> dict[str, list]:
    """Curves the figures draw, for the first k targets: the decoded curve on the run's grid (`decoded`) and,
    where parameters were fitted with the formula, the family's curve at them on the grid (`family`) and at
    the target's own points (`family_fit`)."""
    k = min(k, res.n)
    out: dict[str, list] = {"decoded": list(trained.decode(torch.as_tensor(res.z[:k])).double().cpu().numpy())}
    if res.physics is not None:
        formula, options = FORMULAS[trained.family.name], trained.cfg.family.options
        params = torch.as_tensor(res.params_est[:k], dtype=torch.float64)
        out["family"] = list(formula(trained.grid, params, options).numpy())
        points = [targets.points(i)[0] for i in range(k)]
        out["family_fit"] = [
            formula(torch.as_tensor(x) if x is not None else trained.grid, params[i : i + 1], options)[0].numpy()
            for i, x in enumerate(points)
        ]
    return out


def result_rows(
    trained: Trained, targets: Targets, res: InvertResult, curves: dict[str, list] | None = None
) -> list[dict[str, Any]]:
    """One JSON-ready dict per target. curves: per-target arrays for the first rows (figure_curves), added with
    the target's own points, values and errors."""
    return list(iter_rows(trained, targets, res, curves))


def _listed(a: Any, dtype: Any = None) -> Any:
    """An array as nested Python lists (one tolist for the whole array: a catalogue's rows read element by
    element from numpy cost ~50x more), of `dtype` when given (int, bool); None stays None."""
    return None if a is None else np.asarray(a, dtype=dtype).tolist()


def _finite(a: Any) -> list | None:
    """_listed, non-finite values as None (JSON has no NaN)."""
    return None if a is None else [finite_or_none(v) for v in np.asarray(a, dtype=np.float64).tolist()]


def iter_rows(
    trained: Trained, targets: Targets, res: InvertResult, curves: dict[str, list] | None = None
) -> Iterator[dict[str, Any]]:
    """result_rows one at a time."""
    names = trained.param_names
    a = res.assessment
    z, enc_z = _listed(res.z), _listed(res.encoder_z)
    objective, residual_norm = _listed(res.objective, float), _listed(res.residual_norm, float)
    data_residual = _listed(res.data_residual, float)
    rel_l2, enc_obj = _listed(res.rel_l2, float), _listed(res.encoder_objective, float)
    enc_rel = _listed(res.encoder_rel_l2, float)
    iterations, converged, start = _listed(res.iterations, int), _listed(res.converged, bool), _listed(res.start, int)
    seconds, counts, chi2 = _listed(res.seconds, float), _listed(targets.counts, int), _listed(res.chi2, float)
    params = _listed(res.params_est, float)
    regressor = _listed(res.regressor_params) if res.params_source == "physics" else None
    post = _PosteriorLists(res.posterior) if res.posterior is not None else None
    true_params = _listed(targets.params, float)
    if a is not None:
        reduced, p_value, dof = _finite(a.reduced_chi2), _finite(a.p_value), _listed(a.dof, int)
    if res.physics_objective is not None:
        phys, dec_phys = _finite(res.physics_objective), _finite(res.decoder_physics_objective)
        phys_conv = _listed(res.physics.converged, bool)
    if res.log_density is not None:
        log_density, percentile = _finite(res.log_density), _finite(res.density_percentile)
    for i in range(res.n):
        row: dict[str, Any] = {
            "index": i,
            "name": targets.names[i] if i < len(targets.names) else f"target {i}",
            "flags": list(a.flags[i]) if a is not None else [],
            "params_source": res.params_source,
            "z": z[i],
            "objective": objective[i],
            "residual_norm": residual_norm[i],
            "data_residual": data_residual[i],
            "rel_l2": rel_l2[i],
            "encoder_z": enc_z[i],
            "encoder_objective": enc_obj[i],
            "encoder_rel_l2": enc_rel[i],
            "iterations": iterations[i],
            "converged": converged[i],
            "start": start[i],
            "seconds": seconds[i],
            "points": counts[i],
        }
        if chi2 is not None:
            row["chi2"] = chi2[i]
        if a is not None:
            row.update(reduced_chi2=reduced[i] if reduced else None, p_value=p_value[i] if p_value else None,
                       dof=dof[i])  # fmt: skip
            if a.bound_notes[i]:
                row["on_bound"] = a.bound_notes[i]
        if params is not None:
            row["params"] = dict(zip(names, params[i]))
            row["estimated_params"] = row["params"]
        if regressor is not None:
            row["regressor_params"] = dict(zip(names, regressor[i]))
        if res.physics_objective is not None:
            row["physics_objective"] = phys[i]
            row["decoder_physics_objective"] = dec_phys[i]
            row["physics_converged"] = phys_conv[i]
        if res.log_density is not None:
            row["log_density"] = log_density[i]
            row["density_percentile"] = percentile[i]
        if post is not None:
            row.update(post.row(i))
        if true_params is not None:
            true = true_params[i]
            row["true_params"] = dict(zip(names, true))
            if params is not None:
                row["param_error"] = {k: e - t for k, e, t in zip(names, params[i], true)}
                row["param_rel_error"] = {
                    k: abs(e - t) / abs(t) if t != 0 else None for k, e, t in zip(names, params[i], true)
                }
        if curves is not None and i < len(curves["decoded"]):
            x, y, e = targets.points(i)
            keep = slice(None) if targets.mask is None else targets.mask[i].numpy()
            if x is not None:
                row["x"] = x.tolist()
            row["target"] = y.tolist()
            row["fit"] = res.fit[i][keep].tolist()
            if e is not None:
                row["yerr"] = e.tolist()
            row.update({k: v[i].tolist() for k, v in curves.items()})
        yield row


class _PosteriorLists:
    """A posterior's per-target fields, for the JSON rows (`row`) and the CSV (`cells`), its arrays read as lists
    once (_listed)."""

    def __init__(self, post: Posterior):
        self.post = post
        self.quantiles = {k: _listed(v, float) for k, v in post.quantiles.items()}
        self.chains = [_listed(a, float) for a in (post.rhat, post.ess, post.tau)] if post.rhat is not None else None
        self.corr = _listed(post.corr)
        self.source = _listed(post.source, str)
        self.k_hat, self.importance_ess = _listed(post.k_hat, float), _listed(post.importance_ess, float)
        self.flow_evaluations = _listed(post.flow_evaluations, int)
        self.acceptance, self.steps = _listed(post.acceptance, float), _listed(post.steps, int)
        self.unconverged, self.multimodal = _listed(post.unconverged, bool), _listed(post.multimodal, bool)
        if post.rhat is not None:  # the modes holding >= 1% of a target's mass (1 where modes were not sought)
            weight = post.mode_weight
            counts = (weight >= MIN_WEIGHT).sum(axis=1) if weight is not None else np.ones(len(post.steps))
            self.modes = _listed(counts, int)

    def row(self, i: int) -> dict[str, Any]:
        """One target's posterior: per quantity its quantiles (and R-hat, ESS for MCMC), the correlations."""
        post = self.post
        out: dict[str, Any] = {"posterior": {}}
        sampled = self.source is None or self.source[i] == "mcmc"  # auto: the chains' fields only where mcmc ran
        for j, name in enumerate(post.names):
            entry = {k: finite_or_none(v[i][j]) for k, v in self.quantiles.items()}
            if self.chains is not None and sampled:
                rhat, ess, tau = (finite_or_none(a[i][j]) for a in self.chains)
                entry.update(rhat=rhat, ess=ess, tau=tau)
            out["posterior"][name] = entry
        out["posterior_corr"] = [[finite_or_none(v) for v in row] for row in self.corr[i]]
        if self.acceptance is not None and sampled:
            out["posterior_acceptance"] = self.acceptance[i]
            out["posterior_steps"] = self.steps[i]
            out["posterior_unconverged"] = self.unconverged[i]
        if self.multimodal is not None and sampled:
            out["posterior_multimodal"] = self.multimodal[i]
            modes = _modes_row(post, i)
            if len(modes) > 1:  # the ensembles settled in separate modes: each one's weight and medians
                out["posterior_modes"] = modes
        if self.k_hat is not None:
            out["k_hat"] = finite_or_none(self.k_hat[i])
        if self.importance_ess is not None:
            out["importance_ess"] = finite_or_none(self.importance_ess[i])
        if self.flow_evaluations is not None:
            out["flow_evaluations"] = self.flow_evaluations[i]
        if self.source is not None:
            out["posterior_source"] = self.source[i]
        return out

    def cells(self, i: int) -> list[Any]:
        """One target's posterior_columns."""
        out: list[Any] = []
        for j in range(len(self.post.names)):
            out += [self.quantiles[k][i][j] for k in QUANTILES]
            out += [c[i][j] for c in self.chains] if self.chains is not None else []
        if self.chains is not None:
            out += [self.steps[i], self.unconverged[i], self.modes[i], self.multimodal[i]]
        out += [self.k_hat[i]] if self.k_hat is not None else []
        return out + ([self.source[i]] if self.source is not None else [])


def _modes_row(post: Posterior, i: int) -> list[dict[str, Any]]:
    """Target i's posterior modes, heaviest first: weight, whether the draws include it (>= 1% of the mass) and
    the medians of its parameters."""
    weight = post.mode_weight[i]
    found = [j for j in np.argsort(-np.nan_to_num(weight, nan=-1.0), kind="stable") if np.isfinite(weight[j])]
    return [
        {"weight": float(weight[j]), "in_draws": bool(weight[j] >= MIN_WEIGHT),
         "median": {name: finite_or_none(v) for name, v in zip(post.names, post.mode_median[i, j])}}
        for j in found
    ]  # fmt: skip


def posterior_columns(post: Posterior) -> list[str]:
    stats = list(QUANTILES) + (["rhat", "ess", "tau"] if post.rhat is not None else [])
    return (
        [f"{name}_{s}" for name in post.names for s in stats]
        + (["mcmc_steps", "mcmc_unconverged", "mcmc_modes", "mcmc_multimodal"] if post.rhat is not None else [])
        + (["k_hat"] if post.k_hat is not None else [])
        + (["posterior_source"] if post.source is not None else [])
    )


def table(trained: Trained, targets: Targets, res: InvertResult) -> tuple[list[str], Iterator[list[Any]]]:
    """The per-target CSV: id, parameters, physics and decoder objectives, goodness of fit, density, flags; its
    lines made as they are read (files.csv_lines)."""
    names = trained.param_names
    header = ["id", *names, "params_source"]
    header += ["physics_objective", "decoder_objective"] if res.physics_objective is not None else ["objective"]
    header += ["reduced_chi2", "p_value", "dof", "log_density", "density_percentile", "flags"]
    header += [f"z{j + 1}" for j in range(res.z.shape[1])] + ["converged"]
    header += [f"true_{k}" for k in names] if targets.params is not None else []
    header += posterior_columns(res.posterior) if res.posterior is not None else []
    return header, _table_lines(targets, res, len(names))


def _table_lines(targets: Targets, res: InvertResult, n_params: int) -> Iterator[list[Any]]:
    a = res.assessment
    params = _listed(res.params_est, float)
    if res.physics_objective is not None:
        objectives = list(zip(_listed(res.physics_objective, float), _listed(res.decoder_physics_objective, float)))
    else:
        objectives = [[v] for v in _listed(res.objective, float)]
    blank = [None] * res.n
    fit = [_listed(v, float) or blank for v in ((a.reduced_chi2, a.p_value) if a is not None else (None, None))]
    dof = _listed(a.dof, int) if a is not None else blank
    density = [_listed(v, float) or blank for v in (res.log_density, res.density_percentile)]
    z, converged = _listed(res.z, float), _listed(res.converged, bool)
    true = _listed(targets.params, float)
    post = _PosteriorLists(res.posterior) if res.posterior is not None else None
    for i in range(res.n):
        line: list[Any] = [targets.names[i]]
        line += params[i] if params is not None else [""] * n_params
        line.append(res.params_source)
        line += objectives[i]
        line += ["" if v[i] is None or not math.isfinite(v[i]) else v[i] for v in fit]
        line.append("" if dof[i] is None else dof[i])
        line += ["" if v[i] is None else v[i] for v in density]
        line.append(";".join(a.flags[i]) if a is not None else "")
        line += z[i] + [converged[i]]
        line += true[i] if true is not None else []
        line += post.cells(i) if post is not None else []
        yield line


def _nanmedian(a: np.ndarray) -> float | None:
    a = a[np.isfinite(a)]
    return float(np.median(a)) if a.size else None


def summarize(res: InvertResult, targets: Targets, names: list[str]) -> dict[str, Any]:
    """Medians and percentiles over the batch, and how many targets carry each flag."""

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
    if res.physics_objective is not None:
        out["physics_objective"] = stats(res.physics_objective)
        out["decoder_physics_objective"] = stats(res.decoder_physics_objective)
    if res.reduced_chi2 is not None:
        out["reduced_chi2"] = stats(res.reduced_chi2)
    if res.assessment is not None:
        out["flags"] = {flag: sum(flag in f for f in res.assessment.flags) for flag in FLAGS}
    post = res.posterior
    if post is not None:
        out["posterior"] = {"kind": post.kind, "draws_per_target": int(post.samples.shape[1])}
        if post.rhat is not None:
            out["posterior"].update(rhat_max=float(np.nanmax(post.rhat)), ess_min=float(np.nanmin(post.ess)),
                                    ess_median=float(np.nanmedian(post.ess)), unconverged=int(post.unconverged.sum()),
                                    multimodal=int(post.multimodal.sum()),
                                    steps_median=float(np.median(post.steps)), steps_max=int(post.steps.max()),
                                    acceptance_median=float(np.nanmedian(post.acceptance)))  # fmt: skip
        if post.proposal is not None:
            out["posterior"]["proposal"] = post.proposal  # mcmc's: flow (the run's posterior network) or none
        if post.k_hat is not None:
            out["posterior"]["k_hat_median"] = _nanmedian(post.k_hat)
        if post.importance_ess is not None:
            out["posterior"]["importance_ess_median"] = _nanmedian(post.importance_ess)
        if post.flow_evaluations is not None:  # amortized: what the check cost, per target
            out["posterior"]["flow_evaluations_mean"] = float(post.flow_evaluations.mean())
        if post.source is not None:
            out["posterior"]["mcmc_targets"] = int((post.source == "mcmc").sum())
    if res.params_est is not None and targets.params is not None:
        true = targets.params.numpy()
        err = np.abs(res.params_est - true)
        with np.errstate(divide="ignore", invalid="ignore"):
            rel = np.where(true != 0, err / np.abs(true), np.nan)
        out["param_abs_error_median"] = {k: float(np.median(err[:, j])) for j, k in enumerate(names)}
        out["param_rel_error_median"] = {k: _nanmedian(rel[:, j]) for j, k in enumerate(names)}
    return out


def samples_arrays(res: InvertResult, targets: Targets) -> dict[str, Any]:
    """What invert/<slug>_samples.npz holds: the draws (targets, draws, quantities) in the family's units, their
    names, the targets' ids, the posterior's kind and, when known, the true values."""
    post = res.posterior
    return {
        "samples": post.samples,
        "names": np.array(post.names),
        "ids": np.array(targets.names),
        "kind": np.array(post.kind),
        "truth": targets.params.numpy()
        if targets.params is not None and len(post.names) == targets.params.shape[1]
        else None,
    }
