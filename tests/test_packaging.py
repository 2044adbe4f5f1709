"""The configs ship with the package: setuptools puts every file of configs/ in the wheel, `funcae init` copies
them into a project, and a wheel installed in a fresh venv runs the README's first commands from an empty folder."""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import setuptools  # noqa: F401  (before distutils: its distutils is the one run_setup uses)

from tests.conftest import CONFIGS, REPO, ok, usage_error


def repo_config_files() -> set[str]:
    """Every file under configs/ (the reference: the repository's folder), as paths under it."""
    return {
        p.relative_to(CONFIGS).as_posix()
        for p in CONFIGS.rglob("*")
        if p.is_file() and not any(part.startswith((".", "__")) for part in p.relative_to(CONFIGS).parts)
    }


def written_files(folder: Path) -> set[str]:
    return {p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file()}


def header_commands(text: str) -> list[str]:
    """The `funcae ...` command lines of a config's leading comment block."""
    header = re.match(r"(?:#.*\n)*", text).group(0)
    return re.findall(r"^#\s+(funcae .+)$", header, re.MULTILINE)


def test_setuptools_ships_every_file_under_configs(monkeypatch: pytest.MonkeyPatch) -> None:
    """setuptools' own build_py (what `pip wheel .` runs), configured by setup.py, lists as package data every
    file in configs/, each under funcae_cli/_configs/ at its path under configs/."""
    from distutils.core import run_setup  # setuptools' copy: setuptools is imported above

    monkeypatch.chdir(REPO)
    dist = run_setup("setup.py", stop_after="init")
    build_py = dist.get_command_obj("build_py")
    build_py.ensure_finalized()
    shipped = {}
    for package, src_dir, _build_dir, filenames in build_py.data_files:
        for name in filenames:
            src = (Path(src_dir) / name).resolve()
            if src.is_relative_to(CONFIGS):
                shipped[src.relative_to(CONFIGS).as_posix()] = package
    assert set(shipped) == repo_config_files()
    for rel, package in shipped.items():  # the package is the file's folder: funcae_cli/_configs/<folder>/<name>
        assert package.split(".") == ["funcae_cli", "_configs", *rel.split("/")[:-1]]


def test_init_list_names_every_yaml_under_configs(cli) -> None:
    r = cli("init", "--list", "--json")
    ok(r)
    names = json.loads(r.stdout)
    expected = {p.removesuffix(".yaml") for p in repo_config_files() if p.endswith(".yaml")}
    assert set(names) == expected
    assert all(names.values()), "every config has a first header line"


