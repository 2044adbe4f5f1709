"""SWEEP.yaml: parsed strictly into a `SweepSpec`, every problem reported with its dotted path, before any trial.

    name: normal_sweep                  # names the study and runs/<name>/ (default: the file's stem)
    base: ../normal.yaml                # the base config, relative to this file
    overrides: {train.epochs: 20}       # fixed for every trial (dotted keys, as --set)
    space:                              # one distribution per dotted config key (space.py)
      train.lr: {log_uniform: [1.0e-4, 1.0e-2]}
      model.hidden: {choice: [[64, 64], [128, 128, 128]]}
    objective: {metric: test.sse_mean, direction: minimize}
    sampler: {name: tpe, seed: 0}       # tpe | random | grid
    pruner: {name: median, warmup_epochs: 5}   # median | hyperband | none, on the per-epoch val_loss
    trials: 20
    heartbeat: {interval: 10, grace: 30, max_retry: 3}

Each space key is checked at both ends of its range (and at every choice) against the base config with the
config's own rules (config/: unknown keys with a did-you-mean, types, ranges), so a bad key or value is a
one-line error naming `space.<key>` and no trial starts. A trial's config (`trial_config`) is validated the same
way before it trains.
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from funcae_cli.config import (
    EMPTY_CONFIG,
    NAME_RE,
    Config,
    config_from_dict,
    config_to_dict,
    doc_field,
    load_config,
    parse_section,
    read_yaml,
    set_dotted,
)
from funcae_cli.errors import ConfigError
from funcae_cli.sweeps.space import Dist, parse_dist

# Numbers of metrics.json a sweep may optimize: training writes these (tests check that a trained run has each one)
TRAINING_METRICS = (
    "test.sse_mean",
    "test.sse_median",
    "test.sse_p95",
    "test.mse",
    "test.mse_global_std",
    "test.rel_l2_median",
    "test.rel_l2_mean",
    "best_val_loss",
    "final.val_loss",
    "final.val_sse",
    "final.val_mse",
    "final.val_mse_std",
    "wall_seconds",
)
# ... and these a trial computes after training when its objective names them (sweeps/objective.py): the decoder's
# fit to held-out curves of the family (jobs/heldout.py), in metrics.json's `invert` section. Formula families only.
AFTER_TRAINING_METRICS = ("invert.residual_median", "invert.residual_mean", "invert.rel_l2_median")
OBJECTIVE_METRICS = TRAINING_METRICS + AFTER_TRAINING_METRICS
DEFAULT_TRIALS = 20
EMPTY_SWEEP = "empty sweep file: give at least `base` and `space` (see configs/sweeps/ for examples)"


@dataclass
class ObjectiveSpec:
    metric: str = doc_field("test.sse_mean", "the number of metrics.json to optimize (dotted path)")
    direction: Literal["minimize", "maximize"] = doc_field("minimize", "whether lower or higher is better")


@dataclass
class SamplerSpec:
    name: Literal["tpe", "random", "grid"] = doc_field("tpe", "Optuna sampler")
    seed: int | None = doc_field(None, "seed of the sampler (worker i of a machine uses seed + i)", min=0)
    startup_trials: int = doc_field(10, "tpe: random trials before the model guides sampling", min=1)


@dataclass
class PrunerSpec:
    name: Literal["median", "hyperband", "none"] = doc_field("median", "pruner on the per-epoch validation loss")
    startup_trials: int = doc_field(5, "median: finished trials before any is pruned", min=0)
    warmup_epochs: int = doc_field(
        5, "median: epochs a trial runs before it can be pruned; hyperband: min epochs", min=0
    )
    reduction_factor: int = doc_field(3, "hyperband: the fraction 1/factor of trials promoted at each rung", min=2)


@dataclass
class HeartbeatSpec:
    interval: int = doc_field(10, "seconds between a running trial's heartbeats in the storage", min=1)
    grace: int | None = doc_field(
        None, "seconds without a heartbeat before a trial is failed and re-queued (3 x interval)"
    )
    max_retry: int = doc_field(3, "re-queues of one trial whose worker died, before it stays failed", min=0)

    @property
    def grace_seconds(self) -> int:
        return self.grace if self.grace is not None else 3 * self.interval


@dataclass
class SweepFile:
    """The file as written (before the space and the base config are resolved)."""

    name: str | None = doc_field(None, "the study's name; runs/<name>/ holds the sweep (default: the file's stem)")
    base: str = doc_field("", "the base config, a path relative to this file")
    overrides: dict[str, Any] = field(default_factory=dict, metadata={"help": "dotted key -> value, every trial"})
    space: dict[str, Any] = field(default_factory=dict, metadata={"help": "dotted key -> distribution"})
    objective: ObjectiveSpec = field(default_factory=ObjectiveSpec)
    sampler: SamplerSpec = field(default_factory=SamplerSpec)
    pruner: PrunerSpec = field(default_factory=PrunerSpec)
    trials: int | None = doc_field(
        None, f"finished trials the study needs (default {DEFAULT_TRIALS}; grid: its size)", min=1
    )
    plots: bool = doc_field(True, "draw each trial's default figures into its run directory")
    heartbeat: HeartbeatSpec = field(default_factory=HeartbeatSpec)


@dataclass
class SweepSpec:
    """A validated sweep: everything a worker needs (plain data: it travels to spawned worker processes)."""

    source: str  # the sweep file, for messages
    name: str
    base_path: str
    base_raw: dict[str, Any]  # the base config's YAML mapping with `overrides` applied
    space: dict[str, Dist]
    objective: ObjectiveSpec
    sampler: SamplerSpec
    pruner: PrunerSpec
    trials: int
    plots: bool
    heartbeat: HeartbeatSpec
    fingerprint: str  # of the resolved base config, space and objective: a study holds one sweep

    def grid(self) -> dict[str, list[Any]]:
        return {k: d.grid() or [] for k, d in self.space.items()}

    def grid_size(self) -> int:
        n = 1
        for values in self.grid().values():
            n *= len(values)
        return n


def metric_value(metrics: dict[str, Any], metric: str) -> float:
    """metrics.json's number at a dotted path (`test.sse_mean`)."""
    node: Any = metrics
    for part in metric.split("."):
        node = node[part]
    return float(node)


