"""Every field of a config documented (`funcae config show --explain`): type, default, value, allowed range, help."""

from __future__ import annotations

import ast
import dataclasses
import inspect
import textwrap
import typing
from dataclasses import dataclass
from typing import Any

from funcae_cli.config.loader import CHECKS, type_name
from funcae_cli.config.schema import Config, FamilyConfig, config_to_dict


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
    ops = {"min": ">= {:g}", "gt": "> {:g}", "max": "<= {:g}", "lt": "< {:g}", "multiple_of": "a multiple of {}"}
    assert set(ops) == set(CHECKS)
    return ", ".join(ops[k].format(f.metadata[k]) for k in ops if k in f.metadata)


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
            out.append(FieldDoc(key, type_name(hints[f.name]), _default(f), config_to_dict(value), _allowed(f), help_))

    walk(cfg, "")
    return out
