"""Versioned cache-bust keys: hard generations go into keys, soft ones make entries stale.

A hard bust bumps a counter folded into every key of the tenant (or of everyone), so old entries
become unreachable in O(1) and age out of the LRU. A soft bust records an epoch: entries stored
under an older epoch count as stale (served while one background revalidation per key refreshes
them) until the grace runs out, after which they count as misses.
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass
from datetime import UTC, datetime

GLOBAL = "*"
# Soft busts remembered per scope. An entry stamped before the oldest one kept counts as stale
# since that one: later than it truly became stale, so only its grace is longer than it
# should be, and only after this many soft busts of one tenant within one entry's lifetime.
SOFT_BUSTS_KEPT = 64


@dataclass(frozen=True, slots=True)
class SoftBust:
    epoch: int  # entries stamped below this are stale
    at: float  # wall clock of the bust, for the grace window


class Generations:
    def __init__(self, cache_bust: str = "") -> None:
        self.cache_bust = cache_bust
        self.hard: dict[str, int] = {GLOBAL: 0}
        self.soft: dict[str, list[SoftBust]] = {}  # per scope, oldest first
        self.epoch = 1  # the stamp a fill starting now gives its entry

    def key_part(self, tenant: str) -> str:
        """What a key carries: config cache_bust, global and tenant hard generations."""
        return f"{self.cache_bust}.{self.hard[GLOBAL]}.{self.hard.get(tenant, 0)}"

    def stale_since(self, tenant: str, stamp: int) -> float | None:
        """When an entry stamped `stamp` became soft-stale, or None if it is current."""
        since: float | None = None
        for scope in (GLOBAL, tenant):
            busts = self.soft.get(scope)
            if not busts or stamp >= busts[-1].epoch:
                continue
            # The first bust after the stamp made the entry stale; later ones change nothing.
            first = busts[bisect.bisect_right(busts, stamp, key=lambda b: b.epoch)]
            since = first.at if since is None else min(since, first.at)
        return since

    def bump(self, tenant: str, *, soft: bool, now: float) -> dict[str, object]:
        """Bust a tenant, or everyone with `*` (one process; a fleet bumps in Redis and
        applies the values it got with `raise_hard` and `add_soft`)."""
        if soft:
            self.add_soft(tenant, self.epoch + 1, now)
        else:
            self.raise_hard(tenant, self.hard.get(tenant, 0) + 1)
        return self.describe(tenant) | {"busted": "soft" if soft else "hard"}

    def raise_hard(self, tenant: str, generation: int) -> None:
        """The tenant's hard generation is at least `generation` (never lowered: a lower
        value would bring busted keys back)."""
        if generation > self.hard.get(tenant, 0):
            self.hard[tenant] = generation

    def add_soft(self, tenant: str, epoch: int, at: float) -> None:
        """A soft bust of epoch `epoch` at `at` (idempotent; busts may arrive out of order)."""
        busts = self.soft.setdefault(tenant, [])
        if any(b.epoch == epoch for b in busts):
            return
        bisect.insort(busts, SoftBust(epoch, at), key=lambda b: b.epoch)
        del busts[:-SOFT_BUSTS_KEPT]
        self.epoch = max(self.epoch, epoch)

    def describe(self, tenant: str) -> dict[str, object]:
        """What an operator reads of a tenant's busts: how many hard ones (its generation),
        how many soft ones (the last SOFT_BUSTS_KEPT), when the latest soft one was, and the
        key part in use. The soft-bust epoch is the fleet's internal counter, shown apart."""
        busts = self.soft.get(tenant, [])
        last = busts[-1] if busts else None
        return {
            "tenant": tenant,
            "hard": self.hard.get(tenant, 0),
            "soft": len(busts),
            "last_soft_bust": None if last is None else iso_time(last.at),
            "key": self.key_part(tenant),
            "epoch": self.epoch,
        }


def iso_time(at: float) -> str:
    """A wall-clock time as an operator reads it in admin answers: UTC, to the second."""
    return datetime.fromtimestamp(at, UTC).isoformat(timespec="seconds").replace("+00:00", "Z")