def trial_config(spec: SweepSpec, values: dict[str, Any], name: str) -> Config:
    """The base config with the trial's values set, validated like any config (ConfigError names the sweep)."""
    raw = copy.deepcopy(spec.base_raw)
    for key, value in values.items():
        set_dotted(raw, key, value, where="space")
    raw["name"] = name
    return config_from_dict(raw, spec.source)


def _relabel(problem: str, key: str, value: Any) -> str:
    """A config problem caused by space key `key` at `value`, as a sweep-file problem."""
    path, _, what = problem.partition(":")
    at = "" if "unknown key" in what or repr(value) in what or str(value) in what else f" (at {value!r})"
    if key == path or key.startswith(path + ".") or path.startswith(key + ".") or path.startswith(key + "["):
        return f"space.{problem}{at}"
    return f"space.{key} = {value!r}: {problem}"


def _check_space(raw: dict[str, Any], space: dict[str, Dist], problems: list[str]) -> None:
    for key, dist in space.items():
        if key == "name":
            problems.append("space.name: the trials' names are set by the sweep; not searchable")
            continue
        for value in dist.corners():
            probe = copy.deepcopy(raw)
            try:
                set_dotted(probe, key, value, where="space")
                config_from_dict(probe)
            except ConfigError as e:
                problems.extend(_relabel(p, key, value) for p in e.problems)
                break


def _fingerprint(base: Config, space: dict[str, Dist], objective: ObjectiveSpec) -> str:
    resolved = config_to_dict(base)
    resolved.pop("name", None)
    resolved.pop("track", None)  # where the trials are logged is not the experiment (older studies resume)
    doc = {
        "base": resolved,
        "space": {k: dataclasses.asdict(d) for k, d in sorted(space.items())},
        "objective": dataclasses.asdict(objective),
    }
    return hashlib.sha256(json.dumps(doc, sort_keys=True, default=str).encode()).hexdigest()[:16]


