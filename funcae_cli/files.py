"""Writing files: atomically (never half-written), and the few formats results are written in (JSON, CSV, .npz)."""

from __future__ import annotations

import io
import itertools
import json
import math
import os
import shutil
import signal
import sys
import tempfile
import threading
import warnings
from collections.abc import Callable, Iterable, Iterator
from functools import partial
from pathlib import Path
from typing import Any, TextIO

from funcae_cli.cores import cpu_count


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


FILE_MODE = 0o666 & ~_umask()  # what open() would give; mkstemp alone gives 0600


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Write to a temp file in the same folder, fsync, then os.replace: never half-written."""
    _atomic_write(path, [data])


def atomic_write_chunks(path: str | Path, chunks: Iterable[str], echo: TextIO | None = None) -> None:
    """atomic_write_text of the text pieces `chunks` yields, written as they come (joined in blocks of 16384
    pieces: JSON comes in tiny ones): a file of any size never held in memory whole. echo: a text stream that gets
    the same text, block by block, as it is written (invert --json's stdout: a catalogue's record encoded once)."""
    pieces = iter(chunks)

    def blocks() -> Iterator[bytes]:
        for block in iter(lambda: list(itertools.islice(pieces, 1 << 14)), []):
            text = "".join(block)
            if echo is not None:
                echo.write(text)
            yield text.encode()

    _atomic_write(path, blocks())


def _atomic_write(path: str | Path, blocks: Iterable[bytes]) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, FILE_MODE)
        with os.fdopen(fd, "wb") as f:
            for block in blocks:
                f.write(block)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_folder(path: str | Path, files: dict[str, bytes], replace: bool = False) -> None:
    """Write `files` (name -> bytes) into a temp folder beside `path`, fsync them, then rename it to `path`: a
    reader sees no folder, the old one or the new one, never a half-written one. `replace`: swap an existing
    `path` out first (removed after); otherwise an existing non-empty `path` makes the rename fail (OSError)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    old: Path | None = None
    try:
        os.chmod(tmp, 0o777 & ~_umask())  # mkdtemp alone gives 0700
        for name, data in files.items():
            fd = os.open(tmp / name, os.O_WRONLY | os.O_CREAT | os.O_EXCL, FILE_MODE)
            with os.fdopen(fd, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
        if replace and path.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".old", dir=path.parent))
            os.replace(path, old)
        os.replace(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        if old is not None and not path.exists():
            os.replace(old, path)
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def atomic_write_text(path: str | Path, text: str) -> None:
    atomic_write_bytes(path, text.encode())


def json_default(o: Any) -> Any:
    """json.dumps' fallback: arrays and tensors as lists, paths as strings."""
    if hasattr(o, "tolist"):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON serializable: {type(o).__name__}")


def json_text(obj: Any) -> str:
    return json.dumps(obj, indent=2, default=json_default) + "\n"


def json_chunks(obj: Any, rows: str | None = None) -> Iterator[str]:
    """json_text(obj) in pieces, so that a large record is written without its text in memory. rows: the key of a
    dict `obj` whose list holds one record per target: each of those on one line, by json's C encoder (the
    indenting encoder is pure Python, ~10x slower: most of writing a catalogue's record), the rest as json_text."""
    if rows is None or not isinstance(obj, dict) or not isinstance(obj.get(rows), list):
        return itertools.chain(json.JSONEncoder(indent=2, default=json_default).iterencode(obj), ["\n"])
    return _record_chunks(obj, rows)


def _record_chunks(obj: dict[str, Any], rows: str) -> Iterator[str]:
    indented = json.JSONEncoder(indent=2, default=json_default)
    yield "{"
    for i, (key, value) in enumerate(obj.items()):
        yield ("," if i else "") + "\n  " + json.dumps(key) + ": "
        if key == rows:
            yield "["
            yield from _row_lines(value)
            yield "\n  ]" if value else "]"
        else:  # a string holds no raw newline (JSON escapes it): every newline starts an indented line
            yield indented.encode(value).replace("\n", "\n  ")
    yield "\n}\n" if obj else "}\n"


FORKED_JSON_ROWS = 20_000  # a record with more rows than this encodes its second half in a forked process


def _row_lines(values: list[Any]) -> Iterator[str]:
    """Each row on its own line (json's C encoder, ASCII). A long list's second half is encoded meanwhile by a
    forked process into an unnamed temporary file, read back after the first half: ~70 us a row, 7 s of a
    100,000-target catalogue's record on one core, ~3.5 s on two. Where forking is not safe, or the process failed,
    this process encodes it. The same text either way. A row holding NaN or an infinity is written as json_safe
    makes it (null): JSON has neither."""
    line = json.JSONEncoder(default=json_default, allow_nan=False)

    def safe(row: Any) -> str:
        try:
            return line.encode(row)
        except ValueError:  # NaN or an infinity somewhere in it (rare: a job's rows come safe)
            return line.encode(json_safe(row))

    def lines(part: list[Any], first: int) -> Iterator[str]:
        for j, row in enumerate(part, first):
            yield ("," if j else "") + "\n    " + safe(row)

    half = len(values) // 2
    if len(values) <= FORKED_JSON_ROWS or not helpers_run_beside():
        yield from lines(values, 0)
        return
    with tempfile.TemporaryFile() as spool:

        def encode_rest() -> None:
            with open(spool.fileno(), "w", encoding="ascii", closefd=False) as out:
                out.writelines(lines(values[half:], half))

        pid, done = fork_child(encode_rest), False
        try:
            yield from lines(values[:half], 0)
            done = True
        finally:
            if not done:  # the writer stopped early: the rest is not needed
                os.kill(pid, signal.SIGKILL)
            written = waited_ok(pid)
        if not written:
            yield from lines(values[half:], half)
            return
        spool.seek(0)
        while piece := spool.read(1 << 20):
            yield piece.decode("ascii")


def atomic_write_json(path: str | Path, obj: Any, rows: str | None = None, echo: TextIO | None = None) -> None:
    atomic_write_chunks(path, json_chunks(obj, rows), echo)


def finite_or_none(v: float) -> float | None:
    v = float(v)
    return v if math.isfinite(v) else None


def json_safe(obj: Any) -> Any:
    """NaN and infinities (invalid JSON) become null, recursively."""
    if isinstance(obj, float):
        return finite_or_none(obj)
    if isinstance(obj, dict):
        return {k: json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_safe(v) for v in obj]
    return obj


def csv_cell(v: Any, float_format: str = ".9g") -> str:
    """One CSV field: floats to `float_format`, booleans as true/false, text quoted when it holds , or "."""
    if isinstance(v, bool) or type(v).__name__ == "bool_":
        return str(bool(v)).lower()
    if isinstance(v, float) or type(v).__name__.startswith("float"):
        return format(float(v), float_format)
    text = str(v)
    if "," in text or '"' in text or "\n" in text:
        return '"' + text.replace('"', '""') + '"'
    return text


def csv_text(header: list[str], rows: Iterable[list[Any]], float_format: str = ".9g") -> str:
    """A table as CSV text: the one writer of every CSV funcae produces."""
    return "".join(csv_lines(header, rows, float_format))


def csv_lines(header: list[str], rows: Iterable[list[Any]], float_format: str = ".9g") -> Iterator[str]:
    """csv_text line by line (each ending in a newline), for tables written as they are made."""
    for row in itertools.chain([header], rows):
        yield ",".join(csv_cell(v, float_format) for v in row) + "\n"


def npz_bytes(arrays: dict[str, Any]) -> bytes:
    """An uncompressed .npz of the given arrays (None values left out)."""
    import numpy as np  # numpy: not needed by the CLI's fast paths (--help, families, config check)

    buf = io.BytesIO()
    np.savez(buf, **{k: v for k, v in arrays.items() if v is not None})
    return buf.getvalue()


def save_figure(fig: Any, path: str | Path, fmt: str | None = None, dpi: int = 110) -> Path:
    """Render a matplotlib Figure (fmt: from the suffix, png by default) and write it atomically."""
    path = Path(path)
    atomic_write_bytes(path, figure_bytes(fig, fmt or path.suffix.lstrip(".") or "png", dpi))
    return path


def figure_bytes(fig: Any, fmt: str = "png", dpi: int = 110) -> bytes:
    """A matplotlib Figure rendered to bytes, as save_figure writes it."""
    buf = io.BytesIO()
    # PNG at zlib level 3 rather than matplotlib's 6: the three figures of `funcae invert` 20% faster (1.95 -> 1.53 s)
    # for 5% larger files
    extra = {"pil_kwargs": {"compress_level": 3}} if fmt == "png" else {}  # other backends refuse the argument
    fig.savefig(buf, format=fmt, dpi=dpi, **extra)
    return buf.getvalue()


def forkable() -> bool:
    """Whether this process may fork helpers safely: Linux, and no other Python thread running (a fork copies only
    the calling thread: a lock another thread holds would stay held in the child)."""
    return sys.platform.startswith("linux") and threading.active_count() == 1


def helpers_run_beside() -> bool:
    """Whether a forked helper would run beside this process: forking is safe here and there are two cores."""
    return cpu_count() >= 2 and forkable()


def fork_child(work: Callable[[], Any]) -> int:
    """Fork a process that runs work() and leaves, exit code 0 if it returned and 1 if it raised, without the
    parent's exit handlers or buffered output; its pid here (reap it: waited_ok)."""
    with warnings.catch_warnings():  # 3.12+: torch's idle OpenMP workers count as threads; children never use them
        warnings.simplefilter("ignore", DeprecationWarning)
        pid = os.fork()
    if pid == 0:
        code = 1
        try:
            work()
            code = 0
        finally:
            os._exit(code)
    return pid


def waited_ok(pid: int) -> bool:
    """Wait for a child process: whether it exited with code 0."""
    return os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]) == 0


