"""Run directories read into records, for `funcae runs`: every run under a folder (sweeps' trials included),
its status, its config's differences from others'. Never raises for a damaged run: what could not be read is
the record's `problem`, and its status says `damaged`. Light: json and yaml only (no torch, numpy, matplotlib).
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import yaml

from funcae_cli.errors import InputError, OptionError
from funcae_cli.store.rundir import LATEST, RUNS_ROOT, RunDir
from funcae_cli.store.runstatus import process_alive, read_status

# The table's columns, in order: the keys --sort and --filter accept.
COLUMNS = (
    "name", "family", "model", "latent_dim", "epochs", "best_val_loss", "test_sse", "pca_ratio", "wall_seconds",
    "created", "status",
)  # fmt: skip

# What a status means (`funcae runs --help` and the README list them).
STATUSES = {
    "complete": "metrics.json written",
    "running": "training now (its process lives on this host)",
    "interrupted": "stopped by a signal or killed: `funcae train --resume DIR` continues it",
    "diverged": "a non-finite loss stopped training",
    "pruned": "a sweep's trial stopped by the pruner",
    "failed": "a sweep's trial that failed",
    "untrained": "a config and nothing else",
    "damaged": "a file that should be readable is not (see `problem`)",
}


@dataclass
class RunRecord:
    """One row of `funcae runs`; a value that could not be read is None."""

    name: str  # the folder, relative to the listed root
    path: str
    family: str | None = None
    model: str | None = None
    latent_dim: int | None = None
    epochs: int | None = None  # epochs trained (history.json when metrics.json is missing)
    best_val_loss: float | None = None
    test_sse: float | None = None  # mean per-curve SSE on the test split (metrics.json test.sse_mean)
    pca_ratio: float | None = None  # test_sse / PCA's with as many components as the latent: < 1 beats PCA
    wall_seconds: float | None = None
    created: str | None = None  # when training first started (status.json), else config.yaml's time
    status: str = "damaged"
    problem: str | None = None  # what could not be read
    history: list[dict[str, Any]] = field(default_factory=list, repr=False)
    config: dict[str, Any] | None = field(default=None, repr=False)

    def row(self) -> dict[str, Any]:
        """The table's columns and the problem, JSON-ready (no history, no config)."""
        d = asdict(self)
        return {k: d[k] for k in (*COLUMNS, "path", "problem")}


def _read(path: Path, parse) -> tuple[Any, str | None]:
    """(value, None), (None, None) when the file is absent, or (None, what is wrong)."""
    if not path.is_file():
        return None, None
    try:
        value = parse(path.read_text())
    except (OSError, UnicodeDecodeError, ValueError, yaml.YAMLError) as e:
        detail = str(e).splitlines()[0] if str(e) else type(e).__name__
        return None, f"{path.name}: unreadable ({detail})"
    if not isinstance(value, (dict, list)):
        return None, f"{path.name}: holds {type(value).__name__}, not a record"
    return value, None


def _get(d: Any, *keys: str) -> Any:
    for k in keys:
        if not isinstance(d, dict):
            return None
        d = d.get(k)
    return d


def _number(v: Any) -> float | None:
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        return None
    return float(v) if math.isfinite(v) else None


def _text(v: Any) -> str | None:
    return v if isinstance(v, str) else None


def _int(v: Any) -> int | None:
    return v if isinstance(v, int) and not isinstance(v, bool) else None


def _ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a is not None and b is not None and b > 0 else None


def _created(rd: RunDir, status: dict[str, Any] | None) -> str | None:
    from_status = _get(status, "created")
    if isinstance(from_status, str):
        return from_status
    if rd.config.is_file():  # a run trained before status.json existed
        return datetime.fromtimestamp(rd.config.stat().st_mtime).astimezone().isoformat(timespec="seconds")
    return None


def _status(rd: RunDir, recorded: dict[str, Any] | None, trial: Any, metrics: Any, problems: list[str]) -> str:
    state = _get(recorded, "status")
    trial_state = _get(trial, "state")
    if trial_state in ("pruned", "failed"):  # a trial's end, as the sweep recorded it
        return "diverged" if state == "diverged" else trial_state
    if state == "running":
        return "interrupted" if process_alive(_get(recorded, "host"), _get(recorded, "pid")) is False else "running"
    if state in ("interrupted", "diverged"):
        return state
    if problems:
        return "damaged"
    if isinstance(metrics, dict):
        return "complete"
    if rd.is_trained():  # checkpoints but no metrics: killed, from before status.json
        return "interrupted"
    return "untrained" if rd.config.is_file() else "damaged"


