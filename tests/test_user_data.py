"""A user's own data set through every command: .npz and .csv, with and without physical parameters.

The curves are damped sines whose two parameters (a frequency and a damping, made up for the test) are known,
so a run with parameters must also estimate them from the codes.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import yaml

from .conftest import ok

N_POINTS = 24


def damped_sines(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    freq, damp = rng.uniform(0.1, 0.4, n), rng.uniform(0.02, 0.1, n)
    t = np.arange(N_POINTS)
    return np.exp(-damp[:, None] * t) * np.sin(freq[:, None] * t), np.stack([freq, damp], axis=1)


def write_data(root: Path, fmt: str, with_params: bool) -> dict:
    """The data file and the config's family section for it."""
    x, p = damped_sines(600)
    if fmt == "npz":
        arrays = {"X": x, **({"params": p, "param_names": np.array(["freq", "damp"])} if with_params else {})}
        np.savez(root / "curves.npz", **arrays)
        return {"name": "dataset", "path": "curves.npz"}
    header = [f"f{j}" for j in range(N_POINTS)] + (["freq", "damp"] if with_params else [])
    table = np.hstack([x, p]) if with_params else x
    np.savetxt(root / "curves.csv", table, delimiter=",", header=",".join(header), comments="")
    return {"name": "dataset", "path": "curves.csv", **({"param_columns": ["freq", "damp"]} if with_params else {})}


@pytest.mark.slow
@pytest.mark.parametrize("with_params", [True, False], ids=["params", "no-params"])
@pytest.mark.parametrize("fmt", ["npz", "csv"])
def test_every_command_runs_on_a_users_data_set(workdir: Path, cli, fmt: str, with_params: bool) -> None:
    family = write_data(workdir, fmt, with_params)
    config = {
        "name": "mine",
        "family": family,
        "model": {"latent_dim": 2, "hidden": [32, 32]},
        "train": {"epochs": 15, "batch_size": 64, "lr": 3e-3},
    }
    (workdir / "mine.yaml").write_text(yaml.safe_dump(config))
    ok(cli("generate", "mine.yaml"))
    ok(cli("train", "mine.yaml", "-q", "--force"))
    run = workdir / "runs" / "mine"
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["regressor"]["val_r2"] == ({"freq": pytest.approx(1, abs=0.5), "damp": pytest.approx(1, abs=0.9)}
                                              if with_params else {})  # fmt: skip
    ok(cli("encode"))
    assert (run / "latents.npz").exists()

    x, p = damped_sines(1, seed=99)
    t = np.arange(N_POINTS)
    keep = t % 3 != 1  # an observed curve on part of the index grid, with errors
    obs = np.column_stack([t[keep], x[0, keep], np.full(keep.sum(), 0.02)])
    np.savetxt(workdir / "obs.csv", obs, delimiter=",", header="x,y,yerr", comments="")
    r = cli("invert", "--curve", "obs.csv", "--json")
    ok(r)
    rec = json.loads(r.stdout)
    row = rec["targets"][0]
    assert rec["objective_kind"] == "chi2" and row["reduced_chi2"] is not None
    if with_params:
        est = row["estimated_params"]
        assert set(est) == {"freq", "damp"}
        assert est["freq"] == pytest.approx(p[0, 0], rel=0.3)
    else:
        assert not row.get("estimated_params")
    assert (run / "invert" / "obs.json").exists() and (run / "invert" / "obs.png").exists()

    # posteriors of a data-only family: of the latent code (decoder likelihood, code density prior), reported as
    # the parameters through the regressor, or as the codes without parameters
    names = ["freq", "damp"] if with_params else ["z1", "z2"]
    for kind in ("laplace", "mcmc"):
        r = cli("invert", "--curve", "obs.csv", "--posterior", kind, "--steps", "200", "--burn", "50", "--name", kind,
                "--json")  # fmt: skip
        ok(r)
        post = json.loads(r.stdout)["targets"][0]["posterior"]
        for name in names:
            q = post[name]
            assert q["q025"] <= q["q16"] <= q["median"] <= q["q84"] <= q["q975"] and q["q025"] < q["q975"]
            assert ("rhat" in q) == (kind == "mcmc")
        with np.load(run / "invert" / f"{kind}_samples.npz") as z:
            assert list(z["names"]) == names and z["samples"].shape[0] == 1 and np.isfinite(z["samples"]).all()

    ok(cli("sample", "-n", "8"))
    assert (run / "samples.npz").exists() and (run / "samples.png").exists()
    r = cli("plot", "--json")
    ok(r)
    written = set(json.loads(r.stdout)["written"])
    assert {"loss", "latent", "decoder_grid", "reconstruction", "invert", "samples"} <= written
    assert ("corner" in written) == with_params
