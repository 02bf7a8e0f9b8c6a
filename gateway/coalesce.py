"""Single flight per key: one fill runs, every other request for the key waits for its result.

The fill runs in a task this module owns, so a leader whose client disconnects (aiohttp cancels
its handler) never cancels the fill the others wait on. Waiters are woken by the task's
completion, not by polling.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Generic, TypeVar

T = TypeVar("T")


class SingleFlight(Generic[T]):
    def __init__(self) -> None:
        self._fills: dict[str, asyncio.Task[T]] = {}
        self.collapsed = 0

    def in_flight(self, key: str) -> bool:
        return key in self._fills

    def __len__(self) -> int:
        return len(self._fills)

    def start(self, key: str, fill: Callable[[], Awaitable[T]]) -> tuple[asyncio.Task[T], bool]:
        """The running fill for `key`, starting it when there is none. True: this call leads."""
        task = self._fills.get(key)
        if task is not None:
            self.collapsed += 1
            return task, False

        async def run() -> T:
            return await fill()

        task = asyncio.get_running_loop().create_task(run(), name=f"fill:{key}")
        self._fills[key] = task
        task.add_done_callback(lambda t: self._forget(key, t))
        return task, True

    def _forget(self, key: str, task: asyncio.Task[T]) -> None:
        if self._fills.get(key) is task:
            del self._fills[key]
        if not task.cancelled():
            task.exception()  # a fill nobody awaited must not log "exception never retrieved"

    async def wait(self, task: asyncio.Task[T], limit: float | None = None) -> T:
        """Await a fill without letting this caller's cancellation or timeout cancel it."""
        if limit is None:
            return await asyncio.shield(task)
        async with asyncio.timeout(limit):
            return await asyncio.shield(task)
