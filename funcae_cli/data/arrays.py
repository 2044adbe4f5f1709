"""Array data sets: a user's .npy / .npz / .csv file, or scikit-learn's bundled 8 x 8 digits.

Readers return validated NumPy arrays in the file's row order (`ArrayData`); `LOADERS[family]`
reads an array family's rows from its options, and `dataset.load_data` shuffles them by the config
seed (so the contiguous splits are random), builds the grid and wraps them in a `dataset.Dataset`.
Every problem a user's file can have is an `InputError` naming the path and what was wrong.

File conventions
- `.npy`: one array `X`, shape (rows, features), or (rows, height, width) with `image_shape`.
- `.npz`: key `X` (lowercase `x` is read as `X`) as above; optional `y` (rows,) integer labels;
  optional `params` (rows, k) physical parameters with `param_names` (k,) strings (default names
  p0, p1, ...). Keras's `mnist.npz` layout (`x_train`, `y_train`, `x_test`, `y_test`) is also read:
  the parts are concatenated and funcae makes its own splits. Other keys are an error, with a
  did-you-mean where one is close.
- `.csv`: comma-separated numbers, one row per sample. An optional header row (any non-numeric
  field in the first row makes it a header); a header column named `label` holds integer labels,
  the columns named in `family.param_columns` hold physical parameters (named by their headers),
  every other column is a feature. Without a header every column is a feature.
"""

from __future__ import annotations

import difflib
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from funcae_cli.config.families import ARRAY_SUFFIXES
from funcae_cli.data.numbers import is_number
from funcae_cli.errors import InputError

NPZ_KEYS = ("X", "y", "params", "param_names")
NPZ_ALIASES = {"x": "X"}  # accepted spellings of NPZ_KEYS
KERAS_KEYS = ("x_train", "x_test", "y_train", "y_test")
LABEL_COLUMN = "label"  # csv header name of the label column


@dataclass
class ArrayData:
    """Validated arrays in the file's row order."""

    x: np.ndarray  # (n, n_features) float32, finite
    labels: np.ndarray | None = None  # (n,) int64
    params: np.ndarray | None = None  # (n, k) float64, finite
    param_names: tuple[str, ...] = ()


# --- readers ----------------------------------------------------------------------------------


def read_array_file(
    path: str | Path, scale: float = 1.0, image_shape: list[int] | None = None, param_columns: list[str] | None = None
) -> ArrayData:
    """Read and validate a .npy, .npz or .csv file; values are divided by `scale`."""
    p = Path(path).expanduser()
    if not p.exists():
        raise InputError(f"{path}: data file not found")
    if p.is_dir():
        raise InputError(f"{path}: is a directory, expected a .npy, .npz or .csv file")
    suffix = p.suffix.lower()
    if suffix not in READERS:
        raise InputError(
            f"{path}: unsupported file type {p.suffix or '(none)'!r}; expected {', '.join(ARRAY_SUFFIXES)}"
        )
    if param_columns and suffix != ".csv":
        raise InputError(f"{path}: family.param_columns is for .csv files (an .npz holds params and param_names)")
    raw = _read_csv(p, param_columns or []) if suffix == ".csv" else READERS[suffix](p)
    return validate(raw, str(path), scale, image_shape)


def _read_npy(p: Path) -> dict[str, Any]:
    try:
        return {"X": np.load(p, allow_pickle=False)}
    except (OSError, ValueError, EOFError) as e:
        raise InputError(f"{p}: not a readable .npy array ({_first_line(e)})") from None


def _read_npz(p: Path) -> dict[str, Any]:
    try:
        with np.load(p, allow_pickle=False) as z:
            keys = sorted(z.files)
            if "X" not in keys and all(k in keys for k in KERAS_KEYS):
                return _keras_layout(z, p, keys)
            names = {k: NPZ_ALIASES.get(k, k) for k in keys}  # file key -> funcae's name
            unknown = [k for k, name in names.items() if name not in NPZ_KEYS]
            twice = [k for k in keys if k != names[k] and names[k] in keys]
            if unknown or twice or "X" not in names.values():
                raise InputError(f"{p}: holds keys {', '.join(keys) or '(none)'}; " + _npz_problem(unknown, twice))
            return {names[k]: z[k] for k in keys}
    except InputError:
        raise
    except (OSError, ValueError, EOFError, KeyError, zipfile.BadZipFile) as e:
        raise InputError(f"{p}: not a readable .npz archive ({_first_line(e)})") from None


