"""This instance as a member of the fleet: the Redis link, the L2 tier, the control plane and
the fill leases, started and stopped together."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import secrets
import socket
from collections.abc import Callable

from gateway.config import RedisConfig
from gateway.fleet.control import Control, Event
from gateway.fleet.keys import Keys
from gateway.fleet.lease import Leases
from gateway.fleet.link import RedisLink, RedisUnavailable
from gateway.fleet.notices import Notices
from gateway.generations import Generations
from gateway.metrics import Meter
from gateway.settings import CacheSettings
from gateway.store import Entry, purge
from gateway.store.memory import MemoryStore
from gateway.store.redis import RedisStore
from gateway.store.tiered import TieredStore

log = logging.getLogger("gateway.fleet")

STOP_WAIT = 5.0  # seconds the background tasks get to end once cancelled


def instance_id() -> str:
    """Unique per process, readable in logs: host, pid and a random part (pids recycle)."""
    return f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(3)}"


class Member:
    def __init__(
        self,
        cfg: RedisConfig,
        *,
        memory: MemoryStore,
        generations: Generations,
        settings: CacheSettings,
        clock: Callable[[], float],
        current: Callable[[Entry], bool],
        meter: Meter | None = None,
    ) -> None:
        self.cfg = cfg
        self.instance = instance_id()
        self.memory = memory
        self.link = RedisLink(cfg, meter=meter)
        self.keys = Keys(cfg.prefix)
        self.l2 = RedisStore(self.link, self.keys, settings, clock, keep_stale=cfg.keep_stale)
        self.store = TieredStore(memory, self.l2, current, lambda: self.control.ready)
        self.notices = Notices(cfg, f"{cfg.prefix}:fills", self.link)
        self.leases = Leases(
            self.link, self.keys, self.notices, self.store, settings, ttl=cfg.lease
        )
        self.control = Control(
            self.link,
            self.keys,
            generations,
            instance=self.instance,
            apply=self._apply,
            flush=self._flush,
        )
        self._tasks: list[asyncio.Task[None]] = []

    async def start(self) -> None:
        """Load the generations (or, with Redis away, start on what this process knows and
        load them when it comes back), then follow the purge stream."""
        try:
            await self.control.load()
            await self._check_eviction_policy()
        except RedisUnavailable as exc:
            log.warning("redis unreachable at start (%s): L1 only until it answers", exc)
        loop = asyncio.get_running_loop()
        self._tasks.append(loop.create_task(self.control.follow(), name="purge-stream"))
        self._tasks.append(loop.create_task(self.notices.run(), name="fill-notices"))

    async def _check_eviction_policy(self) -> None:
        """Generations and indexes carry no TTL so that a `volatile-*` policy never evicts
        them; an `allkeys-*` policy could, and a lost generation brings busted content back.
        Managed Redis often refuses CONFIG: then nothing is known and nothing is said."""
        try:
            found = await self.link.run(lambda r: r.config_get("maxmemory-policy"))
        except RedisUnavailable:
            return
        policy = str(next(iter(found.values()), "")) if isinstance(found, dict) else ""
        if policy.startswith("allkeys"):
            log.error(
                "redis maxmemory-policy is %s: it may evict generations and purge indexes"
                " (busted or purged content could come back); use volatile-lru or"
                " volatile-lfu", policy,
            )

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        if self._tasks:
            _, stuck = await asyncio.wait(self._tasks, timeout=STOP_WAIT)
            for task in stuck:
                log.error("fleet task %s did not stop within %.0f s", task.get_name(), STOP_WAIT)
        self._tasks.clear()
        await self.leases.stop()
        await self.store.stop()
        await self.notices.close()
        await self.link.close()

    async def _apply(self, event: Event) -> None:
        """A purge another instance took, on this L1 (L2 was purged by the one that took it)."""
        try:
            soft_at = float(event["soft_at"]) if event.get("soft_at") else None
            items = json.loads(event.get("items", "null"))
            await purge(self.memory, event["tenant"], event["kind"], items, soft_at)
        except (KeyError, ValueError, TypeError) as exc:
            log.error("purge event not understood, ignored: %s (%s)", event, exc)

    async def _flush(self, reason: str) -> None:
        log.warning("flushing this instance's memory tier: %s", reason)
        await self.memory.clear()

    def stats(self) -> dict[str, object]:
        return {
            "instance": self.instance,
            "redis": self.link.stats(),
            "leases": self.leases.stats(),
            "l2": {"hits": self.store.l2_hits, "misses": self.store.l2_misses},
            "purge_stream": {
                "ready": self.control.ready,
                "last_id": self.control.last_id,
                "events": self.control.events,
                "flushes": self.control.flushes,
                "lag_seconds": round(self.control.lag, 4),
            },
        }
