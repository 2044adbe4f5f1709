"""The rules of a funcae config beyond each field's own type and range: a family's keys and priors, the grid
against the family's domain, the run's name, the data splits; loading a config file; and laying a command's options
over a section (`override`), checked by the same rules."""

from __future__ import annotations

import dataclasses
import functools
import math
import re
from pathlib import Path
from typing import Any, TypeVar

from funcae_cli.config.families import FAMILIES, Family
from funcae_cli.config.loader import apply_overrides, parse_section, read_yaml, unknown_key
from funcae_cli.config.schema import Config, FamilyConfig, GridConfig, ParamSpec, config_to_dict
from funcae_cli.config.userfamilies import resolve as resolve_user_family
from funcae_cli.errors import ConfigError, OptionError

EMPTY_CONFIG = "empty config: give at least `name` and `family` (see configs/ for examples)"
R = TypeVar("R")


def parse_family(raw: Any, path: str, problems: list[str], trust_code: bool = True) -> FamilyConfig:
    """trust_code: whether an import-path family (`function:`) may be imported (userfamilies.resolve)."""
    if raw is None:
        raw = {}
    if isinstance(raw, str):
        raw = {"name": raw}
    if not isinstance(raw, dict):
        problems.append(f"{path}: expected a mapping with `name`, got {raw!r}")
        return FamilyConfig()
    name = raw.get("name", "normal")
    before = len(problems)
    resolve_user_family(raw, path, problems, trust_code)
    if len(problems) > before:
        return FamilyConfig()
    if name not in FAMILIES:
        problems.append(f"{path}.name: unknown family {name!r}; known: {', '.join(FAMILIES)}")
        return FamilyConfig()
    fam = FAMILIES[name]
    option_raw = {k: v for k, v in raw.items() if k not in ("name", "params")}
    opt_fields = [f.name for f in dataclasses.fields(fam.options_cls)]
    for key in option_raw:
        if key not in opt_fields:
            problems.append(unknown_key(key, ["name", "params", *opt_fields], path))
    before = len(problems)
    options = parse_section(fam.options_cls, {k: v for k, v in option_raw.items() if k in opt_fields}, path, problems)
    if len(problems) == before:
        problems.extend(f"{path}.{msg}" for msg in fam.check_options(options))
    params_raw = raw.get("params") or {}
    if not isinstance(params_raw, dict):
        problems.append(f"{path}.params: expected a mapping of parameter -> spec, got {params_raw!r}")
        params_raw = {}
    derived = fam.derives_params(options)
    params: dict[str, ParamSpec] = {}
    for p in fam.params:
        ppath = f"{path}.params.{p.name}"
        given = params_raw.get(p.name)
        if derived and p is not fam.params[0]:
            if given is not None:
                problems.append(
                    f"{ppath}: derived from {fam.params[0].name} by the scaling-relation prior; "
                    "set family.prior: independent to sample it directly"
                )
            continue
        if given is None:
            spec_raw: Any = dict(p.default)
        elif isinstance(given, (int, float, str)) and not isinstance(given, bool):
            spec_raw = {"dist": "fixed", "value": given}
        elif isinstance(given, (list, tuple)) and len(given) == 2:
            spec_raw = {"dist": "uniform", "low": given[0], "high": given[1]}
        else:
            spec_raw = given
        before = len(problems)
        spec = parse_section(ParamSpec, spec_raw, ppath, problems)
        if len(problems) == before:
            _check_param_spec(spec, p.name, fam, ppath, problems)
        params[p.name] = spec
    for key in params_raw:
        if key not in fam.param_names:
            problems.append(unknown_key(key, fam.param_names, f"{path}.params"))
    return FamilyConfig(name=name, params=params, options=options)


def _check_param_spec(spec: ParamSpec, pname: str, fam: Family, path: str, problems: list[str]) -> None:
    p = fam.param(pname)
    need = {"uniform": ("low", "high"), "loguniform": ("low", "high"), "normal": ("mean", "std"), "fixed": ("value",)}
    missing = [k for k in need[spec.dist] if getattr(spec, k) is None]
    if missing:
        problems.append(f"{path}: dist {spec.dist} needs {', '.join(missing)}")
        return
    if spec.dist in ("uniform", "loguniform"):
        if spec.low >= spec.high:
            problems.append(f"{path}: low must be < high, got low={spec.low}, high={spec.high}")
        # Uniform samples lie in the open interval, so low may equal an exclusive domain bound.
        lo_ok = spec.low >= p.low if spec.dist == "uniform" else spec.low > max(p.low, 0.0)
        if not lo_ok:
            bound = p.low if spec.dist == "uniform" else max(p.low, 0.0)
            op = ">=" if spec.dist == "uniform" else ">"
            problems.append(f"{path}.low: must be {op} {bound:g} for {fam.name}, got {spec.low:g}")
        if spec.high > p.high:
            problems.append(f"{path}.high: must be <= {p.high:g} for {fam.name}, got {spec.high:g}")
    elif spec.dist == "normal":
        if math.isfinite(p.low) or math.isfinite(p.high):
            problems.append(
                f"{path}.dist: normal is unbounded but {pname} must lie in ({p.low:g}, {p.high:g}); "
                "use uniform or loguniform"
            )
    elif spec.dist == "fixed" and not (p.low < spec.value < p.high):
        problems.append(f"{path}.value: must be in ({p.low:g}, {p.high:g}) for {fam.name}, got {spec.value:g}")


