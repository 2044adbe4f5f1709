"""Native CPU kernels (the *.c files of SOURCES: one library), compiled on first use and cached.

`kernels()` returns the loaded library, or raises `NativeUnavailable` saying why not: no C compiler,
a failed compile, or `FUNCAE_NATIVE=0` in the environment. Callers fall back to torch code, so a
machine without a compiler trains exactly as before, only slower (`funcae train` reports the engine).

The shared object is built with `$CC` (default `cc`) and `-march=native`, so it is cached per CPU:
`<cache>/native-<key>.so`, where the key hashes the sources, the flags, the compiler and the CPU's
feature flags (a home directory shared by different machines gets one file per machine). The
cache is `$FUNCAE_CACHE_DIR`, else `$XDG_CACHE_HOME/funcae`, else `~/.cache/funcae`. The compile
(~0.5 s) writes a temporary file in that folder and renames it into place, so concurrent runs
never load a half-written library.

Threads: where torch's own OpenMP runtime (libgomp, as in torch's Linux wheels) is already in the
process, the kernels are built with `-fopenmp`; the loader then binds them to that same runtime by
its soname, so they run on torch's thread pool (`torch.set_num_threads` sets both) and no second
pool competes for the cores. Anywhere else (another runtime, no runtime, a compiler without
OpenMP, or `FUNCAE_NATIVE_THREADS=0`) they are built single-threaded; the kernels' results are the same
bits either way (mlp.c, "Threads"). A whole step also runs torch's wide products (MKL), which Intel does
not promise to give the same bits on different thread counts: the step agrees to float32 rounding.
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import platform
import shlex
import subprocess
import tempfile
import threading
from pathlib import Path

NAMES = ("mlp.c", "rqs.c", "tables.c", "ranks.c", "rotation.c", "counters.c")
SOURCES = tuple(Path(__file__).with_name(name) for name in NAMES)
HEADERS = tuple(Path(__file__).with_name(name) for name in ("cephes.h", "loglog.h"))  # included: hashed with them
# -fno-math-errno: sqrtf as one vector instruction (no libm call to set errno); libm only for per-row constants
FLAGS = (
    "-O3",
    "-march=native",
    "-fno-trapping-math",
    "-fno-math-errno",
    "-ffp-contract=fast",
    "-std=c11",
    "-shared",
    "-fPIC",
)
OPENMP = ("-fopenmp",)
LIBS = ("-lm",)  # rotation.c's per-row constants (cbrt, log1p in double); after the sources, as ld wants
ABI = 8  # FAE_ABI in mlp.c

_P, _I32, _I64, _F, _D = ctypes.c_void_p, ctypes.c_int32, ctypes.c_int64, ctypes.c_float, ctypes.c_double
SIGNATURES: dict[str, tuple[list, type | None]] = {
    "fae_abi": ([], _I32),
    "fae_threads": ([], _I32),
    "fae_tanh": ([_P, _I64], None),
    "fae_chain_forward": ([_I32, _I64, _I64, _P, _P, _P, _P, _P, _P, _I64, _P], None),
    "fae_chain_backward": ([_I32, _I64, _I64, _P, _P, _P, _P, _P, _P, _P, _I64, _I64, _P, _P, _P], None),
    "fae_residual": ([_P, _P, _I64, _I64, _P, _F], _D),
    "fae_gram_prepare": ([_P, _I64, _P, _P, _P, _P, _I64, _I64, _I64, _P, _P], None),
    "fae_project": ([_P, _P, _I64, _I64, _P, _I64, _P, _P, _P], _D),
    "fae_gram_forward": ([_I64, _I64, _I64, _P, _P, _I64, _P, _F, _P], _D),
    "fae_gram_backward": ([_I64, _I64, _I64, _I64, _P, _P, _P, _P, _F, _P, _P, _I64, _P], _D),
    "fae_sumsq": ([_P, _I64], _D),
    "fae_sse": ([_P, _P, _I64], _D),
    "fae_row_sumsq": ([_P, _I64, _I64, _P], None),
    "fae_rqs": ([_I32, _I64, _I64, _I32, _P, _I64, _I32, _P, _P, _P, _F, _F, _F], None),
    "fae_loglog_table": ([_P, _P, _I64, _P, _P, _P, _P, _I32, _F, _F, _F, _F], _I64),
    "fae_uniform": ([_P, _I64, _I64, _I64, _P], None),
    "fae_rank_scores": ([_P, _I64, _I64, _P, _P, _P], _I32),
    "fae_rotation_chi2": ([_P, _I64, _P, _P, _P, _P, _P, _P, _P, _P, _P, _P, _I32, _F, _F, _F, _F, _P, _P], _I64),
}


class NativeUnavailable(RuntimeError):
    """The native kernels cannot be used here; the message says why."""


_loaded: dict[str, ctypes.CDLL | NativeUnavailable] = {}
_loading = threading.Lock()


def cache_dir() -> Path:
    if os.environ.get("FUNCAE_CACHE_DIR"):
        return Path(os.environ["FUNCAE_CACHE_DIR"])
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "funcae"


def compiler() -> list[str]:
    return shlex.split(os.environ.get("CC") or "cc")


def _turned_off(var: str) -> bool:
    """Whether the environment switches `var` off (0, false, no or off; unset means on)."""
    return os.environ.get(var, "1").strip().lower() in ("0", "false", "no", "off")


def _torch_libgomp() -> bool:
    """Whether the process already maps a libgomp (torch's OpenMP runtime on Linux): only then does a
    -fopenmp build join an existing thread pool instead of starting its own."""
    if _turned_off("FUNCAE_NATIVE_THREADS"):
        return False
    try:
        maps = Path("/proc/self/maps").read_text()
    except OSError:
        return False
    return any(line.rstrip().endswith("libgomp.so.1") for line in maps.splitlines())


def flags(threads: bool) -> tuple[str, ...]:
    return FLAGS + OPENMP if threads else FLAGS


def _cpu_fingerprint() -> str:
    """The CPU's feature flags (what -march=native compiles for), or the platform's CPU name."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith(("flags", "Features")):
                return line
    except OSError:
        pass
    return platform.processor() or platform.machine()


def library_path(threads: bool = False) -> Path:
    key = hashlib.sha256()
    for part in (" ".join(flags(threads) + LIBS), " ".join(compiler()), _cpu_fingerprint()):
        key.update(part.encode() + b"\0")
    for source in (*SOURCES, *HEADERS):
        key.update(source.read_bytes())
    return cache_dir() / f"native-{key.hexdigest()[:16]}.so"


def _compile(target: Path, threads: bool) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=".native-", suffix=".so.tmp")
    os.close(fd)
    cmd = [*compiler(), *flags(threads), "-o", tmp, *map(str, SOURCES), *LIBS]
    try:
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
        if r.returncode != 0:
            detail = (r.stderr or r.stdout).strip().splitlines() or [f"exit {r.returncode}"]
            raise NativeUnavailable(f"`{' '.join(cmd[:2])} ...` failed: {detail[0]}")
        os.replace(tmp, target)
    except FileNotFoundError:
        raise NativeUnavailable(f"no C compiler: {compiler()[0]!r} not found (set CC)") from None
    except subprocess.TimeoutExpired:
        raise NativeUnavailable(f"{compiler()[0]} took over 120 s") from None
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def _build(threads: bool) -> ctypes.CDLL:
    path = library_path(threads)
    try:
        if not path.exists():
            _compile(path, threads)
        return ctypes.CDLL(str(path))
    except OSError as e:
        raise NativeUnavailable(f"cannot build or load {path}: {e}") from None


