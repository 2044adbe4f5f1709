"""The jobs behind `funcae encode`, `invert` and `sample`: run the library functions, write the results
into the run directory (JSON, CSV, .npz, figures) and return the record the command prints."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np

from funcae_cli.errors import InputError
from funcae_cli.inversion import (
    covers_grid,
    encode_curves,
    encode_dataset,
    invert_batch,
    latent_model_for,
    targets_on_grid,
)
from funcae_cli.reports import json_safe, result_rows, summarize
from funcae_cli.runs import Trained
from funcae_cli.sampling import sample_curves
from funcae_cli.targets import Targets, training_range_warnings


def _run_info(trained: Trained) -> dict[str, Any]:
    return {
        "run": trained.cfg.name,
        "run_dir": str(trained.rd.root),
        "family": trained.family.name,
        "model": trained.model.args.kind,
        "latent_dim": trained.model.args.latent_dim,
        "param_names": trained.param_names,
        "device": str(trained.device),
    }


def _write_npz(path: Path, arrays: dict[str, Any]) -> None:
    import io

    from funcae_cli.rundir import atomic_write_bytes

    buf = io.BytesIO()
    np.savez(buf, **{k: v for k, v in arrays.items() if v is not None})
    atomic_write_bytes(path, buf.getvalue())


def _csv(header: list[str], rows: list[list[Any]]) -> str:
    def cell(v: Any) -> str:
        if isinstance(v, (bool, np.bool_)):
            return str(bool(v)).lower()
        if isinstance(v, (float, np.floating)):
            return f"{float(v):.9g}"
        text = str(v)
        return f'"{text}"' if ("," in text or '"' in text) else text

    return "\n".join(",".join(cell(v) for v in row) for row in [header, *rows]) + "\n"


def run_encode(trained: Trained, targets: Targets | None, slug: str) -> dict[str, Any]:
    """No targets: the whole data set to latents.npz. Targets: their codes to encode/<slug>.json (+ .csv)."""
    from funcae_cli.rundir import atomic_write_json, atomic_write_text, slugify

    rd = trained.rd
    t0 = time.perf_counter()
    out = _run_info(trained)
    if targets is None:
        arrays = encode_dataset(trained)
        _write_npz(rd.latents, arrays)
        z = arrays["z"]
        out.update(
            n=int(z.shape[0]),
            z_mean=z.mean(axis=0).tolist(),
            z_std=z.std(axis=0).tolist(),
            z_min=z.min(axis=0).tolist(),
            z_max=z.max(axis=0).tolist(),
            files={"latents": str(rd.latents)},
            seconds=time.perf_counter() - t0,
        )
        return out
    warnings = training_range_warnings(trained, targets.params) if targets.params is not None else []
    if not covers_grid(trained, targets):
        warnings.append(
            f"{targets.source}: x covers [{float(targets.x[0]):g}, {float(targets.x[-1]):g}] of the grid's "
            f"[{float(trained.grid[0]):g}, {float(trained.grid[-1]):g}]: the encoder sees end values held "
            "constant; `funcae invert` fits the observed points only"
        )
    z = encode_curves(trained, targets_on_grid(trained, targets)).cpu().numpy().astype(np.float64)
    slug = slugify(slug)
    rows = []
    for i in range(targets.n):
        row: dict[str, Any] = {"index": i, "name": targets.names[i], "z": z[i].tolist()}
        if targets.params is not None:
            row["true_params"] = dict(zip(trained.param_names, targets.params[i].tolist()))
        rows.append(row)
    out.update(
        source=targets.source,
        n_targets=targets.n,
        extrapolating=any("extrapolating" in w for w in warnings),
        warnings=warnings,
        targets=rows,
        files={"json": str(rd.encode_json(slug))},
    )
    if targets.n > 1:
        header = ["name", *(f"z{j + 1}" for j in range(z.shape[1]))]
        if targets.params is not None:
            header += trained.param_names
        lines = [
            [targets.names[i], *z[i], *(targets.params[i].tolist() if targets.params is not None else [])]
            for i in range(targets.n)
        ]
        atomic_write_text(rd.encode_csv(slug), _csv(header, lines))
        out["files"]["csv"] = str(rd.encode_csv(slug))
    out["seconds"] = time.perf_counter() - t0
    atomic_write_json(rd.encode_json(slug), out)
    return out


def run_invert(
    trained: Trained,
    targets: Targets,
    slug: str,
    method: str,
    starts: int,
    max_iter: int,
    lr: float,
    seed: int,
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
    from funcae_cli.rundir import atomic_write_json, atomic_write_text, slugify

    rd = trained.rd
    if starts < 0:
        raise InputError(f"--starts: must be >= 0, got {starts}")
    if max_iter < 1:
        raise InputError(f"--max-iter: must be >= 1, got {max_iter}")
    warnings = training_range_warnings(trained, targets.params) if targets.params is not None else []
    lm, fitted_now = latent_model_for(trained)
    res = invert_batch(trained, targets, method, starts, max_iter, lr, seed, lm)
    slug = slugify(slug)
    x = trained.grid if targets.x is None else targets.x
    record = _run_info(trained)
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
        atomic_write_text(rd.invert_csv(slug), _csv(header, lines))
        files["csv"] = str(rd.invert_csv(slug))
    if plot:
        from funcae_cli.plotting.base import save_figure
        from funcae_cli.plotting.invert import invert_figure_from_record

        save_figure(invert_figure_from_record(record, trained.family), rd.invert_png(slug))
        files["png"] = str(rd.invert_png(slug))
    record["files"] = files
    record = json_safe(record)
    atomic_write_json(rd.invert_json(slug), record)
    return record


def run_sample(trained: Trained, n: int, latent: str, seed: int, n_real: int = 200) -> dict[str, Any]:
    """Sample n curves, write samples.npz (curves, z, grid, real, z_real, latent) and samples.png."""
    from funcae_cli.data import generate
    from funcae_cli.plotting.base import save_figure
    from funcae_cli.plotting.samples import samples_figure

    rd = trained.rd
    t0 = time.perf_counter()
    s = sample_curves(trained, n, latent, seed)
    real = generate(trained.cfg, n=n_real, seed=seed + 1).curves.numpy()  # fresh curves of the same prior
    _write_npz(
        rd.samples,
        {
            "curves": s["curves"],
            "z": s["z"],
            "grid": s["grid"],
            "real": real,
            "z_real": s["z_real"],
            "latent": np.array(s["latent"]),
            "family": np.array(trained.family.name),
            "run": np.array(trained.cfg.name),
        },
    )
    note = f"latent: {s['latent']}; seed {seed}; real: {n_real} fresh curves from the run's prior"
    fig = samples_figure(
        s["grid"], s["curves"], real, trained.family, z=s["z"], z_real=s["z_real"], title=trained.cfg.name, note=note
    )
    save_figure(fig, rd.samples_png)
    c = s["curves"]
    out = _run_info(trained)
    out.update(
        n=n,
        latent=s["latent"],
        seed=seed,
        regressor_fitted_now=s["regressor_fitted_now"],
        finite_fraction=float(np.isfinite(c).all(axis=1).mean()),
        value_min=float(np.nanmin(c)),
        value_max=float(np.nanmax(c)),
        z_mean=s["z"].mean(axis=0).tolist(),
        z_std=s["z"].std(axis=0).tolist(),
        files={"samples": str(rd.samples), "png": str(rd.samples_png)},
        seconds=time.perf_counter() - t0,
    )
    return out
