"""Where things live in Redis: key names and their hash tags (pure).

Redis Cluster places a key by the part between its first `{` and `}`. Three kinds of slot:

- one per URL, `{P:u:<digest of tenant and URL>}`: the URL's entries (one hash, a field per
  variant and generation), its Vary record (a field of the same hash) and its fill leases, so
  that writing an entry, checking its lease and recording Vary are single-slot commands (a Lua
  script may touch them together) and data spreads over the cluster URL by URL;
- one per tenant, `{P:t:<tenant>}`: the tenant's URL, expiry, tag and site indexes, which
  purges by prefix, tag or tenant read;
- one for control, `{P:c}`: generations, the soft-bust epoch counter and the purge stream, so
  that a bust and its stream record are one atomic script. Control traffic is a few commands
  per purge or bust, not per request.

Entry keys in the gateway are long and may hold any byte of a URL: names here are digests of
them (the whole key is kept inside the stored entry and checked on read).
"""

from __future__ import annotations

import hashlib

VARY_FIELD = "v"  # the Vary record's field in a URL's hash
ENTRY_FIELD = "e:"  # + digest of the entry key: an entry's field
EXPIRY_FIELD = "x:"  # + the same digest: when that entry's field may be dropped (ms)


def digest(text: str) -> str:
    return hashlib.blake2b(text.encode("utf-8", "surrogateescape"), digest_size=12).hexdigest()


class Keys:
    """The names under one `prefix` (config `redis.prefix`), so fleets may share a Redis."""

    def __init__(self, prefix: str) -> None:
        self.prefix = prefix
        control = "{" + prefix + ":c}"
        self.stream = f"{prefix}:{control}:purges"
        self.hard = f"{prefix}:{control}:hard"  # hash: tenant -> hard generation
        self.epoch = f"{prefix}:{control}:epoch"  # the soft-bust epoch counter
        self.soft = f"{prefix}:{control}:soft"  # hash: tenant -> recent soft busts
        self.stats = f"{prefix}:{control}:stats:"  # + machine id: per-worker snapshots

    def url_slot(self, vary_record_key: str) -> str:
        """The hash-tagged stem of a URL's keys (from `gateway.key.vary_record_key`, which
        holds the tenant and the URL and no generation: a bust does not move the slot)."""
        return f"{self.prefix}:{{{self.prefix}:u:{digest(vary_record_key)}}}"

    def entries(self, vary_record_key: str) -> str:
        """The hash of a URL's entries and its Vary record."""
        return self.url_slot(vary_record_key) + ":e"

    def lease(self, vary_record_key: str, entry_key: str) -> str:
        return f"{self.url_slot(vary_record_key)}:l:{digest(entry_key)}"

    def tenant(self, tenant: str) -> str:
        """The stem of a tenant's index keys."""
        return f"{self.prefix}:{{{self.prefix}:t:{digest(tenant)}}}"

    def urls(self, tenant: str) -> str:
        """Sorted set of the tenant's URLs (all scores 0: ordered by URL, for prefix ranges)."""
        return self.tenant(tenant) + ":urls"

    def expiries(self, tenant: str) -> str:
        """Sorted set URL -> when its last entry expires (ms), to trim the other indexes."""
        return self.tenant(tenant) + ":exp"

    def tag(self, tenant: str, tag: str) -> str:
        """Sorted set URL -> expiry (ms) of the URLs whose entries carry the tag."""
        return f"{self.tenant(tenant)}:tag:{digest(tag)}"

    def sites(self, tenant: str) -> str:
        """Set of `scheme://host` the tenant's entries are on."""
        return self.tenant(tenant) + ":sites"


def entry_field(entry_key: str) -> str:
    return ENTRY_FIELD + digest(entry_key)


def expiry_field(entry_key: str) -> str:
    return EXPIRY_FIELD + digest(entry_key)
