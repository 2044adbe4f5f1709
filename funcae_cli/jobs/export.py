"""The `export` job: a trained run as a portable emulator folder (default `<run>/export/`), written atomically.

The folder: emulator.json (the versioned description), weights.safetensors (every array), funcae_emulator.py
(the numpy-only loader, copied verbatim from funcae_cli/export/), and with `fmt="onnx"` also decoder.onnx and
encoder.onnx. The regressor is exported only when the run's regressor file is there and fitted on these
weights (a missing or stale one is reported, not refitted: exporting never writes into the run).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from safetensors.numpy import save as safetensors_bytes

from funcae_cli.errors import InputError, OptionError
from funcae_cli.export import funcae_emulator as loader
from funcae_cli.export.build import build_export
from funcae_cli.export.onnx_model import onnx_models
from funcae_cli.files import atomic_write_folder, json_text
from funcae_cli.inversion.regressor import LatentModel
from funcae_cli.jobs.common import open_run, run_info
from funcae_cli.jobs.fitted import cached_latent_model
from funcae_cli.store.rundir import RunDir
from funcae_cli.store.trained import Trained

LOADER = Path(loader.__file__)  # shipped as is: the file the tests import is the file users get
FORMATS = ("safetensors", "onnx")  # onnx: the safetensors folder plus decoder.onnx and encoder.onnx


def current_regressor(trained: Trained) -> tuple[LatentModel | None, str]:
    """The run's regressor when its file exists and was fitted on these weights; else None and why."""
    if not trained.param_names:
        return None, "the run has no parameters"
    lm, why = cached_latent_model(trained)
    return lm, "exported" if lm is not None else why


def _destination(out: Path, force: bool) -> Path:
    if out.exists() and not out.is_dir():
        raise OptionError("out", f"{out} exists and is not a folder")
    if out.is_dir() and any(out.iterdir()):
        if not (out / loader.DESCRIPTION).exists():
            raise OptionError("out", f"{out} is a non-empty folder that holds no emulator; give a new or empty one")
        if not force:
            raise OptionError("force", f"{out} already holds an export; pass it to overwrite")
    return out


def run_export(rd: RunDir, out: Path | None = None, fmt: str = "safetensors", force: bool = False) -> dict[str, Any]:
    """Write the emulator folder; returns the run's facts, the folder, its files and what was left out."""
    if fmt not in FORMATS:
        raise OptionError("format", f"{fmt!r} is not one of {', '.join(FORMATS)}")
    dest = _destination(Path(out) if out is not None else rd.export, force)
    trained = open_run(rd, "cpu")
    lm, regressor_note = current_regressor(trained)
    ex = build_export(trained, lm)
    files = {
        loader.DESCRIPTION: json_text(ex.description).encode(),
        # one metadata key: safetensors writes its metadata map in hash order, so two keys would make
        # two exports of the same run differ byte for byte
        loader.WEIGHTS: safetensors_bytes(ex.tensors, metadata={"format": f"{loader.FORMAT}/{loader.SCHEMA_VERSION}"}),
        LOADER.name: LOADER.read_bytes(),
    }
    if fmt == "onnx":
        files.update({f"{name}.onnx": data for name, data in onnx_models(ex).items()})
    try:
        atomic_write_folder(dest, files, replace=force)
    except OSError as e:
        raise InputError(f"--out: cannot write {dest} ({e.strerror or e})") from None
    result = run_info(trained)
    result.update(
        export=str(dest),
        format=fmt,
        schema_version=loader.SCHEMA_VERSION,
        files={name: str(dest / name) for name in files},
        bytes=sum(len(b) for b in files.values()),
        encoder=True,
        regressor=lm is not None,
        regressor_note=regressor_note,
        n_points=int(trained.grid.shape[0]),
    )
    return result
