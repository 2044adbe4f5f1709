"""A sweep's results, read from the storage alone (so any machine sharing it can write them): the leaderboard,
best.yaml (the best complete trial's resolved config) and Optuna's matplotlib figures.

Figures come from `optuna.visualization.matplotlib` (they take the study, not arrays, so they live here and
not in plotting/); one that Optuna cannot draw for this study (e.g. importances before two complete trials)
is skipped with Optuna's reason.
"""

from __future__ import annotations

import dataclasses
import math
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import matplotlib.pyplot as plt
import numpy as np
import optuna
import optuna.visualization.matplotlib as ovm
import yaml
from optuna.trial import FrozenTrial, TrialState

from funcae_cli.config import config_from_dict, dump_config
from funcae_cli.errors import ConfigError, InputError, OptionError
from funcae_cli.files import atomic_write_json, atomic_write_text, json_safe, save_figure
from funcae_cli.jobs.catalog import cell
from funcae_cli.store.rundir import mlflow_store
from funcae_cli.sweeps.objective import ATTR_CONFIG, ATTR_EPOCHS, ATTR_ERROR, ATTR_VALUES
from funcae_cli.sweeps.spec import SweepSpec, load_sweep
from funcae_cli.sweeps.storage import (
    display_url,
    normalize_url,
    open_storage,
    quiet_optuna,
    require_study,
    sqlite_file,
    sqlite_url,
)
from funcae_cli.sweeps.study import ATTR_METRIC, STATE_ORDER, Census, trial_state
from funcae_cli.sweeps.sweepdir import SweepDir, sweep_dir
from funcae_cli.tracking import FinalInfo, RunInfo, open_tracking, with_tracks

FIGURES: dict[str, Callable[[optuna.Study], Any]] = {
    "optimization_history": ovm.plot_optimization_history,
    "param_importances": ovm.plot_param_importances,
    "parallel_coordinate": ovm.plot_parallel_coordinate,
    "slice": ovm.plot_slice,
    "intermediate_values": ovm.plot_intermediate_values,  # each trial's val_loss per epoch: pruned ones stop early
}
MIN_COMPLETE = {"param_importances": 2}  # complete trials a figure needs (else Optuna raises or draws nothing)


def _seconds(t: FrozenTrial) -> float | None:
    if t.datetime_start is None or t.datetime_complete is None:
        return None
    return (t.datetime_complete - t.datetime_start).total_seconds()


def _note(t: FrozenTrial, state: str) -> str:
    if state == "failed":
        return str(t.user_attrs[ATTR_ERROR])
    if state == "pruned" and t.intermediate_values:
        epoch = max(t.intermediate_values)
        return f"pruned at epoch {epoch} (val_loss {t.intermediate_values[epoch]:.4g})"
    if "failed_trial" in t.system_attrs:
        return f"retry of trial {t.system_attrs['failed_trial']}"
    return ""


def leaderboard(study: optuna.Study) -> list[dict[str, Any]]:
    """One row per trial: rank (complete trials, best first), trial, state, objective, params, seconds,
    epochs, note."""
    trials = study.get_trials(deepcopy=False)
    sign = 1.0 if study.direction == optuna.study.StudyDirection.MINIMIZE else -1.0
    rows = []
    for t in trials:
        state = trial_state(t)
        rows.append(
            {
                "rank": None,
                "trial": t.number,
                "state": state,
                "objective": t.value if t.state == TrialState.COMPLETE else None,
                "params": t.user_attrs.get(ATTR_VALUES, t.params),
                "seconds": _seconds(t),
                "epochs": t.user_attrs.get(ATTR_EPOCHS, max(t.intermediate_values, default=None)),
                "note": _note(t, state),
            }
        )

    def key(r: dict[str, Any]) -> tuple:
        value = r["objective"]
        ok = value is not None and math.isfinite(value)
        return (STATE_ORDER.index(r["state"]), sign * value if ok else math.inf, r["trial"])

    rows.sort(key=key)
    for rank, r in enumerate((r for r in rows if r["state"] == "complete"), start=1):
        r["rank"] = rank
    return rows


