"""The invert path scales with the catalogue (issue 23): the point estimates run in chunks of targets and give the
one-batch numbers; the job counts its targets before reading them and refuses (exit 2, one line naming the
estimate and what to lower) a catalogue whose memory estimate exceeds what the machine has, with a faked small
memory, never a real OOM; the record and table are written as they are made, the same bytes."""

from __future__ import annotations

import json
import math
import time
from dataclasses import fields, replace
from pathlib import Path

import numpy as np
import pytest
import torch

from funcae_cli import memory
from funcae_cli.config import override
from funcae_cli.data.observations import Grid, read_long_csv, scan_long_csv
from funcae_cli.errors import InputError
from funcae_cli.files import csv_lines, csv_text, json_chunks, json_safe, json_text
from funcae_cli.inversion import invert as inversion
from funcae_cli.inversion.ensemble import chain_bytes
from funcae_cli.inversion.invert import invert_batch
from funcae_cli.inversion.physics import PhysicsFit, natural_bounds
from funcae_cli.inversion.posterior import Sampling
from funcae_cli.inversion.targets import pad
from funcae_cli.jobs import invert as invert_job
from funcae_cli.jobs.fitted import latent_model_for
from funcae_cli.jobs.inputs import TargetInputs
from funcae_cli.jobs.sizing import InputSize, input_size, invert_bytes
from funcae_cli.jobs.targets import read_targets
from funcae_cli.store.rundir import RunDir
from funcae_cli.store.trained import load_trained

from .conftest import ok, usage_error

GIB = 1 << 30


@pytest.fixture(scope="module")
def rotation(rotation_run: Path):
    trained = load_trained(RunDir(rotation_run), torch.device("cpu"))
    return trained, latent_model_for(trained)[0]


def _galaxies(trained, n: int, seed: int, points: int = 8) -> list:
    from benchmarks.observed import galaxies

    bounds = natural_bounds(trained, "prior")
    items = galaxies(n, seed, bounds.low.numpy(), bounds.high.numpy())
    return [replace(g.obs, x=g.obs.x[:points], y=g.obs.y[:points], yerr=g.obs.yerr[:points]) for g in items]


# Bit for bit: the latent search (the decoder's rows of the grid's 64 points fill whole SIMD vectors). To the
# determinism tests' 1e-6 relative (test_determinism.py), as in any two batches that share a target: values through
# torch's float64 transcendental functions on arrays of one value per target or point (the log density, the refit's
# formula on every point), whose last few elements torch may compute with scalar instead of vector code, 1-ulp
# differences that depend on where a value falls (torch.pow does on an AMD EPYC with AVX-512: data/powers.py).
EXACT = {"z", "objective", "residual_norm", "data_residual", "rel_l2", "encoder_z", "encoder_objective",
         "encoder_rel_l2", "iterations", "converged", "start", "fit", "chi2"}  # fmt: skip


def _same(a, b, where: str = "") -> None:
    """Every array of two results (InvertResult, PhysicsFit) equal: EXACT bit for bit, the others to 1e-6."""
    for f in fields(a):
        va, vb, name = getattr(a, f.name), getattr(b, f.name), where + f.name
        if f.name in ("seconds", "total_seconds", "assessment", "posterior"):
            continue
        if isinstance(va, PhysicsFit):
            _same(va, vb, f"{f.name}.")
        elif isinstance(va, np.ndarray) and name in EXACT:
            np.testing.assert_array_equal(va, vb, err_msg=name)
        elif isinstance(va, np.ndarray):
            np.testing.assert_allclose(va, vb, rtol=1e-6, atol=0, err_msg=name)
        elif f.name == "bounds":
            assert torch.equal(va.low, vb.low) and torch.equal(va.high, vb.high) and va.kind == vb.kind
        else:
            assert va == vb, name


@pytest.mark.slow
def test_chunks_of_targets_give_the_one_batch_numbers(rotation) -> None:
    """60 galaxies of varying lengths (3 to 12 points) with latent restarts: in chunks of 7 (the last one short)
    every array, flag and warning equals the one-batch result exactly."""
    trained, lm = rotation
    items = _galaxies(trained, 60, seed=21, points=12)
    cut = [slice(0, 3 + i % 10) for i in range(60)]
    items = [replace(o, x=o.x[c], y=o.y[c], yerr=o.yerr[c]) for o, c in zip(items, cut)]
    targets = pad(items, "all")
    options = override(trained.cfg.invert, {"starts": 2})
    one = invert_batch(trained, targets, options, lm, chunk=targets.n)
    chunked = invert_batch(trained, targets, options, lm, chunk=7)
    _same(one, chunked)
    assert chunked.assessment.flags == one.assessment.flags
    assert chunked.assessment.warnings == one.assessment.warnings
    assert chunked.seconds.shape == (targets.n,)
    assert len({tuple(z) for z in one.z}) == targets.n  # different targets, different answers


