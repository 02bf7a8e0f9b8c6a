"""The shared tier: entries in Redis as msgpack, one hash per URL, with per-tenant indexes.

Layout (names in `gateway.fleet.keys`): a URL's variants are fields of one hash, beside its
Vary record, and a second hash holds when each variant may be dropped; both expire with the
URL's last variant. Redis evicting a URL's hash under memory pressure therefore drops the URL
whole, never a variant a purge would then miss. Purging a URL is deleting its two keys.

Each tenant has indexes, which purges by prefix, tag or tenant read: its URLs in order
(prefix ranges), their expiry, the URLs of each tag, its sites. Every write trims expired URLs
from them, and each index key expires with the longest-lived URL it holds, so tenants that
come and go (a tenant may be a query parameter) leave nothing behind. Under memory pressure a
`volatile-*` policy evicts the least recently used keys first; an active tenant's indexes are
written with each of its fills, so its entries go before them.

How long an entry stays: what the policy could still serve it for (freshness left, then the
largest of its stale windows and the bust grace), plus `keep_stale` for revalidation with its
validators. Redis's `maxmemory` with a `volatile-*` policy bounds the tier as a whole; the
per-tenant quotas govern each process's L1 (see docs/caching.md).

Every call goes through `RedisLink`: a failure raises `RedisUnavailable`, which the tiered store
turns into a miss.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from typing import Any

import msgpack

from gateway.fleet import codec
from gateway.fleet.keys import ENTRY_FIELD, VARY_FIELD, Keys, entry_field, expiry_field
from gateway.fleet.link import Client, RedisLink, RedisUnavailable
from gateway.key import vary_record_key, vary_record_key_of
from gateway.settings import CacheSettings
from gateway.store import Entry, site_of, url_prefixes

PURGE_BATCH = 500  # URLs read from an index and deleted per round trip
TRIM_PER_WRITE = 64  # expired URLs a write removes from its tenant's indexes
VARY_TTL_MS = 86_400_000  # a Vary record alone (no entry yet) lives a day
INSPECT_BATCH = 25  # URLs whose entries (bodies included) one inspection round trip reads
_ENTRY = ENTRY_FIELD.encode()

# Time inside the scripts is Redis's own (TIME), so instances with skewed clocks agree on
# when anything expires.

# A variant written (KEYS: entries hash, expiry hash, lease; ARGV: entry field, value, expiry
# field, ms to keep it, lease token or ""). With a token, written only while the lease holds
# it (memcache's lease commit), and the lease is then released. Variants whose time is up are
# dropped, and both hashes expire with the last variant left (a Vary record alone had a day).
_WRITE = """
if ARGV[5] ~= '' then
  if redis.call('GET', KEYS[3]) ~= ARGV[5] then return 0 end
  redis.call('DEL', KEYS[3])
end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local last = now + tonumber(ARGV[4])
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
redis.call('HSET', KEYS[2], ARGV[3], last)
local times = redis.call('HGETALL', KEYS[2])
for i = 1, #times, 2 do
  local at = tonumber(times[i + 1]) or 0
  if at <= now then
    redis.call('HDEL', KEYS[2], times[i])
    redis.call('HDEL', KEYS[1], 'e:' .. string.sub(times[i], 3))
  elseif at > last then
    last = at
  end
end
redis.call('PEXPIREAT', KEYS[1], last)
redis.call('PEXPIREAT', KEYS[2], last)
return 1
"""

# A URL indexed for its tenant (KEYS: urls, expiries, sites, then one key per tag; ARGV: url,
# ms to keep it, site, how many to trim): up to that many expired URLs are unindexed, and each
# index key lives as long as the longest-lived URL it indexes, so a tenant that stops writing
# leaves nothing behind.
_INDEX = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local keep = tonumber(ARGV[2])
local expires = now + keep
local function last_as_long(key)
  if redis.call('PTTL', key) < keep then redis.call('PEXPIRE', key, keep) end
end
redis.call('ZADD', KEYS[1], 0, ARGV[1])
redis.call('ZADD', KEYS[2], 'GT', expires, ARGV[1])
redis.call('SADD', KEYS[3], ARGV[3])
for i = 4, #KEYS do
  redis.call('ZADD', KEYS[i], 'GT', expires, ARGV[1])
  redis.call('ZREMRANGEBYSCORE', KEYS[i], '-inf', now)
end
local gone = redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', now, 'LIMIT', 0, ARGV[4])
for _, url in ipairs(gone) do
  redis.call('ZREM', KEYS[1], url)
  redis.call('ZREM', KEYS[2], url)
end
for i = 1, #KEYS do last_as_long(KEYS[i]) end
return #gone
"""

