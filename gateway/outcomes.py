"""What the gateway counts, as one enum, and the one recorder every counter goes through.

`/admin/stats` reads the recorder's snapshot; a metrics exporter reads the same counts. Tenant
names come from clients (a query parameter, a header), so per-tenant series are bounded: the
tenants the config names (under `tenants:` or in an admin token's scope) and the default one
have series of their own, every other tenant is counted under `other`.
"""

from __future__ import annotations

import enum
from collections import Counter
from collections.abc import Iterable

from gateway.router import DEFAULT_TENANT

OTHER = "other"


class Outcome(enum.StrEnum):
    """Everything counted; the value is the name `/admin/stats` shows. A str enum, so that
    counting hashes in C (a plain Enum hashes in Python, on every hit)."""

    # How a request on a cached route was answered.
    HIT = "hit"
    MISS = "miss"
    COLLAPSED = "collapsed"  # answered by a fill another request started
    STALE_WHILE_REVALIDATE = "stale_while_revalidate"
    STALE_IF_ERROR = "stale_if_error"
    PASS = "pass"  # the origin's answer may not be shared
    ORIGIN_ERROR = "origin_errors"
    ONLY_IF_CACHED_MISS = "only_if_cached_miss"
    COLLAPSE_TIMEOUT = "collapse_timeout"  # a joiner gave up on a slow fill and fetched alone
    STREAM_CUT = "stream_cut"  # a reader fell too far behind an unstored shared fill
    BYPASS = "bypass"  # an uncached route or method
    # What fills did.
    ORIGIN_FETCH = "origin_fetches"
    ORIGIN_REFUSED = "origin_refused"  # breaker open or budget full: nothing sent
    STORED = "stored"
    NOT_STORED = "not_stored"  # shareable, but refused by a size or quota bound
    BACKGROUND_REFRESH = "background_refreshes"
    # Invalidation.
    INVALIDATED = "invalidated"
    INVALIDATION_FAILED = "invalidations_not_shared"  # Redis missed an unsafe method's purge
    FLEET_COLLAPSED = "fleet_collapsed"  # answered by an entry another instance filled
    PURGED = "purged"
    SOFT_PURGED = "soft_purged"
    HARD_BUST = "hard_busts"
    SOFT_BUST = "soft_busts"
    EVICTION = "evictions"


class Recorder:
    def __init__(self, tenants: Iterable[str] = ()) -> None:
        self.totals: Counter[Outcome] = Counter()
        self.by_tenant: dict[str, Counter[Outcome]] = {}
        self.named: frozenset[str] = frozenset()
        self.name_tenants(tenants)

    def name_tenants(self, tenants: Iterable[str]) -> None:
        """The tenants with series of their own (from the config; again on reload)."""
        self.named = frozenset(tenants) | {DEFAULT_TENANT}

    def label(self, tenant: str) -> str:
        """The series a tenant is counted under: its own if the config names it, else `other`."""
        return tenant if tenant in self.named else OTHER

    def count(self, outcome: Outcome, tenant: str | None, n: int = 1) -> None:
        """Count `outcome` in the totals and, unless `tenant` is None, for the tenant."""
        self.totals[outcome] += n
        if tenant is None:
            return
        bucket = self.by_tenant.get(tenant)  # a named tenant's, once it has counted anything
        if bucket is None:
            label = self.label(tenant)
            bucket = self.by_tenant.get(label)
            if bucket is None:
                bucket = self.by_tenant[label] = Counter()
        bucket[outcome] += n

    def totals_by_name(self) -> dict[str, int]:
        return {outcome.value: n for outcome, n in self.totals.items()}

    def tenants_by_name(self) -> dict[str, dict[str, int]]:
        return {
            tenant: {outcome.value: n for outcome, n in counts.items()}
            for tenant, counts in self.by_tenant.items()
        }
