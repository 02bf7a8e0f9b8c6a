"""In-process tier: byte-bounded, W-TinyLFU per tenant, with quotas and purge indexes.

Every method changes the store only in whole-entry steps (`_insert` / `_remove`, the only two
places that change an entry), so under asyncio no other task sees a half-done mutation; a purge
of many entries yields to the event loop between slices of them.

Which entries stay is decided per *space* (`admission.TinyLfu`): each tenant with a quota has
its own, bounded by the quota; tenants without one share a space bounded by `max_bytes`. A scan
of one-off keys in one tenant therefore cannot push out that tenant's hot entries, nor anybody
else's. Quotas may add up to more than `max_bytes`: the store's own bound then evicts the least
recently used entry of all.
"""

from __future__ import annotations

import asyncio
from collections import Counter, OrderedDict
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from itertools import islice
from typing import Any

from sortedcontainers import SortedList

from gateway.key import escape_part
from gateway.store import Entry, site_of, url_prefixes
from gateway.store.admission import TinyLfu

# Charged per Vary record on top of its key and names (dict slot, tuple, strings' headers).
VARY_OVERHEAD = 64
PURGE_SLICE = 1000  # entries a purge removes before letting other requests run
# Why an entry was evicted (`on_evict`): the store's size bound or its tenant's quota.
SIZE = "size"
QUOTA = "quota"


@dataclass(slots=True)
class _Slot:
    """An entry with the size it was charged at (so later mutation of the entry cannot skew the
    byte count) and the space it was admitted to (a reload may move its tenant to another)."""

    entry: Entry
    size: int
    space: TinyLfu


@dataclass(slots=True)
class _Tenant:
    """A tenant's keys, bytes, the sites (`scheme://host`) its entries are on, its URLs in order
    (purges by prefix are a range, not a scan) and its own W-TinyLFU space if it has a quota.
    Exists only while it holds entries, so tenant names a client invents cost nothing once
    their entries are gone."""

    keys: dict[str, None] = field(default_factory=dict)
    bytes: int = 0
    sites: Counter[str] = field(default_factory=Counter)
    urls: SortedList = field(default_factory=SortedList)
    space: TinyLfu | None = None


def _no_quota(tenant: str) -> int | None:
    return None


def _starting_with(
    urls: SortedList, prefix: str, after: str = "", *, inclusive: bool = True
) -> Iterator[str]:
    """The URLs of a sorted list that start with `prefix`, in order, from `after` on (and past
    it unless `inclusive`), in O(log n + matches)."""
    lowest, inclusive = (after, inclusive) if after > prefix else (prefix, True)
    for url in urls.irange(minimum=lowest, inclusive=(inclusive, True)):
        if not url.startswith(prefix):
            return
        yield url


def _unescape(part: str) -> str:
    """The inverse of `gateway.key.escape_part`."""
    return part.replace("%7C", "|").replace("%25", "%") if "%" in part else part


def _index_names(entry: Entry) -> list[str]:
    return ["u:" + entry.url, *("t:" + tag for tag in entry.tags)]