NAME_RE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._-]*")


def check_config(cfg: Config, problems: list[str]) -> None:
    if not NAME_RE.fullmatch(cfg.name) or len(cfg.name) > 100:
        problems.append(
            f"name: must be 1-100 letters, digits, '.', '_' or '-' not starting with '.' or '-' "
            f"(it names the run directory), got {cfg.name!r}"
        )
    g = cfg.grid
    if g is None and not cfg.family.family.default_grid:
        problems.append(f"grid: family {cfg.family.name} declares no default grid; give a `grid:` section")
        return
    if g is not None and g.kind == "index" and cfg.family.family.has_formula:
        problems.append(f"grid.kind: index is for array families (dataset, digits), not {cfg.family.name}")
    elif g is not None and g.kind != "index":
        if g.kind == "points":
            if not g.points or len(g.points) < 2:
                problems.append("grid.points: kind points needs at least 2 points")
            elif any(b <= a for a, b in zip(g.points, g.points[1:])):
                problems.append("grid.points: must be strictly increasing")
        else:
            missing = [k for k in ("start", "stop", "num") if getattr(g, k) is None]
            if missing:
                problems.append(f"grid: kind {g.kind} needs {', '.join(missing)}")
            elif g.stop <= g.start:
                problems.append(f"grid.stop: must be > grid.start ({g.start}), got {g.stop}")
    if not problems:
        _check_grid_domain(cfg, problems)
    if cfg.data.val_fraction + cfg.data.test_fraction >= 0.9:
        problems.append(
            f"data.val_fraction + data.test_fraction: must leave >= 10% for training, got "
            f"{cfg.data.val_fraction} + {cfg.data.test_fraction}"
        )


def _check_grid_domain(cfg: Config, problems: list[str]) -> None:
    g = cfg.grid or GridConfig(**cfg.family.family.default_grid)
    if g.kind == "index":  # the feature index of array data: no domain to check
        return
    if g.kind == "points":
        lo, hi = min(g.points), max(g.points)
    else:
        ends = (g.start, g.stop) if g.kind == "linspace" else (10.0**g.start, 10.0**g.stop)
        lo, hi = min(ends), max(ends)
    x_lo, x_hi = cfg.family.family.x_domain
    if not (x_lo < lo and hi < x_hi):
        problems.append(f"grid: points must lie in ({x_lo:g}, {x_hi:g}) for {cfg.family.name}, got [{lo:g}, {hi:g}]")


# --- loading, overrides, dumping --------------------------------------------------------------


HOOKS = {FamilyConfig: parse_family}  # the family section's keys depend on the family
UNTRUSTED_HOOKS = {FamilyConfig: functools.partial(parse_family, trust_code=False)}


def config_from_dict(
    raw: dict[str, Any], source: str | None = None, default_name: str = "run", trust_code: bool = True
) -> Config:
    """trust_code: False for a config read back from a run directory, whose import-path family (your own
    formula's `function:`) is then imported only if you trust run code (userfamilies.run_code_trusted)."""
    problems: list[str] = []
    raw = dict(raw)
    raw.setdefault("name", default_name)
    if raw.get("family") is None:
        raw["family"] = {}  # the default family, with its default priors
    cfg = parse_section(Config, raw, "", problems, HOOKS if trust_code else UNTRUSTED_HOOKS)
    if not problems:
        check_config(cfg, problems)
    if problems:
        raise ConfigError(problems, source)
    if cfg.grid is None:
        cfg.grid = GridConfig(**cfg.family.family.default_grid)
    return cfg


def load_config(path: str | Path, overrides: list[str] | None = None, trust_code: bool = True) -> Config:
    path = Path(path)
    raw = apply_overrides(read_yaml(path, EMPTY_CONFIG), list(overrides or []))
    default_name = path.parent.name if path.name == "config.yaml" else path.stem
    return config_from_dict(raw, str(path), default_name=default_name, trust_code=trust_code)


def override(record: R, options: dict[str, Any], section: str = "") -> R:
    """`record` with the given options (field name -> value as a user gave it; None: keep the record's), parsed and
    checked by the rules that parse the config file (types, ranges, the record's own rules). A bad option raises
    OptionError naming it (the CLI shows its flag)."""
    given = {k: v for k, v in options.items() if v is not None}
    unknown = set(given) - {f.name for f in dataclasses.fields(record)}
    if unknown:
        raise TypeError(f"{type(record).__name__} has no field {sorted(unknown)}")
    problems: list[str] = []
    out = parse_section(type(record), {**config_to_dict(record), **given}, "", problems)
    for problem in problems:
        name, _, message = problem.partition(": ")
        field_name = name.split(".")[0].split("[")[0]
        if field_name in given:
            raise OptionError(field_name + name[len(field_name) :], message)
    if problems:  # the run's own section is bad: its config.yaml was edited by hand
        raise ConfigError([f"{section}.{p}" if section else p for p in problems], "the run's config")
    return out
