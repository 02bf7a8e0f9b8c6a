"""In-process tier: byte-bounded, W-TinyLFU per tenant, with quotas and purge indexes.

Every method changes the store only in whole-entry steps (`_insert` / `_remove`, the only two
places that change an entry), so under asyncio no other task sees a half-done mutation; a purge
of many entries yields to the event loop between slices of them.

Which entries stay is decided per *space* (`admission.TinyLfu`): each tenant with a quota has
its own, bounded by the quota; tenants without one share a space bounded by `max_bytes`. A scan
of one-off keys in one tenant therefore cannot push out that tenant's hot entries, nor anybody
else's. Quotas may add up to more than `max_bytes`: the store's own bound then evicts the least
recently used entry of all.

Each entry is charged what the process holds for it (`Entry.size`, `gateway.store.compact`),
its places in these indexes included. The indexes are plain dicts of strings (a URL's key, a
tag's keys), which the garbage collector does not track, not a set per URL or tag; the entries
themselves are out of its sight too (`compact`), so a full store adds nothing to a collection.
"""

from __future__ import annotations

import asyncio
import sys
from collections import Counter, OrderedDict
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from itertools import islice
from typing import Any

from gateway.gcwatch import untrack
from gateway.key import escape_part
from gateway.store import Entry, site_of, url_prefixes
from gateway.store.admission import TinyLfu
from gateway.store.compact import VALUES, compact, vary_record_bytes
from gateway.store.invariants import problems
from gateway.store.sorted_strings import SortedStrings

PURGE_SLICE = 1000  # entries a purge removes before letting other requests run
# Why an entry was evicted (`on_evict`): the store's size bound or its tenant's quota.
SIZE = "size"
QUOTA = "quota"


@dataclass(slots=True)
class _Tenant:
    """A tenant's entries (key -> the bytes it was charged at put, so later mutation of an
    entry cannot skew the byte count), its bytes, the sites (`scheme://host`) its entries are
    on, its URLs in order (purges by prefix are a range, not a scan), each URL's key (or keys:
    Vary variants, generations), each tag's keys, and its own W-TinyLFU space if it has a
    quota. Exists only while it holds entries, so tenant names a client invents cost nothing
    once their entries are gone."""

    name: str  # the one copy of the name that the tenant's entries hold
    keys: dict[str, int] = field(default_factory=dict)
    bytes: int = 0
    sites: Counter[str] = field(default_factory=Counter)
    urls: SortedStrings = field(default_factory=SortedStrings)
    by_url: dict[str, str | tuple[str, ...]] = field(default_factory=dict)
    by_tag: dict[str, dict[str, None]] = field(default_factory=dict)
    space: TinyLfu | None = None

    def url_keys(self, url: str) -> list[str]:
        """The keys stored for one URL."""
        held = self.by_url.get(url)
        if held is None:
            return []
        return [held] if isinstance(held, str) else list(held)


def _no_quota(tenant: str) -> int | None:
    return None


def _starting_with(
    urls: SortedStrings, prefix: str, after: str = "", *, inclusive: bool = True
) -> Iterator[str]:
    """The URLs of a sorted list that start with `prefix`, in order, from `after` on (and past
    it unless `inclusive`), in O(log n + matches)."""
    lowest, inclusive = (after, inclusive) if after > prefix else (prefix, True)
    for url in urls.irange(lowest, inclusive=inclusive):
        if not url.startswith(prefix):
            return
        yield url


def _unescape(part: str) -> str:
    """The inverse of `gateway.key.escape_part`."""
    return part.replace("%7C", "|").replace("%25", "%") if "%" in part else part


