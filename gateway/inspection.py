"""Cache inspection, the admin API's `/admin/entries` and `/admin/entry` (varnishlog's or Souin's
API moment): what the tiers hold for a tenant, read without changing what stays.

Two layers. Pure functions turn an `Entry`, the clock's value and the generations into what an
operator reads (`summary`, `detail`): age, TTL left, state, generation, Vary. `Inspector` reads
the tiers, this process's memory (L1) and, in a fleet, Redis (L2), and merges them URL by URL.
A page is a range of each tier's sorted URL index (`urls_from`: SortedList in memory,
ZRANGEBYLEX with LIMIT in Redis), never a scan of the tenant. Redis failing is said in the
answer (`"redis": "unavailable: ..."`) and the answer comes from memory: inspection is for the
bad day too, and must not turn a Redis outage into errors.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TypeVar

from gateway.fleet.link import RedisUnavailable
from gateway.generations import Generations, iso_time
from gateway.key import escape_part
from gateway.plan import soft_stale_since
from gateway.store import Entry, url_prefixes
from gateway.store.memory import MemoryStore
from gateway.store.redis import RedisStore

DEFAULT_LIMIT = 100
MAX_LIMIT = 1000
# Index reads (one per tier) a page may take. A round only comes up short when Redis's index
# still names URLs whose entries expired; past this the page ends early, with a `next`.
MAX_ROUNDS = 8
MEMORY, REDIS = "memory", "redis"

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class Held:
    """One entry as the tiers hold it: the copy shown (the newer, as a lookup would promote it)
    and every tier that holds one under its key."""

    entry: Entry
    tiers: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class Cursor:
    """Where a page ended: after a whole URL, or (a URL with more variants than the page had
    room for) after one of its keys. Written `url` or `url#key`: a normalised URL holds no `#`."""

    url: str
    key: str | None = None

    @classmethod
    def parse(cls, text: str) -> Cursor:
        url, sep, key = text.partition("#")
        return cls(url, key if sep else None)

    def __str__(self) -> str:
        return self.url if self.key is None else f"{self.url}#{self.key}"


def merge(memory: list[Entry], shared: list[Entry]) -> list[Held]:
    """One URL's entries from both tiers, by key, in key order."""
    held: dict[str, Held] = {e.key: Held(e, (MEMORY,)) for e in memory}
    for entry in shared:
        mine = held.get(entry.key)
        if mine is None:
            held[entry.key] = Held(entry, (REDIS,))
        else:
            newer = entry if entry.response_time > mine.entry.response_time else mine.entry
            held[entry.key] = Held(newer, (MEMORY, REDIS))
    return [held[key] for key in sorted(held)]


def key_parts(key: str) -> tuple[str, str | None]:
    """The generation part of an entry key (`gateway.key.primary_key`) and its secondary (Vary)
    key, None when the entry does not vary."""
    _tenant, generation, _method, rest = key.split("|", 3)
    _url, sep, secondary = rest.partition("#")
    return generation, secondary if sep else None


def request_fields(secondary: str | None) -> dict[str, str | None] | None:
    """The request fields a variant was selected by, from the readable secondary key
    (`gateway.key.secondary_key`: `name=value&name2`, a bare name for an absent field); None
    when the key holds only their digest (the fields were too long to keep readable)."""
    if secondary is None:
        return {}
    if secondary.startswith("#"):
        return None
    fields: dict[str, str | None] = {}
    for part in secondary.split("&"):
        name, sep, value = part.partition("=")
        fields[_unescape(name)] = _unescape(value) if sep else None
    return fields


def _unescape(text: str) -> str:
    """The inverse of the secondary key's escaping (`%` is escaped first, so undone last)."""
    if "%" not in text:
        return text
    return text.replace("%26", "&").replace("%3D", "=").replace("%23", "#").replace("%25", "%")