def read_run(rd: RunDir, name: str) -> RunRecord:
    """Everything `funcae runs` shows of one run directory; never raises for what it finds there."""
    problems: list[str] = []

    def load(path: Path, parse) -> Any:
        value, problem = _read(path, parse)
        if problem:
            problems.append(problem)
        return value

    config = load(rd.config, yaml.safe_load)
    metrics = load(rd.metrics, json.loads)
    history = load(rd.history_json, json.loads)
    trial = load(rd.trial, json.loads)
    try:
        recorded = read_status(rd)
    except (OSError, ValueError) as e:
        recorded = None
        problems.append(f"{rd.status.name}: unreadable ({str(e).splitlines()[0] if str(e) else type(e).__name__})")
    if not rd.config.is_file():
        problems.append(f"{rd.config.name}: missing")
    if not isinstance(config, dict):
        config = None
    if not isinstance(metrics, dict):
        metrics = None
    rows = [r for r in history if isinstance(r, dict)] if isinstance(history, list) else []
    val = [v for v in (_number(r.get("val_loss")) for r in rows) if v is not None]
    seconds = [v for v in (_number(r.get("seconds")) for r in rows) if v is not None]
    test_sse = _number(_get(metrics, "test", "sse_mean"))
    return RunRecord(
        name=name,
        path=str(rd.root),
        family=_text(_get(metrics, "family")) or _text(_get(config, "family", "name")),
        model=_text(_get(metrics, "model")) or _text(_get(config, "model", "kind")),
        latent_dim=_int(_get(metrics, "latent_dim")) or _int(_get(config, "model", "latent_dim")),
        epochs=_int(_get(metrics, "epochs")) if metrics else (len(rows) if rows or config else None),
        best_val_loss=_number(_get(metrics, "best_val_loss")) if metrics else (min(val) if val else None),
        test_sse=test_sse,
        pca_ratio=_ratio(test_sse, _number(_get(metrics, "test", "pca", "sse_mean"))),
        wall_seconds=_number(_get(metrics, "wall_seconds")) if metrics else (sum(seconds) if seconds else None),
        created=_created(rd, recorded),
        status=_status(rd, recorded, trial, metrics, problems),
        problem="; ".join(problems) or None,
        history=rows,
        config=config,
    )


def find_runs(root: Path) -> list[RunDir]:
    """The run directories under `root` (itself included), depth first in name order. Hidden folders (a sweep's
    trials in training, `.N.partial`), symlinks (runs/latest) and the folders inside a run are not searched."""
    if not root.is_dir():
        raise InputError(f"{root}: not a directory")
    found: list[RunDir] = []

    def walk(folder: Path) -> None:
        rd = RunDir(folder)
        if rd.looks_like_run():
            found.append(rd)
            return
        try:
            children = sorted(folder.iterdir())
        except OSError:
            return
        for child in children:
            if child.is_dir() and not child.is_symlink() and not child.name.startswith(".") and child.name != LATEST:
                walk(child)

    walk(root)
    return found


def _name(rd: RunDir, root: Path) -> str:
    rel = rd.root.relative_to(root)
    return str(rel) if rel.parts else rd.root.name


def _parse_filters(filters: Iterable[str]) -> list[tuple[str, str]]:
    out = []
    for text in filters:
        key, eq, value = text.partition("=")
        if not eq:
            raise OptionError("filter", f"{text!r} is not KEY=VALUE (keys: {', '.join(COLUMNS)})")
        if key not in COLUMNS:
            raise OptionError("filter", f"unknown key {key!r}; allowed: {', '.join(COLUMNS)}")
        out.append((key, value))
    return out


def cell(v: Any) -> str:
    """A value as the table shows it (and as --filter compares it): '-' when missing."""
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)


def _sort_key(key: str):
    def k(r: RunRecord) -> tuple[int, Any]:
        v = getattr(r, key)
        return (1, 0) if v is None else (0, v)  # missing values last

    return k


def list_runs(
    root: Path, sort: str | None = None, filters: Iterable[str] = (), reverse: bool = False
) -> list[RunRecord]:
    """The records of every run under `root`; `filters` KEY=VALUE (all must hold) compare the shown value;
    `sort` a column, missing values last (also with `reverse`)."""
    if sort is not None and sort not in COLUMNS:
        raise OptionError("sort", f"unknown key {sort!r}; allowed: {', '.join(COLUMNS)}")
    tests = _parse_filters(filters)
    root = Path(root)
    records = [read_run(rd, _name(rd, root)) for rd in find_runs(root)]
    records = [r for r in records if all(cell(getattr(r, k)) == v for k, v in tests)]
    if sort is not None:
        present = sorted((r for r in records if getattr(r, sort) is not None), key=_sort_key(sort), reverse=reverse)
        records = present + [r for r in records if getattr(r, sort) is None]
    return records


def runs_text(records: list[RunRecord]) -> str:
    """The records as an aligned text table (stdout of `funcae runs`)."""
    lines = [[cell(getattr(r, c)) for c in COLUMNS] for r in records]
    widths = [max(len(x) for x in col) for col in zip(COLUMNS, *lines)]
    fmt = lambda row: "  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip()  # noqa: E731
    return "\n".join([fmt(list(COLUMNS)), *map(fmt, lines)]) + "\n"


def flatten(config: dict[str, Any] | None, prefix: str = "") -> dict[str, Any]:
    """{'train': {'lr': 0.1}} -> {'train.lr': 0.1}; lists are values."""
    out: dict[str, Any] = {}
    for k, v in (config or {}).items():
        key = f"{prefix}{k}"
        if isinstance(v, dict) and v:
            out.update(flatten(v, key + "."))
        else:
            out[key] = v
    return out


def config_differences(configs: list[dict[str, Any] | None]) -> dict[str, list[Any]]:
    """The dotted config keys whose values are not all equal, each with its value per run (None: absent)."""
    flat = [flatten(c) for c in configs]
    keys = sorted(set().union(*flat))
    return {k: [f.get(k) for f in flat] for k in keys if any(f.get(k) != flat[0].get(k) for f in flat[1:])}


def open_run(path: Path) -> RunDir:
    """A run directory named on the command line: the path, or runs/<path>."""
    for candidate in (Path(path), RUNS_ROOT / path):
        rd = RunDir(candidate)
        if rd.root.is_dir() and rd.looks_like_run():
            return RunDir(candidate.resolve()) if candidate.name == LATEST else rd
    raise InputError(f"{path}: not a run directory (no config.yaml, metrics.json, history or checkpoints)")