def test_the_default_chunk_bounds_the_padded_points() -> None:
    assert inversion.chunk_targets(2) == inversion.CHUNK_TARGETS  # two-point curves: the target cap
    assert inversion.chunk_targets(64) * 64 <= inversion.CHUNK_POINTS  # curves on a grid: the point cap
    assert inversion.chunk_targets(10**9) == 1


def _close(a, b, where: str = "record") -> None:
    """Two JSON values equal, numbers to 1e-6 relative (the refit's; module notes at EXACT)."""
    if isinstance(a, dict):
        assert isinstance(b, dict) and list(a) == list(b), where
        for k in a:
            _close(a[k], b[k], f"{where}.{k}")
    elif isinstance(a, list):
        assert isinstance(b, list) and len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            _close(x, y, f"{where}[{i}]")
    elif isinstance(a, float) and not isinstance(b, bool):
        assert b == pytest.approx(a, rel=1e-6, abs=1e-12), where
    else:
        assert a == b, where


def _cells(text: str) -> list[list]:
    def cell(c: str):
        try:
            return float(c)
        except ValueError:
            return c

    return [[cell(c) for c in line.split(",")] for line in text.splitlines()]


@pytest.mark.slow
def test_invert_job_in_small_chunks_writes_the_one_batch_files(cli, rotation_copy: Path, monkeypatch) -> None:
    """The whole command (rows, summary, warnings naming targets, figures of the first targets) in chunks of 5
    targets: the JSON record and the CSV are the one-batch run's, timings and file names aside."""
    from benchmarks.observed import galaxies, write_long_csv

    trained = load_trained(RunDir(rotation_copy), torch.device("cpu"))
    bounds = natural_bounds(trained, "prior")
    write_long_csv(galaxies(23, 8, bounds.low.numpy(), bounds.high.numpy()), "cat.csv")
    run = ["invert", "--run", str(rotation_copy), "--curves", "cat.csv", "--json"]
    one = cli(*run, "--name", "one")
    ok(one)
    monkeypatch.setattr(inversion, "CHUNK_TARGETS", 5)
    five = cli(*run, "--name", "five")
    ok(five)
    a, b = json.loads(one.stdout), json.loads(five.stdout)
    for rec in (a, b):
        for key in ("seconds", "targets_per_second", "files"):
            rec.pop(key)
        for row in rec["targets"]:
            row.pop("seconds")
    _close(a, b)
    assert a["n_targets"] == 23 and len(a["targets"]) == 23 and a["warnings"] == b["warnings"]
    assert [r["flags"] for r in a["targets"]] == [r["flags"] for r in b["targets"]]
    assert [r["z"] for r in a["targets"]] == [r["z"] for r in b["targets"]]  # the latent search: bit for bit
    inv = rotation_copy / "invert"
    _close(_cells((inv / "one.csv").read_text()), _cells((inv / "five.csv").read_text()), "csv")
    assert sorted(p.name for p in inv.glob("five*")) == ["five.csv", "five.json", "five.png", "five_page.png",
                                                         "five_summary.png"]  # fmt: skip
    assert json.loads((inv / "five.json").read_text())["targets"][3]["name"] == b["targets"][3]["name"]


# --- counting before reading ----------------------------------------------------------------------------


def test_a_long_csv_is_counted_without_reading_it(tmp_path: Path) -> None:
    path = tmp_path / "long.csv"
    path.write_text("# a comment\nid,x,y,yerr\na,1,2,0.1\na,2,3,0.1\na,3,3,0.1\n\nb,1,2,0.1  # here\nb,2,2,0.1\n")
    assert scan_long_csv(path) == (2, 5, 3)
    warnings: list[str] = []
    read = read_long_csv(path, Grid(0.0, 10.0), warnings)
    assert [o.x.size for o in read] == [3, 2]
    mixed = tmp_path / "mixed.csv"  # an object's rows apart: each run counts, at most points / 2
    mixed.write_text("x,id,y\n1,a,2\n1,b,2\n2,a,2\n2,b,2\n3,c,1\n4,c,1\n")
    assert scan_long_csv(mixed) == (3, 6, 2)