def save_figures(figures: dict[Path, Any], ways: int | None = None) -> None:
    """save_figure of each {path: Figure, or a function of no arguments that builds it (built in the process
    that renders it)}, rendered side by side in forked processes where that is safe (Linux,
    two or more cores, no other Python thread running), else one after the other. Rendering (ticks, text layout,
    PNG encoding) is single-threaded Python: `funcae invert`'s three figures of 175 curves took 1.55-2.1 s one
    after the other and 0.9-1.35 s side by side on 2 cores (BENCHMARKS.md, row 8). Process j renders figures j,
    j + ways, ...; a figure whose process failed is rendered again here, so that its error is raised as in one
    process. Each file is written atomically by whichever process renders it. ways: processes (None: one per
    figure, at most twice the cores this process may run on; 1 on one core)."""
    items = list(figures.items())
    if ways is None:  # one process per figure (their costs differ: 0.6, 0.5 and 0.2 s for invert's three)
        cores = cpu_count()
        ways = 1 if cores < 2 else 2 * cores
    ways = min(ways, len(items))
    if ways < 2 or not forkable():
        for path, fig in items:
            save_figure(_built(fig), path)
        return

    def render(share: list[tuple[Path, Any]]) -> None:
        for path, fig in share:
            save_figure(_built(fig), path)

    children = [(fork_child(partial(render, items[j::ways])), items[j::ways]) for j in range(1, ways)]
    failed = []
    try:
        render(items[::ways])
    finally:
        for pid, share in children:
            if not waited_ok(pid):
                failed += share
    for path, fig in failed:
        save_figure(_built(fig), path)


class ForkedWrite:
    """atomic_write_chunks(path, make()) in a forked process, while this one goes on (a catalogue's CSV while its
    JSON rows are built: ~5 s each at 100,000 targets, one core each). `start` returns None where forking is not
    safe (not Linux, one core, another Python thread running); `wait` says whether the file was written, and a
    caller whose process failed writes it again itself, so that the error is raised there. make() must not start
    threads (no torch operations: numpy and Python only)."""

    def __init__(self, pid: int):
        self.pid: int | None = pid

    @classmethod
    def start(cls, path: str | Path, make: Callable[[], Iterable[str]]) -> ForkedWrite | None:
        if not helpers_run_beside():
            return None
        return cls(fork_child(lambda: atomic_write_chunks(path, make())))

    def wait(self) -> bool:
        """Wait for the process (once): whether it wrote the file."""
        if self.pid is None:
            return False
        pid, self.pid = self.pid, None
        return waited_ok(pid)


def _built(fig: Any) -> Any:
    """A figure, or what a function of no arguments builds (save_figures)."""
    return fig() if callable(fig) else fig