def state(entry: Entry, now: float, generations: Generations, bust_grace: float) -> str:
    """What a lookup now would make of the entry: `unreachable` (an older hard generation: no
    key leads to it, it ages out), `soft-expired` (soft purge or bust past `bust_grace`: a
    miss), `soft-stale` (served stale while one refresh runs), `stale` or `fresh`."""
    if not reachable(entry, generations):
        return "unreachable"
    since = soft_stale_since(entry, generations)
    if since is not None:
        return "soft-expired" if now - since >= bust_grace else "soft-stale"
    return "fresh" if entry.age(now) < entry.freshness.lifetime else "stale"


def reachable(entry: Entry, generations: Generations) -> bool:
    """Is the entry under the tenant's current hard generation (and `cache_bust`)? A hard bust
    leaves the old entries where they are: no new key leads to them."""
    return key_parts(entry.key)[0] == escape_part(generations.key_part(entry.tenant))


def _when(at: float | None) -> str | None:
    return None if at is None else iso_time(at)


def summary(
    held: Held, now: float, generations: Generations, bust_grace: float
) -> dict[str, object]:
    """One line of `/admin/entries`: enough to see what is cached and for how long."""
    entry = held.entry
    age = entry.age(now)
    return {
        "url": entry.url,
        "key": entry.key,
        "tiers": list(held.tiers),
        "status": entry.status,
        "state": state(entry, now, generations, bust_grace),
        "age": round(age, 3),
        "ttl": round(entry.freshness.lifetime - age, 3),  # negative: stale for that long
        "size": entry.size(),
        "body_bytes": len(entry.body),
        "tags": list(entry.tags),
        "vary": list(entry.vary),
        "variant": key_parts(entry.key)[1],  # the secondary (Vary) key; None: does not vary
        "generation": {
            "key": key_parts(entry.key)[0],
            "current": reachable(entry, generations),
            "soft_epoch": entry.soft_generation,
            "soft_stale_since": _when(soft_stale_since(entry, generations)),
        },
    }


def detail(
    held: Held, now: float, generations: Generations, bust_grace: float
) -> dict[str, object]:
    """One variant in `/admin/entry`: the summary, plus what it was selected by, its stale
    windows and validators, and the response headers as stored."""
    entry = held.entry
    f = entry.freshness
    return summary(held, now, generations, bust_grace) | {
        "request_headers": request_fields(key_parts(entry.key)[1]),
        "freshness_lifetime": f.lifetime,
        "stale_while_revalidate": f.swr,
        "stale_if_error": f.sie,
        "must_revalidate": f.must_revalidate,
        "proxy_revalidate": f.proxy_revalidate,
        "no_cache": f.no_cache,
        "response_time": iso_time(entry.response_time),
        "etag": entry.etag,
        "last_modified": entry.last_modified,
        "soft_purged_at": _when(entry.soft_purged_at),
        "soft_busted_at": _when(generations.stale_since(entry.tenant, entry.soft_generation)),
        "headers": [list(pair) for pair in entry.headers],
    }


