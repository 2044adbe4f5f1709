"""The strict YAML reader under every funcae file (configs, sweep files): dataclasses as schemas.

`parse_section(cls, raw, path, problems)` builds a dataclass from parsed YAML, collecting every problem with its
dotted path: unknown keys (with a did-you-mean), wrong types, and the range checks each field declares in its
metadata (`doc_field(default, help, min=, gt=, max=, lt=, multiple_of=)`). rules.override parses a command's options
laid over a config section through the same function, so a value is refused by the same rule, with the same words,
wherever it comes from. Nothing here knows funcae's sections.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import types
import typing
from collections.abc import Callable, Mapping
from dataclasses import field
from pathlib import Path
from typing import Any, Literal, Union

import yaml

from funcae_cli.errors import ConfigError

Hooks = Mapping[type, Callable[[Any, str, list[str]], Any]]
EMPTY: Hooks = {}
CHECKS = ("min", "gt", "max", "lt", "multiple_of")  # range checks a field may declare in its metadata


def doc_field(default: Any = dataclasses.MISSING, help: str = "", **checks: Any) -> Any:
    """A dataclass field with help text (shown by `config show --explain` and the CLI) and range checks."""
    unknown = set(checks) - set(CHECKS)
    if unknown:
        raise TypeError(f"unknown field checks {sorted(unknown)}; allowed: {CHECKS}")
    meta = {"help": help, **checks}
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda d=default: type(d)(d), metadata=meta)
    return field(default=default, metadata=meta)


def _with_rules(obj: Any, path: str, problems: list[str], fields_ok: bool) -> Any:
    """Run the record's own rules between fields (`problems()`: (field, message) pairs) once its fields are valid."""
    rules = getattr(obj, "problems", None)
    if fields_ok and callable(rules):
        problems.extend(f"{path}.{name}: {msg}" if path else f"{name}: {msg}" for name, msg in rules())
    return obj


def type_name(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin is Literal:
        return "one of " + ", ".join(str(a) for a in typing.get_args(tp))
    if origin in (Union, types.UnionType):
        return " or ".join(type_name(a) for a in typing.get_args(tp) if a is not type(None))
    if origin is list:
        return f"a list of {type_name(typing.get_args(tp)[0])}"
    if origin is dict:
        return "a mapping"
    if dataclasses.is_dataclass(tp):
        return "a mapping"
    return {float: "a number", int: "an integer", bool: "true or false", str: "a string"}.get(
        tp, getattr(tp, "__name__", str(tp))
    )


class _Bad(Exception):
    pass


def _coerce(tp: Any, value: Any, path: str, problems: list[str], hooks: Hooks) -> Any:
    origin = typing.get_origin(tp)
    if dataclasses.is_dataclass(tp):
        return parse_section(tp, value, path, problems, hooks)
    if origin in (Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        for arg in args:
            if dataclasses.is_dataclass(arg) and isinstance(value, dict):
                return parse_section(arg, value, path, problems, hooks)  # keep the nested dotted paths
        for arg in args:
            if arg is type(None):
                continue
            sub: list[str] = []
            try:
                out = _coerce(arg, value, path, sub, hooks)
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
                out.append(_coerce(item_tp, v, f"{path}[{i}]", problems, hooks))
            except _Bad:
                problems.append(f"{path}[{i}]: expected {type_name(item_tp)}, got {v!r}")
        return out
    if origin is dict:
        if not isinstance(value, dict):
            raise _Bad
        _, val_tp = typing.get_args(tp)
        return {str(k): _coerce_field(val_tp, v, f"{path}.{k}", problems, hooks) for k, v in value.items()}
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


def _coerce_field(tp: Any, value: Any, path: str, problems: list[str], hooks: Hooks = EMPTY) -> Any:
    """Coerce, recording a problem (and returning None) when the type is wrong."""
    try:
        return _coerce(tp, value, path, problems, hooks)
    except _Bad:
        problems.append(f"{path}: expected {type_name(tp)}, got {value!r}")
        return None


def check_range(f: dataclasses.Field, value: Any, path: str, problems: list[str]) -> None:
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
        if "multiple_of" in m and v % m["multiple_of"]:
            problems.append(f"{path}: must be a multiple of {m['multiple_of']}, got {v!r}")


def unknown_key(key: str, known: list[str], path: str) -> str:
    where = f"{path}.{key}" if path else key
    close = difflib.get_close_matches(str(key), known, n=1, cutoff=0.6)
    hint = f"; did you mean {path + '.' if path else ''}{close[0]}?" if close else ""
    return f"{where}: unknown key{hint} (allowed: {', '.join(known)})"


def parse_section(cls: type, raw: Any, path: str, problems: list[str], hooks: Hooks = EMPTY) -> Any:
    """Build dataclass `cls` from `raw`, appending every problem found to `problems`.

    hooks: sections parsed by a function of their own (the family section, whose keys depend on the family).
    A class's `problems()` method (rules between its fields) runs once its fields are valid.
    """
    if cls in hooks:
        return hooks[cls](raw, path, problems)
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        problems.append(f"{path or 'config'}: expected a mapping, got {raw!r}")
        return cls()
    before_all = len(problems)
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    for key in raw:
        if key not in fields:
            problems.append(unknown_key(key, list(fields), path))
    kwargs = {}
    for name, f in fields.items():
        if name not in raw:
            continue
        sub = f"{path}.{name}" if path else name
        before = len(problems)
        value = _coerce_field(hints[name], raw[name], sub, problems, hooks)
        if len(problems) == before:
            check_range(f, value, sub, problems)
        if len(problems) == before:
            kwargs[name] = value
    return _with_rules(cls(**kwargs), path, problems, len(problems) == before_all)


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


def read_yaml(path: Path, empty: str) -> dict[str, Any]:
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
