"""Typed experiment configs: dataclasses per section, strict YAML loading, --set overrides.

`load_config(path, overrides)` reads YAML with `yaml.safe_load`, applies `key.path=value`
overrides, and validates every field, collecting all problems (with dotted paths) into one
`ConfigError`. Each field's docstring-like `help` metadata doubles as documentation.
"""

from __future__ import annotations

import ast
import dataclasses
import difflib
import inspect
import math
import re
import textwrap
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Union

import yaml

from funcae_cli.data.families import FAMILIES, Family
from funcae_cli.errors import ConfigError


def _f(default: Any = dataclasses.MISSING, help: str = "", **checks: Any) -> Any:
    """A dataclass field with help text and range checks (min, max, gt, lt)."""
    meta = {"help": help, **checks}
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda d=default: type(d)(d), metadata=meta)
    return field(default=default, metadata=meta)


@dataclass
class ParamSpec:
    """How one family parameter is sampled."""

    dist: Literal["uniform", "loguniform", "normal", "fixed"] = _f("uniform", "sampling law")
    low: float | None = _f(None, "lower bound (uniform, loguniform)")
    high: float | None = _f(None, "upper bound (uniform, loguniform)")
    mean: float | None = _f(None, "mean (normal)")
    std: float | None = _f(None, "standard deviation (normal)", gt=0)
    value: float | None = _f(None, "the value (fixed)")


@dataclass
class FamilyConfig:
    name: str = _f("normal", "function family: " + ", ".join(FAMILIES))
    params: dict[str, ParamSpec] = _f({}, "sampling law per parameter (defaults per family)")
    options: Any = None  # the family's own options dataclass, flattened into this section in YAML

    @property
    def family(self) -> Family:
        return FAMILIES[self.name]

    @property
    def image_shape(self) -> tuple[int, int] | None:
        """(height, width) when each row of the data is an image, else None (curves)."""
        return self.family.image_shape(self.options)


@dataclass
class GridConfig:
    kind: Literal["linspace", "logspace", "points", "index"] = _f(
        "linspace", "grid kind; index: 0, 1, ..., n_features - 1 (array families: dataset, digits)"
    )
    start: float | None = _f(None, "first point (logspace: exponent of 10)")
    stop: float | None = _f(None, "last point (logspace: exponent of 10)")
    num: int | None = _f(None, "number of points", min=2)
    points: list[float] | None = _f(None, "explicit points, increasing (kind: points)")


@dataclass
class DataConfig:
    n: int = _f(10_000, "number of curves generated", min=10)
    val_fraction: float = _f(0.1, "fraction held out for validation/model selection", gt=0, lt=1)
    test_fraction: float = _f(0.05, "fraction held out for the final test", min=0, lt=1)
    transform: Literal["none", "log"] = _f("none", "pointwise transform before training")
    normalize: Literal["none", "global", "per_point"] = _f("none", "standardization of curves")


@dataclass
class ModelConfig:
    kind: Literal["ae", "vae"] = _f("ae", "autoencoder or variational autoencoder")
    latent_dim: int = _f(2, "size of the latent code", min=1)
    hidden: list[int] = _f([64, 64, 64], "encoder hidden widths", min=1)
    decoder_hidden: list[int] | None = _f(None, "decoder hidden widths (default: hidden reversed)", min=1)
    activation: Literal["tanh", "relu", "gelu", "silu"] = _f("tanh", "hidden activation")
    dropout: float = _f(0.0, "dropout after each hidden layer", min=0, lt=1)
    input_dropout: float = _f(0.0, "dropout on the decoder input (notebook 002)", min=0, lt=1)


@dataclass
class SchedulerConfig:
    name: Literal["constant", "exponential", "cosine", "onecycle"] = _f("constant", "lr schedule")
    gamma: float = _f(0.98, "exponential: lr factor per epoch", gt=0, max=1)
    pct_start: float = _f(0.25, "onecycle: fraction of steps warming up", gt=0, lt=1)
    div_factor: float = _f(25.0, "onecycle: initial lr = lr / div_factor", gt=0)
    final_div_factor: float = _f(1e3, "onecycle/cosine: final lr = lr / final_div_factor", gt=0)


@dataclass
class NoiseConfig:
    kind: Literal["none", "mask", "gaussian"] = _f("none", "input corruption (denoising AE)")
    rate: float = _f(0.2, "mask: fraction of inputs zeroed", min=0, lt=1)
    std: float = _f(0.2, "gaussian: noise std in training units", min=0)


