"""The cache path of one request, as a driver: locate the key, plan, perform the plan.

What to do comes from `gateway.plan` (a pure function of the request, the stored entry, the
generations and the clock's value); how a fill turns an origin response into an entry or a
stream is `gateway.fill`; replies are built by `gateway.replies`. This module only sequences
them with the store, the single-flight table and the origin clients.
"""

from __future__ import annotations

import asyncio
from collections import OrderedDict
from collections.abc import Awaitable, Callable

from multidict import CIMultiDict

from gateway import invalidation, policy
from gateway.cache_status import cache_status
from gateway.canonical import BadRequest, absolute_target, keyed_url
from gateway.coalesce import FillAbandoned, Flight, SingleFlight
from gateway.exchange import Incoming, Reply
from gateway.fill import Fill, Filler, OriginStatusError, Passed, Stored, Streaming
from gateway.fleet.link import RedisUnavailable
from gateway.generations import Generations
from gateway.headers import forwarding_fields, pass_request_headers
from gateway.key import vary_record_key
from gateway.lookup import Locator, Lookup
from gateway.outcomes import Outcome, Recorder
from gateway.plan import Fetch, Hit, OnlyIfCached, Pass, Revalidate, ServeStale, plan
from gateway.replies import Replies
from gateway.router import Route
from gateway.settings import CacheSettings
from gateway.store import Entry, Store
from gateway.upstream import OriginError, Upstream

PASS_MEMORY = 10_000  # keys remembered as "pass" at most


