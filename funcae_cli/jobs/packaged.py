"""The configs shipped with funcae: list them, and copy them into a project (`funcae init`).

A wheel carries the repository's configs/ as funcae_cli/_configs (setup.py maps it there); a checkout or an
editable install reads configs/ itself. A config is named by its path under configs/ without `.yaml`
(`normal`, `reference/normal_000`, `sweeps/normal`). `init` writes configs/<name>.yaml under a folder, with
the files it names (a sweep's `base`, the data file its header runs on, `configs/...` paths in its text), in
the same layout, so the command in its header runs from that folder as written.
"""

from __future__ import annotations

import dataclasses
import posixpath
import re
from importlib import resources
from importlib.resources.abc import Traversable
from pathlib import Path

import yaml

from funcae_cli.errors import InputError, OptionError
from funcae_cli.files import atomic_write_bytes

PACKAGED = "_configs"  # the folder inside funcae_cli that a wheel ships configs/ as
CONFIGS = "configs"  # the folder `init` writes, as in the repository: headers and sweeps name files under it
SUFFIX = ".yaml"
ALL = "all"
_MENTION = re.compile(r"configs/[\w./-]*\w")  # a path under configs/ in a config's text (no trailing '.')
_RUN_LINE = re.compile(r"^#\s+(funcae .+)$", re.MULTILINE)  # the header's command lines


def config_root() -> Traversable:
    """The shipped configs: the installed package's copy, else (a checkout, an editable install) configs/."""
    packaged = resources.files("funcae_cli") / PACKAGED
    if packaged.is_dir():
        return packaged
    checkout = Path(__file__).resolve().parents[2] / CONFIGS  # funcae_cli/jobs/packaged.py -> the checkout
    if checkout.is_dir():
        return checkout
    raise InputError(f"no shipped configs: neither {packaged} nor {checkout} exists (a broken install?)")


def shipped_files(root: Traversable | None = None) -> dict[str, Traversable]:
    """Every shipped file (configs and the data they name) by its path under configs/, e.g. `data/x.csv`."""
    found: dict[str, Traversable] = {}
    stack: list[tuple[str, Traversable]] = [("", config_root() if root is None else root)]
    while stack:
        prefix, folder = stack.pop()
        for entry in folder.iterdir():
            if entry.name.startswith((".", "__")):
                continue
            rel = prefix + entry.name
            if entry.is_dir():
                stack.append((rel + "/", entry))
            else:
                found[rel] = entry
    return dict(sorted(found.items()))


def config_names(files: dict[str, Traversable] | None = None) -> list[str]:
    """The shipped configs' names: their paths under configs/ without `.yaml`."""
    files = shipped_files() if files is None else files
    return [rel[: -len(SUFFIX)] for rel in files if rel.endswith(SUFFIX)]


def resolve(name: str, files: dict[str, Traversable]) -> str:
    """A config's path under configs/ from its name (`normal`; `configs/normal.yaml` is read the same way)."""
    rel = name.removeprefix("./").removeprefix(CONFIGS + "/")
    rel = rel if rel.endswith(SUFFIX) else rel + SUFFIX
    if rel not in files:
        names = ", ".join(config_names(files))
        raise InputError(f"no shipped config {name!r}: choose {ALL!r} (every one) or one of {names}")
    return rel


def _named_files(rel: str, text: str, files: dict[str, Traversable]) -> set[str]:
    """The shipped files one file needs beside it: a sweep's `base` and every configs/... path in its text."""
    named = {m.removeprefix(CONFIGS + "/") for m in _MENTION.findall(text)}
    if rel.endswith(SUFFIX):
        raw = yaml.safe_load(text)
        if isinstance(raw, dict) and isinstance(raw.get("base"), str):
            named.add(posixpath.normpath(posixpath.join(posixpath.dirname(rel), raw["base"])))
    return {n for n in named if n in files and n != rel}


def with_named_files(rels: list[str], files: dict[str, Traversable]) -> list[str]:
    """`rels` and, transitively, the files they name (a sweep's base config, a data file in a header)."""
    todo, done = list(rels), set(rels)
    while todo:
        rel = todo.pop()
        if rel.endswith(SUFFIX):  # a config may name other files (data files name none)
            for n in _named_files(rel, files[rel].read_text(encoding="utf-8"), files) - done:
                done.add(n)
                todo.append(n)
    return sorted(done)


@dataclasses.dataclass(frozen=True)
class InitFile:
    """One file `init` writes (or finds there already, byte for byte)."""

    rel: str  # path under configs/
    target: Path  # where it goes
    state: str  # new | same (already there, identical) | replace (there, different: --force)


@dataclasses.dataclass(frozen=True)
class InitResult:
    files: list[InitFile]
    commands: list[str]  # how to run the requested configs, from their headers


def init(name: str | None, dest: Path, force: bool = False) -> InitResult:
    """Copy shipped configs (one by name, or all) into dest/configs/, keeping their layout.

    A file already there with other content is an InputError naming it (nothing written) unless `force`;
    one there byte for byte is left as it is. Each file is written atomically.
    """
    files = shipped_files()
    wanted = [rel for rel in files if rel.endswith(SUFFIX)] if name in (None, ALL) else [resolve(name, files)]
    plan = []
    for rel in with_named_files(wanted, files):
        target = dest / CONFIGS / rel
        if target.is_dir():
            raise InputError(f"{target} is a folder, where init writes the shipped configs/{rel}")
        data = files[rel].read_bytes()
        state = "new" if not target.exists() else "same" if target.read_bytes() == data else "replace"
        plan.append((InitFile(rel, target, state), data))
    clashes = [str(f.target) for f, _ in plan if f.state == "replace"]
    if clashes and not force:
        what = clashes[0] if len(clashes) == 1 else f"{len(clashes)} files ({', '.join(clashes)})"
        raise OptionError("force", f"not set, and {what} already there with other content: nothing written")
    for f, data in plan:
        if f.state != "same":
            atomic_write_bytes(f.target, data)
    commands = [] if name in (None, ALL) else _RUN_LINE.findall(files[wanted[0]].read_text(encoding="utf-8"))[:1]
    return InitResult([f for f, _ in plan], commands)


def describe(rel: str, files: dict[str, Traversable]) -> str:
    """A config's first header line (what it is), for `funcae init --list`."""
    first = files[rel].read_text(encoding="utf-8").split("\n", 1)[0]
    return first.removeprefix("#").strip()