@dataclass
class TrainConfig:
    epochs: int = _f(50, "number of epochs", min=1)
    batch_size: int | Literal["full"] = _f(256, "curves per step, or `full` for full batch", min=1)
    optimizer: Literal["adam", "adamw", "sgd"] = _f("adam", "optimizer")
    lr: float = _f(1e-3, "peak learning rate", gt=0)
    weight_decay: float = _f(0.0, "optimizer weight decay", min=0)
    momentum: float = _f(0.9, "sgd momentum", min=0, lt=1)
    scheduler: SchedulerConfig = field(default_factory=SchedulerConfig)
    grad_clip: float | None = _f(None, "clip gradient norm to this value", gt=0)
    loss: Literal["sse", "mse", "gaussian"] = _f(
        "sse", "reconstruction: per-curve sum / mean of squares, or Gaussian likelihood with `eta`"
    )
    eta: float = _f(1.0, "gaussian loss: observation noise (notebook 001)", gt=0)
    kl_weight: float = _f(1.0, "VAE: weight of the KL term (beta-VAE)", min=0)
    kl_warmup_epochs: int = _f(0, "VAE: linear KL warm-up epochs", min=0)
    weight_penalty: float = _f(0.0, "gamma * mean(W^2) summed over layers (notebook 002)", min=0)
    noise: NoiseConfig = field(default_factory=NoiseConfig)
    patience: int | None = _f(None, "early stopping: epochs without val improvement", min=1)
    checkpoint_every: int = _f(1, "save last.pt every N epochs", min=1)
    eval_batch_size: int = _f(
        2048, "curves per forward pass in evaluation (larger chunks page-fault on CPU: ~4x slower)", min=1
    )
    engine: Literal["auto", "native", "mlp", "autograd"] = _f(
        "auto",
        "training step: `native` (MLP AE on the CPU, narrow middle in compiled C), `mlp` (hand-written "
        "torch step for MLP AEs), `autograd` (any model); `auto` times those that can train the model and "
        "takes the fastest (cached per CPU and shape)",
    )


@dataclass
class InvertConfig:
    method: Literal["encoder", "nelder-mead", "lbfgs", "adam"] = _f("lbfgs", "refinement method of the latent code")
    starts: int = _f(0, "extra random starts from the latent distribution", min=0)
    max_iter: int = _f(200, "iterations of the refinement", min=1)
    lr: float = _f(0.05, "adam: step size", gt=0)
    prior: Literal["density", "none"] = _f(
        "density", "latent prior: the training codes' density (MAP: the search stays on the manifold), or none"
    )
    physics: bool = _f(True, "refine the parameters by fitting the family's formula (families with one)")
    bounds: Literal["prior", "domain"] = _f(
        "prior", "physics refit inside the run's prior support, or anywhere in the family's domain"
    )
    physics_starts: int = _f(4, "physics refit: starts per target (the decoder's estimate + spread ones)", min=1)
    physics_max_iter: int = _f(50, "physics refit: Levenberg-Marquardt iterations", min=1)
    posterior: Literal["none", "laplace", "mcmc"] = _f(
        "none", "uncertainty: none, a Laplace (Gaussian) approximation at the optimum, or MCMC samples"
    )
    walkers: int = _f(32, "mcmc: walkers per target (even)", min=4)
    steps: int = _f(800, "mcmc: steps kept per walker", min=10)
    burn: int = _f(200, "mcmc: steps discarded first", min=0)


@dataclass
class Config:
    name: str = _f("run", "run name; default run directory runs/<name>")
    """Letters, digits, '.', '_' and '-' only: it names the run directory."""
    seed: int = _f(0, "seed for data, initialization and batching", min=0, max=2**63 - 1)
    family: FamilyConfig = field(default_factory=FamilyConfig)
    grid: GridConfig | None = None
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    invert: InvertConfig = field(default_factory=InvertConfig)

    def to_dict(self) -> dict[str, Any]:
        return config_to_dict(self)


# --- generic strict parsing ------------------------------------------------------------------


