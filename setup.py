"""Packaging beyond pyproject.toml: the repository's configs/ ship inside the wheel as funcae_cli/_configs.

configs/ stays at the repository root (the README, the tests and the sweeps' `base: ../normal.yaml` name it);
setuptools maps it into the package (package_dir), so `pip install .`, `pip wheel .` and an sdist carry one
copy of each file. An editable install or a checkout reads configs/ itself (funcae_cli/jobs/packaged.py).
A new folder under configs/ ships on its own; a new kind of file needs its pattern in CONFIG_FILES
(tests/test_packaging.py fails until it ships).
"""

from pathlib import Path

from setuptools import find_packages, setup

CONFIGS = "configs"
PACKAGED = "funcae_cli._configs"
CONFIG_FILES = ["*.yaml", "*.csv"]

config_dirs = sorted(p.relative_to(CONFIGS) for p in Path(CONFIGS).rglob("*") if p.is_dir())
config_packages = [PACKAGED, *(".".join([PACKAGED, *d.parts]) for d in config_dirs)]

setup(
    packages=[*find_packages(include=["funcae_cli*"]), *config_packages],
    package_dir={PACKAGED: CONFIGS},
    package_data={
        "funcae_cli": ["native/*.c", "native/*.h"],  # compiled on first use (funcae_cli/native)
        **{p: CONFIG_FILES for p in config_packages},
    },
)
