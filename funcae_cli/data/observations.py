"""Observed curves from files: each object its own points x, values y and optional one-sigma errors yerr.

Formats (all read into `Observation`s, then padded into one `Targets` batch by targets.py):
- one curve per CSV file (`--curve`, repeatable, or a folder of them): columns `x,y[,yerr]` (a header naming
  them in any order, or exactly that order without one); the object's id is the file's stem;
- a long-format CSV (`--curves FILE.csv`): a header with `id,x,y[,yerr]` (any order), one row per point;
- an .npz (`--curves FILE.npz`): `curves` (n, m) on one set of points `x` (m,) (default: the run's grid),
  optional `yerr` (n, m) or (m,), optional true `params`.

Every problem names the file, the line and the object: a missing column, a non-numeric or non-finite cell,
an object with fewer than 2 points, yerr <= 0, points outside the run's grid (or, with clip, those points are
dropped and a warning says how many, per object). Points are sorted by x; repeated x values are separate
measurements (each enters the objective; the encoder's start sees their mean: encode.targets_on_grid).
"""

from __future__ import annotations

import csv
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from funcae_cli.data.numbers import finite_number
from funcae_cli.errors import InputError

COLUMNS = ("x", "y", "yerr")
MIN_POINTS = 2


@dataclass
class Observation:
    """One observed object: float64 points sorted by x."""

    name: str
    x: np.ndarray  # (m,)
    y: np.ndarray  # (m,)
    yerr: np.ndarray | None  # (m,) > 0, or None


@dataclass
class Grid:
    """The range observations must fall in (the run's grid) and whether to drop points outside it."""

    low: float
    high: float
    clip: bool = False

    def restrict(self, obs: Observation, where: str, warnings: list[str]) -> Observation:
        tol = 1e-9 * max(abs(self.low), abs(self.high), self.high - self.low)
        inside = (obs.x >= self.low - tol) & (obs.x <= self.high + tol)
        if inside.all():
            return obs
        if not self.clip:
            v = float(obs.x[~inside][0])
            raise InputError(
                f"{where}: x={v:g} is outside the run's grid range [{self.low:g}, {self.high:g}]; the decoder has no "
                "values there (clip drops such points)"
            )
        dropped = int((~inside).sum())
        warnings.append(
            f"{obs.name}: dropped {dropped} of {obs.x.size} points outside the grid's [{self.low:g}, {self.high:g}]"
        )
        kept = Observation(obs.name, obs.x[inside], obs.y[inside], None if obs.yerr is None else obs.yerr[inside])
        if kept.x.size < MIN_POINTS:
            raise InputError(f"{where}: {kept.x.size} point(s) left inside the grid; at least {MIN_POINTS} are needed")
        return kept


def _rows(path: Path) -> list[tuple[int, list[str]]]:
    """(line number, cells) of a comma- or whitespace-separated text file; '#' starts a comment."""
    return list(_iter_rows(path))


def _iter_rows(path: Path) -> Iterator[tuple[int, list[str]]]:
    """_rows one at a time, read line by line (a large file is never in memory whole)."""
    if not path.exists():
        raise InputError(f"{path}: file not found")
    if path.is_dir():
        raise InputError(f"{path}: is a directory, expected a CSV file")
    empty = True
    try:
        with path.open() as f:
            for k, line in enumerate(f, start=1):
                line = line.split("#", 1)[0].strip()
                if line:
                    empty = False
                    cells = next(csv.reader([line])) if "," in line else line.split()
                    yield k, [c.strip() for c in cells]
    except (OSError, UnicodeDecodeError) as e:
        raise InputError(f"{path}: cannot read as text ({e.__class__.__name__})") from None
    if empty:
        raise InputError(f"{path}: no data rows")


def _is_header(cells: list[str]) -> bool:
    try:
        [float(c) for c in cells]
    except ValueError:
        return True
    return False


def _columns(path: Path, header: list[str], need: tuple[str, ...], optional: tuple[str, ...]) -> dict[str, int]:
    names = [h.lower() for h in header]
    allowed = need + optional
    unknown = [h for h in names if h not in allowed]
    missing = [c for c in need if c not in names]
    if unknown or missing:
        problem = f"missing column {missing[0]!r}" if missing else f"unknown column {unknown[0]!r}"
        raise InputError(
            f"{path}, line 1: {problem}; the header must name {', '.join(need)} and optionally "
            f"{', '.join(optional)}, got {', '.join(header)}"
        )
    return {c: names.index(c) for c in allowed if c in names}


