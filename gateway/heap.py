"""The C heap under the cache: big bodies in mappings of their own, freed pages given back.

The store's byte bound counts what entries hold, but the process's resident memory is what
the C allocator keeps. Two habits of glibc's malloc let it grow far past the bound when the
mix of sizes changes (bench/memory.py: a cache full of small objects, then of 1 MiB ones, held
594 MiB for 256 MiB of entries):

- Its threshold for serving an allocation from a mapping of its own (`mmap`) starts at 128 KiB
  but rises to the size of any such block freed (up to 32 MiB): once the first large body is
  evicted, every later one comes from the main heap, where a freed block can only be reused,
  never returned, while anything above it stays allocated.
- Pages freed in the middle of the heap (the bodies of evicted small entries, between objects
  that live on) stay resident until `malloc_trim` gives them back.

So `tune` fixes the threshold at 128 KiB (large bodies are mapped, and unmapped when freed),
and `Trimmer` calls `malloc_trim(0)` in a thread once the store has let go of a good share of
its bound since the last trim. A trim walks the heap's free blocks (a few ms for a heap of a
few hundred MiB); the thread keeps it off the event loop, which at worst waits on the
allocator's lock that long. Elsewhere than glibc both do nothing.
"""

from __future__ import annotations

import asyncio
import ctypes
import ctypes.util
from collections.abc import Callable
from typing import Protocol

MMAP_THRESHOLD = 128 * 1024  # glibc's own starting value, kept from then on
_M_MMAP_THRESHOLD = -3  # mallopt's parameter number (malloc.h)
TRIM_SHARE = 8  # trim after the store released 1/8 of its bound...
TRIM_AT_LEAST = 16 * 1024 * 1024  # ...and at least this many bytes


def _libc() -> ctypes.CDLL | None:
    """glibc, if this process runs on it (its malloc is what `tune` and `trim` speak to)."""
    name = ctypes.util.find_library("c")
    if name is None:
        return None
    try:
        libc = ctypes.CDLL(name)
        libc.gnu_get_libc_version  # noqa: B018  (only glibc has it)
        libc.mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
        libc.malloc_trim.argtypes = (ctypes.c_size_t,)
    except (OSError, AttributeError):
        return None
    return libc


_LIBC = _libc()


def tune() -> bool:
    """Fix malloc's mmap threshold (see the module's docstring); False where it cannot."""
    return _LIBC is not None and _LIBC.mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD) == 1


def trim() -> bool:
    """Give the heap's free pages back to the system; True if any were."""
    return _LIBC is not None and _LIBC.malloc_trim(0) == 1


class Releasing(Protocol):
    """A store that counts the bytes of the entries it let go of (a running total)."""

    max_bytes: int
    released: int


class Trimmer:
    """Trims once the store has released `threshold()` bytes since the last trim: an eighth of
    its bound (as it is now: a reload may change it), at least TRIM_AT_LEAST. `check` is cheap;
    the caller runs it now and then."""

    def __init__(self, store: Releasing, trimmer: Callable[[], bool] = trim) -> None:
        self.store = store
        self.trimmer = trimmer
        self.trims = 0
        self._at = store.released
        self._running: asyncio.Future[bool] | None = None

    def threshold(self) -> int:
        return max(TRIM_AT_LEAST, self.store.max_bytes // TRIM_SHARE)

    def due(self) -> bool:
        return self._running is None and self.store.released - self._at >= self.threshold()

    async def check(self) -> bool:
        """Trim in a thread if due; True if a trim ran."""
        if not self.due():
            return False
        self._at = self.store.released
        self._running = asyncio.get_running_loop().run_in_executor(None, self.trimmer)
        try:
            await self._running
        finally:
            self._running = None
        self.trims += 1
        return True