class Inspector:
    """Reads one tenant's entries from memory and, in a fleet, from Redis; `redis` says how that
    went: None without a fleet, `ok`, or `unavailable: why` (memory answered alone from then)."""

    def __init__(
        self,
        memory: MemoryStore,
        shared: RedisStore | None,
        generations: Generations,
        now: float,
        *,
        bust_grace: float,
        resolve: Callable[[str, list[str]], list[str]],
    ) -> None:
        self.memory = memory
        self.shared = shared
        self.generations = generations
        self.now = now
        self.bust_grace = bust_grace
        self.resolve = resolve  # a path or URL as a request for it would be keyed, per site
        self.redis: str | None = None if shared is None else "ok"

    async def _from_redis(self, read: Callable[[RedisStore], Awaitable[T]], empty: T) -> T:
        if self.shared is None:
            return empty
        try:
            return await read(self.shared)
        except RedisUnavailable as exc:
            self.redis, self.shared = f"unavailable: {exc}", None
            return empty

    async def sites(self, tenant: str) -> list[str]:
        """The sites the tenant's entries are on, in either tier (what Redis could answer)."""
        shared: list[str] = await self._from_redis(lambda s: s.sites(tenant), [])
        return sorted({*await self.memory.sites(tenant), *shared})

    async def entries(
        self, tenant: str, *, prefix: str | None, after: str | None, limit: int
    ) -> dict[str, object]:
        """A page of the tenant's entries whose URL starts with `prefix` (a path on each of its
        sites, or an absolute URL prefix), in URL and key order, after the cursor `after`."""
        prefixes = sorted(set(url_prefixes(prefix, await self.sites(tenant)))) if prefix else [""]
        cursor = Cursor.parse(after) if after else None
        found: list[Held] = []
        rounds = 0  # rounds that came up short of the page while a tier had more
        # After a whole URL: past it; after one of its keys: from it (its later keys are due).
        start, inclusive = ("", True) if cursor is None else (cursor.url, cursor.key is not None)
        for url_prefix in prefixes:
            while len(found) <= limit and rounds < MAX_ROUNDS:
                horizon = await self._round(tenant, url_prefix, start, inclusive, cursor, found,
                                            limit + 1 - len(found))
                if horizon is None:
                    break
                start, inclusive, rounds = horizon, False, rounds + 1
        nxt: Cursor | None = None
        if len(found) > limit:
            last, following = found[limit - 1].entry, found[limit].entry
            nxt = Cursor(last.url, last.key if following.url == last.url else None)
        elif rounds >= MAX_ROUNDS:
            nxt = Cursor(start)  # the page ends early; everything up to `start` was read
        return {
            "tenant": tenant,
            "prefix": prefix,
            "limit": limit,
            "count": min(len(found), limit),
            "items": [summary(h, self.now, self.generations, self.bust_grace)
                      for h in found[:limit]],
            "next": None if nxt is None else str(nxt),
            "redis": self.redis,
            "generations": self.generations.describe(tenant),
        }

    async def _round(
        self, tenant: str, prefix: str, start: str, inclusive: bool, cursor: Cursor | None,
        found: list[Held], want: int,
    ) -> str | None:
        """Up to `want` URLs from each tier from `start` on, merged into `found` up to the
        horizon: the last URL read from a tier that had more (beyond it, that tier is unread).
        Returns the horizon, or None when both tiers are done with the prefix."""
        mine = self.memory.urls_from(tenant, prefix, start, inclusive=inclusive, limit=want)
        theirs: list[str] = await self._from_redis(
            lambda s: s.urls_from(tenant, prefix, start, inclusive=inclusive, limit=want), []
        )
        more = [urls[-1] for urls in (mine, theirs) if len(urls) == want]
        horizon = min(more) if more else None
        urls = sorted(u for u in {*mine, *theirs} if horizon is None or u <= horizon)
        indexed = set(theirs)
        shared: dict[str, list[Entry]] = await self._from_redis(
            lambda s: s.variants(tenant, [u for u in urls if u in indexed]), {}
        )
        enough = len(found) + want
        for url in urls:
            for held in merge(self.memory.variants(tenant, url), shared.get(url, [])):
                if cursor is not None and url == cursor.url and (
                    cursor.key is None or held.entry.key <= cursor.key
                ):
                    continue
                found.append(held)
                if len(found) == enough:
                    return horizon
        return horizon

    async def entry(self, tenant: str, url: str) -> dict[str, object]:
        """Every variant stored for a path (on each of the tenant's sites) or an absolute URL,
        keyed as a request for it would be (`urls`: the keyed URLs looked at); `variants` is
        empty when neither tier holds one."""
        keyed = self.resolve(url, await self.sites(tenant) if url.startswith("/") else [])
        shared: dict[str, list[Entry]] = await self._from_redis(
            lambda s: s.variants(tenant, keyed), {}
        )
        return {
            "tenant": tenant,
            "url": url,
            "urls": keyed,
            "variants": [
                detail(held, self.now, self.generations, self.bust_grace)
                for u in keyed
                for held in merge(self.memory.variants(tenant, u), shared.get(u, []))
            ],
            "redis": self.redis,
            "generations": self.generations.describe(tenant),
        }
