"""threads.chunk_map: chunks on worker threads where torch has two or more, one after another otherwise; results in
order, torch's thread count restored, an error stops the chunks not yet started."""

from __future__ import annotations

import threading
import time

import pytest
import torch

from funcae_cli.inversion.threads import MAX_WORKERS, chunk_map, lanes

from .conftest import torch_threads

CPU = torch.device("cpu")


def _where(i: int) -> tuple[int, str, int]:
    time.sleep(0.02 + 0.01 * (i % 3))  # chunks finish out of order, none so fast that one thread takes them all
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


def _counted(lo: int, hi: int):
    for i in range(lo, hi):
        time.sleep(0.002 * (i % 4))
        yield i, threading.current_thread().name, torch.get_num_threads(), torch.is_grad_enabled()


def test_lanes_split_the_targets_and_stream_every_item_once() -> None:
    with torch_threads(2), torch.no_grad():
        out = list(lanes(_counted, 25, CPU))
        assert torch.get_num_threads() == 2
    assert sorted(i for _, (i, *_) in out) == list(range(25))
    assert {lo for lo, _ in out} == {0, 12}  # two contiguous lanes, [0, 12) and [12, 25)
    assert all((lo == 0) == (i < 12) for lo, (i, *_) in out)
    names = {name for _, (_, name, _, _) in out}
    assert len(names) == 2 and all(name.startswith("funcae-lane") for name in names)
    assert {(threads, grad) for _, (_, _, threads, grad) in out} == {(1, False)}  # one torch thread, no_grad


@pytest.mark.parametrize("n", [1, 0])
def test_one_target_or_none_runs_on_this_thread_with_the_lanes_share_of_threads(n) -> None:
    with torch_threads(2):
        out = list(lanes(_counted, n, CPU))
    assert out == [(0, (i, threading.current_thread().name, 1, True)) for i in range(n)]


def test_an_error_in_a_lane_is_raised_and_the_other_lane_stops() -> None:
    made: list[int] = []

    def run(lo: int, hi: int):
        for i in range(lo, hi):
            if i == 3:
                raise ValueError("target 3 failed")
            made.append(i)
            time.sleep(0.01)
            yield i

    with torch_threads(2):
        with pytest.raises(ValueError, match="target 3 failed"):
            list(lanes(run, 200, CPU))
        assert torch.get_num_threads() == 2
    time.sleep(0.3)
    assert len(made) < 20  # the lane of 100-199 stopped at its next item, not at its end