# A Vary record (KEYS: entries hash; ARGV: packed names): a hash that holds only it expires.
_SET_VARY = """
redis.call('HSET', KEYS[1], 'v', ARGV[1])
if redis.call('PTTL', KEYS[1]) < 0 then redis.call('PEXPIRE', KEYS[1], ARGV[2]) end
"""



def keep_for(entry: Entry, now: float, bust_grace: float, keep_stale: float) -> float:
    """Seconds the shared tier keeps an entry: freshness left, then the longest it may still
    be served stale (its stale windows, or a soft bust's grace), then `keep_stale`."""
    f = entry.freshness
    left = f.lifetime - entry.age(now)
    return max(0.0, left) + max(f.swr, f.sie, bust_grace) + keep_stale


class RedisStore:
    """`Store` on Redis. Soft purges delete here too: only an instance's L1 keeps a
    soft-purged copy to serve while it revalidates; the others miss and refill once, under
    the fleet's lease."""

    def __init__(
        self,
        link: RedisLink,
        keys: Keys,
        settings: CacheSettings,
        clock: Callable[[], float],
        *,
        keep_stale: float,
    ) -> None:
        self.link = link
        self.keys = keys
        self.settings = settings
        self.clock = clock
        self.keep_stale = keep_stale
        self._write = link.data.register_script(_WRITE)
        self._index = link.data.register_script(_INDEX)
        self._set_vary = link.data.register_script(_SET_VARY)

    # -- entries -------------------------------------------------------------------------

    async def get(self, key: str) -> Entry | None:
        name = self.keys.entries(vary_record_key_of(key))
        raw = await self.link.run(lambda r: r.hget(name, entry_field(key)))
        entry = None if raw is None else codec.decode(raw)
        return entry if entry is not None and entry.key == key else None

    async def put(self, entry: Entry, lease: tuple[str, str] | None = None) -> bool:
        """Store (and index) the entry; with `lease` (its key, the holder's token) only while
        that lease is still held. False when it is too big, too old to keep, or the lease
        was lost."""
        if entry.size() > self.settings.max_object_bytes:
            return False
        now = self.clock()
        keep = keep_for(entry, now, self.settings.bust_grace, self.keep_stale)
        if keep <= 0:
            return False
        keep_ms = int(keep * 1000)
        url_key = vary_record_key(entry.tenant, entry.url)
        lease_key, token = lease or (self.keys.lease(url_key, entry.key), "")
        keys = [self.keys.entries(url_key), self.keys.entries(url_key) + "x", lease_key]
        args = [entry_field(entry.key), codec.encode(entry), expiry_field(entry.key), keep_ms,
                token]
        tenant = entry.tenant
        index_keys = [self.keys.urls(tenant), self.keys.expiries(tenant), self.keys.sites(tenant)]
        index_keys += [self.keys.tag(tenant, tag) for tag in entry.tags]
        index_args = [entry.url, keep_ms, site_of(entry.url), TRIM_PER_WRITE]
        # Two slots, so two scripts, sent together: a URL indexed for a write the lease then
        # refused costs nothing (the index is trimmed when its time is up), but an entry
        # written without its index would escape purges by prefix, tag and tenant: undone.
        outcomes: tuple[Any, Any] = await asyncio.gather(
            self.link.run(lambda r: self._write(keys=keys, args=args, client=r)),
            self.link.run(lambda r: self._index(keys=index_keys, args=index_args, client=r)),
            return_exceptions=True,
        )
        written, indexed = outcomes
        if isinstance(written, BaseException):
            raise written
        if isinstance(indexed, BaseException):
            if written:
                with contextlib.suppress(RedisUnavailable):
                    await self.delete(entry.key)
            raise indexed
        return bool(written)

    async def delete(self, key: str) -> bool:
        name = self.keys.entries(vary_record_key_of(key))
        removed = await self.link.run(lambda r: r.hdel(name, entry_field(key)))
        await self.link.run(lambda r: r.hdel(name + "x", expiry_field(key)))
        return bool(removed)

    # -- vary registry -------------------------------------------------------------------

    async def get_vary(self, primary_key: str) -> tuple[str, ...] | None:
        name = self.keys.entries(primary_key)
        raw = await self.link.run(lambda r: r.hget(name, VARY_FIELD))
        if raw is None:
            return None
        try:
            names = msgpack.unpackb(raw)
        except (ValueError, msgpack.UnpackException):
            return None
        if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
            return None  # not a record this version wrote: as if there were none
        return tuple(names)

    async def set_vary(self, primary_key: str, names: tuple[str, ...]) -> None:
        keys, packed = [self.keys.entries(primary_key)], msgpack.packb(list(names))
        await self.link.run(
            lambda r: self._set_vary(keys=keys, args=[packed, VARY_TTL_MS], client=r)
        )

    # -- purges (soft ones delete too: see the class) --------------------------------------

    async def purge_url(self, tenant: str, url: str, soft_at: float | None = None) -> int:
        return await self._purge_urls(tenant, [url])

    async def purge_prefix(self, tenant: str, url_prefix: str, soft_at: float | None = None) -> int:
        index = self.keys.urls(tenant)
        count = 0
        for prefix in url_prefixes(url_prefix, await self.sites(tenant)):
            lowest, highest = b"[" + prefix.encode(), b"[" + prefix.encode() + b"\xff"
            while True:
                found = await self._read(
                    "zrangebylex", index, lowest, highest, start=0, num=PURGE_BATCH
                )
                count += await self._purge_urls(tenant, [u.decode() for u in found])
                if len(found) < PURGE_BATCH:
                    break
                lowest = b"(" + found[-1]
        return count

    async def purge_tags(self, tenant: str, tags: list[str], soft_at: float | None = None) -> int:
        count = 0
        for tag in tags:
            name = self.keys.tag(tenant, tag)
            found = await self._read("zrange", name, 0, -1)
            count += await self._purge_urls(tenant, [u.decode() for u in found])
            if found:  # only what was read: a URL indexed meanwhile keeps its tag
                await self._read("zrem", name, *found)
        return count

    async def purge_tenant(self, tenant: str, soft_at: float | None = None) -> int:
        index = self.keys.urls(tenant)
        count = 0
        while True:
            found = await self._read("zrange", index, 0, PURGE_BATCH - 1)
            if not found:
                return count
            count += await self._purge_urls(tenant, [u.decode() for u in found])

    async def _purge_urls(self, tenant: str, urls: list[str]) -> int:
        """Delete each URL's two keys (one slot each), then unindex the URLs."""
        if not urls:
            return 0

        async def purge(r: Client) -> int:
            pipe = r.pipeline(transaction=False)
            for url in urls:
                name = self.keys.entries(vary_record_key(tenant, url))
                pipe.hlen(name + "x")
                pipe.delete(name, name + "x")
            done = await pipe.execute()
            return sum(int(n) for n in done[0::2])

        async def unindex(r: Client) -> None:
            pipe = r.pipeline(transaction=False)
            pipe.zrem(self.keys.urls(tenant), *urls)
            pipe.zrem(self.keys.expiries(tenant), *urls)
            await pipe.execute()

        count = await self.link.run(purge)
        await self.link.run(unindex)
        return count

    async def sites(self, tenant: str) -> list[str]:
        found = await self._read("smembers", self.keys.sites(tenant))
        return sorted(s.decode() for s in found)

    # -- inspection (the admin API's /admin/entries and /admin/entry; reads only) ----------

    async def urls_from(
        self, tenant: str, prefix: str, after: str = "", *, inclusive: bool = True, limit: int
    ) -> list[str]:
        """Up to `limit` of the tenant's indexed URLs that start with `prefix`, in order, from
        `after` on: one ZRANGEBYLEX with LIMIT. The index may still name a URL whose entries
        have expired (it is trimmed as the tenant writes): `variants` finds nothing there."""
        if after > prefix:
            lowest = (b"[" if inclusive else b"(") + after.encode()
        else:
            lowest = b"[" + prefix.encode()
        highest = b"[" + prefix.encode() + b"\xff" if prefix else b"+"
        found = await self._read(
            "zrangebylex", self.keys.urls(tenant), lowest, highest, start=0, num=limit
        )
        return [url.decode() for url in found]

    async def variants(self, tenant: str, urls: list[str]) -> dict[str, list[Entry]]:
        """Every entry Redis holds for each URL (the fields of its hash), in key order. One
        pipelined round trip per INSPECT_BATCH URLs: entries carry their bodies, and no single
        command should carry a whole page of them past the link's timeout."""
        held: dict[str, list[Entry]] = {}
        for start in range(0, len(urls), INSPECT_BATCH):
            batch = urls[start : start + INSPECT_BATCH]

            async def read(r: Client, batch: list[str] = batch) -> list[dict[bytes, bytes]]:
                pipe = r.pipeline(transaction=False)
                for url in batch:
                    pipe.hgetall(self.keys.entries(vary_record_key(tenant, url)))
                found: list[dict[bytes, bytes]] = await pipe.execute()
                return found

            for url, fields in zip(batch, await self.link.run(read), strict=True):
                decoded = [codec.decode(v) for f, v in fields.items() if f.startswith(_ENTRY)]
                held[url] = sorted(
                    (e for e in decoded if e is not None and e.tenant == tenant and e.url == url),
                    key=lambda e: e.key,
                )
        return held

    async def _read(self, command: str, *args: Any, **kwargs: Any) -> Any:
        """One command by name, through the link."""
        return await self.link.run(lambda r: getattr(r, command)(*args, **kwargs))