class MemoryStore:
    """Byte-bounded store implementing `Store`: O(1) get and put, W-TinyLFU per space.

    A tenant over its quota loses its own least valuable entries first, so a noisy tenant cannot
    push the others out beyond what the global bound forces. `on_evict` is called for entries
    pushed out by a bound (not deletes, purges, or a newcomer that was not admitted), after the
    store is consistent again, with the bound: `SIZE` (max_bytes) or `QUOTA` (the tenant's).

    Vary records live in a separate LRU with its own byte budget (`vary_max_bytes`, default
    max_bytes // 16, at least 64 KiB but at most a quarter of max_bytes), so that entries cannot
    push them out (losing a record costs misses until the next fill re-records it). They count
    against `max_bytes` too: entries and records together stay within it (a put evicts entries
    for the records' bytes), so that max_bytes bounds what the tier holds.
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
            min(max_bytes // 4, max(64 * 1024, max_bytes // 16))
            if vary_max_bytes is None
            else vary_max_bytes
        )
        self._lru: OrderedDict[str, Entry] = OrderedDict()  # every entry, for the global bound
        self._tenants: dict[str, _Tenant] = {}
        self._shared = _space(max_bytes)  # the space of the tenants without a quota
        self._bytes = 0
        self.released = 0  # bytes of every entry removed so far (evicted, purged, replaced)
        self._evictions = 0
        self._not_admitted = 0
        self._vary: OrderedDict[str, tuple[str, ...]] = OrderedDict()
        self._vary_by_tenant: dict[str, dict[str, None]] = {}  # escaped tenant -> its records
        self._vary_bytes = 0

    def __len__(self) -> int:
        return len(self._lru)

    def __contains__(self, key: object) -> bool:
        return key in self._lru

    # -- entries -------------------------------------------------------------------------

    async def get(self, key: str) -> Entry | None:
        entry = self._lru.get(key)
        if entry is None:
            self._record_miss(key)
            return None
        self._lru.move_to_end(key)
        self._space_holding(self._tenants[entry.tenant], key).touch(key)
        return entry

    async def put(self, entry: Entry) -> bool:
        """Store under entry.key. False (an old entry under the key kept) when bigger than the
        object bound, the tenant's quota or the whole store; False too when the space is full
        of entries more popular than this one (not admitted, the old entry gone)."""
        compact(entry)
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
        while self._bytes + self._vary_bytes > self.max_bytes and self._lru:
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
            for primary in self._vary_by_tenant.pop(escape_part(tenant), {}):
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
                keys.extend(state.url_keys(url))
        return await self._drop(keys, soft_at)

    async def purge_tags(self, tenant: str, tags: list[str], soft_at: float | None = None) -> int:
        """Entries of the tenant carrying any of the tags; O(matched) through the tag index."""
        state = self._tenants.get(tenant)
        if state is None:
            return 0
        doomed: set[str] = set()
        for tag in tags:
            doomed.update(state.by_tag.get(tag, ()))
        return await self._drop(list(doomed), soft_at)

    async def purge_url(self, tenant: str, url: str, soft_at: float | None = None) -> int:
        """Every variant stored for one normalised URL (RFC 9111 4.4 invalidation); O(variants)."""
        state = self._tenants.get(tenant)
        return await self._drop([] if state is None else state.url_keys(url), soft_at)

    async def _drop(self, keys: list[str], soft_at: float | None) -> int:
        """Remove the entries, or with `soft_at` mark them stale since then (a soft purge), in
        slices, letting requests through between them: a purge of a million entries must not
        stall every hit behind it. Done before it returns (and before the purge is answered)."""
        for start in range(0, len(keys), PURGE_SLICE):
            if start:
                await asyncio.sleep(0)
            for key in keys[start : start + PURGE_SLICE]:
                entry = self._lru.get(key)
                if entry is None:  # gone meanwhile (evicted, replaced and purged again)
                    continue
                if soft_at is None:
                    self._remove(key)
                elif entry.soft_purged_at is None or entry.soft_purged_at > soft_at:
                    entry.soft_purged_at = soft_at
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
        names = VALUES(names)  # most URLs vary on the same few names, or on none
        old = self._vary.pop(primary_key, None)
        if old is not None:
            self._vary_bytes -= self._vary_cost(primary_key, old)
        else:
            tenant = self._vary_tenant(primary_key)
            held = self._vary_by_tenant.get(tenant)
            if held is None:
                self._vary_by_tenant[tenant] = {primary_key: None}
            else:
                held[primary_key] = None
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
        state = self._tenants.get(tenant)
        return [] if state is None else [self._lru[key] for key in sorted(state.url_keys(url))]

    def tenant_bytes(self, tenant: str) -> int:
        state = self._tenants.get(tenant)
        return 0 if state is None else state.bytes

    def stats(self) -> dict[str, Any]:
        """Counters for /metrics and the admin API. `bytes` is what the entries are charged
        (the bound); `overhead_bytes` what each tenant holding entries costs besides (its
        indexes and admission space when empty), `vary_bytes` the Vary records."""
        spaces = sum(1 for t in self._tenants.values() if t.space is not None)
        return {
            "entries": len(self._lru),
            "bytes": self._bytes,
            "max_bytes": self.max_bytes,
            "overhead_bytes": len(self._tenants) * TENANT_BYTES + spaces * SPACE_BYTES,
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
        found = problems(self)
        if found:
            raise AssertionError("; ".join(found))

    # -- internals -----------------------------------------------------------------------

    def _space_holding(self, tenant: _Tenant, key: str) -> TinyLfu:
        """The space an entry was admitted to: its tenant's, or (no quota, or none when it
        was stored: a reload may add or remove one) the shared space."""
        space = tenant.space
        return space if space is not None and key in space else self._shared

    def _insert(self, entry: Entry, size: int, quota: int | None) -> TinyLfu:
        """Account for an entry everywhere but in its space; returns that space."""
        key, url = entry.key, entry.url
        tenant = self._tenants.get(entry.tenant)
        if tenant is None:
            tenant = self._tenants[entry.tenant] = _Tenant(entry.tenant)
        entry.tenant = tenant.name
        if quota is None:
            space = self._shared
        else:
            if tenant.space is None:
                tenant.space = _space(quota)
            space = tenant.space
            space.capacity = quota  # a reload may have changed it
        self._lru[key] = entry
        tenant.keys[key] = size
        tenant.bytes += size
        tenant.sites[site_of(url)] += 1
        self._bytes += size
        held = tenant.by_url.get(url)
        if held is None:
            tenant.by_url[url] = key
            tenant.urls.add(url)
        else:  # a tuple of a few keys, untracked before it goes in (see `_keys`)
            tenant.by_url[url] = _keys((held, key) if isinstance(held, str) else (*held, key))
        for tag in entry.tags:
            tagged = tenant.by_tag.get(tag)
            if tagged is None:
                tenant.by_tag[tag] = {key: None}
            else:
                tagged[key] = None
        return space

    def _remove(self, key: str, *, in_space: bool = True) -> Entry:
        """Take an entry out of every structure (of its space too, unless the space itself
        let it go)."""
        entry = self._lru.pop(key)
        url = entry.url
        tenant = self._tenants[entry.tenant]
        if in_space:
            self._space_holding(tenant, key).remove(key)
        size = tenant.keys.pop(key)
        tenant.bytes -= size
        self._bytes -= size
        self.released += size
        site = site_of(url)
        tenant.sites[site] -= 1
        if not tenant.sites[site]:
            del tenant.sites[site]
        held = tenant.by_url[url]
        if isinstance(held, str):
            del tenant.by_url[url]
            tenant.urls.discard(url)
        else:
            rest = tuple(k for k in held if k != key)
            tenant.by_url[url] = rest[0] if len(rest) == 1 else _keys(rest)
        for tag in entry.tags:
            tagged = tenant.by_tag.get(tag)
            if tagged is not None:
                tagged.pop(key, None)  # (a tag listed twice is indexed once)
                if not tagged:
                    del tenant.by_tag[tag]
        if not tenant.keys:
            del self._tenants[entry.tenant]
        return entry

    @staticmethod
    def _vary_cost(primary_key: str, names: tuple[str, ...]) -> int:
        return vary_record_bytes(primary_key, names)

    @staticmethod
    def _vary_tenant(primary_key: str) -> str:
        """The (escaped) tenant part of a `gateway.key.primary_key`."""
        return primary_key.partition("|")[0]

    def _forget_vary_tenant(self, primary_key: str) -> None:
        tenant = self._vary_tenant(primary_key)
        keys = self._vary_by_tenant.get(tenant)
        if keys is not None:
            keys.pop(primary_key, None)
            if not keys:
                del self._vary_by_tenant[tenant]


def _keys(keys: tuple[str, ...]) -> tuple[str, ...]:
    """A tuple of keys to put in an index dict, untracked first. A new tuple is tracked, and a
    dict that is given a tracked value is tracked again, into the youngest generation: the next
    young collection would then walk the whole index (a URL index of 80,000 URLs: ~5 ms)."""
    if untrack is not None:
        untrack(keys)
    return keys


def _space(capacity: int) -> TinyLfu:
    """A W-TinyLFU space whose segments (OrderedDicts of key -> size) the garbage collector
    does not walk: they hold strings and numbers only, so can be in no reference cycle (and
    a dict that is given anything else is tracked again by the interpreter itself)."""
    space = TinyLfu(capacity)
    if untrack is not None:
        for segment in (space.window, space.probation, space.protected):
            untrack(segment)
    return space


def _fixed_bytes(tenant: _Tenant) -> int:
    """What a tenant's state holds before its entries' own places in it."""
    urls = tenant.urls
    parts = (tenant, tenant.keys, tenant.sites, tenant.by_url, tenant.by_tag, urls,
             urls._chunks, urls._maxes)
    return sum(map(sys.getsizeof, parts))


def _space_bytes(space: TinyLfu) -> int:
    sketch = space.sketch
    parts = (space, space.window, space.probation, space.protected, sketch, sketch._rows)
    return sum(map(sys.getsizeof, parts)) + sum(map(sys.getsizeof, sketch._rows))


TENANT_BYTES = _fixed_bytes(_Tenant(""))
SPACE_BYTES = _space_bytes(TinyLfu(1))
