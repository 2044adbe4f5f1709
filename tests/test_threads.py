"""threads.chunk_map: chunks on worker threads where torch has two or more, one after another otherwise; results in
order, torch's thread count restored, an error stops the chunks not yet started."""

from __future__ import annotations

import threading
import time

import pytest
import torch

from funcae_cli.inversion.threads import MAX_WORKERS, chunk_map

from .conftest import torch_threads

CPU = torch.device("cpu")


def _where(i: int) -> tuple[int, str, int]:
    time.sleep(0.01 * (i % 3))  # chunks finish out of order
    return i, threading.current_thread().name, torch.get_num_threads()


def test_chunks_run_on_worker_threads_with_torchs_threads_shared_and_restored() -> None:
    with torch_threads(2):
        out = list(chunk_map(_where, range(12), CPU))
        assert torch.get_num_threads() == 2  # restored
    assert [i for i, _, _ in out] == list(range(12))  # the items' order
    names = {name for _, name, _ in out}
    assert all(name.startswith("funcae-chunk") for name in names) and len(names) == 2
    assert {n for _, _, n in out} == {1}  # two workers, one torch thread each
    with torch_threads(2 * MAX_WORKERS):
        out = list(chunk_map(_where, range(3 * MAX_WORKERS), CPU))
    assert len({name for _, name, _ in out}) == MAX_WORKERS and {n for _, _, n in out} == {2}


@pytest.mark.parametrize(("threads", "device"), [(1, "cpu"), (2, "meta")])
def test_one_torch_thread_or_another_device_runs_the_chunks_in_order_on_this_thread(threads, device) -> None:
    with torch_threads(threads):
        out = list(chunk_map(_where, range(5), torch.device(device)))
        assert torch.get_num_threads() == threads
    assert out == [(i, threading.current_thread().name, threads) for i in range(5)]


def test_an_error_in_a_chunk_is_raised_and_the_queued_chunks_never_start() -> None:
    started: list[int] = []

    def fn(i: int) -> int:
        started.append(i)
        if i == 1:
            raise ValueError("chunk 1 failed")
        time.sleep(0.05)
        return i

    with torch_threads(2):
        with pytest.raises(ValueError, match="chunk 1 failed"):
            list(chunk_map(fn, range(50), CPU))
        assert torch.get_num_threads() == 2  # restored after the error too
    time.sleep(0.2)
    assert len(started) < 10  # not all 50: the queue was cancelled