def test_input_size_matches_what_is_read(smoke_run: Path, tmp_path: Path) -> None:
    trained = load_trained(RunDir(smoke_run), torch.device("cpu"))
    long = tmp_path / "long.csv"
    long.write_text("id,x,y\n" + "".join(f"o{i},{-1 - i % 3},0.1\no{i},0,0.3\no{i},1,0.2\n" for i in range(7))
                    + "last,0,0.3\nlast,2,0.1\n")  # fmt: skip
    folder = tmp_path / "folder"
    folder.mkdir()
    for i in range(3):
        (folder / f"c{i}.csv").write_text("x,y\n" + "".join(f"{j / 2 - 2},{0.1 + j / 50}\n" for j in range(4 + i)))
    npz = tmp_path / "curves.npz"
    np.savez(npz, curves=np.full((5, 3), 0.2), x=np.array([-1.0, 0.0, 1.0]))
    grid = int(trained.grid.shape[0])
    table = tmp_path / "table.csv"
    table.write_text("mu,sigma\n0.1,1\n0.2,1.1\n")
    cases = [
        (TargetInputs(curves=long), InputSize(8, 23, 3, text=True)),
        (TargetInputs(curves=npz), InputSize(5, 15, 3)),
        (TargetInputs(params_table=table), InputSize(2, 2 * grid, grid)),
        (TargetInputs(params={"mu": 0.1, "sigma": 1.0}), InputSize(1, grid, grid)),
    ]
    for inputs, size in cases:
        assert input_size(trained, inputs) == size
        targets = read_targets(trained, inputs)
        assert (targets.n, int(targets.counts.sum()), targets.y.shape[1]) == (size.targets, size.points, size.width)
    counted = input_size(trained, TargetInputs(curves=folder))  # a file's header line counts as a point: an upper bound
    read = read_targets(trained, TargetInputs(curves=folder))
    assert counted.targets == read.n and counted.width >= read.y.shape[1] and counted.points >= read.counts.sum()
    assert input_size(trained, TargetInputs()) is None


def test_the_estimate_grows_with_the_catalogue_and_the_posterior(smoke_run: Path) -> None:
    trained = load_trained(RunDir(smoke_run), torch.device("cpu"))
    o = trained.cfg.invert
    sizes = [invert_bytes(InputSize(n, 2 * n, 2), o, 2) for n in (100_000, 200_000, 300_000)]
    assert sizes[2] - sizes[1] == sizes[1] - sizes[0] > 0  # beyond one chunk: linear in the targets
    chunk = sizes[0] - (sizes[1] - sizes[0])  # one chunk's working set, whatever the catalogue
    assert invert_bytes(InputSize(10, 20, 2), o, 2) < chunk
    laplace = invert_bytes(InputSize(100_000, 200_000, 2), override(o, {"posterior": "laplace"}), 2)
    assert laplace > 10 * sizes[0]  # 2000 stored draws per target
    mcmc = invert_bytes(InputSize(100_000, 200_000, 2), override(o, {"posterior": "mcmc"}), 2)
    walkers = Sampling.of(o).walkers_for(2)
    pool = chain_bytes(100_000, walkers, 2)
    assert mcmc - laplace == pool > 0  # mcmc's chains on top of the stored draws: one pool's, whatever the catalogue
    assert chain_bytes(10**7, walkers, 2) == pool > chain_bytes(3, walkers, 2)


# --- refusing what cannot fit ----------------------------------------------------------------------------


def _two_point_catalogue(path: Path, n: int) -> None:
    """n two-point curves in a long CSV (the values matter not: the job refuses before reading them)."""
    with path.open("w") as f:
        f.write("id,x,y,yerr\n")
        for a in range(0, n, 100_000):
            f.write("".join(f"g{i},1.5,50,2\ng{i},7.5,80,3\n" for i in range(a, min(n, a + 100_000))))


def _never_read(*args, **kwargs):
    raise AssertionError("the targets were read: the refusal must come first")