def _npz_problem(unknown: list[str], twice: list[str]) -> str:
    expected = f"expected X (rows, features) and optional {', '.join(NPZ_KEYS[1:])}"
    if twice:
        return f"{expected}; {twice[0]!r} and {NPZ_ALIASES[twice[0]]!r} are the same array: keep one"
    if not unknown:
        return expected
    hints = []
    for k in unknown:
        close = difflib.get_close_matches(k, NPZ_KEYS, n=1, cutoff=0.5) or [
            name for name in NPZ_KEYS if name.lower() == k.lower()
        ]
        hints.append(f"{k} (did you mean {close[0]}?)" if close else k)
    return f"{expected} (unknown: {', '.join(hints)})"


def _keras_layout(z: Any, p: Path, keys: list[str]) -> dict[str, Any]:
    extra = [k for k in keys if k not in KERAS_KEYS]
    if extra:
        raise InputError(f"{p}: keras layout with unexpected keys {', '.join(extra)}")
    parts = {k: z[k] for k in KERAS_KEYS}
    if parts["x_train"].shape[1:] != parts["x_test"].shape[1:]:
        raise InputError(
            f"{p}: x_train {parts['x_train'].shape} and x_test {parts['x_test'].shape} differ in shape after the rows"
        )
    return {
        "X": np.concatenate([parts["x_train"], parts["x_test"]]),
        "y": np.concatenate([np.ravel(parts["y_train"]), np.ravel(parts["y_test"])]),
    }


def _read_csv(p: Path, param_columns: list[str] | tuple[str, ...] = ()) -> dict[str, Any]:
    try:
        with open(p, encoding="utf-8") as f:
            first = f.readline()
    except (OSError, UnicodeDecodeError) as e:
        raise InputError(f"{p}: not a readable text file ({_first_line(e)})") from None
    fields = [s.strip() for s in first.strip().split(",")]
    header = not all(is_number(s) for s in fields)
    try:
        values = np.loadtxt(p, delimiter=",", skiprows=1 if header else 0, ndmin=2, dtype=np.float64)
    except ValueError as e:
        raise InputError(f"{p}: not numeric CSV ({_first_line(e)})") from None
    if values.size == 0:
        raise InputError(f"{p}: no data rows")
    if header and values.shape[1] != len(fields):
        raise InputError(f"{p}: header has {len(fields)} columns but the rows have {values.shape[1]}")
    if param_columns and not header:
        raise InputError(f"{p}: family.param_columns names header columns, but the file has no header row")
    missing = [c for c in param_columns if c not in fields]
    if missing:
        raise InputError(f"{p}: family.param_columns: no column {missing[0]!r} in the header ({', '.join(fields)})")
    out: dict[str, Any] = {}
    special = {LABEL_COLUMN, *param_columns} if header else set()
    if header and LABEL_COLUMN in fields:
        out["y"] = values[:, fields.index(LABEL_COLUMN)]
    if param_columns:
        out["params"] = values[:, [fields.index(c) for c in param_columns]]
        out["param_names"] = np.array(param_columns)
    out["X"] = values[:, [j for j, name in enumerate(fields) if name not in special]] if header else values
    return out


READERS: dict[str, Callable[[Path], dict[str, Any]]] = {".npy": _read_npy, ".npz": _read_npz, ".csv": _read_csv}


def load_digits_data(scale: float = 16.0) -> ArrayData:
    """scikit-learn's bundled 8 x 8 handwritten digits (1797 images, values 0..16), no download."""
    try:
        from sklearn.datasets import load_digits
    except ImportError:
        raise InputError(
            "family digits needs scikit-learn, which is not installed: pip install 'funcae[images]'"
        ) from None
    d = load_digits()
    return validate({"X": d.data, "y": d.target}, "sklearn digits", scale, None)


# --- validation -------------------------------------------------------------------------------


