"""The `invert` job: invert the targets a user gave, estimate their parameters, write invert/<slug>.*."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from funcae_cli.config import Config
from funcae_cli.errors import InputError, OptionError
from funcae_cli.files import atomic_write_bytes, atomic_write_json, atomic_write_text, csv_text, json_safe, npz_bytes
from funcae_cli.inversion.inputs import TargetInputs
from funcae_cli.inversion.invert import invert_batch
from funcae_cli.inversion.latent import latent_model_for
from funcae_cli.inversion.posterior import Sampling, steps_value
from funcae_cli.inversion.reports import figure_curves, physics_measure, result_rows, samples_arrays, summarize, table
from funcae_cli.inversion.targets import read_targets, training_range_warnings
from funcae_cli.plotting.base import save_figure
from funcae_cli.runs.common import open_run, run_info
from funcae_cli.runs.results import invert_figures
from funcae_cli.runs.rundir import RunDir, slugify

RECORDED = ("method", "starts", "max_iter", "seed", "prior", "physics", "bounds", "posterior")  # options in the record


@dataclass
class InvertOptions:
    """How to invert; None takes the run's `invert` config section (seed: the run's seed)."""

    method: str | None = None
    starts: int | None = None
    max_iter: int | None = None
    lr: float | None = None
    seed: int | None = None
    prior: str | None = None
    physics: bool | None = None
    bounds: str | None = None
    physics_starts: int | None = None
    physics_max_iter: int | None = None
    posterior: str | None = None
    walkers: int | None = None
    steps: int | str | None = None  # an int >= 10 or "auto"
    burn: int | None = None
    max_steps: int | None = None
    groups: int | None = None

    def resolved(self, cfg: Config) -> InvertOptions:
        given = {k: v for k, v in vars(self).items() if v is not None}
        out = InvertOptions(**{**vars(cfg.invert), "seed": cfg.seed, **given})
        out.steps = steps_value(out.steps)
        for name, ok, allowed in (("starts", out.starts >= 0, ">= 0"), ("max_iter", out.max_iter >= 1, ">= 1"),
                                  ("lr", out.lr > 0, "> 0"), ("seed", out.seed >= 0, ">= 0"),
                                  ("physics_starts", out.physics_starts >= 1, ">= 1"),
                                  ("physics_max_iter", out.physics_max_iter >= 1, ">= 1"),
                                  ("walkers", out.walkers >= 4 and out.walkers % (2 * out.groups) == 0,
                                   f"a multiple of 2 x groups ({2 * out.groups})"),
                                  ("burn", out.burn >= 0, ">= 0")):  # fmt: skip
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
    """Invert, estimate parameters, write invert/<slug>.json, .csv and figures; return the record.

    The record (also what `invert --json` prints): the run's facts (run, run_dir, family, model, latent_dim,
    param_names, device); source, the options used; objective_kind ("l2" | "chi2"); n_targets, seconds,
    targets_per_second; warnings (extrapolation, dropped points, flags naming their targets); regressor,
    code_density; summary (medians, flag counts); targets: per target index, name, flags, params and
    params_source, physics_objective and decoder_physics_objective (chi^2, or L2 in the family's units),
    reduced_chi2, p_value, dof, log_density, density_percentile, z and the decoder's figures, and for the
    first 16 targets their points (x, target, yerr), the decoder's fit there, and on the run's grid the
    decoded curve and the family's curve at the parameters; files: json, csv, png[, page, summary].
    """
    trained = open_run(rd, device)
    o = (options or InvertOptions()).resolved(trained.cfg)
    targets = read_targets(trained, inputs)
    if targets is None:
        raise InputError("no target to invert")
    warnings = list(targets.warnings)
    warnings += training_range_warnings(trained, targets.params) if targets.params is not None else []
    lm, fitted_now = latent_model_for(trained)
    res = invert_batch(
        trained, targets, o.method, o.starts, o.max_iter, o.lr, o.seed, lm, prior=o.prior, physics=o.physics,
        bounds=o.bounds, physics_starts=o.physics_starts, physics_max_iter=o.physics_max_iter,
        posterior=o.posterior,
        sampling=Sampling(o.walkers, o.steps, o.burn, o.seed, max_steps=o.max_steps, groups=o.groups),
    )  # fmt: skip
    warnings += res.assessment.warnings
    slug = slugify(name or inputs.slug())
    record = run_info(trained)
    record.update(
        source=targets.source,
        **{
            k: getattr(o, k)
            for k in ("method", "starts", "max_iter", "seed", "prior", "physics", "bounds", "posterior")
        },
        objective_kind=res.objective_kind,
        objective_space="chi^2 in the family's units (yerr)" if res.chi2 is not None else "training space (L2 norm)",
        physics_measure=physics_measure(res) if res.physics is not None else None,
        params_source=res.params_source,
        n_targets=res.n,
        seconds=res.total_seconds,
        targets_per_second=res.targets_per_second,
        extrapolating=any("extrapolating" in w for w in warnings),
        warnings=warnings,
        regressor=lm.summary(),
        code_density=lm.density.summary(),
        regressor_fitted_now=fitted_now,
        latent_model_file=str(rd.regressor),
        grid=trained.grid.tolist(),
        summary=summarize(res, targets, trained.param_names),
        targets=result_rows(trained, targets, res, figure_curves(trained, targets, res)),
    )
    if targets.x is None:
        record["x"] = record["grid"]  # every target on the run's grid
    files = {"json": str(rd.invert_json(slug)), "csv": str(rd.invert_csv(slug))}
    atomic_write_text(rd.invert_csv(slug), csv_text(*table(trained, targets, res)))
    if res.posterior is not None:
        atomic_write_bytes(rd.invert_samples(slug), npz_bytes(samples_arrays(res, targets)))
        files["samples"] = str(rd.invert_samples(slug))
    if plot:
        figures = invert_figures(record, trained.family)
        for kind, fig in figures.items():
            save_figure(fig, rd.invert_png(slug, kind))
            files[kind] = str(rd.invert_png(slug, kind))
    record["files"] = files
    record = json_safe(record)
    atomic_write_json(rd.invert_json(slug), record)
    return record
