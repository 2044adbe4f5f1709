"""The Python API: the README's notebook example runs verbatim, its numbers are right (the family's formula at
known parameters), and its errors are the typed errors the CLI maps to exit 2."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch

import funcae_cli as fa
from funcae_cli.errors import FuncaeError, InputError, OptionError

from .conftest import CONFIGS, REPO


def readme_example() -> str:
    text = (REPO / "README.md").read_text()
    section = text[text.index("### Python (notebooks)") :]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


@pytest.fixture(scope="module")
def example(tmp_path_factory):
    """The README's example, executed as written in a folder holding configs/."""
    where = tmp_path_factory.mktemp("api")
    shutil.copytree(CONFIGS, where / "configs")
    code = readme_example()
    namespace: dict = {}
    cwd = os.getcwd()
    os.chdir(where)
    try:
        exec(compile(code, "README.md (Python example)", "exec"), namespace)
    finally:
        os.chdir(cwd)
    return namespace


def test_the_readme_example_recovers_the_parameters_it_was_made_with(example):
    res, many = example["res"], example["many"]
    assert res.param_names == ["mu", "sigma"]
    np.testing.assert_allclose(res.params, [[0.4, 1.3]], atol=1e-3)  # the formula refit on exact curves
    assert res.flags == [[]] and len(example["rows"]) == 1 and example["rows"][0]["name"] == "target 0"
    assert many.params.shape == (2, 2) and many.posterior is not None
    q = many.posterior.quantiles
    assert ((q["q16"] <= q["median"]) & (q["median"] <= q["q84"])).all()
    np.testing.assert_allclose(q["median"], [[0.4, 1.3]] * 2, atol=0.02)
    assert example["z"].shape == (3, 2) and example["new"].shape == (16, 64)


def test_decode_matches_the_trained_model_and_encode_inverts_it(example):
    run = example["run"]
    z = np.array([[0.1, -0.2], [0.5, 0.3]])
    curves = run.decode(z)
    expected = run.trained.decode(torch.as_tensor(z, dtype=torch.float32)).double()
    np.testing.assert_allclose(curves, expected.numpy(), rtol=0, atol=1e-7)
    np.testing.assert_allclose(run.encode(curves), run.trained.encode(expected.float()).double().numpy(), atol=1e-6)


def test_padded_arrays_and_lists_give_the_same_answer(example):
    run, x, y = example["run"], example["x"], example["y"]
    e = np.full_like(x, 0.002)
    ragged = run.invert(x=[x, x[::2]], y=[y, y[::2]], yerr=[e, e[::2]])
    padded_y = np.vstack([y, np.r_[y[::2], np.full(12, np.nan)]])
    padded_x = np.vstack([x, np.r_[x[::2], np.zeros(12)]])
    padded = run.invert(x=padded_x, y=padded_y, yerr=np.vstack([e, e]))
    np.testing.assert_allclose(padded.params, ragged.params, rtol=1e-9)


def test_api_errors_are_the_typed_errors(example):
    run, x, y = example["run"], example["x"], example["y"]
    with pytest.raises(OptionError, match=r"walkers: must be a multiple of 2 x groups \(8\), got 12"):
        run.invert(x=x, y=y, yerr=np.full_like(x, 0.002), walkers=12)
    with pytest.raises(InputError, match="outside the run's grid"):
        run.invert(x=x * 10, y=y)
    with pytest.raises(OptionError, match="not both or neither"):
        run.invert()
    with pytest.raises(OptionError, match=r"expected shape \(n, 2\)"):
        run.decode(np.zeros((3, 5)))
    with pytest.raises(FuncaeError, match="not a run directory"):
        fa.load_run("/nonexistent/run")


def test_importing_the_package_loads_no_torch():
    code = "import sys, funcae_cli; print('torch' in sys.modules, callable(funcae_cli.load_run) or None)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, check=True)
    assert out.stdout.split()[0] == "False"
