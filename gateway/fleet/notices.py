"""Fill notices: how an instance waiting on another instance's fill learns that it ended.

One pub/sub channel for the fleet, one subscription per process: the holder of a fill lease
publishes the lease's name and how the fill ended (`stored`, `pass`, `released`), and this
process wakes whoever waits on that name here. Pub/sub loses messages while disconnected, so
a notice is only ever a shortcut: waiters also re-check Redis on a capped, jittered backoff
(`gateway.fleet.lease`). In a cluster a PUBLISH reaches every node, so one connection to the
first node is enough.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random

from redis.asyncio import Redis
from redis.exceptions import RedisError

from gateway.config import RedisConfig
from gateway.fleet.link import RedisLink, RedisUnavailable, cancelling, make_client

log = logging.getLogger("gateway.fleet")

POLL = 1.0  # seconds one read of the subscription waits for a message
RETRY_MAX = 1.0  # seconds between two attempts to subscribe again, at most


class Notices:
    def __init__(self, cfg: RedisConfig, channel: str, link: RedisLink) -> None:
        self.channel = channel
        self.link = link  # publishing is a data command: its timeout, its breaker
        plain = cfg.model_copy(update={"cluster": False})  # pub/sub: one node hears them all
        self.client: Redis = make_client(plain, socket_timeout=POLL + 2.0, max_connections=2)
        self.waiting: dict[str, set[asyncio.Future[str]]] = {}
        self.received = 0
        self.subscribed = False

    def wait(self, name: str) -> asyncio.Future[str]:
        """A future resolved with the outcome of the next notice about `name`."""
        future: asyncio.Future[str] = asyncio.get_running_loop().create_future()
        self.waiting.setdefault(name, set()).add(future)
        return future

    def forget(self, name: str, future: asyncio.Future[str]) -> None:
        waiters = self.waiting.get(name)
        if waiters is not None:
            waiters.discard(future)
            if not waiters:
                del self.waiting[name]

    def deliver(self, message: str) -> None:
        """`name outcome`: resolve everyone waiting on the name."""
        name, _, outcome = message.rpartition(" ")
        self.received += 1
        for future in self.waiting.pop(name, ()):
            if not future.done():
                future.set_result(outcome)

    def wake_all(self) -> None:
        """Resolve every waiter with `lost`: each re-checks Redis now instead of sleeping out
        its interval for a notice that may never come."""
        waiting, self.waiting = self.waiting, {}
        for futures in waiting.values():
            for future in futures:
                if not future.done():
                    future.set_result("lost")

    async def publish(self, name: str, outcome: str) -> None:
        """Best effort: a lost notice costs waiters one re-check interval."""
        message = f"{name} {outcome}"
        with contextlib.suppress(RedisUnavailable):
            await self.link.run(lambda r: r.publish(self.channel, message))

    async def run(self) -> None:
        """Listen until cancelled, subscribing again (with backoff) after any failure."""
        delay = 0.05
        while True:
            pubsub = self.client.pubsub(ignore_subscribe_messages=True)
            try:
                await pubsub.subscribe(self.channel)
                self.subscribed, delay = True, 0.05
                while True:
                    message = await pubsub.get_message(timeout=POLL)
                    if message is not None and message.get("type") == "message":
                        data = message["data"]
                        self.deliver(
                            data.decode(errors="replace") if isinstance(data, bytes) else str(data)
                        )
            except (RedisError, OSError) as exc:
                if cancelling():
                    raise
                if self.subscribed:
                    log.warning("fill notices lost (%s): waiters fall back to re-checks", exc)
                self.subscribed = False
                self.wake_all()  # notices may be lost now: everyone re-checks at once
            finally:
                with contextlib.suppress(RedisError, OSError):
                    await pubsub.aclose()
            await asyncio.sleep(delay * random.uniform(0.5, 1.5))
            delay = min(RETRY_MAX, delay * 2)

    async def close(self) -> None:
        with contextlib.suppress(RedisError, OSError):
            await self.client.aclose()
