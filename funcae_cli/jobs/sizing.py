"""How much memory an `invert` job will hold, known before it reads its targets: a catalogue this machine cannot
hold is a one-line error (exit 2) naming the estimate and what to lower, not the kernel's silent OOM kill.

`input_size` counts what a user gave without parsing it (a long CSV's lines and runs of ids, an .npz's array
shapes, a file's lines); `invert_bytes` turns the counts into bytes: what the job holds for the whole catalogue
(the parsed targets and their padded arrays, the result arrays and flags, the record's row per target, which the
JSON carries) plus one chunk's working set of the point estimates (inversion.invert.chunk_targets) and, with a
posterior, the draws it stores. The figures were measured on two-point rotation curves (peak RSS beyond the loaded
run: 10k 0.33 GB, 100k 0.70 GB, 300k 1.3 GB, i.e. ~0.4 GB for a chunk and 2-3 KB more per target, the freed
memory the allocator keeps included), with a margin; with mcmc, the chains of the targets sampled together
(inversion.ensemble.chain_bytes: a pool's, not the catalogue's).
"""

from __future__ import annotations

import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from funcae_cli.config import InvertConfig
from funcae_cli.data.observations import scan_long_csv
from funcae_cli.inversion.ensemble import chain_bytes
from funcae_cli.inversion.invert import chunk_targets
from funcae_cli.inversion.posterior import Sampling
from funcae_cli.jobs.inputs import TargetInputs
from funcae_cli.memory import HEADROOM, available, check_fits
from funcae_cli.store.trained import Trained

PER_TARGET = 4_000  # bytes per target for the whole job: its name and parsed object, results, flags, record row
PER_TEXT_POINT = 200  # bytes per point read from text (CSV): its values as Python floats, the object's arrays
PER_SLOT = 25  # bytes per slot of the padded batch (targets x the longest): x float64, y, yerr float32, mask; the fit
PER_CHUNK_SLOT = 15_000  # working set per padded slot of one chunk: the physics refit's 1 + 32 candidate starts
POSTERIOR_DRAW = 32  # bytes per stored draw and quantity: float32 samples, their .npz copy, float64 working draws


@dataclass
class InputSize:
    """The size of a batch of targets: how many, their real points, and the padded batch's width."""

    targets: int
    points: int
    width: int  # the longest target's points (the run's grid size for targets on the grid)
    text: bool = False  # read from text files (CSV), point by point


def _lines(path: Path) -> int:
    """Newlines in a file (its rows, header included), counted in binary blocks."""
    try:
        with path.open("rb") as f:
            return sum(block.count(b"\n") for block in iter(lambda: f.read(1 << 20), b""))
    except OSError:
        return 0


def _npz_shape(path: Path, name: str) -> tuple[int, ...] | None:
    """The shape of array `name` of an .npz, from its header alone (None: absent or unreadable)."""
    try:
        with zipfile.ZipFile(path) as z, z.open(f"{name}.npy") as f:
            version = np.lib.format.read_magic(f)
            read = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
            return tuple(read(f)[0])
    except (OSError, KeyError, ValueError, zipfile.BadZipFile):
        return None


def _files_size(files: list[Path]) -> InputSize:
    counts = [_lines(p) for p in files]  # rows, a header counted as a point: an upper bound by one
    return InputSize(len(files), sum(counts), max(counts, default=0), text=True)


def input_size(trained: Trained, inputs: TargetInputs) -> InputSize | None:
    """The targets' counts, from the inputs' sizes before they are read (None: no target given). Unreadable
    inputs count as empty: reading them gives the error."""
    grid = int(trained.grid.shape[0])
    if inputs.params:
        return InputSize(1, grid, grid)
    if inputs.curve_files:
        return _files_size([Path(p) for p in inputs.curve_files])
    if inputs.params_table is not None:
        n = max(_lines(Path(inputs.params_table)) - 1, 0)
        return InputSize(n, n * grid, grid)
    if inputs.curves is None:
        return None
    path = Path(inputs.curves)
    if path.is_dir():
        return _files_size(sorted(p for p in path.iterdir() if p.suffix.lower() == ".csv" and p.is_file()))
    if path.suffix.lower() == ".npz":
        shape = _npz_shape(path, "curves") or (0, 0)
        n, m = (1, shape[0]) if len(shape) == 1 else (shape[0], shape[-1])
        return InputSize(n, n * m, m)
    if path.suffix.lower() == ".csv" and path.is_file():
        return InputSize(*scan_long_csv(path), text=True)
    return InputSize(0, 0, 0)


def _per_target(size: InputSize, options: InvertConfig, n_params: int) -> float:
    """Bytes the job holds per target of a batch of `size`'s shape."""
    per = PER_TARGET + max(size.width, 1) * PER_SLOT
    per += size.points / max(size.targets, 1) * PER_TEXT_POINT if size.text else 0
    if options.posterior != "none":
        draws = options.draws if options.posterior == "amortized" else Sampling.draws
        per += draws * max(n_params, 1) * POSTERIOR_DRAW
    return per


def _chunk_bytes(size: InputSize) -> int:
    """One chunk's working set of the point estimates."""
    width = max(size.width, 1)
    return min(size.targets, chunk_targets(width)) * width * PER_CHUNK_SLOT


def invert_bytes(size: InputSize, options: InvertConfig, n_params: int) -> int:
    """The bytes an invert job of `size` holds at its peak beyond the loaded run (module docstring)."""
    return int(
        size.targets * _per_target(size, options, n_params) + _chunk_bytes(size) + _chain_bytes(size, options, n_params)
    )


def _chain_bytes(size: InputSize, options: InvertConfig, n_params: int) -> int:
    """mcmc's chains (auto: as if every target went to mcmc); 0 for the other posteriors."""
    if options.posterior not in ("mcmc", "auto"):
        return 0
    q = max(n_params, 1)
    return chain_bytes(size.targets, Sampling.of(options).walkers_for(q), q)


def check_invert_fits(size: InputSize, options: InvertConfig, trained: Trained, source: str) -> None:
    """InputError (exit 2) when the job cannot fit in the host's available memory, naming the estimate and about
    how many targets of this kind one call can take."""
    n_params = len(trained.param_names)
    per = _per_target(size, options, n_params)
    room = int((HEADROOM * available()[0] - _chunk_bytes(size) - _chain_bytes(size, options, n_params)) // per)
    lower = f"invert at most about {room:,} targets per call (split {source})" if room > 0 else f"split {source}"
    if options.posterior != "none":
        lower += ", or use --posterior none"
    what = f"{size.targets:,} targets ({size.points:,} points, the longest {size.width:,}) from {source}"
    check_fits(invert_bytes(size, options, n_params), what, lower)
