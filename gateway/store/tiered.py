"""L1 (this process's memory) in front of L2 (Redis, shared by the fleet).

A current L1 entry (fresh, not soft-busted or soft-purged) is answered without touching Redis:
that is nearly every hit. Otherwise L2 is asked, and an entry it holds that is newer than L1's
is promoted into L1 (so an entry another instance refreshed replaces a stale local copy). A
fill writes both. Redis failing is a miss on L2, never an error, except for purges (and the
sites purges by path read): those raise `RedisUnavailable`, so the admin API can say it was
not done.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable

from gateway.fleet.link import RedisUnavailable
from gateway.store import Entry
from gateway.store.memory import MemoryStore
from gateway.store.redis import RedisStore

log = logging.getLogger("gateway.store")


class TieredStore:
    def __init__(
        self,
        l1: MemoryStore,
        l2: RedisStore,
        current: Callable[[Entry], bool],
        ready: Callable[[], bool] = lambda: True,
    ) -> None:
        self.l1 = l1
        self.l2 = l2
        self.current = current  # may this L1 entry be answered without asking L2?
        # Has this instance loaded the fleet's generations? Until then its keys may carry
        # generations older than Redis's, and L2 could answer them with busted entries.
        self.ready = ready
        self.l2_hits = 0
        self.l2_misses = 0
        self._background: set[asyncio.Task[None]] = set()

    async def get(self, key: str) -> Entry | None:
        entry = await self.l1.get(key)
        if (entry is not None and self.current(entry)) or not self.ready():
            return entry
        try:
            shared = await self.l2.get(key)
        except RedisUnavailable:
            return entry
        if shared is None or (entry is not None and shared.response_time <= entry.response_time):
            self.l2_misses += 1
            return entry
        self.l2_hits += 1
        await self.l1.put(shared)
        return shared

    async def put(self, entry: Entry, lease: tuple[str, str] | None = None) -> bool:
        """Both tiers; with `lease`, L2 only while the lease is held (see `RedisStore.put`).
        True when either tier kept it."""
        kept = await self.l1.put(entry)
        if not self.ready():
            return kept
        try:
            return await self.l2.put(entry, lease) or kept
        except RedisUnavailable:
            return kept

    async def delete(self, key: str) -> bool:
        deleted = await self.l1.delete(key)
        try:
            return await self.l2.delete(key) or deleted
        except RedisUnavailable:
            return deleted

    async def get_vary(self, primary_key: str) -> tuple[str, ...] | None:
        names = await self.l1.get_vary(primary_key)
        if names is not None or not self.ready():
            return names
        try:
            names = await self.l2.get_vary(primary_key)
        except RedisUnavailable:
            return None
        if names is not None:
            await self.l1.set_vary(primary_key, names)
        return names

    async def set_vary(self, primary_key: str, names: tuple[str, ...]) -> None:
        """L1 now; L2 in the background: a fill records Vary at its head, before its clients
        get a byte, and should not wait on Redis for it."""
        await self.l1.set_vary(primary_key, names)
        task = asyncio.get_running_loop().create_task(self._share_vary(primary_key, names))
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def stop(self) -> None:
        """Background writes end with the instance (the link closes right after)."""
        for task in self._background:
            task.cancel()
        await asyncio.gather(*self._background, return_exceptions=True)

    async def _share_vary(self, primary_key: str, names: tuple[str, ...]) -> None:
        with contextlib.suppress(RedisUnavailable):
            await self.l2.set_vary(primary_key, names)

    # Purges: L2 first (it may fail, and then nothing is claimed), then L1. The count is the
    # larger of the two: the same entries are usually in both.

    async def purge_tenant(self, tenant: str, soft_at: float | None = None) -> int:
        shared = await self.l2.purge_tenant(tenant, soft_at)
        return max(shared, await self.l1.purge_tenant(tenant, soft_at))

    async def purge_prefix(self, tenant: str, url_prefix: str, soft_at: float | None = None) -> int:
        shared = await self.l2.purge_prefix(tenant, url_prefix, soft_at)
        return max(shared, await self.l1.purge_prefix(tenant, url_prefix, soft_at))

    async def purge_tags(self, tenant: str, tags: list[str], soft_at: float | None = None) -> int:
        shared = await self.l2.purge_tags(tenant, tags, soft_at)
        return max(shared, await self.l1.purge_tags(tenant, tags, soft_at))

    async def purge_url(self, tenant: str, url: str, soft_at: float | None = None) -> int:
        shared = await self.l2.purge_url(tenant, url, soft_at)
        return max(shared, await self.l1.purge_url(tenant, url, soft_at))

    async def sites(self, tenant: str) -> list[str]:
        """Both tiers' sites; RedisUnavailable, like a purge, since what it serves is purges
        by path: a partial list would purge some sites and answer as if it had done all."""
        local = await self.l1.sites(tenant)
        return sorted({*local, *await self.l2.sites(tenant)})