@pytest.mark.slow
def test_a_million_two_point_curves_are_refused_before_reading(cli, rotation_copy: Path, monkeypatch) -> None:
    """The issue's case: 1,000,000 two-point curves on a machine with 2 GiB free (faked) -> exit 2 in seconds,
    naming the estimate, the memory there is and how many targets one call can take; nothing read or written."""
    path = Path("million.csv")
    _two_point_catalogue(path, 1_000_000)
    monkeypatch.setattr(memory, "host_available", lambda: 2 * GIB)
    monkeypatch.setattr(invert_job, "read_targets", _never_read)
    t0 = time.perf_counter()
    result = cli("invert", "--run", str(rotation_copy), "--curves", str(path))
    seconds = time.perf_counter() - t0
    usage_error(result, "1,000,000 targets (2,000,000 points, the longest 2)", "million.csv", "GiB",
                "2 GiB is available on this machine", "invert at most about")  # fmt: skip
    assert seconds < 15, seconds  # a count of the file's lines, not a parse
    assert not (rotation_copy / "invert").exists()
    need = float(result.stderr.split("need about ")[1].split(" GiB")[0])
    assert need > 2  # the whole catalogue, not one chunk
    room = int(result.stderr.split("at most about ")[1].split(" targets")[0].replace(",", ""))
    assert 100_000 < room < 1_000_000


def test_an_npz_catalogue_is_refused_from_its_header(cli, smoke_copy: Path, monkeypatch, tmp_path: Path) -> None:
    path = tmp_path / "many.npz"
    np.savez(path, curves=np.zeros((1_000_000, 2), dtype=np.float32), x=np.array([-1.0, 1.0]))
    monkeypatch.setattr(memory, "host_available", lambda: GIB)
    monkeypatch.setattr(invert_job, "read_targets", _never_read)
    usage_error(cli("invert", "--curves", str(path)), "1,000,000 targets", "1 GiB is available", "many.npz")


def test_a_posterior_names_posterior_none_as_what_to_lower(cli, smoke_copy: Path, monkeypatch, tmp_path) -> None:
    path = tmp_path / "few.csv"
    path.write_text("id,x,y,yerr\n" + "".join(f"o{i},-1,0.2,0.01\no{i},1,0.2,0.01\n" for i in range(2000)))
    monkeypatch.setattr(memory, "host_available", lambda: 256 << 20)  # fits the point estimates
    usage_error(cli("invert", "--curves", str(path), "--posterior", "laplace"), "2,000 targets", "--posterior none")
    assert not (smoke_copy / "invert").exists()


def test_a_catalogue_that_fits_the_faked_memory_runs(cli, smoke_copy: Path, monkeypatch, tmp_path) -> None:
    path = tmp_path / "few.csv"
    path.write_text("id,x,y,yerr\n" + "".join(f"o{i},-1,0.2,0.01\no{i},1,0.2,0.01\n" for i in range(20)))
    monkeypatch.setattr(memory, "host_available", lambda: 2 * GIB)
    ok(cli("invert", "--curves", str(path), "--no-plot"))


# --- writing as they are made ----------------------------------------------------------------------------


def test_streamed_json_and_csv_are_the_same_text() -> None:
    record = {"a": [1.5, {"b": None, "c": [1, 2, []], "d": {}}], "e": "x\u00e9", "f": np.arange(3), "g": Path("p")}
    assert "".join(json_chunks(record)) == json_text(record)
    # a catalogue's record: its rows one per line, the rest indented; the same data either way
    rows = [{"name": 'a,"b"\n', "z": [0.1, -2e-300], "flags": [], "params": {"m": 1e12}}, {"index": 1}]
    catalogue = {"run": "r", "summary": {"flags": {"x": 1}, "list": [1, [2, {}]]}, "targets": rows, "n": 2}
    text = "".join(json_chunks(catalogue, rows="targets"))
    assert json.loads(text) == json.loads(json_text(catalogue)) and text.endswith("}\n")
    lines = text.splitlines()
    assert [json.loads(ln.rstrip(",")) for ln in lines[lines.index('  "targets": [') + 1 :][:2]] == rows
    for empty in ({}, {"targets": []}, {"targets": "not a list"}):
        assert json.loads("".join(json_chunks(empty, rows="targets"))) == empty
    rows = [[1, 2.5, "x,y"], [True, np.float32(0.25), ""]]
    assert "".join(csv_lines(["a", "b", "c"], iter(rows))) == csv_text(["a", "b", "c"], rows)