class MemoryStore:
    """Byte-bounded store implementing `Store`: O(1) get and put, W-TinyLFU per space.

    A tenant over its quota loses its own least valuable entries first, so a noisy tenant cannot
    push the others out beyond what the global bound forces. `on_evict` is called for entries
    pushed out by a bound (not deletes, purges, or a newcomer that was not admitted), after the
    store is consistent again, with the bound: `SIZE` (max_bytes) or `QUOTA` (the tenant's).

    Vary records live in a separate LRU with its own byte budget (`vary_max_bytes`, default
    max_bytes // 16, at least 64 KiB) rather than inside `max_bytes`: that keeps the entry byte
    total exact, and losing a record only costs misses until the next fill re-records it.
    """

    def __init__(
        self,
        max_bytes: int,
        max_object_bytes: int,
        tenant_quota: Callable[[str], int | None] = _no_quota,
        *,
        on_evict: Callable[[Entry, str], None] | None = None,
        vary_max_bytes: int | None = None,
    ) -> None:
        self.max_bytes = max_bytes
        self.max_object_bytes = max_object_bytes
        self.tenant_quota = tenant_quota
        self.on_evict = on_evict
        self.vary_max_bytes = (
            max(64 * 1024, max_bytes // 16) if vary_max_bytes is None else vary_max_bytes
        )
        self._lru: OrderedDict[str, _Slot] = OrderedDict()  # every entry, for the global bound
        self._tenants: dict[str, _Tenant] = {}
        self._shared = TinyLfu(max_bytes)  # the space of the tenants without a quota
        # (tenant, "t:" + tag) and (tenant, "u:" + url) -> keys: purges by tag or URL, no scan
        self._index: dict[tuple[str, str], set[str]] = {}
        self._bytes = 0
        self._evictions = 0
        self._not_admitted = 0
        self._vary: OrderedDict[str, tuple[str, ...]] = OrderedDict()
        self._vary_by_tenant: dict[str, set[str]] = {}
        self._vary_bytes = 0

    def __len__(self) -> int:
        return len(self._lru)

    def __contains__(self, key: object) -> bool:
        return key in self._lru

    # -- entries -------------------------------------------------------------------------

    async def get(self, key: str) -> Entry | None:
        slot = self._lru.get(key)
        if slot is None:
            self._record_miss(key)
            return None
        self._lru.move_to_end(key)
        slot.space.touch(key)
        return slot.entry

    async def put(self, entry: Entry) -> bool:
        """Store under entry.key. False (an old entry under the key kept) when bigger than the
        object bound, the tenant's quota or the whole store; False too when the space is full
        of entries more popular than this one (not admitted, the old entry gone)."""
        size = entry.size()
        quota = self.tenant_quota(entry.tenant)
        if (
            size > self.max_object_bytes
            or size > self.max_bytes
            or (quota is not None and size > quota)
        ):
            return False
        if entry.key in self._lru:
            self._remove(entry.key)
        space = self._insert(entry, size, quota)
        why = SIZE if space is self._shared else QUOTA
        pushed = [(self._remove(key, in_space=False), why) for key in space.add(entry.key, size)]
        while self._bytes > self.max_bytes:
            pushed.append((self._remove(next(iter(self._lru))), SIZE))
        admitted = entry.key in self._lru
        if not admitted:
            self._not_admitted += 1
        evicted = [(old, why) for old, why in pushed if old is not entry]
        self._evictions += len(evicted)
        if self.on_evict is not None:
            for old, why in evicted:
                self.on_evict(old, why)
        return admitted

    async def delete(self, key: str) -> bool:
        if key not in self._lru:
            return False
        self._remove(key)
        return True

    def _record_miss(self, key: str) -> None:
        """A lookup that found nothing still counts towards the key's popularity, in the space
        it would be stored in (if that space exists: no state for a tenant that holds nothing)."""
        escaped = key.partition("|")[0]
        tenant = self._tenants.get(_unescape(escaped))
        if tenant is not None and tenant.space is not None:
            tenant.space.record(key)
        elif tenant is not None or self.tenant_quota(_unescape(escaped)) is None:
            self._shared.record(key)

    # -- purges --------------------------------------------------------------------------

    async def purge_tenant(self, tenant: str, soft_at: float | None = None) -> int:
        """Every entry of the tenant, and its Vary records when hard; O(tenant's entries)."""
        state = self._tenants.get(tenant)
        count = await self._drop(list(state.keys) if state else [], soft_at)
        if soft_at is None:
            for primary in self._vary_by_tenant.pop(escape_part(tenant), set()):
                self._vary_bytes -= self._vary_cost(primary, self._vary.pop(primary))
        return count

    async def purge_prefix(self, tenant: str, url_prefix: str, soft_at: float | None = None) -> int:
        """Entries whose URL starts with the prefix (see `_url_prefixes`): a range of the
        tenant's sorted URLs, O(log n + matches)."""
        state = self._tenants.get(tenant)
        if state is None:
            return 0
        keys: list[str] = []
        for prefix in url_prefixes(url_prefix, state.sites):
            for url in _starting_with(state.urls, prefix):
                keys.extend(self._index[(tenant, "u:" + url)])
        return await self._drop(keys, soft_at)

    async def purge_tags(self, tenant: str, tags: list[str], soft_at: float | None = None) -> int:
        """Entries of the tenant carrying any of the tags; O(matched) through the tag index."""
        doomed: set[str] = set()
        for tag in tags:
            doomed |= self._index.get((tenant, "t:" + tag), set())
        return await self._drop(list(doomed), soft_at)

    async def purge_url(self, tenant: str, url: str, soft_at: float | None = None) -> int:
        """Every variant stored for one normalised URL (RFC 9111 4.4 invalidation); O(variants)."""
        return await self._drop(list(self._index.get((tenant, "u:" + url), set())), soft_at)

    async def _drop(self, keys: list[str], soft_at: float | None) -> int:
        """Remove the entries, or with `soft_at` mark them stale since then (a soft purge), in
        slices, letting requests through between them: a purge of a million entries must not
        stall every hit behind it. Done before it returns (and before the purge is answered)."""
        for start in range(0, len(keys), PURGE_SLICE):
            if start:
                await asyncio.sleep(0)
            for key in keys[start : start + PURGE_SLICE]:
                slot = self._lru.get(key)
                if slot is None:  # gone meanwhile (evicted, replaced and purged again)
                    continue
                if soft_at is None:
                    self._remove(key)
                elif slot.entry.soft_purged_at is None or slot.entry.soft_purged_at > soft_at:
                    slot.entry.soft_purged_at = soft_at
        return len(keys)

    async def clear(self) -> int:
        """Every entry and Vary record gone (the fleet lost purge events: nothing held can be
        trusted to be current)."""
        count = 0
        for tenant in list(self._tenants):
            count += await self.purge_tenant(tenant)
        self._vary.clear()
        self._vary_by_tenant.clear()
        self._vary_bytes = 0
        return count

    # -- vary registry -------------------------------------------------------------------

    async def get_vary(self, primary_key: str) -> tuple[str, ...] | None:
        names = self._vary.get(primary_key)
        if names is not None:
            self._vary.move_to_end(primary_key)
        return names

    async def set_vary(self, primary_key: str, names: tuple[str, ...]) -> None:
        """Record (or replace) the names; the oldest records go when over `vary_max_bytes`."""
        old = self._vary.pop(primary_key, None)
        if old is not None:
            self._vary_bytes -= self._vary_cost(primary_key, old)
        else:
            self._vary_by_tenant.setdefault(self._vary_tenant(primary_key), set()).add(primary_key)
        self._vary[primary_key] = names
        self._vary_bytes += self._vary_cost(primary_key, names)
        while self._vary_bytes > self.vary_max_bytes and len(self._vary) > 1:
            oldest, oldest_names = self._vary.popitem(last=False)
            self._vary_bytes -= self._vary_cost(oldest, oldest_names)
            self._forget_vary_tenant(oldest)

    # -- introspection -------------------------------------------------------------------

    async def sites(self, tenant: str) -> list[str]:
        """The `scheme://host` of the tenant's entries, so a purge by path can reach them all."""
        state = self._tenants.get(tenant)
        return [] if state is None else sorted(state.sites)

    def urls_from(
        self, tenant: str, prefix: str, after: str = "", *, inclusive: bool = True, limit: int
    ) -> list[str]:
        """Up to `limit` of the tenant's URLs that start with `prefix`, in order, from `after`
        on: a page of cache inspection is a range of the sorted list, never a scan."""
        state = self._tenants.get(tenant)
        if state is None:
            return []
        return list(islice(_starting_with(state.urls, prefix, after, inclusive=inclusive), limit))

    def variants(self, tenant: str, url: str) -> list[Entry]:
        """Every entry held for one URL (each Vary variant, each generation still here), in key
        order, without touching recency or popularity: looking must not change what stays."""
        keys = self._index.get((tenant, "u:" + url), ())
        return [self._lru[key].entry for key in sorted(keys)]

    def tenant_bytes(self, tenant: str) -> int:
        state = self._tenants.get(tenant)
        return 0 if state is None else state.bytes

    def stats(self) -> dict[str, Any]:
        """Counters for /metrics and the admin API."""
        return {
            "entries": len(self._lru),
            "bytes": self._bytes,
            "max_bytes": self.max_bytes,
            "evictions": self._evictions,
            "not_admitted": self._not_admitted,
            "vary_entries": len(self._vary),
            "vary_bytes": self._vary_bytes,
            "tenants": {
                name: {"entries": len(t.keys), "bytes": t.bytes}
                for name, t in self._tenants.items()
            },
        }

    def check_invariants(self) -> None:
        """Raise AssertionError if any index disagrees with the entries (for tests and debug)."""
        problems: list[str] = []
        if self._bytes != sum(s.size for s in self._lru.values()):
            problems.append("total bytes != sum of entry sizes")
        if self._bytes > self.max_bytes:
            problems.append("total bytes over max_bytes")
        tenant_keys: set[str] = set()
        for name, t in self._tenants.items():
            keys = set(t.keys)
            if set(t.urls) != {self._lru[k].entry.url for k in keys if k in self._lru}:
                problems.append(f"tenant {name!r} sorted urls != its entries' urls")
            tenant_keys |= keys
            if not keys:
                problems.append(f"tenant {name!r} kept without entries")
            held = Counter(site_of(self._lru[k].entry.url) for k in keys if k in self._lru)
            if held != t.sites:
                problems.append(f"tenant {name!r} sites != its entries' sites")
            if any(self._lru[k].entry.tenant != name for k in keys if k in self._lru):
                problems.append(f"tenant {name!r} indexes another tenant's key")
            if t.bytes != sum(self._lru[k].size for k in keys if k in self._lru):
                problems.append(f"tenant {name!r} bytes mismatch")
        if tenant_keys != set(self._lru):
            problems.append("tenant key sets != entries")
        spaces = {id(slot.space): slot.space for slot in self._lru.values()}
        spaces[id(self._shared)] = self._shared
        for space in spaces.values():
            problems += space.check()
            admitted = {k for k, slot in self._lru.items() if slot.space is space}
            if {*space.window, *space.probation, *space.protected} != admitted:
                problems.append("a space's keys != the entries admitted to it")
            if space.bytes != sum(self._lru[k].size for k in admitted):
                problems.append("a space's bytes != its entries' sizes")
        expected: dict[tuple[str, str], set[str]] = {}
        for key, slot in self._lru.items():
            for name in _index_names(slot.entry):
                expected.setdefault((slot.entry.tenant, name), set()).add(key)
        if expected != self._index:
            problems.append("tag/url index != entries' tags and urls")
        vary_keys: set[str] = set().union(*self._vary_by_tenant.values())
        if vary_keys != set(self._vary) or any(not s for s in self._vary_by_tenant.values()):
            problems.append("vary tenant index != vary records")
        if self._vary_bytes != sum(self._vary_cost(k, v) for k, v in self._vary.items()):
            problems.append("vary bytes mismatch")
        if problems:
            raise AssertionError("; ".join(problems))

    # -- internals -----------------------------------------------------------------------

    def _insert(self, entry: Entry, size: int, quota: int | None) -> TinyLfu:
        """Account for an entry everywhere but in its space; returns that space."""
        tenant = self._tenants.get(entry.tenant)
        if tenant is None:
            tenant = self._tenants[entry.tenant] = _Tenant()
        if quota is None:
            space = self._shared
        else:
            if tenant.space is None:
                tenant.space = TinyLfu(quota)
            space = tenant.space
            space.capacity = quota  # a reload may have changed it
        self._lru[entry.key] = _Slot(entry, size, space)
        tenant.keys[entry.key] = None
        tenant.bytes += size
        tenant.sites[site_of(entry.url)] += 1
        self._bytes += size
        for name in _index_names(entry):
            keys = self._index.setdefault((entry.tenant, name), set())
            if not keys and name.startswith("u:"):
                tenant.urls.add(entry.url)
            keys.add(entry.key)
        return space

    def _remove(self, key: str, *, in_space: bool = True) -> Entry:
        """Take an entry out of every structure (of its space too, unless the space itself
        let it go)."""
        slot = self._lru.pop(key)
        entry = slot.entry
        tenant = self._tenants[entry.tenant]
        if in_space:
            slot.space.remove(key)
        del tenant.keys[key]
        tenant.bytes -= slot.size
        site = site_of(entry.url)
        tenant.sites[site] -= 1
        if not tenant.sites[site]:
            del tenant.sites[site]
        self._bytes -= slot.size
        for name in _index_names(entry):
            index = (entry.tenant, name)
            keys = self._index.get(index)
            if keys is not None:
                keys.discard(key)
                if not keys:
                    del self._index[index]
                    if name.startswith("u:"):
                        tenant.urls.discard(entry.url)
        if not tenant.keys:
            del self._tenants[entry.tenant]
        return entry

    @staticmethod
    def _vary_cost(primary_key: str, names: tuple[str, ...]) -> int:
        return len(primary_key) + sum(len(n) for n in names) + VARY_OVERHEAD

    @staticmethod
    def _vary_tenant(primary_key: str) -> str:
        """The (escaped) tenant part of a `gateway.key.primary_key`."""
        return primary_key.partition("|")[0]

    def _forget_vary_tenant(self, primary_key: str) -> None:
        tenant = self._vary_tenant(primary_key)
        keys = self._vary_by_tenant.get(tenant)
        if keys is not None:
            keys.discard(primary_key)
            if not keys:
                del self._vary_by_tenant[tenant]
