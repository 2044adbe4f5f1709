"""The one door for a user's own formula family: a `UserFamily` declaration (or a bare torch function) found by an
import path in the config or by an installed package's entry point, put into the same `FAMILIES` registry as the
built-in families (and, through it, `formulas.FORMULAS`).

- `family: {name: formula, function: "mymodule:attr"}`: imports `mymodule` (the working directory first on the
  path) and takes its `attr`: a `UserFamily`, or a function f(x, p1, p2, ...) whose parameter names follow x.
- `family: {name: line_profile}` with no built-in of that name: the entry point `line_profile` of the group
  `funcae.families` of an installed package (`[project.entry-points."funcae.families"]` in its pyproject).

Importing runs the module's code. An import path is imported when the config is the user's own (train, generate,
config check, sweep: `trust_code=True`), but an import path read back from a run directory only when the user
trusts run code (`--trust-run-code`, or FUNCAE_TRUST_RUN_CODE=1 in the environment): otherwise the load stops
with a ConfigError naming the module it would import. Entry points load as usual (the user installed them).
This module imports no numerics itself; the user's module usually imports torch.
"""

from __future__ import annotations

import importlib
import inspect
import os
import sys
from collections.abc import Callable
from importlib import metadata
from typing import Any

from funcae_cli.config.families import FAMILIES, Family, UserFamily

GROUP = "funcae.families"  # the entry-point group of installed families
TRUST_ENV = "FUNCAE_TRUST_RUN_CODE"  # "1": import the import-path families recorded in run directories
IMPORT_PATH_NAME = "formula"  # the default name of an import-path family


def run_code_trusted() -> bool:
    """Whether import paths recorded in run directories may be imported (the CLI's --trust-run-code sets it)."""
    return os.environ.get(TRUST_ENV, "") == "1"


def entry_point_names() -> list[str]:
    """The families installed packages declare (without importing them)."""
    return sorted({ep.name for ep in metadata.entry_points(group=GROUP)})


def resolve(raw: dict[str, Any], path: str, problems: list[str], trust_code: bool) -> str | None:
    """Register the user's family that the family section `raw` names, if any; returns its registry name, or None
    when the section names a built-in family (or a problem was recorded)."""
    name, function = raw.get("name", "normal"), raw.get("function")
    if not isinstance(name, str):
        return None  # parse_family reports it
    if function is None:
        if name in FAMILIES and FAMILIES[name].function is None:
            return None  # a built-in
        return _from_entry_point(str(name), path, problems)
    if name in FAMILIES and FAMILIES[name].function is None:
        problems.append(
            f"{path}.name: {name!r} is a built-in family; name your formula family something else "
            f"(e.g. {IMPORT_PATH_NAME})"
        )
        return None
    if not isinstance(function, str) or function.count(":") != 1 or not all(function.split(":")):
        problems.append(f"{path}.function: expected an import path `module:attribute`, got {function!r}")
        return None
    registered = FAMILIES.get(name)
    origin = f"import path {function}"
    if registered is not None and registered.origin == origin:
        return name  # imported already in this process: nothing new runs
    if not trust_code:
        problems.append(
            f"{path}.function: this run's family would import {function.split(':')[0]!r} ({function}); "
            f"importing runs its code: pass --trust-run-code (or set {TRUST_ENV}=1) if you trust it"
        )
        return None
    obj = _import(function, name, path, problems)
    if obj is None:
        return None
    return _register(name, obj, origin, True, path, problems, registered)


def _from_entry_point(name: str, path: str, problems: list[str]) -> str | None:
    registered = FAMILIES.get(name)
    if registered is not None:
        return name
    found = [ep for ep in metadata.entry_points(group=GROUP) if ep.name == name]
    if not found:
        known = [n for n, f in FAMILIES.items() if f.function is None] + entry_point_names()
        problems.append(
            f"{path}.name: unknown family {name!r}; known: {', '.join(known)} "
            f"(or your own: `function: module:attribute`)"
        )
        return None
    ep = found[0]
    package = ep.dist.name if getattr(ep, "dist", None) is not None else "?"
    try:
        obj = ep.load()
    except Exception as e:  # the user's package: any error in its import is theirs
        problems.append(f"{path}.name: family {name!r}: cannot load entry point {ep.value} ({_one_line(e)})")
        return None
    return _register(name, obj, f"entry point {name} of package {package}", False, path, problems, None)


def _import(function: str, name: str, path: str, problems: list[str]) -> Any:
    module_name, attr = function.split(":")
    cwd = os.getcwd()
    added = cwd not in sys.path
    if added:  # a module beside the config, as `python -m` finds it
        sys.path.insert(0, cwd)
    try:
        module = importlib.import_module(module_name)
    except Exception as e:  # the user's module: any error in its import is theirs
        where = " (run funcae where the module is, or put its folder on PYTHONPATH)"
        hint = where if isinstance(e, ModuleNotFoundError) and e.name == module_name.split(".")[0] else ""
        problems.append(f"{path}.function: family {name!r}: cannot import {module_name!r} ({_one_line(e)}){hint}")
        return None
    finally:
        if added:
            sys.path.remove(cwd)
    obj = module
    for part in attr.split("."):
        if not hasattr(obj, part):
            problems.append(f"{path}.function: family {name!r}: module {module_name!r} has no {attr!r}")
            return None
        obj = getattr(obj, part)
    return obj


def _register(
    name: str, obj: Any, origin: str, import_path: bool, path: str, problems: list[str], registered: Family | None
) -> str | None:
    """Put the declaration `obj` (a UserFamily or a bare function) into FAMILIES as `name`."""
    if isinstance(obj, UserFamily):
        decl = obj
    elif callable(obj):
        decl = UserFamily(function=obj, params=tuple(_param_names(obj)))
    else:
        problems.append(f"{path}: family {name!r} ({origin}): expected a funcae_cli.UserFamily or a function, got "
                        f"{type(obj).__name__}")  # fmt: skip
        return None
    if not callable(decl.function) or not decl.params:
        problems.append(f"{path}: family {name!r} ({origin}): needs a function and at least one parameter")
        return None
    if registered is not None and registered.origin != origin:
        problems.append(
            f"{path}.name: family {name!r} is already {registered.origin} in this process; give this one another name"
        )
        return None
    FAMILIES[name] = decl.family(name, origin, import_path)
    return name


def _param_names(function: Callable[..., Any]) -> list[str]:
    """A bare function's parameters: the names after x."""
    try:
        names = list(inspect.signature(function).parameters)
    except (TypeError, ValueError):
        return []
    return names[1:]


def _one_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[0]}" if text else type(e).__name__
