"""The filler: one origin fetch for a key, turned into a stored entry, a shared stream or a pass.

A fill announces its answer as soon as the origin's head is in (see `gateway.coalesce`): a
shareable response becomes `Streaming`, whose body every client of the fill reads as it
arrives (`gateway.broadcast`), and is stored once it is whole and fits; a response that may not
be shared is `Passed` to the one client that caused the fill; a 304 to a revalidation is
`Stored` at once.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from multidict import CIMultiDict

from gateway import policy, validation
from gateway.analysis import Analysis, analyse
from gateway.broadcast import Broadcast
from gateway.coalesce import Flight
from gateway.directives import http_date_text
from gateway.fleet.lease import Landed, Lease, Leases
from gateway.generations import Generations
from gateway.headers import (
    NOT_STORED,
    client_response_headers,
    end_to_end,
    fill_request_headers,
    forwarding_fields,
)
from gateway.key import vary_record_key
from gateway.lookup import Lookup
from gateway.outcomes import Outcome, Recorder
from gateway.settings import CacheSettings
from gateway.store import Entry, Store
from gateway.upstream import (
    FAILURE_STATUSES,
    OriginError,
    OriginResponse,
    OriginUnavailable,
    Upstream,
)

# Seconds a fill over its memory window waits for clients that joined it to start reading; a
# client woken by the fill's answer starts within a few turns of the event loop.
STARTERS_WAIT = 0.5


class OriginStatusError(OriginError):
    """The origin answered a failure status while a stale entry may stand in for it."""

    def __init__(self, origin: str, status: int) -> None:
        super().__init__(origin, f"status {status}")
        self.status = status


@dataclass(slots=True)
class Stored:
    """A fill whose entry is whole (stored, or refused by a size or quota bound)."""

    entry: Entry
    x_cache: str  # MISS, EXPIRED or REVALIDATED
    fwd_status: int
    stored: bool
    # The origin's response as the client that caused the fill may see it: with the fields a
    # shared copy must drop (Set-Cookie under private="Set-Cookie", no-cache="X"). None after a
    # 304, where the stored copy is all there is.
    own_headers: list[tuple[str, str]] | None = None
    remote: bool = False  # filled by another instance of the fleet, read from Redis
    waited: float | None = None  # seconds to the origin's response head (None: not fetched here)


@dataclass(slots=True)
class Streaming:
    """A shareable response whose body is still arriving: `entry` holds its head (its body is
    set when it is whole), `broadcast` the bytes so far."""

    entry: Entry
    x_cache: str
    fwd_status: int
    broadcast: Broadcast
    own_headers: list[tuple[str, str]]
    length: str | None  # the Content-Length the origin announced
    waited: float  # seconds to the origin's response head


@dataclass(slots=True)
class Passed:
    """A response that may not be shared: only the client that caused the fill may stream it."""

    response: OriginResponse
    reason: str
    consumed: str | None = None  # the targeted field obeyed, kept from clients
    claimed: bool = False

    def release_unclaimed(self) -> None:
        if not self.claimed:
            self.response.close()


Fill = Stored | Streaming | Passed


class Filler:
    def __init__(
        self,
        settings: CacheSettings,
        store: Store,
        generations: Generations,
        recorder: Recorder,
        clock: Callable[[], float],
    ) -> None:
        self.settings = settings
        self.store = store
        self.generations = generations
        self.recorder = recorder
        self.clock = clock
        self.leases: Leases | None = None  # in a fleet: one origin fetch per key fleet-wide

    def request_headers(self, look: Lookup, upstream: Upstream) -> CIMultiDict[str]:
        """Exactly what a fill sends: the gateway's own fields and the keyed ones, plus the
        credentials of a request that fetches alone (see `gateway.canonical`)."""
        forwarding = forwarding_fields(look.req, look.route, upstream.host, self.settings.via)
        headers = fill_request_headers(look.fields, **forwarding)
        if look.alone:
            for value in look.req.headers.getall("Authorization", []):
                headers.add("Authorization", value)
        return headers

    async def fill(
        self,
        flight: Flight[Fill],
        look: Lookup,
        upstream: Upstream,
        stale: Entry | None,
        *,
        background: bool = False,
    ) -> Fill:
        """Fetch the key (conditionally when a stale entry has validators), announce the
        answer on `flight`, then read a shared body to its end and store it if it fits. In a
        fleet, under the key's lease: or with the entry another instance filled meanwhile."""
        lease: Lease | None = None
        if self.leases is not None and not look.alone:
            claim = await self.leases.claim(look, None if stale is None else stale.response_time)
            if isinstance(claim, Landed):
                self.recorder.count(Outcome.FLEET_COLLAPSED, look.tenant)
                entry = claim.entry
                x_cache = "MISS" if stale is None else "EXPIRED"
                return Stored(entry, x_cache, entry.status, True, remote=True)
            lease = claim
        try:
            return await self._fetch(flight, look, upstream, stale, lease, background)
        finally:
            if lease is not None:
                lease.give_up(shareable=True)  # unless it was kept: one waiter takes over

    async def _fetch(
        self,
        flight: Flight[Fill],
        look: Lookup,
        upstream: Upstream,
        stale: Entry | None,
        lease: Lease | None,
        background: bool,
    ) -> Fill:
        headers = self.request_headers(look, upstream)
        if stale is not None:
            headers.update(validation.validators(CIMultiDict(stale.headers)))
        epoch = self.generations.epoch  # stamped now: a bust during the fetch still applies
        try:
            resp = await upstream.request("GET", look.path_qs, headers, background=background)
        except OriginUnavailable:
            self.recorder.count(Outcome.ORIGIN_REFUSED, look.tenant)  # nothing was sent
            raise
        self.recorder.count(Outcome.ORIGIN_FETCH, look.tenant)
        if background:
            self.recorder.count(Outcome.BACKGROUND_REFRESH, look.tenant)
        try:
            head = await self._head(flight, look, stale, resp, epoch, lease)
        except BaseException:
            resp.close()
            raise
        if lease is not None and not (isinstance(head, Streaming) and head.broadcast.keep_all):
            lease.give_up(shareable=not isinstance(head, Passed))  # nothing to wait for
        if not isinstance(head, Streaming):
            return head
        task = asyncio.current_task()
        if task is not None:  # the fill stops when nobody reads a body it will not store
            head.broadcast.on_abandoned = task.cancel
        # A stale entry that may stand in for an error is served if the body fails halfway,
        # so its revalidation is answered once the body is whole (a body too big to store is
        # streamed at once: it could not replace the stale entry anyway).
        hold = (
            head.broadcast.keep_all
            and stale is not None
            and policy.usable_if_error(stale.freshness, stale.age(self.clock()), look.req.headers)
        )
        if not hold:
            flight.announce(head)
        return await self._body(flight, look, resp, head, lease)

    async def _keep(self, entry: Entry, lease: Lease | None) -> bool:
        """Store a whole entry: under the fleet lease when this fill holds one."""
        if lease is None:
            return await self.store.put(entry)
        return await lease.keep(entry)

    async def _head(
        self,
        flight: Flight[Fill],
        look: Lookup,
        stale: Entry | None,
        resp: OriginResponse,
        epoch: int,
        lease: Lease | None,
    ) -> Fill:
        """What the origin's head makes of the fill (the response stays open unless Stored)."""
        rh = resp.headers
        if policy.coded_without_vary(rh):  # chosen by the Accept-Encoding bucket every fill sends
            rh.add("Vary", "Accept-Encoding")
        if "Date" not in rh:  # RFC 9110 6.6.1: a cache records when it received a dateless one
            rh["Date"] = http_date_text(resp.response_time)
        if stale is not None and resp.status == 304:
            resp.close()
            merged = CIMultiDict(validation.merge_not_modified(stale.headers, rh))
            entry = self._entry(look, stale.status, merged, resp, epoch, body=stale.body)
            stored = await self._keep(entry, lease)
            return Stored(entry, "REVALIDATED", 304, stored, waited=resp.waited)
        if (
            stale is not None
            and resp.status in FAILURE_STATUSES
            and policy.usable_if_error(stale.freshness, stale.age(self.clock()), look.req.headers)
        ):
            resp.close()
            raise OriginStatusError(look.route.cfg.origin, resp.status)
        analysis = self._analyse(look, resp.status, rh, resp)
        if analysis.refusal is not None:
            return Passed(resp, analysis.refusal, analysis.consumed)
        length = rh.get("Content-Length")
        fits = not (length and length.isdigit() and int(length) > self.settings.max_object_bytes)
        entry = self._entry(look, resp.status, rh, resp, epoch, analysis=analysis)
        own = self.visible_headers(look, rh, analysis.consumed, drop=("age",))
        x_cache = "MISS" if stale is None else "EXPIRED"
        # What the URL varies on is known now: a client this answer does not fit (it varies
        # on a field the fill did not send) looks again under the key that includes it.
        await self.store.set_vary(vary_record_key(look.tenant, look.url), entry.vary)
        window = self.settings.max_object_bytes
        broadcast = Broadcast(keep_all=fits, window=window, pending=lambda: flight.waiting)
        return Streaming(entry, x_cache, resp.status, broadcast, own, length, resp.waited)

    async def _body(
        self,
        flight: Flight[Fill],
        look: Lookup,
        resp: OriginResponse,
        head: Streaming,
        lease: Lease | None,
    ) -> Fill:
        """Read the shared body to its end; store it when it is whole and fits. A failure
        halfway cuts the readers off; the fill's own error if it had not answered yet."""
        broadcast = head.broadcast
        limit = self.settings.max_object_bytes
        try:
            async for chunk in resp:
                broadcast.append(chunk)
                if broadcast.done:
                    return head  # an unstored body nobody reads any more
                if broadcast.keep_all and broadcast.size > limit:
                    broadcast.stop_keeping()  # too big to store: still streamed to its readers
                    flight.announce(head)
                    if lease is not None:
                        lease.give_up(shareable=True)
                if broadcast.full():
                    await broadcast.make_room(STARTERS_WAIT)
        except OriginError as exc:
            broadcast.finish(exc)
            self.recorder.count(Outcome.ORIGIN_ERROR, look.tenant)
            if not flight.head.done():
                raise
            return head
        finally:
            resp.close()
        broadcast.finish()
        if not broadcast.keep_all:
            self.recorder.count(Outcome.NOT_STORED, look.tenant)
            return head
        entry = head.entry
        entry.body = broadcast.body()
        stored = await self._keep(entry, lease)
        self.recorder.count(Outcome.STORED if stored else Outcome.NOT_STORED, look.tenant)
        return Stored(
            entry, head.x_cache, head.fwd_status, stored, head.own_headers, waited=head.waited
        )

    def _analyse(
        self, look: Lookup, status: int, rh: CIMultiDict[str], resp: OriginResponse
    ) -> Analysis:
        cache = look.route.cfg.cache
        return analyse(
            status,
            look.req.headers,
            rh,
            look.route.rules,
            client_no_cache=cache.client_no_cache,
            request_time=resp.request_time,
            response_time=resp.response_time,
        )

    def _entry(
        self,
        look: Lookup,
        status: int,
        rh: CIMultiDict[str],
        resp: OriginResponse,
        epoch: int,
        *,
        body: bytes = b"",
        analysis: Analysis | None = None,
    ) -> Entry:
        """The entry for a response (its body set later when it is still arriving); keyed on
        what this fill sent: a Vary name it did not send is absent."""
        a = analysis or self._analyse(look, status, rh, resp)
        strip = NOT_STORED | set(a.strip)
        return Entry(
            key=look.key_for(look.key_names(a.vary), look.fields),
            tenant=look.tenant,
            url=look.url,
            status=status,
            headers=tuple(end_to_end(rh, strip)),
            body=body,
            response_time=resp.response_time,
            initial_age=a.initial_age,
            freshness=a.freshness,
            etag=a.etag,
            last_modified=a.last_modified,
            vary=a.vary,
            tags=a.tags,
            stored_at=resp.response_time,
            soft_generation=epoch,
            visible=tuple(self.visible_headers(look, rh, a.consumed, drop=strip)),
        )

    @staticmethod
    def visible_headers(
        look: Lookup,
        rh: CIMultiDict[str],
        consumed: str | None,
        *,
        drop: Iterable[str],
    ) -> list[tuple[str, str]]:
        """What a client sees of an origin response on this route (see client_response_headers)."""
        return client_response_headers(
            rh, keep_tags=look.route.cfg.cache.keep_tags, consumed=consumed, drop=drop
        )