def make_observation(name: str, xs: Any, ys: Any, es: Any | None, where: str) -> Observation:
    """One object from its points (lists or arrays): at least MIN_POINTS, sorted by x (stable)."""
    if len(xs) < MIN_POINTS:
        raise InputError(f"{where}: {len(xs)} point(s); an object needs at least {MIN_POINTS}")
    x, y = np.asarray(xs), np.asarray(ys)
    order = np.argsort(x, kind="stable")
    e = None if es is None else np.asarray(es)[order]
    return Observation(name, x[order], y[order], e)


def read_curve_file(path: Path, grid: Grid, warnings: list[str]) -> Observation:
    """One object from a CSV of x, y and optionally yerr; its name is the file's stem."""
    rows = _rows(path)
    cols: dict[str, int]
    if _is_header(rows[0][1]):
        cols = _columns(path, rows[0][1], ("x", "y"), ("yerr",))
        rows = rows[1:]
    else:
        width = len(rows[0][1])
        if width not in (2, 3):
            raise InputError(f"{path}, line {rows[0][0]}: expected 2 columns (x, y) or 3 (x, y, yerr), got {width}")
        cols = dict(zip(COLUMNS, range(width)))
    xs, ys, es = [], [], [] if "yerr" in cols else None
    for k, cells in rows:
        where = f"{path}, line {k}"
        if len(cells) != len(cols):
            raise InputError(f"{where}: expected {len(cols)} columns, got {len(cells)}")
        xs.append(finite_number(cells[cols["x"]], f"{where}: x"))
        ys.append(finite_number(cells[cols["y"]], f"{where}: y"))
        if es is not None:
            es.append(_positive_error(cells[cols["yerr"]], where))
    return grid.restrict(make_observation(path.stem, xs, ys, es, str(path)), str(path), warnings)


def _positive_error(cell: str, where: str) -> float:
    e = finite_number(cell, f"{where}: yerr")
    if e <= 0:
        raise InputError(f"{where}: yerr must be > 0, got {cell}")
    return e


def read_long_csv(path: Path, grid: Grid, warnings: list[str]) -> list[Observation]:
    """Many objects from one CSV with a header naming id, x, y and optionally yerr: one row per point."""
    rows = _iter_rows(path)
    first, header = next(rows)
    if not _is_header(header):
        raise InputError(f"{path}, line {first}: a long-format CSV needs a header naming id, x, y[, yerr]")
    cols = _columns(path, header, ("id", "x", "y"), ("yerr",))
    points = _plain_long_csv(path, first, cols)
    if points is None:  # quotes, comments, a bad cell: line by line, where every error names its line
        points = _long_csv_rows(path, rows, cols)
    rows.close()
    out = []
    for name, (xs, ys, es, first_line) in points.items():
        where = f"{path}, line {first_line}, id {name}"
        out.append(grid.restrict(make_observation(name, xs, ys, es, where), where, warnings))
    return out


Points = dict[str, tuple[Any, Any, Any | None, int]]  # id -> its x, y, yerr (or None) and its first line