@pytest.mark.parametrize("rel", sorted(p for p in repo_config_files() if p.endswith(".yaml")))
def test_init_writes_a_config_whose_header_commands_run_from_its_folder(
    cli, rel: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """From an empty folder, `funcae init NAME` writes configs/NAME.yaml as shipped, and every configs/... file
    its header's commands name is there too (a sweep's base config, the observed curves)."""
    monkeypatch.chdir(tmp_path)
    name = rel.removesuffix(".yaml")
    ok(cli("init", name))
    assert (tmp_path / "configs" / rel).read_bytes() == (CONFIGS / rel).read_bytes()
    commands = header_commands((CONFIGS / rel).read_text())
    assert any(f"configs/{rel}" in c for c in commands), f"configs/{rel}: no header command runs it"
    named = {m for c in commands for m in re.findall(r"configs/[\w./-]*\w", c)}
    for path in named:
        assert (tmp_path / path).read_bytes() == (REPO / path).read_bytes(), path
    for rel_written in written_files(tmp_path / "configs"):
        assert (tmp_path / "configs" / rel_written).read_bytes() == (CONFIGS / rel_written).read_bytes()


def test_init_sweep_brings_its_base_config_and_checks(cli, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    ok(cli("init", "sweeps/normal"))
    assert written_files(tmp_path) == {"configs/sweeps/normal.yaml", "configs/normal.yaml"}
    ok(cli("config", "check", "configs/normal.yaml"))


def test_init_all_into_a_folder_writes_every_shipped_file(cli, tmp_path: Path) -> None:
    dest = tmp_path / "project"
    r = cli("init", "all", str(dest), "--json")
    ok(r)
    assert written_files(dest / "configs") == repo_config_files()  # no temp files left either
    assert {f["state"] for f in json.loads(r.stdout)["files"]} == {"new"}
    r = cli("init", str(dest))  # a folder where a NAME goes: an unknown config, nothing written
    usage_error(r, repr(str(dest)), "normal", "sweeps/normal")


def test_init_refuses_a_file_with_other_content_and_writes_nothing(
    cli, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    edited = tmp_path / "configs" / "normal.yaml"
    edited.parent.mkdir()
    edited.write_text("# mine\n")
    r = cli("init", "sweeps/normal")
    usage_error(r, "configs/normal.yaml", "--force")
    assert written_files(tmp_path) == {"configs/normal.yaml"} and edited.read_text() == "# mine\n"
    ok(cli("init", "sweeps/normal", "--force"))
    assert edited.read_bytes() == (CONFIGS / "normal.yaml").read_bytes()
    r = cli("init", "sweeps/normal", "--json")  # identical files: left as they are, not a clash
    ok(r)
    assert {f["state"] for f in json.loads(r.stdout)["files"]} == {"same"}


def test_init_unknown_name_lists_the_names(cli, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    usage_error(cli("init", "nope"), "'nope'", "demo", "reference/normal_000", "sweeps/rotation_curve")
    assert not any(tmp_path.iterdir())


# --- the wheel, installed in a fresh venv -------------------------------------------------------------------
BUILD_INPUTS = ["pyproject.toml", "setup.py", "README.md", "funcae_cli", "configs"]
TINY = ["--set", "train.epochs=1", "--set", "data.n=200"]


def readme_first_commands() -> list[list[str]]:
    """The README's first block of commands for a pip user: the bash block that starts with `funcae init`."""
    for block in re.findall(r"```bash\n(.*?)```", (REPO / "README.md").read_text(), re.DOTALL):
        lines = [shlex.split(line, comments=True) for line in block.splitlines()]
        lines = [argv for argv in lines if argv]
        if lines and lines[0][:2] == ["funcae", "init"]:
            return lines
    raise AssertionError("README.md has no ```bash block starting with `funcae init`")


@pytest.mark.slow
def test_wheel_in_a_fresh_venv_runs_the_readme_from_an_empty_folder(tmp_path: Path) -> None:
    """`pip wheel .` (with build isolation, as a release), installed in a new venv with no repository on its path;
    the README's first commands run from an empty folder (training tiny). The venv's dependencies are this
    interpreter's (a .pth line), since installing torch and the rest takes ~4 min here; funcae itself is the
    wheel's, which the test proves from the venv."""
    src = tmp_path / "src"
    src.mkdir()
    for name in BUILD_INPUTS:  # a clean copy: no stale build/ folder of the checkout can leak into the wheel
        copy = shutil.copytree if (REPO / name).is_dir() else shutil.copy2
        kwargs = {"ignore": shutil.ignore_patterns("__pycache__", "*.pyc")} if (REPO / name).is_dir() else {}
        copy(REPO / name, src / name, **kwargs)
    wheels = tmp_path / "wheels"
    pip = [sys.executable, "-m", "pip"]
    subprocess.run([*pip, "wheel", str(src), "--no-deps", "-w", str(wheels), "-q"], check=True)
    (wheel,) = wheels.glob("funcae-*.whl")
    with zipfile.ZipFile(wheel) as z:
        prefix = "funcae_cli/_configs/"
        assert {n.removeprefix(prefix) for n in z.namelist() if n.startswith(prefix)} == repo_config_files()
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    python = venv / "bin" / "python"
    site = Path(
        subprocess.check_output(
            [python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], text=True
        ).strip()
    )
    deps = [p for p in sys.path if p.endswith("site-packages")]
    (site / "_test_deps.pth").write_text("\n".join(deps) + "\n")  # appended after the venv's own site-packages
    subprocess.run([*pip, "--python", str(python), "install", "--no-deps", "-q", str(wheel)], check=True)

    empty = tmp_path / "empty"
    empty.mkdir()
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}
    code = "import funcae_cli, funcae_cli.jobs.packaged as p; print(funcae_cli.__file__); print(p.config_root())"
    where = subprocess.check_output([python, "-c", code], cwd=empty, env=env, text=True).split()
    assert all(Path(w).is_relative_to(site) for w in where), where  # the wheel's code and configs, not REPO's
    for argv in readme_first_commands():
        assert argv[0] == "funcae"
        args = [*argv[1:], *TINY] if argv[1] == "train" else argv[1:]
        r = subprocess.run([venv / "bin" / "funcae", *args], cwd=empty, env=env, capture_output=True, text=True)
        assert r.returncode == 0, f"{shlex.join(argv)}: {r.stderr}"
    assert (empty / "configs" / "demo.yaml").read_bytes() == (CONFIGS / "demo.yaml").read_bytes()
    run = empty / "runs" / "demo"
    assert (run / "checkpoints" / "last.pt").is_file() and (empty / "runs" / "latest").resolve() == run
    assert list((run / "invert").glob("*.json"))
    assert list((run / "plots").glob("*.png"))