def summary(study: optuna.Study) -> dict[str, Any]:
    trials = study.get_trials(deepcopy=False)
    counts = {s: 0 for s in STATE_ORDER}
    for t in trials:
        counts[trial_state(t)] += 1
    best = best_trial(study)
    return {
        "study": study.study_name,
        "metric": study.user_attrs.get(ATTR_METRIC, "objective"),
        "direction": study.direction.name.lower(),
        "counts": counts,
        "best": None if best is None else {"trial": best.number, "objective": best.value, "params": _values(best)},
    }


def _values(t: FrozenTrial) -> dict[str, Any]:
    return t.user_attrs.get(ATTR_VALUES, t.params)


def best_trial(study: optuna.Study) -> FrozenTrial | None:
    complete = [t for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)) if t.value is not None]
    if not complete:
        return None
    return study.best_trial


def best_yaml_text(study: optuna.Study, best: FrozenTrial) -> str:
    metric = study.user_attrs.get(ATTR_METRIC, "objective")
    header = (
        f"# The best trial of sweep {study.study_name}: trial {best.number}, {metric} {best.value:.6g} "
        f"({study.direction.name.lower()}).\n#   funcae train <this file>\n"
    )
    raw = best.user_attrs[ATTR_CONFIG]
    try:
        return header + dump_config(config_from_dict(raw))
    except ConfigError:  # a config this funcae no longer accepts: keep it as the trial ran it
        return header + yaml.safe_dump(raw, sort_keys=False, default_flow_style=None)


@dataclass
class ResultFiles:
    best: str | None = None  # best.yaml, when a trial completed
    best_trial: dict[str, Any] | None = None
    leaderboard: str | None = None
    figures: dict[str, str] = field(default_factory=dict)
    skipped: dict[str, str] = field(default_factory=dict)  # figure -> why not drawn


def write_figures(study: optuna.Study, sd: SweepDir) -> tuple[dict[str, str], dict[str, str]]:
    written, skipped = {}, {}
    n_complete = len(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)))
    for kind, draw in FIGURES.items():
        need = MIN_COMPLETE.get(kind, 1)
        if n_complete < need:
            skipped[kind] = f"needs {need} complete trial(s), the study has {n_complete}"
            continue
        try:
            with quiet_optuna(), warnings.catch_warnings():
                warnings.simplefilter("ignore", UserWarning)  # matplotlib's, on axes of one value
                axes = draw(study)
        except Exception as e:  # Optuna's own checks (e.g. a parameter with one value): skip with its reason
            skipped[kind] = f"{type(e).__name__}: {e}"
            plt.close("all")
            continue
        fig = np.ravel(axes)[0].figure
        written[kind] = str(save_figure(fig, sd.plot(kind)))
        plt.close(fig)
    return written, skipped


def write_results(study: optuna.Study, sd: SweepDir) -> ResultFiles:
    """best.yaml, leaderboard.json and the figures, into the sweep folder."""
    out = ResultFiles()
    best = best_trial(study)
    if best is not None and ATTR_CONFIG in best.user_attrs:
        atomic_write_text(sd.best, best_yaml_text(study, best))
        out.best = str(sd.best)
        out.best_trial = {"trial": best.number, "objective": best.value, "params": _values(best)}
    atomic_write_json(sd.leaderboard, json_safe({**summary(study), "trials": leaderboard(study)}))
    out.leaderboard = str(sd.leaderboard)
    out.figures, out.skipped = write_figures(study, sd)
    return out


