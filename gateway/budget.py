"""A concurrency budget per origin: a cap, a bounded queue and a bounded wait."""

from __future__ import annotations

import asyncio

QUEUE_FULL = "queue_full"  # `max_queue` callers already waited: refused at once
QUEUE_TIMEOUT = "queue_timeout"  # waited `max_wait` for a slot in vain


class Budget:
    """A concurrency cap with a bounded queue and a bounded wait: excess load fails fast."""

    def __init__(self, limit: int, max_queue: int, max_wait: float) -> None:
        self.limit = limit
        self.max_queue = max_queue
        self.max_wait = max_wait
        self.in_use = 0
        self.in_use_max = 0
        self.rejected = 0
        self.refusal = ""  # why the last refused `acquire` was: QUEUE_FULL or QUEUE_TIMEOUT
        self._sem = asyncio.Semaphore(limit)
        self._queued = 0

    async def acquire(self) -> bool:
        """Take a slot: at once when one is free, else queue for at most `max_wait`, unless
        `max_queue` callers already wait, in which case refuse at once."""
        if not self._sem.locked():
            await self._sem.acquire()  # a free slot is taken without yielding to the loop
        else:
            if self._queued >= self.max_queue:
                return self._refuse(QUEUE_FULL)
            self._queued += 1
            try:
                async with asyncio.timeout(self.max_wait):
                    await self._sem.acquire()
            except TimeoutError:
                return self._refuse(QUEUE_TIMEOUT)
            finally:
                self._queued -= 1
        self.in_use += 1
        self.in_use_max = max(self.in_use_max, self.in_use)
        return True

    def _refuse(self, why: str) -> bool:
        self.rejected += 1
        self.refusal = why
        return False

    @property
    def queued(self) -> int:
        """Callers waiting for a slot now."""
        return self._queued

    def release(self) -> None:
        self.in_use -= 1
        self._sem.release()