def validate(raw: dict[str, Any], where: str, scale: float, image_shape: list[int] | None) -> ArrayData:
    """Check shapes, dtypes and finiteness; return float32 features scaled by 1 / scale."""
    x = np.asarray(raw["X"])
    if x.ndim == 3 and image_shape is not None and list(x.shape[1:]) == list(image_shape):
        x = x.reshape(x.shape[0], -1)  # (n, h, w) images -> rows
    elif x.ndim == 3:
        raise InputError(
            f"{where}: X has shape {x.shape}; 3-D arrays are read as images: set family.image_shape: "
            f"[{x.shape[1]}, {x.shape[2]}]"
        )
    if x.ndim != 2:
        raise InputError(f"{where}: X has shape {x.shape}; expected 2-D (rows, features)")
    n, d = x.shape
    if n < 2:
        raise InputError(f"{where}: {n} row(s); at least 2 are needed")
    if d < 2:
        raise InputError(f"{where}: {d} feature column(s); at least 2 are needed")
    if not (np.issubdtype(x.dtype, np.number) or x.dtype == bool):
        raise InputError(f"{where}: X has non-numeric dtype {x.dtype}")
    _check_finite(x, where, "X")
    if image_shape is not None and int(np.prod(image_shape)) != d:
        raise InputError(
            f"{where}: {d} features per row do not fit family.image_shape {list(image_shape)} "
            f"({int(np.prod(image_shape))} pixels)"
        )
    out = ArrayData(x=(x.astype(np.float32) / np.float32(scale)).astype(np.float32, copy=False))
    if not np.isfinite(out.x).all():
        raise InputError(f"{where}: values overflow float32 after scaling by 1/{scale:g}")
    if raw.get("y") is not None:
        out.labels = _labels(np.asarray(raw["y"]), n, where)
    if raw.get("params") is not None:
        out.params, out.param_names = _params(np.asarray(raw["params"]), raw.get("param_names"), n, where)
    elif raw.get("param_names") is not None:
        raise InputError(f"{where}: param_names given without params")
    return out


def _check_finite(a: np.ndarray, where: str, what: str) -> None:
    if np.issubdtype(a.dtype, np.floating) or np.issubdtype(a.dtype, np.complexfloating):
        bad = ~np.isfinite(a)
        if bad.any():
            i, j = np.argwhere(bad)[0][:2] if a.ndim == 2 else (int(np.argwhere(bad)[0][0]), None)
            col = f", column {j}" if j is not None else ""
            raise InputError(f"{where}: {what} has {int(bad.sum())} NaN or infinite value(s), first at row {i}{col}")


def _labels(y: np.ndarray, n: int, where: str) -> np.ndarray:
    if y.ndim == 2 and y.shape[1] == 1:
        y = y[:, 0]
    if y.ndim != 1:
        raise InputError(f"{where}: labels y have shape {y.shape}; expected ({n},)")
    if y.shape[0] != n:
        raise InputError(f"{where}: {y.shape[0]} labels for {n} rows")
    if y.dtype.kind in "US":  # e.g. MNIST from fetch_openml: '5'
        try:
            y = y.astype(np.float64)
        except ValueError:
            raise InputError(f"{where}: labels y must be integers, got strings such as {y[0]!r}") from None
    if not (np.issubdtype(y.dtype, np.number) or y.dtype == bool):
        raise InputError(f"{where}: labels y have non-numeric dtype {y.dtype}")
    _check_finite(y, where, "labels y")
    if np.issubdtype(y.dtype, np.floating) and not np.array_equal(y, np.round(y)):
        i = int(np.argwhere(y != np.round(y))[0][0])
        raise InputError(f"{where}: labels y must be integers, got {y[i]!r} at row {i}")
    return y.astype(np.int64)


def _params(p: np.ndarray, names: Any, n: int, where: str) -> tuple[np.ndarray, tuple[str, ...]]:
    if p.ndim == 1:
        p = p[:, None]
    if p.ndim != 2 or p.shape[0] != n:
        raise InputError(f"{where}: params have shape {p.shape}; expected ({n}, n_params)")
    if not np.issubdtype(p.dtype, np.number):
        raise InputError(f"{where}: params have non-numeric dtype {p.dtype}")
    _check_finite(p, where, "params")
    k = p.shape[1]
    if names is None:
        names_t = tuple(f"p{j}" for j in range(k))
    else:
        names_t = tuple(str(s) for s in np.atleast_1d(np.asarray(names)))
        if len(names_t) != k:
            raise InputError(f"{where}: {len(names_t)} param_names for {k} params columns")
        if len(set(names_t)) != k:
            raise InputError(f"{where}: param_names must be distinct, got {', '.join(names_t)}")
    return p.astype(np.float64), names_t


def _first_line(e: BaseException) -> str:
    return (str(e).splitlines() or [type(e).__name__])[0][:200]


# --- the array families' loaders ------------------------------------------------------------------

LOADERS: dict[str, Callable[[Any], ArrayData]] = {
    "dataset": lambda o: read_array_file(o.path, o.scale, o.image_shape, o.param_columns),
    "digits": lambda o: load_digits_data(o.scale),
}
