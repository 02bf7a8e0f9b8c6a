"""gateway.heap: malloc tuned and trimmed so that memory the cache let go of leaves the process."""

from __future__ import annotations

import asyncio
import ctypes.util
import random
from dataclasses import dataclass
from pathlib import Path

import pytest

from gateway import heap
from gateway.heap import TRIM_AT_LEAST, Trimmer

GLIBC = heap._LIBC is not None
MIB = 1 << 20


@dataclass
class FakeStore:
    max_bytes: int
    released: int = 0


def rss_mib() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")


async def test_a_trim_runs_once_an_eighth_of_the_bound_was_released_since_the_last() -> None:
    store = FakeStore(max_bytes=256 * MIB)
    calls: list[int] = []
    trimmer = Trimmer(store, trimmer=lambda: calls.append(store.released) is None)
    store.released = 32 * MIB - 1
    assert not await trimmer.check()
    store.released = 32 * MIB
    assert await trimmer.check() and calls == [32 * MIB]
    store.released += 31 * MIB
    assert not await trimmer.check()  # counted from the last trim
    store.max_bytes = 64 * MIB  # a reload: the threshold follows the bound (but not below 16 MiB)
    assert trimmer.threshold() == TRIM_AT_LEAST
    assert await trimmer.check() and trimmer.trims == 2


async def test_a_check_while_a_trim_runs_starts_no_second_one() -> None:
    store = FakeStore(max_bytes=16 * MIB)
    release = asyncio.Event()
    started = 0

    def slow_trim() -> bool:
        nonlocal started
        started += 1
        asyncio.run_coroutine_threadsafe(release.wait(), loop).result(5)
        return True

    loop = asyncio.get_running_loop()
    trimmer = Trimmer(store, trimmer=slow_trim)
    store.released = 100 * MIB
    first = asyncio.create_task(trimmer.check())
    await asyncio.sleep(0.05)
    assert not trimmer.due() and not await trimmer.check()
    release.set()
    assert await first and started == 1


@pytest.mark.skipif(not GLIBC or ctypes.util.find_library("c") is None, reason="glibc only")
def test_pages_freed_between_survivors_go_back_to_the_system_on_a_trim() -> None:
    assert heap.tune()
    rnd = random.Random(3)
    blobs = [rnd.randbytes(rnd.randint(600, 2000)) for _ in range(96 * 1024)]  # ~120 MiB
    survivors = blobs[::64]  # one in every ~80 KiB stays: the heap's top cannot shrink
    del blobs
    before = rss_mib()
    assert heap.trim()
    after = rss_mib()
    assert before - after > 60, (before, after)
    assert len(survivors) == 1536