def _type_name(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin is Literal:
        return "one of " + ", ".join(str(a) for a in typing.get_args(tp))
    if origin in (Union, types.UnionType):
        return " or ".join(_type_name(a) for a in typing.get_args(tp) if a is not type(None))
    if origin is list:
        return f"a list of {_type_name(typing.get_args(tp)[0])}"
    if origin is dict:
        return "a mapping"
    if dataclasses.is_dataclass(tp):
        return "a mapping"
    return {float: "a number", int: "an integer", bool: "true or false", str: "a string"}.get(
        tp, getattr(tp, "__name__", str(tp))
    )


class _Bad(Exception):
    pass


def _coerce(tp: Any, value: Any, path: str, problems: list[str]) -> Any:
    origin = typing.get_origin(tp)
    if dataclasses.is_dataclass(tp):
        return parse_section(tp, value, path, problems)
    if origin in (Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        for arg in args:
            if dataclasses.is_dataclass(arg) and isinstance(value, dict):
                return parse_section(arg, value, path, problems)  # keep the nested dotted paths
        for arg in args:
            if arg is type(None):
                continue
            sub: list[str] = []
            try:
                out = _coerce(arg, value, path, sub)
            except _Bad:
                continue
            if not sub:
                return out
        raise _Bad
    if origin is Literal:
        if value in typing.get_args(tp):
            return value
        raise _Bad
    if origin is list:
        if not isinstance(value, (list, tuple)):
            raise _Bad
        (item_tp,) = typing.get_args(tp)
        out = []
        for i, v in enumerate(value):
            try:
                out.append(_coerce(item_tp, v, f"{path}[{i}]", problems))
            except _Bad:
                problems.append(f"{path}[{i}]: expected {_type_name(item_tp)}, got {v!r}")
        return out
    if origin is dict:
        if not isinstance(value, dict):
            raise _Bad
        _, val_tp = typing.get_args(tp)
        return {str(k): _coerce_field(val_tp, v, f"{path}.{k}", problems) for k, v in value.items()}
    if tp is Any:
        return value
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise _Bad
    if tp is int:
        if isinstance(value, bool):
            raise _Bad
        if isinstance(value, int):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        if isinstance(value, str):
            try:
                f = float(value.replace("_", ""))
            except ValueError:
                raise _Bad from None
            if f.is_integer():
                return int(f)
        raise _Bad
    if tp is float:
        if isinstance(value, bool):
            raise _Bad
        if isinstance(value, (int, float)):
            return float(value)
        if isinstance(value, str):  # PyYAML reads 1e-3 as a string
            try:
                return float(value)
            except ValueError:
                raise _Bad from None
        raise _Bad
    if tp is str:
        if isinstance(value, str):
            return value
        raise _Bad
    raise TypeError(f"unsupported config type {tp!r}")


def _coerce_field(tp: Any, value: Any, path: str, problems: list[str]) -> Any:
    """Coerce, recording a problem (and returning None) when the type is wrong."""
    try:
        return _coerce(tp, value, path, problems)
    except _Bad:
        problems.append(f"{path}: expected {_type_name(tp)}, got {value!r}")
        return None


def _check_range(f: dataclasses.Field, value: Any, path: str, problems: list[str]) -> None:
    values = value if isinstance(value, list) else [value]
    for v in values:
        if not isinstance(v, (int, float)) or isinstance(v, bool):
            continue
        if isinstance(v, float) and not math.isfinite(v):
            problems.append(f"{path}: must be finite, got {v!r}")
            return
        m = f.metadata
        if "min" in m and v < m["min"]:
            problems.append(f"{path}: must be >= {m['min']}, got {v!r}")
        if "gt" in m and v <= m["gt"]:
            problems.append(f"{path}: must be > {m['gt']}, got {v!r}")
        if "max" in m and v > m["max"]:
            problems.append(f"{path}: must be <= {m['max']}, got {v!r}")
        if "lt" in m and v >= m["lt"]:
            problems.append(f"{path}: must be < {m['lt']}, got {v!r}")


def _unknown_key(key: str, known: list[str], path: str) -> str:
    where = f"{path}.{key}" if path else key
    close = difflib.get_close_matches(str(key), known, n=1, cutoff=0.6)
    hint = f"; did you mean {path + '.' if path else ''}{close[0]}?" if close else ""
    return f"{where}: unknown key{hint} (allowed: {', '.join(known)})"


def parse_section(cls: type, raw: Any, path: str, problems: list[str]) -> Any:
    """Build dataclass `cls` from `raw`, appending every problem found to `problems`."""
    if cls is FamilyConfig:
        return _parse_family(raw, path, problems)
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        problems.append(f"{path or 'config'}: expected a mapping, got {raw!r}")
        return cls()
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if not (cls is FamilyConfig and f.name == "options")}
    for key in raw:
        if key not in fields:
            problems.append(_unknown_key(key, list(fields), path))
    kwargs = {}
    for name, f in fields.items():
        if name not in raw:
            continue
        sub = f"{path}.{name}" if path else name
        before = len(problems)
        value = _coerce_field(hints[name], raw[name], sub, problems)
        if len(problems) == before:
            _check_range(f, value, sub, problems)
        if len(problems) == before:
            kwargs[name] = value
    return cls(**kwargs)


def _parse_family(raw: Any, path: str, problems: list[str]) -> FamilyConfig:
    if raw is None:
        raw = {}
    if isinstance(raw, str):
        raw = {"name": raw}
    if not isinstance(raw, dict):
        problems.append(f"{path}: expected a mapping with `name`, got {raw!r}")
        return FamilyConfig()
    name = raw.get("name", "normal")
    if name not in FAMILIES:
        problems.append(f"{path}.name: unknown family {name!r}; known: {', '.join(FAMILIES)}")
        return FamilyConfig()
    fam = FAMILIES[name]
    option_raw = {k: v for k, v in raw.items() if k not in ("name", "params")}
    opt_fields = [f.name for f in dataclasses.fields(fam.options_cls)]
    for key in option_raw:
        if key not in opt_fields:
            problems.append(_unknown_key(key, ["name", "params", *opt_fields], path))
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
            problems.append(_unknown_key(key, fam.param_names, f"{path}.params"))
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


def _check_config(cfg: Config, problems: list[str]) -> None:
    if not NAME_RE.fullmatch(cfg.name) or len(cfg.name) > 100:
        problems.append(
            f"name: must be 1-100 letters, digits, '.', '_' or '-' not starting with '.' or '-' "
            f"(it names the run directory), got {cfg.name!r}"
        )
    g = cfg.grid
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


def parse_override(text: str) -> tuple[str, Any]:
    if "=" not in text:
        raise ConfigError([f"--set: expected key.path=value, got {text!r}"])
    key, _, value = text.partition("=")
    key = key.strip()
    if not key or any(not part for part in key.split(".")):
        raise ConfigError([f"--set: bad key path {key!r} in {text!r}"])
    try:
        parsed = yaml.safe_load(value) if value.strip() else None
    except yaml.YAMLError:
        parsed = value
    return key, parsed


def set_dotted(raw: dict[str, Any], key: str, value: Any, where: str = "--set") -> None:
    """raw[a][b][c] = value for key `a.b.c`, creating missing sections; `where` names the source in errors."""
    node = raw
    parts = key.split(".")
    for part in parts[:-1]:
        if not isinstance(node.get(part), dict):
            node[part] = {} if node.get(part) is None else node[part]
            if not isinstance(node[part], dict):
                raise ConfigError([f"{where} {key}: {part} is not a section"])
        node = node[part]
    node[parts[-1]] = value


def apply_overrides(raw: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    for text in overrides:
        key, value = parse_override(text)
        set_dotted(raw, key, value)
    return raw


class _StrictLoader(yaml.SafeLoader):
    """SafeLoader that rejects duplicate keys instead of keeping the last one silently."""

    def construct_mapping(self, node, deep=False):
        seen = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                raise yaml.constructor.ConstructorError(None, None, f"duplicate key {key!r}", key_node.start_mark)
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


EMPTY_CONFIG = "empty config: give at least `name` and `family` (see configs/ for examples)"


def read_yaml(path: Path, empty: str = EMPTY_CONFIG) -> dict[str, Any]:
    """A YAML file's top-level mapping (duplicate keys rejected); `empty` is the problem an empty file reports."""
    if not path.exists():
        raise ConfigError([f"config file not found: {path}"])
    if path.is_dir():
        raise ConfigError([f"config path is a directory, expected a YAML file: {path}"])
    try:
        raw = yaml.load(path.read_text(), Loader=_StrictLoader)  # a SafeLoader
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        raise ConfigError([f"malformed YAML{where}: {problem}"], str(path)) from None
    except UnicodeDecodeError:
        raise ConfigError(["not a text file"], str(path)) from None
    if raw is None:
        raise ConfigError([empty], str(path))
    if not isinstance(raw, dict):
        raise ConfigError([f"top level must be a mapping of sections, got {type(raw).__name__}"], str(path))
    return raw


def config_from_dict(raw: dict[str, Any], source: str | None = None, default_name: str = "run") -> Config:
    problems: list[str] = []
    raw = dict(raw)
    raw.setdefault("name", default_name)
    if raw.get("family") is None:
        raw["family"] = {}  # the default family, with its default priors
    cfg = parse_section(Config, raw, "", problems)
    if not problems:
        _check_config(cfg, problems)
    if problems:
        raise ConfigError(problems, source)
    if cfg.grid is None:
        cfg.grid = GridConfig(**cfg.family.family.default_grid)
    return cfg


def load_config(path: str | Path, overrides: list[str] | None = None) -> Config:
    path = Path(path)
    raw = apply_overrides(read_yaml(path), list(overrides or []))
    default_name = path.parent.name if path.name == "config.yaml" else path.stem
    return config_from_dict(raw, str(path), default_name=default_name)


def config_to_dict(cfg: Any) -> Any:
    if isinstance(cfg, FamilyConfig):
        out: dict[str, Any] = {"name": cfg.name}
        if cfg.options is not None:
            out.update(config_to_dict(cfg.options))
        out["params"] = {
            k: {kk: vv for kk, vv in dataclasses.asdict(v).items() if vv is not None} for k, v in cfg.params.items()
        }
        return out
    if dataclasses.is_dataclass(cfg):
        return {f.name: config_to_dict(getattr(cfg, f.name)) for f in dataclasses.fields(cfg)}
    if isinstance(cfg, dict):
        return {k: config_to_dict(v) for k, v in cfg.items()}
    if isinstance(cfg, list):
        return [config_to_dict(v) for v in cfg]
    return cfg


def dump_config(cfg: Config) -> str:
    return yaml.safe_dump(config_to_dict(cfg), sort_keys=False, default_flow_style=None)


# --- documentation of every field (`funcae config show --explain`) ----------------------------


@dataclass
class FieldDoc:
    """One config field as `config show --explain` prints it."""

    key: str  # dotted path, e.g. train.scheduler.gamma
    type: str  # e.g. "a number", "one of ae, vae"
    default: Any
    value: Any
    allowed: str  # range checks, e.g. "> 0, < 1"; "" when any value of the type is allowed
    help: str


def _attribute_docs(cls: type) -> dict[str, str]:
    """The docstrings written under a dataclass's fields (`x: int = 0` then `\"\"\"what x is\"\"\"`)."""
    try:
        tree = ast.parse(textwrap.dedent(inspect.getsource(cls)))
    except (OSError, TypeError, SyntaxError):
        return {}
    body = tree.body[0].body if tree.body and isinstance(tree.body[0], ast.ClassDef) else []
    docs = {}
    for a, b in zip(body, body[1:]):
        if isinstance(a, ast.AnnAssign) and isinstance(a.target, ast.Name) and isinstance(b, ast.Expr):
            if isinstance(b.value, ast.Constant) and isinstance(b.value.value, str):
                docs[a.target.id] = " ".join(b.value.value.split())
    return docs


def _allowed(f: dataclasses.Field) -> str:
    ops = {"min": ">=", "gt": ">", "max": "<=", "lt": "<"}
    return ", ".join(f"{ops[k]} {f.metadata[k]:g}" for k in ops if k in f.metadata)


def _default(f: dataclasses.Field) -> Any:
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:  # type: ignore[misc]
        return config_to_dict(f.default_factory())  # type: ignore[misc]
    return None


def explain(cfg: Config) -> list[FieldDoc]:
    """Every field of a resolved config, in file order, with its type, default, value, allowed range and help."""
    out: list[FieldDoc] = []

    def walk(obj: Any, prefix: str) -> None:
        cls = type(obj)
        hints = typing.get_type_hints(cls)
        docs = _attribute_docs(cls)
        for f in dataclasses.fields(obj):
            value = getattr(obj, f.name)
            key = f"{prefix}{f.name}"
            if isinstance(obj, FamilyConfig):
                if f.name == "options":
                    if value is not None:
                        walk(value, prefix)  # the family's own keys sit in the family section
                    continue
                if f.name == "params":
                    for pname, spec in value.items():
                        p = obj.family.param(pname)
                        unit = f" [{p.unit}]" if p.unit else ""
                        text = f"{p.label}{unit}: sampling law; domain ({p.low:g}, {p.high:g})"
                        value_ = {k: v for k, v in config_to_dict(spec).items() if v is not None}
                        out.append(FieldDoc(f"{key}.{pname}", "a sampling law", dict(p.default), value_, "", text))
                    continue
            if dataclasses.is_dataclass(value) and not isinstance(value, type):
                walk(value, key + ".")
                continue
            help_ = f.metadata.get("help") or docs.get(f.name, "")
            out.append(FieldDoc(key, _type_name(hints[f.name]), _default(f), config_to_dict(value), _allowed(f), help_))

    walk(cfg, "")
    return out
