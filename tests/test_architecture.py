"""The code's shape, checked: no import cycles, thin commands, fast paths that never load torch or matplotlib,
registries that agree with the config's allowed values and with the CLI's help."""

from __future__ import annotations

import ast
import subprocess
import sys
import typing
from pathlib import Path

import pytest

from funcae_cli.commands.plot import KINDS_HELP
from funcae_cli.commands.sample import LATENT_HELP
from funcae_cli.config import InvertConfig
from funcae_cli.data.arrays import LOADERS
from funcae_cli.data.families import FAMILIES
from funcae_cli.data.formulas import DERIVED_LOG_PRIORS, DERIVED_PRIORS, FORMULAS
from funcae_cli.inversion.invert import METHODS
from funcae_cli.inversion.sampling import LATENTS
from funcae_cli.runs.plot import PLOTS

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


def test_function_local_imports_of_project_modules_only_in_commands_with_a_reason() -> None:
    """Library modules import what they use at the top; only the thin command modules defer the library (and
    with it torch), each such import commented with why."""
    for name, (path, tree) in _modules().items():
        top = {id(stmt) for _, stmt in _imports(tree, top_level_only=True)}
        local = [stmt for _, stmt in _imports(tree, top_level_only=False) if id(stmt) not in top]
        source = path.read_text().splitlines()
        for stmt in local:
            where = f"{name}, line {stmt.lineno}"
            assert name.startswith("funcae_cli.commands."), f"function-local import of a project module in {where}"
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
    heavy = ("torch", "matplotlib", "scipy", "numpy", "optuna", "sqlalchemy")
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
    assert LATENT_HELP.split(":")[0].split(" | ") == list(LATENTS)
