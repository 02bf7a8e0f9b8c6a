"""Single flight per key: one fill runs, every other request for the key joins it.

A fill announces its `head` as soon as the origin's answer is known (before its body has
arrived), so that joiners can start streaming it; the task's result is the fill's final state.
The fill runs in a task this module owns, so a leader whose client disconnects (aiohttp cancels
its handler) never cancels the fill the others wait on. Joiners are woken by the announcement,
not by polling.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Generic, TypeVar

T = TypeVar("T")


class FillAbandoned(Exception):
    """The fill was cancelled before it answered (nobody read it, or the gateway stops)."""


class Flight(Generic[T]):
    """One running fill: `head` is its first answer, `task` runs it to the end."""

    def __init__(self, key: str) -> None:
        self.key = key
        self.head: asyncio.Future[T] = asyncio.get_running_loop().create_future()
        self.task: asyncio.Task[T] | None = None
        self.waiting = 0  # clients waiting for the answer (they will read the body from its start)

    def announce(self, value: T) -> None:
        """The fill's answer is known: joiners may start on it."""
        if not self.head.done():
            self.head.set_result(value)

    def latest(self) -> T:
        """The fill's final state if it has finished, else what it announced."""
        task = self.task
        if task is not None and task.done() and not task.cancelled() and task.exception() is None:
            return task.result()
        return self.head.result()

    async def wait(self, limit: float | None = None) -> T:
        """The fill's answer, without letting this caller's cancellation or timeout cancel it;
        the fill's exception if it failed before answering. The caller counts as `waiting`
        until it returns: what it does next with the answer must not await before it has
        started reading the body."""
        self.waiting += 1
        try:
            async with asyncio.timeout(limit):
                await asyncio.shield(self.head)
        finally:
            self.waiting -= 1
        return self.latest()

    def _finished(self, task: asyncio.Task[T]) -> None:
        if task.cancelled():
            if not self.head.done():  # joiners must not take the fill's end for their own
                self.head.set_exception(FillAbandoned(self.key))
        elif task.exception() is not None:
            if not self.head.done():
                self.head.set_exception(task.exception())  # type: ignore[arg-type]
        else:
            self.announce(task.result())
        self.head.exception()  # a failure nobody joined must not log "never retrieved"


class SingleFlight(Generic[T]):
    def __init__(self) -> None:
        self.running: dict[str, Flight[T]] = {}  # the joinable fills, by key

    def in_flight(self, key: str) -> bool:
        return key in self.running

    def __len__(self) -> int:
        return len(self.running)

    def start(
        self, key: str, fill: Callable[[Flight[T]], Awaitable[T]]
    ) -> tuple[Flight[T], bool]:
        """The running fill for `key`, starting `fill(flight)` when there is none. True: this
        call leads (it started the fill)."""
        flight = self.running.get(key)
        if flight is not None:
            return flight, False
        flight = self.run_alone(key, fill)
        self.running[key] = flight
        return flight, True

    def run_alone(self, key: str, fill: Callable[[Flight[T]], Awaitable[T]]) -> Flight[T]:
        """A fill that nobody else joins (it still runs in its own task, so that it can be
        streamed while it runs and finishes even if its caller goes away)."""
        flight = Flight[T](key)

        async def run() -> T:
            return await fill(flight)

        task = asyncio.get_running_loop().create_task(run(), name=f"fill:{key}")
        flight.task = task
        task.add_done_callback(lambda t: self._forget(flight, t))
        return flight

    def _forget(self, flight: Flight[T], task: asyncio.Task[T]) -> None:
        if self.running.get(flight.key) is flight:
            del self.running[flight.key]
        flight._finished(task)
