"""The cache entry and the async store protocol every tier (memory, Redis, tiered) implements."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Protocol

from gateway.policy import Freshness
from gateway.store.compact import entry_bytes, index_bytes


@dataclass(slots=True)
class Entry:
    """A stored response, with everything the policy needs to judge it later.

    `headers` are the origin's end-to-end headers as received, less `Age` and `Set-Cookie`, so that
    freshness can be recomputed after a 304; what clients see is filtered on the way out.

    Data only (strings, bytes, numbers, tuples of them, a Freshness): the memory tier shares
    what entries hold alike and takes each one out of the garbage collector's sight
    (`gateway.store.compact`), which is safe only while no field can lead back to the entry.
    """

    key: str
    tenant: str
    url: str  # normalised URL (scheme://host[:port]/path?query), for prefix purges
    status: int
    headers: tuple[tuple[str, str], ...]
    body: bytes
    response_time: float  # wall clock when the response arrived (RFC 9111 4.2.3)
    initial_age: float  # corrected_initial_age (RFC 9111 4.2.3)
    freshness: Freshness
    etag: str | None = None
    last_modified: str | None = None
    vary: tuple[str, ...] = ()  # lower-cased request header names the response varies on
    tags: tuple[str, ...] = ()
    soft_generation: int = 0  # the soft-bust epoch when its fill started
    stored_at: float = field(default=0.0)
    soft_purged_at: float | None = None  # set by a soft purge: stale from then on
    # What a client sees of `headers`, built once at fill so a hit only appends its own fields.
    visible: tuple[tuple[str, str], ...] = ()

    def size(self) -> int:
        """Bytes charged against the store's bounds: what the process holds for the entry, its
        objects and its places in the memory tier's indexes (`gateway.store.compact`), so that
        a bound of N bytes holds N bytes whatever the size of the entries."""
        return entry_bytes(self) + index_bytes(self)

    def age(self, now: float) -> float:
        """current_age of RFC 9111 4.2.3."""
        return self.initial_age + max(0.0, now - self.response_time)


def url_prefixes(url_prefix: str, sites: Iterable[str]) -> list[str]:
    """The whole-URL prefixes a purge prefix stands for: an absolute one as given (scheme and
    authority lower-cased, `/` added when it has no path so `http://a` does not match
    `http://ab/`), a path prefix on each of the tenant's sites."""
    scheme_end = url_prefix.find("://")
    if scheme_end != -1:
        slash = url_prefix.find("/", scheme_end + 3)
        if slash == -1:
            return [url_prefix.lower() + "/"]
        return [url_prefix[:slash].lower() + url_prefix[slash:]]
    path = url_prefix if url_prefix.startswith("/") else "/" + url_prefix
    return [site + path for site in sites]


def site_of(url: str) -> str:
    """`scheme://host[:port]` of a normalised URL."""
    scheme_end = url.find("://")
    slash = url.find("/", scheme_end + 3 if scheme_end != -1 else 0)
    return url if slash == -1 else url[:slash]


class Store(Protocol):
    """Async so that the Redis tier can implement the same calls."""

    async def get(self, key: str) -> Entry | None: ...

    async def put(self, entry: Entry) -> bool:
        """Store under entry.key; False when refused (too big for the object or tenant bound)."""
        ...

    async def delete(self, key: str) -> bool: ...

    async def get_vary(self, primary_key: str) -> tuple[str, ...] | None:
        """The Vary header names last stored for a primary key (None: no entry varies)."""
        ...

    async def set_vary(self, primary_key: str, names: tuple[str, ...]) -> None: ...

    # Purges remove entries, or with `soft_at` mark them stale since that time (soft purge).
    async def purge_tenant(self, tenant: str, soft_at: float | None = None) -> int: ...

    async def purge_prefix(
        self, tenant: str, url_prefix: str, soft_at: float | None = None
    ) -> int: ...

    async def purge_tags(
        self, tenant: str, tags: list[str], soft_at: float | None = None
    ) -> int: ...

    async def purge_url(self, tenant: str, url: str, soft_at: float | None = None) -> int:
        """Every variant of one normalised URL."""
        ...

    async def sites(self, tenant: str) -> list[str]:
        """The `scheme://host[:port]` the tenant's entries are on (for purges by path)."""
        ...


async def purge(
    store: Store, tenant: str, kind: str, items: list[str] | str | None, soft_at: float | None
) -> int:
    """One purge by its kind: `urls` (normalised URLs), `prefix`, `tags` or `namespace`."""
    if kind == "urls" and isinstance(items, list):
        return sum([await store.purge_url(tenant, url, soft_at) for url in items])
    if kind == "prefix" and isinstance(items, str):
        return await store.purge_prefix(tenant, items, soft_at)
    if kind == "tags" and isinstance(items, list):
        return await store.purge_tags(tenant, items, soft_at)
    if kind == "namespace":
        return await store.purge_tenant(tenant, soft_at)
    raise ValueError(f"unknown purge {kind!r} of {items!r}")