class Cache:
    def __init__(
        self,
        *,
        settings: CacheSettings,
        store: Store,
        upstreams: dict[str, Upstream],
        recorder: Recorder,
        clock: Callable[[], float],
        generations: Generations,
    ) -> None:
        self.settings = settings
        self.store = store
        self.upstreams = upstreams
        self.recorder = recorder
        self.clock = clock
        self.generations = generations
        self.locator = Locator(self.generations)
        self.replies = Replies(settings)
        self.filler = Filler(settings, store, self.generations, recorder, clock)
        self.flights: SingleFlight[Fill] = SingleFlight()
        self.pass_until: OrderedDict[str, float] = OrderedDict()
        self.locate: Callable[[Incoming, Route], Lookup] = self.locator.locate

    async def serve(self, req: Incoming, route: Route) -> Reply:
        """Answer a GET or HEAD on a cached route."""
        look = self.locate(req, route)
        for _ in range(2):  # a second round when a fill reveals a Vary this request differs on
            look.vary_on(await self.store.get_vary(vary_record_key(look.tenant, look.url)) or ())
            reply = await self._serve_key(look)
            if reply is not None:
                reply.tenant = look.tenant
                return reply
        reply = await self._fetch(look, None, "uri-miss", alone=True)
        assert reply is not None  # a fill of this request's own always answers it
        reply.tenant = look.tenant
        return reply

    async def _serve_key(self, look: Lookup) -> Reply | None:
        """Perform the plan for the key; None when a fill's answer varies on a field this
        request differs on (the caller tries again with the key that learnt it)."""
        req = look.req
        entry = await self.store.get(look.key)
        now = self.clock()
        chosen = plan(
            req.headers,
            entry,
            now,
            self.generations,
            bust_grace=self.settings.bust_grace,
            client_no_cache=look.route.cfg.cache.client_no_cache,
            alone=look.alone,
            known_pass=look.key in self.pass_until and self._is_pass(look.key),
            fill_running=look.key in self.flights.running,
        )
        match chosen:
            case Hit(entry=hit, ttl=ttl):
                self.recorder.count(Outcome.HIT, look.tenant)
                status = cache_status(self.settings.name, hit=True, ttl=ttl)
                return self.replies.from_entry(req, hit, now, "HIT", status)
            case ServeStale(entry=stale, ttl=ttl):
                self.recorder.count(Outcome.STALE_WHILE_REVALIDATE, look.tenant)
                self.refresh_in_background(look, stale)
                status = cache_status(
                    self.settings.name, hit=True, ttl=ttl, detail="stale-while-revalidate"
                )
                return self.replies.from_entry(req, stale, now, "UPDATING", status)
            case OnlyIfCached():
                self.recorder.count(Outcome.ONLY_IF_CACHED_MISS, look.tenant)
                return self.replies.error(504, "not in cache (only-if-cached)", fwd="miss")
            case Pass(stale=stale, fwd=fwd):
                return await self._fetch(look, stale, fwd, alone=True)
            case Revalidate(entry=stale, fwd=fwd):
                return await self._fetch(look, stale, fwd)
            case Fetch(fwd=fwd):
                return await self._fetch(look, None, fwd)

    async def _fetch(
        self,
        look: Lookup,
        stale: Entry | None,
        fwd: str,
        *,
        alone: bool = False,
        collapsed: bool = False,
    ) -> Reply | None:
        """Join (or lead) the key's fill, or with `alone` run one of this request's own; what
        it fetches is stored whenever it may be."""
        fill = self._filling(look, stale)
        if alone:
            flight, leader = self.flights.run_alone(look.key, fill), True
        else:
            flight, leader = self.flights.start(look.key, fill)
        try:
            result = await flight.wait(None if leader else self.settings.collapse_timeout)
        except TimeoutError:
            self.recorder.count(Outcome.COLLAPSE_TIMEOUT, look.tenant)
            return await self._fetch(look, stale, fwd, alone=True)
        except FillAbandoned:
            if alone:
                return self.replies.error(503, "fill abandoned", fwd=fwd, retry_after=1.0)
            return await self._fetch(look, stale, fwd, alone=True)
        except OriginError as exc:
            return self.on_origin_error(look, stale, exc, fwd)
        except asyncio.CancelledError:
            if leader and flight.task is not None:  # nobody else may stream an unshareable answer
                flight.task.add_done_callback(_release_passed)
            raise
        return await self._answer(
            look, result, stale, fwd, leader=leader, collapsed=collapsed, alone=alone
        )

    async def _answer(
        self,
        look: Lookup,
        result: Fill,
        stale: Entry | None,
        fwd: str,
        *,
        leader: bool,
        collapsed: bool,
        alone: bool,
    ) -> Reply | None:
        """The reply from a fill's answer, for the request that led it or one that joined it.
        None when a shared fill's answer varies on a field this request differs on."""
        req, now = look.req, self.clock()
        collapsed = collapsed or not leader
        if isinstance(result, Stored | Streaming) and not (
            alone or look.answered_by(result.entry.key, result.entry.vary)
        ):
            return None
        match result:
            case Passed():
                if leader:
                    self.recorder.count(Outcome.PASS, look.tenant)
                    keep_tags = look.route.cfg.cache.keep_tags
                    return self.replies.passed(result, fwd, keep_tags=keep_tags)
                self._remember_pass(look.key)
                return await self._fetch(look, stale, fwd, alone=True, collapsed=True)
            case Stored():
                collapsed = collapsed or result.remote
                self.recorder.count(Outcome.COLLAPSED if collapsed else Outcome.MISS, look.tenant)
                return self.replies.stored(req, result, now, fwd, collapsed=collapsed, own=leader)
            case Streaming():
                reply = self.replies.streaming(
                    req, result, now, fwd, collapsed=collapsed, own=leader
                )
                if reply is None:  # too late to read this fill from its start
                    self.recorder.count(Outcome.STREAM_CUT, look.tenant)
                    if alone:
                        return self.replies.error(503, "fill outran its client", fwd=fwd)
                    return await self._fetch(look, stale, fwd, alone=True)
                self.recorder.count(Outcome.COLLAPSED if collapsed else Outcome.MISS, look.tenant)
                return reply

    def refresh_in_background(self, look: Lookup, entry: Entry) -> None:
        """One background revalidation per key, on the origin's background budget."""
        if self.flights.in_flight(look.key):
            return
        flight, _ = self.flights.start(look.key, self._filling(look, entry, background=True))
        assert flight.task is not None
        flight.task.add_done_callback(_release_passed)

    def _filling(
        self, look: Lookup, stale: Entry | None, *, background: bool = False
    ) -> Callable[[Flight[Fill]], Awaitable[Fill]]:
        """The fill of `look` a flight runs (a revalidation of `stale` when given)."""
        upstream = self.upstreams[look.route.cfg.origin]
        return lambda flight: self.filler.fill(flight, look, upstream, stale, background=background)

    def pass_headers(self, req: Incoming, route: Route) -> CIMultiDict[str]:
        """What a pass-through request sends (see `pass_request_headers`)."""
        upstream = self.upstreams[route.cfg.origin]
        return pass_request_headers(
            req.headers, **forwarding_fields(req, route, upstream.host, self.settings.via)
        )

    def on_origin_error(
        self, look: Lookup, stale: Entry | None, exc: OriginError, fwd: str
    ) -> Reply:
        """Serve the stale entry where stale-if-error allows it, else a clean JSON error."""
        now = self.clock()
        if stale is not None and policy.usable_if_error(
            stale.freshness, stale.age(now), look.req.headers
        ):
            self.recorder.count(Outcome.STALE_IF_ERROR, look.tenant)
            fwd_status = exc.status if isinstance(exc, OriginStatusError) else None
            status = cache_status(
                self.settings.name,
                hit=True,
                fwd="stale",
                fwd_status=fwd_status,
                ttl=stale.freshness.lifetime - stale.age(now),
                detail="stale-if-error",
            )
            return self.replies.from_entry(look.req, stale, now, "STALE", status)
        self.recorder.count(Outcome.ORIGIN_ERROR, look.tenant)
        return self.replies.origin_error(exc, fwd)

    async def invalidate(self, look: Lookup, resp_headers: CIMultiDict[str]) -> int:
        """RFC 9111 4.4: after a successful unsafe request, drop the target URI and same-origin
        Location / Content-Location, every variant of each."""
        urls = [look.url]
        for url in invalidation.invalidation_targets(look.url, resp_headers):
            try:  # keyed as a request for it would be
                target = absolute_target(url)
            except BadRequest:
                continue  # no request could name it, so nothing is stored under it
            urls.append(keyed_url(target, look.route.cfg.cache.ignore_query)[0])
        purged = 0
        try:
            for url in urls:
                purged += await self.store.purge_url(look.tenant, url)
        except RedisUnavailable:  # the shared tier missed it: its entries expire as they may
            self.recorder.count(Outcome.INVALIDATION_FAILED, look.tenant)
        self.recorder.count(Outcome.INVALIDATED, look.tenant, purged)
        return purged

    def _is_pass(self, key: str) -> bool:
        until = self.pass_until.get(key)
        if until is None:
            return False
        if until > self.clock():
            return True
        del self.pass_until[key]
        return False

    def _remember_pass(self, key: str) -> None:
        self.pass_until[key] = self.clock() + self.settings.pass_ttl
        self.pass_until.move_to_end(key)
        while len(self.pass_until) > PASS_MEMORY:
            self.pass_until.popitem(last=False)


def _release_passed(task: asyncio.Task[Fill]) -> None:
    """A fill nobody will stream (background refresh, cancelled leader) must free its response."""
    if not task.cancelled() and task.exception() is None:
        result = task.result()
        if isinstance(result, Passed):
            result.release_unclaimed()
