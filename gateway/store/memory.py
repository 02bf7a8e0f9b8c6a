"""In-process tier: a byte-bounded LRU with per-tenant quotas and purge indexes.

Every method is synchronous inside its async signature, so under asyncio no other task can see
a half-done mutation. All bookkeeping (global LRU, per-tenant LRU, tag index, byte totals) is
updated together in `_insert` / `_remove`, the only two places that change an entry.
"""

from __future__ import annotations

from collections import Counter, OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from gateway.key import escape_part
from gateway.store import Entry

# Charged per Vary record on top of its key and names (dict slot, tuple, strings' headers).
VARY_OVERHEAD = 64


@dataclass(slots=True)
class _Slot:
    """An entry with the size it was charged at, so later mutation of the entry cannot skew
    the byte count."""

    entry: Entry
    size: int


@dataclass(slots=True)
class _Tenant:
    """Per-tenant LRU order (oldest first) doubling as the tenant's key index, and the sites
    (`scheme://host`) its entries are on, for purges by path. Exists only while it holds entries,
    so tenant names a client invents cost nothing once their entries are gone."""

    lru: OrderedDict[str, None] = field(default_factory=OrderedDict)
    bytes: int = 0
    sites: Counter[str] = field(default_factory=Counter)


def _no_quota(tenant: str) -> int | None:
    return None


def _path_and_query(url: str) -> str:
    """`/path?query` of a normalised `scheme://host/path?query` URL."""
    scheme_end = url.find("://")
    start = 0 if scheme_end == -1 else scheme_end + 3
    slash = url.find("/", start)
    return "/" if slash == -1 else url[slash:]


def _prefix_matcher(url_prefix: str) -> Callable[[str], bool]:
    """A test of entry URLs: an absolute prefix is matched against the whole URL (scheme and
    authority lower-cased, `/` added when it has no path so `http://a` does not match
    `http://ab/`), a path prefix against the path and query only."""
    scheme_end = url_prefix.find("://")
    if scheme_end != -1:
        slash = url_prefix.find("/", scheme_end + 3)
        if slash == -1:
            absolute = url_prefix.lower() + "/"
        else:
            absolute = url_prefix[:slash].lower() + url_prefix[slash:]
        return lambda url: url.startswith(absolute)
    path = url_prefix if url_prefix.startswith("/") else "/" + url_prefix
    return lambda url: _path_and_query(url).startswith(path)


def _site(url: str) -> str:
    """`scheme://host[:port]` of a normalised URL."""
    scheme_end = url.find("://")
    slash = url.find("/", scheme_end + 3 if scheme_end != -1 else 0)
    return url if slash == -1 else url[:slash]


def _index_names(entry: Entry) -> list[str]:
    return ["u:" + entry.url, *("t:" + tag for tag in entry.tags)]


