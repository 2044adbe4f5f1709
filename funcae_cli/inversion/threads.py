"""Independent chunks of a batched CPU computation on a few Python threads, each with its share of torch's threads.

Chunks of a few dozen targets keep their tensors in cache (amortized.CHUNK_ELEMENTS), but their element-wise
operations are too short for torch's intra-op parallelism (it splits an operation only above ~32k elements), so one
chunk at a time uses one core for most of its work. Several chunks at once, each on its own thread with torch's
threads divided among them, use them all: torch releases the GIL inside its kernels. A chunk's numbers do not depend
on which thread runs it or what runs beside it (every target's draws come from its own seed: seeding.py).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

import torch

MAX_WORKERS = 4  # beyond this the chunks' Python (which holds the GIL) is what they wait for

T = TypeVar("T")
R = TypeVar("R")


def chunk_map(fn: Callable[[T], R], items: Iterable[T], device: torch.device) -> Iterator[R]:
    """fn over items, results in the items' order: on a CPU with two or more torch threads, up to MAX_WORKERS at a
    time (torch's threads shared among them, restored after); else one after another. fn runs in a worker thread:
    it sets what is thread-local itself (torch.no_grad)."""
    items = list(items)
    threads = torch.get_num_threads()
    workers = min(threads, MAX_WORKERS, len(items))
    if device.type != "cpu" or workers < 2:
        yield from map(fn, items)
        return
    torch.set_num_threads(max(1, threads // workers))
    pool = ThreadPoolExecutor(workers, thread_name_prefix="funcae-chunk")
    try:
        yield from pool.map(fn, items)
    finally:
        pool.shutdown(wait=True, cancel_futures=True)  # on an error (or Ctrl-C) the queued chunks never start
        torch.set_num_threads(threads)