@pytest.mark.parametrize("forked", [False, True])
def test_rows_with_nan_are_written_as_json_safe_writes_them(forked: bool, monkeypatch, tmp_path: Path) -> None:
    """A row holding NaN or an infinity comes out as json_safe makes it (null), in the record's file and in the same
    text echoed as it is written (invert --json's stdout: files.atomic_write_chunks' echo); forked: the rows' second
    half encoded by the helper process."""
    import io

    import funcae_cli.files as files_mod

    monkeypatch.setattr(files_mod, "FORKED_JSON_ROWS", 1 if forked else 10**6)
    rows = [{"z": [0.5, math.nan]}, {"k": math.inf, "q": {"a": -math.inf}}, {"n": 1}, {"z": [math.nan]}]
    record = {"run": "r", "x": None, "targets": rows}
    want = json.loads(json_text(json_safe(record)))
    assert want["targets"][3] == {"z": [None]}
    echo = io.StringIO()
    files_mod.atomic_write_json(tmp_path / "r.json", record, rows="targets", echo=echo)
    out = echo.getvalue()
    assert out == (tmp_path / "r.json").read_text()
    assert json.loads(out) == want and "NaN" not in out and "Infinity" not in out
    assert '\n    {"k": null, "q": {"a": null}},\n' in out  # one row a line, as the record's file has them


LONG_CSVS = {  # name: (text, read by numpy's C reader)
    "plain": ("id,x,y\na,1,2\na,2,3\nb,1,1\nb,3,2\n", True),
    "interleaved ids": ("id,x,y,yerr\na,1,2,0.1\nb,1,1,0.1\na,2,3,0.2\nb,3,2,0.1\na,0.5,1,1\n", True),
    "spaces, no final newline": ("id , x , y\n a , 1 , 2\na,2, 3\nb,1,1\nb,3,2", True),
    "columns reordered, CRLF": ("y,id,x\r\n2,a,1\r\n3,a,2\r\n1,b,1\r\n2,b,3\r\n", True),
    "a point outside the grid": ("id,x,y\na,1,2\na,2,3\nb,1,1\nb,300,2\nb,2,2\n", True),
    "blank line": ("id,x,y\na,1,2\n\na,2,3\nb,1,1\nb,3,2\n", False),
    "comments": ("# units: kpc\nid,x,y\na,1,2 # c\na,2,3\nb,1,1\nb,3,2\n", False),
    "quoted id": ('id,x,y\n"a",1,2\n"a",2,3\nb,1,1\nb,3,2\n', False),
    "nan": ("id,x,y\na,1,nan\na,2,3\nb,1,1\nb,3,2\n", False),
    "zero yerr": ("id,x,y,yerr\na,1,2,0\na,2,3,1\nb,1,1,1\nb,3,2,1\n", False),
    "not a number": ("id,x,y\na,1,2\na,2,x3\nb,1,1\nb,3,2\n", False),
    "a short row": ("id,x,y\na,1,2\na,2\nb,1,1\nb,3,2\n", False),
    "empty id": ("id,x,y\na,1,2\na,2,3\n,1,1\nb,3,2\n", False),
    "one point": ("id,x,y\na,1,2\na,2,3\nb,1,1\n", True),
}


@pytest.mark.parametrize("case", list(LONG_CSVS))
def test_a_plain_long_csv_read_by_numpy_gives_what_the_line_reader_gives(case, tmp_path, monkeypatch) -> None:
    """The fast reader (np.loadtxt) takes plain files and gives the line-by-line reader's objects, warnings and
    errors (line numbers included); anything else goes to the line reader."""
    from funcae_cli.data import observations as obs

    text, plain = LONG_CSVS[case]
    path = tmp_path / "long.csv"
    path.write_text(text)
    grid = Grid(0.5, 10, clip=True)

    def read() -> tuple:
        warnings: list[str] = []
        try:
            got = obs.read_long_csv(path, grid, warnings)
        except InputError as e:
            return str(e), warnings
        rows = [(o.name, o.x.tolist(), o.y.tolist(), None if o.yerr is None else o.yerr.tolist()) for o in got]
        return rows, warnings

    numpy_reader, used = obs._plain_long_csv, []
    monkeypatch.setattr(obs, "_plain_long_csv", lambda *args: used.append(numpy_reader(*args)) or used[-1])
    fast = read()
    assert (used[0] is not None) == plain  # which reader read it
    monkeypatch.setattr(obs, "_plain_long_csv", lambda *args: None)
    assert fast == read()
