"""The code's shape, checked: the layers (each package imports only the ones below it), no import cycles, pure
inversion and plotting, thin commands, fast paths that never load torch or matplotlib, registries that agree with
the config's allowed values and with the CLI's help."""

from __future__ import annotations

import ast
import subprocess
import sys
import typing
from pathlib import Path

import pytest

from funcae_cli.commands.plot import KINDS_HELP
from funcae_cli.config import InvertConfig, SampleConfig
from funcae_cli.config.families import FAMILIES
from funcae_cli.data.arrays import LOADERS
from funcae_cli.data.formulas import DERIVED_LOG_PRIORS, DERIVED_PRIORS, FORMULAS
from funcae_cli.generation.sampling import LATENTS
from funcae_cli.inversion.invert import METHODS
from funcae_cli.jobs.plot import PLOTS

PACKAGE = Path(__file__).resolve().parents[1] / "funcae_cli"
MAX_COMMAND_LINES = 40


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(tree: ast.Module, top_level_only: bool) -> list[tuple[str, ast.stmt]]:
    """Project modules imported by a file: (module, statement); top_level_only skips those inside functions."""
    nodes = tree.body if top_level_only else list(ast.walk(tree))
    out = []
    for node in nodes:
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("funcae_cli"):
            for alias in node.names:  # `from funcae_cli.x import y` may import the module funcae_cli.x.y
                sub = f"{node.module}.{alias.name}"
                out.append((sub if (PACKAGE.parent / (sub.replace(".", "/") + ".py")).exists() else node.module, node))
        elif isinstance(node, ast.Import):
            out += [(a.name, node) for a in node.names if a.name.startswith("funcae_cli")]
    return out


def _modules() -> dict[str, tuple[Path, ast.Module]]:
    return {_module_name(p): (p, ast.parse(p.read_text())) for p in PACKAGE.rglob("*.py")}