def load_sweep(path: str | Path) -> SweepSpec:
    """Parse and validate SWEEP.yaml and its base config; ConfigError (exit 2) lists every problem found."""
    path = Path(path)
    source = str(path)
    raw = read_yaml(path, empty=EMPTY_SWEEP)
    problems: list[str] = []
    sf: SweepFile = parse_section(SweepFile, raw, "", problems)
    name = sf.name if sf.name is not None else path.stem
    if not NAME_RE.fullmatch(name) or len(name) > 100:
        where = "name" if sf.name is not None else f"name (from the file name {path.name!r})"
        problems.append(
            f"{where}: must be 1-100 letters, digits, '.', '_' or '-' not starting with '.' or '-' "
            f"(it names the study and runs/<name>/), got {name!r}"
        )
    if not sf.base and "base" not in raw:
        problems.append("base: required: the path of the base config, relative to this file")
    if not sf.space and "space" not in raw:
        problems.append(
            "space: required: dotted config keys -> distributions, e.g. train.lr: {log_uniform: [1.0e-4, 1.0e-2]}"
        )
    space: dict[str, Dist] = {}
    for key, dist_raw in sf.space.items():
        dist = parse_dist(dist_raw, f"space.{key}", problems)
        if dist is not None:
            space[str(key)] = dist
    if "space" in raw and not sf.space:
        problems.append("space: give at least one key to search")
    if sf.objective.metric not in OBJECTIVE_METRICS:
        problems.append(
            f"objective.metric: unknown metric {sf.objective.metric!r}; allowed: {', '.join(OBJECTIVE_METRICS)}"
        )
    if sf.pruner.name != "none" and sf.objective.direction == "maximize":
        problems.append(
            "pruner.name: pruning compares the per-epoch validation loss (lower is better), which needs "
            "objective.direction: minimize; set pruner.name: none to maximize"
        )
    if sf.heartbeat.grace is not None and sf.heartbeat.grace <= sf.heartbeat.interval:
        problems.append(
            f"heartbeat.grace: must be > heartbeat.interval ({sf.heartbeat.interval}), got {sf.heartbeat.grace}"
        )
    if sf.sampler.name == "grid":
        continuous = [k for k, d in space.items() if d.grid() is None]
        if continuous:
            problems.append(
                f"sampler.name: grid needs discrete values (choice, int, or uniform with a step); "
                f"continuous: {', '.join('space.' + k for k in continuous)}"
            )
    if problems:
        raise ConfigError(problems, source)

    base_path = path.parent / sf.base
    if not base_path.is_file():
        raise ConfigError([f"base: config file not found: {base_path}"], source)
    base = load_config(base_path)  # its own problems name the base file
    base_raw = read_yaml(base_path, EMPTY_CONFIG)
    base_raw.setdefault("name", base.name)
    for key, value in sf.overrides.items():
        set_dotted(base_raw, str(key), value, where="overrides")
    try:
        resolved = config_from_dict(base_raw)
    except ConfigError as e:
        raise ConfigError([f"overrides: {p}" for p in e.problems], source) from None
    _check_space(base_raw, space, problems)
    if sf.objective.metric in AFTER_TRAINING_METRICS and not resolved.family.family.has_formula:
        problems.append(
            f"objective.metric: {sf.objective.metric} inverts curves drawn from the family's formula; family "
            f"{resolved.family.name} has none (rank on a training metric, e.g. final.val_sse)"
        )
    spec = SweepSpec(
        source=source,
        name=name,
        base_path=str(base_path),
        base_raw=base_raw,
        space=space,
        objective=sf.objective,
        sampler=sf.sampler,
        pruner=sf.pruner,
        trials=sf.trials if sf.trials is not None else DEFAULT_TRIALS,
        plots=sf.plots,
        heartbeat=sf.heartbeat,
        fingerprint=_fingerprint(resolved, space, sf.objective),
    )
    if sf.sampler.name == "grid":
        if sf.trials is None:
            spec.trials = spec.grid_size()
        elif sf.trials > spec.grid_size():
            problems.append(f"trials: the grid has {spec.grid_size()} points, got {sf.trials}")
    if problems:
        raise ConfigError(problems, source)
    return spec