def _plain_long_csv(path: Path, header_line: int, cols: dict[str, int]) -> Points | None:
    """read_long_csv's points of a plain file (comma-separated cells, no quotes, comments or blank lines after the
    header, every cell good), parsed by numpy's C reader (np.loadtxt): ~5x faster than line by line. None where
    the file is not plain: the exact reader then finds and names the line."""
    try:
        with path.open("rb") as f:
            for _ in range(header_line):
                f.readline()
            tail = b"\n"  # the header's line end
            while block := f.read(1 << 24):
                if b'"' in block or b"#" in block or _BLANK.search(tail + block):
                    return None
                tail = block[-8:]
        numeric = [cols[c] for c in ("x", "y", "yerr") if c in cols]
        read = {"delimiter": ",", "skiprows": header_line, "comments": None, "ndmin": 1}
        with path.open() as f:
            values = np.loadtxt(f, usecols=numeric, dtype=np.float64, **read).reshape(-1, len(numeric))
        with path.open() as f:
            ids = np.char.strip(np.loadtxt(f, usecols=cols["id"], dtype=str, **read))
    except (OSError, UnicodeDecodeError, ValueError):
        return None
    if ids.size == 0 or not np.isfinite(values).all() or (ids == "").any():
        return None
    if "yerr" in cols and not (values[:, 2] > 0).all():
        return None
    starts = np.concatenate([[0], np.nonzero(ids[1:] != ids[:-1])[0] + 1, [ids.size]])
    runs: dict[str, list[slice]] = {}
    for name, a, b in zip(ids[starts[:-1]].tolist(), starts[:-1].tolist(), starts[1:].tolist()):
        runs.setdefault(name, []).append(slice(a, b))
    out: Points = {}
    for name, slices in runs.items():  # an id's runs of rows joined, in file order
        v = np.concatenate([values[sl] for sl in slices]) if len(slices) > 1 else values[slices[0]]
        out[name] = (v[:, 0], v[:, 1], v[:, 2] if "yerr" in cols else None, header_line + 1 + slices[0].start)
    return out


_BLANK = re.compile(rb"\n[ \t\r]*\n")  # an empty line: the lines' numbers would no longer be their points'


def _long_csv_rows(path: Path, rows: Iterator[tuple[int, list[str]]], cols: dict[str, int]) -> Points:
    points: dict[str, tuple[list[float], list[float], list[float] | None, int]] = {}
    for k, cells in rows:
        if len(cells) != len(cols):
            raise InputError(f"{path}, line {k}: expected {len(cols)} columns, got {len(cells)}")
        name = cells[cols["id"]]
        where = f"{path}, line {k}, id {name}"
        if not name:
            raise InputError(f"{path}, line {k}: empty id")
        xs, ys, es, _ = points.setdefault(name, ([], [], [] if "yerr" in cols else None, k))
        xs.append(finite_number(cells[cols["x"]], f"{where}: x"))
        ys.append(finite_number(cells[cols["y"]], f"{where}: y"))
        if es is not None:
            es.append(_positive_error(cells[cols["yerr"]], where))
    if not points:
        raise InputError(f"{path}: a header but no data rows")
    return points


def scan_long_csv(path: Path) -> tuple[int, int, int]:
    """(objects, points, the most points of one object) of a long-format CSV, counted without parsing numbers
    (cheap: to size a job before reading it). Each run of rows with one id counts as an object: exact when an
    object's rows are together (as funcae writes them), else an upper bound on objects (at most points / 2) and a
    lower bound on the longest. Problems of the file itself are left to read_long_csv."""
    try:
        with path.open() as f:
            column = None
            objects = points = longest = run = 0
            last = None
            for line in f:
                line = line.split("#", 1)[0].strip()
                if not line:
                    continue
                cells = next(csv.reader([line])) if '"' in line else line.split(",")
                if column is None:  # the header
                    names = [c.strip().lower() for c in cells]
                    if "id" not in names:
                        return 0, 0, 0
                    column = names.index("id")
                    continue
                key = cells[column] if column < len(cells) else ""
                points += 1
                if key != last:
                    objects, last, run = objects + 1, key, 0
                run += 1
                longest = max(longest, run)
    except (OSError, UnicodeDecodeError):
        return 0, 0, 0
    return min(objects, points // MIN_POINTS) if points >= MIN_POINTS else objects, points, longest


def read_curve_folder(path: Path, grid: Grid, warnings: list[str]) -> list[Observation]:
    """Every *.csv in a folder, one object each, in name order."""
    files = sorted(p for p in path.iterdir() if p.suffix.lower() == ".csv" and p.is_file())
    if not files:
        raise InputError(f"{path}: no .csv files in this folder")
    return [read_curve_file(p, grid, warnings) for p in files]


def same_errors(observations: list[Observation], where: str) -> None:
    """All objects with yerr (chi^2) or none (L2): one objective for the whole batch."""
    with_errors = [o.yerr is not None for o in observations]
    if any(with_errors) and not all(with_errors):
        missing = observations[with_errors.index(False)].name
        raise InputError(f"{where}: some curves have yerr and some not (first without: {missing}); give it for all")
