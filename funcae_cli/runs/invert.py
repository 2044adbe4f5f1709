"""The `invert` job: invert the targets a user gave, estimate their parameters, write invert/<slug>.*."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from funcae_cli.config import Config
from funcae_cli.errors import InputError, OptionError
from funcae_cli.files import atomic_write_json, atomic_write_text, csv_text, json_safe
from funcae_cli.inversion.inputs import TargetInputs
from funcae_cli.inversion.invert import invert_batch
from funcae_cli.inversion.latent import latent_model_for
from funcae_cli.inversion.reports import result_rows, summarize
from funcae_cli.inversion.targets import read_targets, training_range_warnings
from funcae_cli.plotting.base import save_figure
from funcae_cli.runs.common import open_run, run_info
from funcae_cli.runs.plot import invert_figure_from_record
from funcae_cli.runs.rundir import RunDir, slugify


@dataclass
class InvertOptions:
    """How to invert; None takes the run's `invert` config section (seed: the run's seed)."""

    method: str | None = None
    starts: int | None = None
    max_iter: int | None = None
    lr: float | None = None
    seed: int | None = None

    def resolved(self, cfg: Config) -> InvertOptions:
        ic = cfg.invert
        out = InvertOptions(
            self.method or ic.method,
            ic.starts if self.starts is None else self.starts,
            ic.max_iter if self.max_iter is None else self.max_iter,
            ic.lr if self.lr is None else self.lr,
            cfg.seed if self.seed is None else self.seed,
        )
        for name, ok, allowed in (("starts", out.starts >= 0, ">= 0"), ("max_iter", out.max_iter >= 1, ">= 1"),
                                  ("lr", out.lr > 0, "> 0"), ("seed", out.seed >= 0, ">= 0")):  # fmt: skip
            if not ok:
                raise OptionError(name, f"must be {allowed}, got {getattr(out, name)}")
        return out


def run_invert(
    rd: RunDir,
    inputs: TargetInputs,
    options: InvertOptions | None = None,
    name: str | None = None,
    device: str | torch.device = "auto",
    plot: bool = True,
) -> dict[str, Any]:
    """Invert, estimate parameters, write invert/<slug>.json, .png and (batches) .csv; return the record.

    The record (also what `invert --json` prints):
      run, run_dir, family, model, latent_dim, param_names, device, source, method, starts, max_iter, seed;
      objective_kind ("l2" | "chi2"), objective_space; n_targets, seconds, targets_per_second;
      extrapolating (a parameter target outside the training ranges), warnings;
      regressor (kind, degree, ridge, n_train, val_r2 per parameter), regressor_fitted_now;
      x (observation points); summary (median/p90/max of objective, residual_norm, data_residual, rel_l2,
      encoder_objective, encoder_rel_l2, iterations; converged_fraction; restart_won_fraction; reduced_chi2;
      parameter errors); targets: one dict per target with index, name, z, objective, residual_norm
      (training space L2), data_residual (|fit - target| in family units), rel_l2 (family units), encoder_z,
      encoder_objective, encoder_rel_l2, iterations, converged, start, seconds (amortized for batched
      methods), estimated_params, [chi2, reduced_chi2], [true_params, param_error, param_rel_error], and
      for the first 16 targets target, fit [, yerr] at x;
      files: json, png, csv (batches).
    """
    trained = open_run(rd, device)
    o = (options or InvertOptions()).resolved(trained.cfg)
    method, starts, max_iter, lr, seed = o.method, o.starts, o.max_iter, o.lr, o.seed
    targets = read_targets(trained, inputs)
    if targets is None:
        raise InputError("no target to invert")
    warnings = training_range_warnings(trained, targets.params) if targets.params is not None else []
    lm, fitted_now = latent_model_for(trained)
    res = invert_batch(trained, targets, method, starts, max_iter, lr, seed, lm)
    slug = slugify(name or inputs.slug())
    x = trained.grid if targets.x is None else targets.x
    record = run_info(trained)
    record.update(
        source=targets.source,
        method=method,
        starts=starts,
        max_iter=max_iter,
        seed=seed,
        objective_kind=res.objective_kind,
        objective_space="chi^2 in the family's units (yerr)" if res.chi2 is not None else "training space (L2 norm)",
        n_targets=res.n,
        seconds=res.total_seconds,
        targets_per_second=res.targets_per_second,
        extrapolating=any("extrapolating" in w for w in warnings),
        warnings=warnings,
        regressor=lm.summary(),
        regressor_fitted_now=fitted_now,
        latent_model_file=str(rd.regressor),
        x=x.tolist(),
        summary=summarize(res, targets, trained.param_names),
        targets=result_rows(trained, targets, res),
    )
    files = {"json": str(rd.invert_json(slug))}
    if res.n > 1:
        names = trained.param_names
        header = ["name", *(f"z{j + 1}" for j in range(res.z.shape[1]))]
        header += ["objective", "residual_norm", "data_residual", "rel_l2", "encoder_objective", "encoder_rel_l2"]
        header += ["iterations", "converged", "start", "seconds"]
        header += ["chi2", "reduced_chi2"] if res.chi2 is not None else []
        header += [f"est_{k}" for k in names]
        header += [f"true_{k}" for k in names] if targets.params is not None else []
        lines = []
        for i in range(res.n):
            line = [targets.names[i], *res.z[i], res.objective[i], res.residual_norm[i], res.data_residual[i]]
            line += [res.rel_l2[i]]
            line += [res.encoder_objective[i], res.encoder_rel_l2[i], res.iterations[i], res.converged[i]]
            line += [res.start[i], res.seconds[i]]
            line += [res.chi2[i], res.reduced_chi2[i]] if res.chi2 is not None else []
            line += list(res.params_est[i])
            line += targets.params[i].tolist() if targets.params is not None else []
            lines.append(line)
        atomic_write_text(rd.invert_csv(slug), csv_text(header, lines))
        files["csv"] = str(rd.invert_csv(slug))
    if plot:
        save_figure(invert_figure_from_record(record, trained.family), rd.invert_png(slug))
        files["png"] = str(rd.invert_png(slug))
    record["files"] = files
    record = json_safe(record)
    atomic_write_json(rd.invert_json(slug), record)
    return record