def track_study(
    spec: SweepSpec, study: str, sd: SweepDir, files: ResultFiles, census: Census, track: list[str] | None
) -> list[str]:
    """The study's own tracked run (`<study>-study`, tagged funcae.study): the sweep's settings, the best
    objective and the counts, and its figures, leaderboard.json and best.yaml. Returns the tracking warnings."""
    tracking = open_tracking(with_tracks(config_from_dict(spec.base_raw).track, track), mlflow_store())
    if not tracking:
        return []
    settings = {"study": study, "trials": spec.trials, "objective": dataclasses.asdict(spec.objective)}
    settings["space"] = {k: str(v) for k, v in spec.space.items()}
    root = str(sd.root.resolve())
    tags = {"funcae.study": study, "funcae.kind": "study", "funcae.run_dir": root}
    tracking.start(
        RunInfo(f"{study}-study", Path(root), sd.tensorboard, settings, yaml.safe_dump(settings), study, 0, tags)
    )
    metrics = {f"trials_{k}": float(v) for k, v in dataclasses.asdict(census).items()}
    if files.best_trial is not None:
        metrics["best_objective"] = float(files.best_trial["objective"])
        metrics["best_trial"] = float(files.best_trial["trial"])
    extra = [Path(p) for p in (files.leaderboard, files.best) if p is not None]
    tracking.final(FinalInfo(0, metrics, [Path(p) for p in files.figures.values()], extra))
    return tracking.close()


# --- `funcae sweep show` -----------------------------------------------------------------------------------


def locate_study(sweep: Path | None, storage: str | None, study: str | None) -> tuple[str, str]:
    """(storage URL, study name) from SWEEP (a sweep file or a sweep folder runs/<study>) and/or --storage,
    --study."""
    if storage:
        name = study or (sweep.name if sweep is not None and sweep.is_dir() else None)
        if name is None and sweep is not None:
            name = load_sweep(sweep).name
        if name is None:
            raise OptionError("study", "give the study's name with --storage (or a sweep file)")
        url = normalize_url(storage)
        db = sqlite_file(url)
        if db is not None and not db.exists():  # opening it would create an empty one
            raise OptionError("storage", f"{db}: no such SQLite file")
        return url, name
    if sweep is None:
        raise InputError("give SWEEP (a sweep file or its folder runs/<study>), or --storage URL --study NAME")
    if not sweep.exists():
        raise InputError(f"{sweep}: no such sweep file or folder")
    if sweep.is_dir():
        sd = SweepDir(sweep)
        name = study or sweep.resolve().name
    else:
        name = study or load_sweep(sweep).name
        sd = sweep_dir(name)
    if not sd.study_db.exists():
        raise InputError(f"{sd.study_db} not found: run `funcae sweep` first, or give --storage URL")
    return sqlite_url(sd.study_db), name


@dataclass
class Board:
    summary: dict[str, Any]
    rows: list[dict[str, Any]]
    storage: str

    def to_dict(self) -> dict[str, Any]:
        return json_safe({**self.summary, "storage": self.storage, "trials": self.rows})


def show_sweep(sweep: Path | None, storage: str | None = None, study: str | None = None) -> Board:
    """The leaderboard of a study, read from its storage."""
    url, name = locate_study(sweep, storage, study)
    with quiet_optuna():
        rdb = open_storage(url, None)
        require_study(rdb, name, url)
        s = optuna.load_study(study_name=name, storage=rdb)
    return Board(summary(s), leaderboard(s), display_url(url))


def board_text(board: Board) -> str:
    """The leaderboard as an aligned text table (stdout of `funcae sweep show`)."""
    s = board.summary
    head = ["rank", "trial", s["metric"], "seconds", "state", "params", "note"]
    lines = []
    for r in board.rows:
        params = ", ".join(f"{k}={cell(v)}" for k, v in r["params"].items())
        lines.append(
            [
                cell(r["rank"]),
                str(r["trial"]),
                cell(r["objective"]),
                cell(r["seconds"]),
                r["state"],
                params,
                r["note"],
            ]
        )
    widths = [max(len(x) for x in col) for col in zip(head, *lines)]
    fmt = lambda row: "  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip()  # noqa: E731
    counts = ", ".join(f"{v} {k}" for k, v in s["counts"].items() if v)
    title = f"study {s['study']} ({board.storage}): {s['direction']} {s['metric']}; {counts or 'no trials'}"
    return "\n".join([title, fmt(head), *map(fmt, lines)]) + "\n"
