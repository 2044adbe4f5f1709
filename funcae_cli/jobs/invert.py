"""The `invert` job: invert the targets a user gave, estimate their parameters, write invert/<slug>.*."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import ExitStack
from dataclasses import asdict
from functools import partial
from typing import Any, TextIO

import torch

from funcae_cli.config import override
from funcae_cli.errors import InputError
from funcae_cli.files import (
    ForkedWrite,
    atomic_write_bytes,
    atomic_write_chunks,
    atomic_write_json,
    csv_lines,
    json_safe,
    npz_bytes,
    save_figures,
)
from funcae_cli.inversion.invert import invert_batch
from funcae_cli.inversion.targets import training_range_warnings
from funcae_cli.jobs.amortize import flow_for
from funcae_cli.jobs.common import open_run, run_info
from funcae_cli.jobs.figure_process import FigureProcess, Figures
from funcae_cli.jobs.fitted import latent_model_for
from funcae_cli.jobs.inputs import TargetInputs
from funcae_cli.jobs.reports import figure_curves, iter_rows, physics_measure, samples_arrays, summarize, table
from funcae_cli.jobs.sizing import InputSize, check_invert_fits, input_size
from funcae_cli.jobs.targets import read_targets
from funcae_cli.store.rundir import RunDir, slugify

RECORDED = (
    "method",
    "starts",
    "max_iter",
    "seed",
    "prior",
    "physics",
    "bounds",
    "posterior",
    "draws",
    "check",
    "proposal",
    "samples",
)  # in the record
FORKED_CSV_TARGETS = 5_000  # more targets: the CSV is written by a forked process while the JSON rows are built
SAMPLES_AUTO_BYTES = 256 * 2**20  # --samples auto: the draws are written when they take at most this


def run_invert(
    rd: RunDir,
    inputs: TargetInputs,
    options: dict[str, Any] | None = None,
    name: str | None = None,
    device: str | torch.device = "auto",
    figures: Figures | None = None,
    progress: Callable[[int, int], None] | None = None,
    echo: TextIO | None = None,
) -> dict[str, Any]:
    """Invert, estimate parameters, write invert/<slug>.json, .csv and figures; return the record.

    options: InvertConfig fields (None: the run's) laid over the run's `invert` section and checked by its rules
    before any work (config.override).
    progress: called with (targets sampled, targets) as mcmc's targets finish (ensemble.sample's pools).
    echo: a text stream that gets the record's JSON text as its file is written (invert --json: stdout), the same
    text (a catalogue's record is then encoded once, not again for the stream).

    The record (also what `invert --json` prints): the run's facts (run, run_dir, family, model, latent_dim,
    param_names, device); source, the options used; objective_kind ("l2" | "chi2"); n_targets, seconds,
    targets_per_second; warnings (extrapolation, dropped points, flags naming their targets); regressor,
    code_density; summary (medians, flag counts); targets: per target index, name, flags, params and
    params_source, physics_objective and decoder_physics_objective (chi^2, or L2 in the family's units),
    reduced_chi2, p_value, dof, log_density, density_percentile, z and the decoder's figures, and for the
    first 16 targets their points (x, target, yerr), the decoder's fit there, and on the run's grid the
    decoded curve and the family's curve at the parameters; files: json, csv, png[, page, summary].

    figures: what draws the figures from the record (jobs.results.invert_figure_makers, and matplotlib's warm-up),
    None for none: passed in by the caller, so that a run without figures never imports matplotlib (~0.45 s of a
    catalogue's or a script's process). A run with figures loads and draws them in a process forked here
    (jobs.figure_process), while the targets are solved.
    """
    trained = open_run(rd, device)
    o = override(trained.cfg.invert, options or {}, "invert")
    if o.seed is None:
        o = override(o, {"seed": trained.cfg.seed})
    flow = flow_for(rd, o.posterior, o.proposal)  # required and missing: exit 2 naming `funcae amortize`
    slug = slugify(name or inputs.slug())
    with ExitStack() as ends:  # the helper processes ended (or waited for) however this ends
        drawing = None
        if figures is not None:
            family = trained.family
            drawing = FigureProcess.start(
                lambda: partial(figures.load(), family=family), figures.warm_up, partial(rd.invert_png, slug)
            )
            if drawing is not None:
                ends.callback(drawing.close)
        size = input_size(trained, inputs)  # counted, not read: a catalogue that cannot fit is refused here
        if size is None:
            raise InputError("no target to invert")
        source = inputs.slug() if inputs.params else str(inputs.curves or inputs.params_table or "the --curve files")
        check_invert_fits(size, o, trained, source)
        targets = read_targets(trained, inputs)
        if targets is None:
            raise InputError("no target to invert")
        read = InputSize(targets.n, int(targets.counts.sum()), targets.y.shape[1], size.text)
        check_invert_fits(read, o, trained, source)  # the exact counts, before the inversion allocates
        warnings = list(targets.warnings)
        warnings += training_range_warnings(trained, targets.params) if targets.params is not None else []
        lm, fitted_now = latent_model_for(trained)
        res = invert_batch(trained, targets, o, lm, flow, progress=progress)
        warnings += res.assessment.warnings
        write_draws = res.posterior is not None and _write_draws(o.samples, res.posterior.samples.nbytes, warnings)
        make_csv = partial(_csv_lines, trained, targets, res)
        csv_writer = ForkedWrite.start(rd.invert_csv(slug), make_csv) if res.n > FORKED_CSV_TARGETS else None
        if csv_writer is not None:  # the CSV there while the JSON rows are built here
            ends.callback(csv_writer.wait)
        space = "chi^2 in the family's units (yerr)" if res.chi2 is not None else "training space (L2 norm)"
        record = run_info(trained)
        record.update(
            source=targets.source,
            **{k: v for k, v in asdict(o).items() if k in RECORDED},
            objective_kind=res.objective_kind,
            objective_space=space,
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
            targets=[json_safe(row) for row in iter_rows(trained, targets, res, figure_curves(trained, targets, res))],
        )
        if targets.x is None:
            record["x"] = record["grid"]  # every target on the run's grid
        record = {k: v if k == "targets" else json_safe(v) for k, v in record.items()}  # the rows are already safe
        sent = drawing is not None and drawing.send(record)  # drawn there while the tables are written here
        files = {"json": str(rd.invert_json(slug)), "csv": str(rd.invert_csv(slug))}
        if csv_writer is None or not csv_writer.wait():  # no process, or it failed: written here (its error here)
            atomic_write_chunks(rd.invert_csv(slug), make_csv())
        if write_draws:
            atomic_write_bytes(rd.invert_samples(slug), npz_bytes(samples_arrays(res, targets)))
            files["samples"] = str(rd.invert_samples(slug))
        if figures is not None:
            kinds = drawing.result() if sent else None
            if kinds is None:  # no process, or it failed: drawn here (so that its error is raised here)
                drawn = figures.load()(record, family=trained.family)
                save_figures({rd.invert_png(slug, kind): fig for kind, fig in drawn.items()})  # side by side
                kinds = list(drawn)
            files.update({kind: str(rd.invert_png(slug, kind)) for kind in kinds})
        record["files"] = files
        atomic_write_json(rd.invert_json(slug), record, rows="targets", echo=echo)  # a catalogue: a line per target
        return record


def _csv_lines(trained: Any, targets: Any, res: Any) -> Iterator[str]:
    return csv_lines(*table(trained, targets, res))


def _write_draws(samples: str, size: int, warnings: list[str]) -> bool:
    """Whether the posterior's draws (`size` bytes) go to invert/<name>_samples.npz (option `samples`)."""
    if samples == "auto" and size > SAMPLES_AUTO_BYTES:
        warnings.append(f"posterior draws not written ({size / 2**20:.0f} MB, over --samples auto's "
                        f"{SAMPLES_AUTO_BYTES / 2**20:.0f} MB): --samples always writes them")  # fmt: skip
        return False
    return samples != "never"