class MemoryStore:
    """Byte-bounded LRU implementing `Store`, O(1) get, put and eviction.

    A tenant over its quota evicts its own least-recently-used entries first, so a noisy tenant
    cannot push the others out beyond what the global bound forces. `on_evict` is called for
    capacity evictions only (not deletes or purges), after the store is consistent again.

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
        on_evict: Callable[[Entry], None] | None = None,
        vary_max_bytes: int | None = None,
    ) -> None:
        self.max_bytes = max_bytes
        self.max_object_bytes = max_object_bytes
        self.tenant_quota = tenant_quota
        self.on_evict = on_evict
        self.vary_max_bytes = (
            max(64 * 1024, max_bytes // 16) if vary_max_bytes is None else vary_max_bytes
        )
        self._lru: OrderedDict[str, _Slot] = OrderedDict()
        self._tenants: dict[str, _Tenant] = {}
        # (tenant, "t:" + tag) and (tenant, "u:" + url) -> keys: purges by tag or URL, no scan
        self._index: dict[tuple[str, str], set[str]] = {}
        self._bytes = 0
        self._evictions = 0
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
            return None
        self._lru.move_to_end(key)
        self._tenants[slot.entry.tenant].lru.move_to_end(key)
        return slot.entry

    async def put(self, entry: Entry) -> bool:
        """Store under entry.key; False (old entry kept) when bigger than the object bound, the
        tenant's quota or the whole store."""
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
        self._insert(entry, size)
        evicted: list[Entry] = []
        if quota is not None:
            tenant = self._tenants[entry.tenant]
            while tenant.bytes > quota:
                evicted.append(self._evict(next(iter(tenant.lru))))
        while self._bytes > self.max_bytes:
            evicted.append(self._evict(next(iter(self._lru))))
        if self.on_evict is not None:
            for old in evicted:
                self.on_evict(old)
        return True

    async def delete(self, key: str) -> bool:
        if key not in self._lru:
            return False
        self._remove(key)
        return True

    # -- purges --------------------------------------------------------------------------

    async def purge_tenant(self, tenant: str, soft_at: float | None = None) -> int:
        """Every entry of the tenant, and its Vary records when hard; O(tenant's entries)."""
        state = self._tenants.get(tenant)
        count = self._drop(list(state.lru) if state else [], soft_at)
        if soft_at is None:
            for primary in self._vary_by_tenant.pop(escape_part(tenant), set()):
                self._vary_bytes -= self._vary_cost(primary, self._vary.pop(primary))
        return count

    async def purge_prefix(self, tenant: str, url_prefix: str, soft_at: float | None = None) -> int:
        """Scan only this tenant's entries; see `_prefix_matcher` for what a prefix matches."""
        state = self._tenants.get(tenant)
        if state is None:
            return 0
        matches = _prefix_matcher(url_prefix)
        return self._drop([k for k in state.lru if matches(self._lru[k].entry.url)], soft_at)

    async def purge_tags(self, tenant: str, tags: list[str], soft_at: float | None = None) -> int:
        """Entries of the tenant carrying any of the tags; O(matched) through the tag index."""
        doomed: set[str] = set()
        for tag in tags:
            doomed |= self._index.get((tenant, "t:" + tag), set())
        return self._drop(list(doomed), soft_at)

    async def purge_url(self, tenant: str, url: str, soft_at: float | None = None) -> int:
        """Every variant stored for one normalised URL (RFC 9111 4.4 invalidation); O(variants)."""
        return self._drop(list(self._index.get((tenant, "u:" + url), set())), soft_at)

    def _drop(self, keys: list[str], soft_at: float | None) -> int:
        """Remove the entries, or with `soft_at` mark them stale since then (a soft purge)."""
        for key in keys:
            if soft_at is None:
                self._remove(key)
            else:
                entry = self._lru[key].entry
                if entry.soft_purged_at is None or entry.soft_purged_at > soft_at:
                    entry.soft_purged_at = soft_at
        return len(keys)

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
            "vary_entries": len(self._vary),
            "vary_bytes": self._vary_bytes,
            "tenants": {
                name: {"entries": len(t.lru), "bytes": t.bytes} for name, t in self._tenants.items()
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
            keys = set(t.lru)
            tenant_keys |= keys
            if not keys:
                problems.append(f"tenant {name!r} kept without entries")
            held = Counter(_site(self._lru[k].entry.url) for k in keys if k in self._lru)
            if held != t.sites:
                problems.append(f"tenant {name!r} sites != its entries' sites")
            if any(self._lru[k].entry.tenant != name for k in keys if k in self._lru):
                problems.append(f"tenant {name!r} indexes another tenant's key")
            if t.bytes != sum(self._lru[k].size for k in keys if k in self._lru):
                problems.append(f"tenant {name!r} bytes mismatch")
        if tenant_keys != set(self._lru):
            problems.append("tenant key sets != entries")
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

    def _insert(self, entry: Entry, size: int) -> None:
        self._lru[entry.key] = _Slot(entry, size)
        tenant = self._tenants.get(entry.tenant)
        if tenant is None:
            tenant = self._tenants[entry.tenant] = _Tenant()
        tenant.lru[entry.key] = None
        tenant.bytes += size
        tenant.sites[_site(entry.url)] += 1
        self._bytes += size
        for name in _index_names(entry):
            self._index.setdefault((entry.tenant, name), set()).add(entry.key)

    def _remove(self, key: str) -> Entry:
        slot = self._lru.pop(key)
        entry = slot.entry
        tenant = self._tenants[entry.tenant]
        del tenant.lru[key]
        tenant.bytes -= slot.size
        site = _site(entry.url)
        tenant.sites[site] -= 1
        if not tenant.sites[site]:
            del tenant.sites[site]
        if not tenant.lru:
            del self._tenants[entry.tenant]
        self._bytes -= slot.size
        for name in _index_names(entry):
            index = (entry.tenant, name)
            keys = self._index.get(index)
            if keys is not None:
                keys.discard(key)
                if not keys:
                    del self._index[index]
        return entry

    def _evict(self, key: str) -> Entry:
        entry = self._remove(key)
        self._evictions += 1
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
