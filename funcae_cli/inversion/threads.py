"""Batched CPU work split over a few Python threads, each with its share of torch's threads.

A batch's element-wise operations on a few dozen targets are too short for torch's intra-op parallelism (it splits
an operation only above ~32k elements), so one batch at a time uses one core for most of its work. Several at once,
each on its own thread with torch's threads divided among them, use them all: torch releases the GIL inside its
kernels. Two shapes of it:
- `chunk_map`: independent chunks (the amortized posterior's), results in order;
- `lanes`: a long computation over n targets (mcmc's pools at fixed steps) split into contiguous lanes, each
  lane's results streamed as they come.
The work runs with torch's threads divided among the workers whether or not a batch is large enough to split, so a
target computed alone and one computed among others run their arithmetic on as many threads; every target's
random numbers come from its own seed (seeding.py), so its numbers do not depend on which thread ran it or what
ran beside it.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from typing import TypeVar

import torch

MAX_WORKERS = 4  # beyond this the batches' Python (which holds the GIL) is what they wait for

T = TypeVar("T")
R = TypeVar("R")


def workers(device: torch.device) -> int:
    """How many batches run at once on `device`: up to MAX_WORKERS on a CPU with that many torch threads, else 1."""
    return 1 if device.type != "cpu" else max(1, min(torch.get_num_threads(), MAX_WORKERS))


@contextmanager
def _shared(k: int) -> Iterator[None]:
    """torch's threads divided among k workers inside the block, restored after."""
    threads = torch.get_num_threads()
    torch.set_num_threads(max(1, threads // k))
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def _in_callers_grad_mode(fn: Callable[..., R]) -> Callable[..., R]:
    """fn run with the calling thread's grad mode (thread-local in torch: a new thread starts with it enabled)."""
    grad = torch.is_grad_enabled()

    def run(*args):
        with torch.set_grad_enabled(grad):
            return fn(*args)

    return run


def chunk_map(fn: Callable[[T], R], items: Iterable[T], device: torch.device) -> Iterator[R]:
    """fn over items, results in the items' order, up to `workers(device)` at a time (on worker threads, in the
    caller's grad mode)."""
    items, fn = list(items), _in_callers_grad_mode(fn)
    k = workers(device)
    with _shared(k):
        if min(k, len(items)) == 1:
            yield from map(fn, items)
            return
        pool = ThreadPoolExecutor(min(k, len(items)), thread_name_prefix="funcae-chunk")
        try:
            yield from pool.map(fn, items)
        finally:
            pool.shutdown(wait=True, cancel_futures=True)  # on an error (or Ctrl-C) the queued chunks never start


_DONE = object()


class _Failed:
    def __init__(self, error: BaseException):
        self.error = error


def lanes(run: Callable[[int, int], Iterator[R]], n: int, device: torch.device) -> Iterator[tuple[int, R]]:
    """range(n) split into up to `workers(device)` contiguous lanes [lo, hi), run(lo, hi) iterated on each lane's
    thread; yields (lo, item) as the lanes produce them (each lane's in its order, the lanes' interleaved). A lane
    waits while its last item is not taken (memory: one item in hand per lane). Lanes run in the caller's grad mode.
    An error in a lane is raised here; then (or when the consumer stops: an error of its own, Ctrl-C) the other
    lanes stop at their next item, unwaited for (daemon threads: a process that exits does not wait for them)."""
    w = workers(device)
    k = min(w, max(1, n))
    with _shared(w):
        if k == 1:
            yield from ((0, item) for item in run(0, n))
            return
        out: queue.Queue = queue.Queue()
        stop = threading.Event()

        @_in_callers_grad_mode
        def lane(lo: int, hi: int) -> None:
            try:
                for item in run(lo, hi):
                    taken = threading.Event()
                    out.put((lo, item, taken))
                    while not (taken.wait(0.1) or stop.is_set()):
                        pass
                    if stop.is_set():
                        return
            except BaseException as e:  # noqa: BLE001 (raised again in the consumer's thread)
                out.put((lo, _Failed(e), None))
            finally:
                out.put((lo, _DONE, None))

        cuts = [n * i // k for i in range(k + 1)]
        threads = [threading.Thread(target=lane, args=(cuts[i], cuts[i + 1]), name=f"funcae-lane_{i}", daemon=True)
                   for i in range(k)]  # fmt: skip
        for t in threads:
            t.start()
        try:
            running = k
            while running:
                lo, item, taken = out.get()
                if item is _DONE:
                    running -= 1
                    continue
                if isinstance(item, _Failed):
                    raise item.error
                taken.set()
                yield lo, item
        finally:
            stop.set()
        for t in threads:  # every lane has finished
            t.join()