def test_no_import_cycles_between_modules() -> None:
    graph = {name: {m for m, _ in _imports(tree, top_level_only=True)} for name, (_, tree) in _modules().items()}
    state: dict[str, int] = {}

    def visit(node: str, path: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                raise AssertionError("import cycle: " + " -> ".join([*path[path.index(nxt) :], nxt]))
            if nxt in graph and not state.get(nxt):
                visit(nxt, [*path, nxt])
        state[node] = 2

    for name in sorted(graph):
        if not state.get(name):
            visit(name, [name])


# The layers, bottom to top: a package (or top-level module) may import itself and the ones listed for it, which
# are all below it. `funcae_cli` is the package root (the API, re-exporting the jobs lazily).
# utilities with no funcae knowledge (native: C kernels and their build)
BASE = {"errors", "_version", "files", "memory", "device", "stop", "cores", "native"}
ALLOWED = {
    "errors": set(),
    "_version": set(),
    "cores": set(),
    "native": set(),
    "files": {"cores"},  # save_figures: one process per figure, at most twice the cores
    "memory": {"errors"},
    "device": {"errors"},
    "stop": set(),
    "config": {"errors"},
    "data": {"config"} | BASE,
    "models": set(),
    "training": {"config", "data", "models"} | BASE,
    "store": {"config", "data", "models"} | BASE,
    "inversion": {"config", "data", "models", "store"} | BASE - {"files"},
    "plotting": {"config", "data"} | BASE - {"files"},
    "generation": {"config", "data", "models", "store", "inversion"} | BASE,
    "export": {"config", "data", "models", "store", "inversion"} | BASE,  # a trained run as plain arrays
    "tracking": {"config"} | BASE,  # TensorBoard / MLflow writers: records in, nothing read back
    "jobs": {
        "config",
        "data",
        "models",
        "training",
        "store",
        "inversion",
        "plotting",
        "generation",
        "export",
        "tracking",
    }
    | BASE,  # fmt: skip
    "sweeps": {"config", "data", "models", "training", "store", "plotting", "jobs", "tracking"} | BASE,
    "console": {"files"},
    "options": {"config", "tracking"},
    "commands": {"config", "data", "jobs", "sweeps", "store", "inversion", "console", "options"} | BASE,
    "cli": {"commands", "console", "errors", "_version"},
    "__main__": {"cli"},
    "funcae_cli": {"_version", "jobs", "config"},  # config: the UserFamily declaration a user's module imports
}
FILE_LAYERS = ("files", "store", "jobs")  # the layers that read and write files: inversion/plotting use none


def _package(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "funcae_cli"


def _package_edges() -> dict[str, dict[str, str]]:
    """package -> {imported package: where}, counting every import (module level and inside functions)."""
    edges: dict[str, dict[str, str]] = {}
    for name, (path, tree) in _modules().items():
        src = _package(name)
        for target, stmt in _imports(tree, top_level_only=False):
            dst = _package(target) if target != "funcae_cli" else "funcae_cli"
            if isinstance(stmt, ast.ImportFrom) and stmt.module == "funcae_cli":  # from funcae_cli import x
                dst = stmt.names[0].name if stmt.names[0].name in ALLOWED else "funcae_cli"
            if dst != src:
                edges.setdefault(src, {}).setdefault(dst, f"{path.relative_to(PACKAGE.parent)}:{stmt.lineno}")
    return edges


def test_every_package_has_a_layer():
    assert set(_package_edges()) | {_package(m) for m in _modules()} <= set(ALLOWED)


@pytest.mark.parametrize(
    "package", sorted(ALLOWED), ids=[f"{p} -> {' '.join(sorted(ALLOWED[p])) or 'nothing'}" for p in sorted(ALLOWED)]
)
def test_packages_import_only_the_layers_below(package: str):
    """The allowed edges, one line per package (pytest -v lists them)."""
    extra = {dst: where for dst, where in _package_edges().get(package, {}).items() if dst not in ALLOWED[package]}
    assert not extra, f"{package} may import only {sorted(ALLOWED[package])}; imports " + ", ".join(
        f"{d} ({w})" for d, w in sorted(extra.items())
    )


def test_no_two_packages_import_each_other():
    edges = _package_edges()
    pairs = {tuple(sorted((a, b))) for a in edges for b in edges[a] if a in edges.get(b, {})}
    assert not pairs, f"packages importing each other: {sorted(pairs)}"


def test_inversion_and_plotting_are_pure():
    """Arrays, a Trained and an options record in; records and figures out: no RunDir, no file writes."""
    for name, (path, tree) in _modules().items():
        if _package(name) not in ("inversion", "plotting", "generation"):
            continue
        text = path.read_text()
        for word in ("RunDir", "atomic_write", "np.load(", "torch.load(", "open(", "read_text(", "write_text("):
            assert word not in text, f"{path.name} uses {word}: file handling belongs to the store and the jobs"
        imported = {target for target, _ in _imports(tree, top_level_only=False)}
        assert not {
            m
            for m in imported
            if m.startswith(
                (
                    "funcae_cli.store.rundir",
                    "funcae_cli.store.checkpoint",
                    "funcae_cli.store.dataset",
                    "funcae_cli.store.fitted",
                )
            )
        }


def test_function_local_imports_of_project_modules_only_in_commands_with_a_reason() -> None:
    """Library modules import what they use at the top; only the thin command modules defer the library (and
    with it torch), each such import commented with why."""
    for name, (path, tree) in _modules().items():
        top = {id(stmt) for _, stmt in _imports(tree, top_level_only=True)}
        local = [stmt for _, stmt in _imports(tree, top_level_only=False) if id(stmt) not in top]
        source = path.read_text().splitlines()
        for stmt in local:
            where = f"{name}, line {stmt.lineno}"
            lazy_api = name == "funcae_cli"  # the package root loads the API (and torch) on first use
            assert name.startswith("funcae_cli.commands.") or lazy_api, f"function-local import in {where}"
            assert "#" in source[stmt.end_lineno - 1], f"{where}: a deferred import needs a comment saying why"


def test_command_functions_are_thin() -> None:
    for path in (PACKAGE / "commands").glob("*.py"):
        for node in ast.parse(path.read_text()).body:
            if isinstance(node, ast.FunctionDef) and not node.name.startswith("_"):
                body = node.body[1:] if ast.get_docstring(node) else node.body
                lines = body[-1].end_lineno - body[0].lineno + 1
                assert lines <= MAX_COMMAND_LINES, f"{path.name}:{node.name} has a {lines}-line body"


@pytest.mark.parametrize(
    "argv",
    [
        ["--help"],
        ["families"],
        ["config", "check", "configs/smoke.yaml"],
        ["sweep", "run", "--help"],
        ["init", "--list"],
    ],
)
def test_fast_commands_load_neither_torch_nor_matplotlib(argv: list[str]) -> None:
    """What keeps `funcae --help`, `families` and `config check` fast (~0.25 s against ~2.4 s when every
    command imported torch): they never import torch, matplotlib, scipy, numpy, or optuna and SQLAlchemy (only
    sweeps need them). Checked by the modules loaded, not by timing (this machine is shared)."""
    heavy = ("torch", "matplotlib", "scipy", "numpy", "optuna", "sqlalchemy", "tensorboard", "mlflow")
    code = (
        "import sys; from funcae_cli.cli import main; code = main(sys.argv[1:]); "
        f"print(sorted(m for m in {heavy!r} if m in sys.modules)); sys.exit(code)"
    )
    r = subprocess.run([sys.executable, "-c", code, *argv], capture_output=True, text=True, cwd=PACKAGE.parent)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip().splitlines()[-1] == "[]"


def test_every_formula_family_has_its_formula_and_every_array_family_its_loader() -> None:
    assert set(FORMULAS) == {n for n, f in FAMILIES.items() if f.source == "formula"}
    assert set(LOADERS) == {n for n, f in FAMILIES.items() if f.source == "array"}
    derives = {n for n, f in FAMILIES.items() if f.has_formula and f.derives_params(f.options_cls())}
    assert set(DERIVED_PRIORS) == set(DERIVED_LOG_PRIORS) == derives


def test_the_clis_choices_are_the_libraries_registries() -> None:
    assert set(typing.get_args(typing.get_type_hints(InvertConfig)["method"])) == set(METHODS)
    listed = KINDS_HELP.split(":", 1)[1].split("(")[0]
    assert [k.strip(" .") for k in listed.split(",")] == list(PLOTS)
    assert list(typing.get_args(typing.get_type_hints(SampleConfig)["latent"])) == list(LATENTS)