def _load() -> ctypes.CDLL:
    if _turned_off("FUNCAE_NATIVE"):
        raise NativeUnavailable("turned off by FUNCAE_NATIVE=0")
    threads = _torch_libgomp()
    try:
        lib = _build(threads)
    except NativeUnavailable:
        if not threads:
            raise
        threads = False  # a compiler without OpenMP: single-threaded kernels
        lib = _build(False)
    lib.threaded = threads
    for name, (args, res) in SIGNATURES.items():
        fn = getattr(lib, name)
        fn.argtypes, fn.restype = args, res
    if lib.fae_abi() != ABI:
        raise NativeUnavailable(f"{lib._name} has ABI {lib.fae_abi()}, expected {ABI}")
    return lib


def _library() -> ctypes.CDLL | NativeUnavailable:
    """The library, or why not: loaded (built if need be) on the first call in a process, one build at a time
    where threads ask at once; after that a dictionary read, without the lock (the samplers ask per step)."""
    got = _loaded.get("lib")
    if got is not None:
        return got
    with _loading:
        if "lib" not in _loaded:
            try:
                _loaded["lib"] = _load()
            except NativeUnavailable as e:
                _loaded["lib"] = e.with_traceback(None)
    return _loaded["lib"]


def kernels() -> ctypes.CDLL:
    """The loaded kernels (built on the first call in a process, loaded from the cache after), or NativeUnavailable.
    A fresh exception each time: raising the cached one again would chain every caller's frames onto its traceback,
    and with them their tensors, for the life of the process (FUNCAE_NATIVE=0's samplers grew to 24 GB that way)."""
    got = _library()
    if isinstance(got, NativeUnavailable):
        raise NativeUnavailable(str(got))
    return got


def kernels_or_none() -> ctypes.CDLL | None:
    """The loaded kernels, or None where they cannot be used here (for callers whose torch code computes the same:
    the reason is not theirs to report)."""
    got = _library()
    return None if isinstance(got, NativeUnavailable) else got


def reset() -> None:
    """Forget the loaded library (tests change the environment and load again)."""
    _loaded.clear()
