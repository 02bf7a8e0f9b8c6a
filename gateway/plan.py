"""The lookup plan: what to do with one request, given what is stored, as a pure function.

`plan()` takes plain data (the request's fields, the stored entry, the bust generations, the
clock's value, a few facts about the key) and returns one of six plans; `gateway.cache` is the
driver that performs it. No I/O and no clock reading here, so every rule is tested with a value.
The plans are slotted dataclasses, not frozen ones: building a frozen one costs twice as much,
on every hit.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from gateway import policy
from gateway.generations import Generations
from gateway.store import Entry


@dataclass(slots=True)
class Hit:
    """Serve the stored entry (RFC 9111 4.2: fresh, or stale as the client allows)."""

    entry: Entry
    ttl: float


@dataclass(slots=True)
class ServeStale:
    """Serve the stored entry now and refresh it once in the background (RFC 5861 3, and a
    soft purge or bust within its grace)."""

    entry: Entry
    ttl: float


@dataclass(slots=True)
class Revalidate:
    """Ask the origin whether the stored entry still holds (RFC 9111 4.3); `fwd` says why:
    "stale", or "request" when the client's directives asked for it."""

    entry: Entry
    fwd: str


@dataclass(slots=True)
class Fetch:
    """Nothing usable is stored: fetch it, joining the fill already running for the key."""

    fwd: str = "uri-miss"


@dataclass(slots=True)
class OnlyIfCached:
    """The client forbids going to the origin and nothing usable is stored (RFC 9111 5.2.1.7)."""


@dataclass(slots=True)
class Pass:
    """Fetch for this request alone (it shares no fill); the answer is still stored if it may
    be. `stale` is the entry to revalidate, if any."""

    stale: Entry | None
    fwd: str


Plan = Hit | ServeStale | Revalidate | Fetch | OnlyIfCached | Pass


def soft_stale_since(entry: Entry, generations: Generations) -> float | None:
    """When a soft purge or a soft bust made this entry stale, if one did."""
    since = generations.stale_since(entry.tenant, entry.soft_generation)
    if entry.soft_purged_at is not None and (since is None or entry.soft_purged_at < since):
        since = entry.soft_purged_at
    return since


def plan(
    req_headers: Any,
    entry: Entry | None,
    now: float,
    generations: Generations,
    *,
    bust_grace: float,
    client_no_cache: str = "honor",
    alone: bool = False,
    known_pass: bool = False,
    fill_running: bool = False,
) -> Plan:
    """The plan for a GET or HEAD on a cached route (`req_headers` as in `gateway.policy`).
    What the driver knows about the key beyond the stored entry: `alone`, the request carries
    credentials (RFC 9111 3.5); `known_pass`, the key's last answer could not be shared;
    `fill_running`, a fill for the key is in flight (it may be joined)."""
    fwd = "uri-miss"
    stale: Entry | None = None
    if entry is not None:
        soft_since = soft_stale_since(entry, generations)
        soft_grace = 0.0 if soft_since is None else soft_since + bust_grace - now
        if soft_since is None or soft_grace > 0:  # past its grace a soft-busted entry is gone
            verdict = policy.judge(
                entry.freshness,
                entry.age(now),
                req_headers,
                soft_since is not None,
                soft_grace=soft_grace,
                client_no_cache=client_no_cache,
                validated_ago=now - entry.response_time,
            )
            if verdict.reuse is policy.Reuse.FRESH:
                return Hit(entry, verdict.ttl)
            if verdict.reuse is policy.Reuse.STALE_WHILE_REVALIDATE:
                return ServeStale(entry, verdict.ttl)
            stale = entry
            fwd = "request" if verdict.detail.startswith("req-") else "stale"
    directives = policy.request_directives(req_headers, client_no_cache)
    if "only-if-cached" in directives:
        return OnlyIfCached()
    # A request that may not share a fill: credentials, a key known not to be shareable, or
    # no-store (its response must not be stored, and it must not make the key a pass for
    # everyone else; it still joins a fill already running).
    if alone or known_pass or ("no-store" in directives and not fill_running):
        return Pass(stale, fwd)
    if stale is not None:
        return Revalidate(stale, fwd)
    return Fetch(fwd)
