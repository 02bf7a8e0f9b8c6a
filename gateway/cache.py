"""The cache path of one request: look up, judge, coalesce, fill, store, reply.

Decisions come from `policy`; this module sequences them with the store, the single-flight
table and the origin client. Its callers (the aiohttp handlers) only translate a `Reply`.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections import Counter, OrderedDict
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from multidict import CIMultiDict

from gateway import policy, ranges
from gateway.canonical import (
    BadRequest,
    Target,
    absolute_target,
    fill_fields,
    keyed_url,
    query_values,
)
from gateway.coalesce import SingleFlight
from gateway.directives import http_date_text
from gateway.generations import Generations
from gateway.headers import (
    NOT_STORED,
    client_response_headers,
    end_to_end,
    fill_request_headers,
    pass_request_headers,
    tags_of,
)
from gateway.key import primary_key, secondary_key, vary_record_key
from gateway.router import DEFAULT_TENANT, Route, tenant_of
from gateway.store import Entry, Store
from gateway.upstream import (
    FAILURE_STATUSES,
    OriginError,
    OriginResponse,
    OriginUnavailable,
    Upstream,
)

PASS_MEMORY = 10_000  # keys remembered as "pass" at most
URL_MEMORY = 4096  # (route, host, target) -> normalised URL and tenant, remembered for hits
URL_MEMORY_TARGET = 1024  # longer request targets are normalised each time, not remembered
TENANT_STATS = 10_000  # tenants with counters of their own
OTHER_TENANTS = "_other"


@dataclass(frozen=True, slots=True)
class Incoming:
    """The parts of a client request the cache needs, detached from aiohttp's request object
    so a fill that outlives the handler holds no reference to it. `headers` is the proxy's view
    of the client's fields (no hop-by-hop or Connection-listed ones)."""

    method: str
    target: Target
    headers: Any  # canonical.client_fields: a multidict without hop-by-hop or Connection-listed
    client_ip: str | None


@dataclass(slots=True)
class Reply:
    """What the handler writes: a whole body, or an origin response to stream after `body`."""

    status: int
    headers: list[tuple[str, str]]
    body: bytes = b""
    stream: OriginResponse | None = None


class OriginStatusError(OriginError):
    """The origin answered a failure status while a stale entry may stand in for it."""

    def __init__(self, origin: str, status: int) -> None:
        super().__init__(origin, f"status {status}")
        self.status = status


@dataclass(slots=True)
class Stored:
    """A fill that produced a shareable entry (stored, or refused by a bound yet shareable)."""

    entry: Entry
    x_cache: str  # MISS, EXPIRED or REVALIDATED
    fwd_status: int
    stored: bool
    # The origin's response as the client that caused the fill may see it: with the fields a
    # shared copy must drop (Set-Cookie under private="Set-Cookie", no-cache="X"). None after a
    # 304, where the stored copy is all there is.
    own_headers: list[tuple[str, str]] | None = None


@dataclass(slots=True)
class Passed:
    """A fill whose response may not be shared: only the caller that ran it may stream it."""

    response: OriginResponse
    reason: str
    prefix: bytes = b""
    claimed: bool = False

    def release_unclaimed(self) -> None:
        if not self.claimed:
            self.response.close()


Fill = Stored | Passed


@dataclass(frozen=True, slots=True)
class Located:
    """Where a target lands on a route: the key's URL, what a fill sends as path and query, and
    the tenant (None when it comes from a header, which the target does not determine)."""

    url: str
    path_qs: str
    tenant: str | None


@dataclass(slots=True)
class Lookup:
    """One request's place in the cache, and the canonical request a fill for it sends.

    `names` are what the key varies on (the route's forward_headers and the stored Vary);
    `fields` are the client-derived fields a fill sends, all of them in the key. `alone`: the
    request carries credentials, so it never shares a fill (RFC 9111 3.5).
    """

    req: Incoming
    route: Route
    tenant: str
    url: str
    path_qs: str
    primary: str
    tenant_field: tuple[str, str] | None = None
    names: tuple[str, ...] = ()
    key: str = ""
    stale: Entry | None = None
    alone: bool = False
    _fields: dict[str, str] | None = None

    def vary_on(self, names: Iterable[str]) -> str:
        """Set the key for a key varying on `names` (plus the route's forward_headers);
        returns the key. The fill's fields are worked out only when they are needed: a hit on
        a key that varies on nothing never needs them."""
        self.names = self.key_names(names)
        self._fields = None
        self.key = self.key_for(self.names, self.fields) if self.names else self.primary
        return self.key

    @property
    def fields(self) -> dict[str, str]:
        """The client-derived fields a fill for this key sends, all of them in the key."""
        if self._fields is None:
            self._fields = self.fields_for(self.names)
        return self._fields

    def fields_for(self, names: tuple[str, ...]) -> dict[str, str]:
        """What a fill for a key varying on `names` sends; with `forward_unkeyed`, every other
        end-to-end field of the client's too (so a Vary the origin reveals is keyed on what
        it was actually sent)."""
        if self.route.cfg.cache.forward_unkeyed:
            names = (*names, *(name.lower() for name, _ in self.req.headers.items()))
        return fill_fields(self.req.headers, names, self.tenant_field)

    def key_for(self, names: tuple[str, ...], fields: dict[str, str]) -> str:
        return self.primary + "#" + secondary_key(names, fields) if names else self.primary

    def key_names(self, vary: Iterable[str]) -> tuple[str, ...]:
        """What a key on this route varies on: its forward_headers and a response's Vary."""
        return tuple(sorted({*self.route.forward_headers, *vary}))


class Cache:
    def __init__(
        self,
        *,
        name: str,
        store: Store,
        upstreams: dict[str, Upstream],
        max_object_bytes: int,
        cache_bust: str = "",
        bust_grace: float = 300.0,
        collapse_timeout: float = 15.0,
        pass_ttl: float = 10.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.name = name
        self.store = store
        self.upstreams = upstreams
        self.max_object_bytes = max_object_bytes
        self.generations = Generations(cache_bust)
        self.bust_grace = bust_grace
        self.collapse_timeout = collapse_timeout
        self.pass_ttl = pass_ttl
        self.clock = clock
        self.via = f"1.1 {name}"
        self.flights: SingleFlight[Fill] = SingleFlight()
        self.pass_until: OrderedDict[str, float] = OrderedDict()
        self.counters: Counter[str] = Counter()
        self.tenant_counters: dict[str, Counter[str]] = {}
        # Normalising a URL costs more than the rest of a hit; clear it when routes change.
        self.url_memory: dict[tuple[str, Target], Located] = {}

    def count(self, event: str, tenant: str, n: int = 1) -> None:
        """Global and per-tenant counters; tenants past TENANT_STATS share one bucket, since
        tenant names can come from clients."""
        self.counters[event] += n
        bucket = self.tenant_counters.get(tenant)
        if bucket is None:
            if len(self.tenant_counters) >= TENANT_STATS:
                tenant = OTHER_TENANTS
            bucket = self.tenant_counters.setdefault(tenant, Counter())
        bucket[event] += n

    def soft_stale_since(self, entry: Entry) -> float | None:
        """When a soft purge or a soft bust made this entry stale, if one did."""
        since = self.generations.stale_since(entry.tenant, entry.soft_generation)
        if entry.soft_purged_at is not None and (since is None or entry.soft_purged_at < since):
            since = entry.soft_purged_at
        return since

    def locate(self, req: Incoming, route: Route) -> Lookup:
        """The request's key URL, tenant and primary key on this route, from its target."""
        target = req.target
        memo_key = (route.name, target)
        known = self.url_memory.get(memo_key)
        if known is None:
            known = self._locate(target, route)
            if len(target.path) + len(target.query or "") <= URL_MEMORY_TARGET:
                if len(self.url_memory) >= URL_MEMORY:
                    del self.url_memory[next(iter(self.url_memory))]  # the oldest goes
                self.url_memory[memo_key] = known
        tenant, tenant_field = known.tenant, None
        if tenant is None:  # from a header: the validated value is sent, nothing else
            source = route.cfg.tenant
            assert source is not None and source.header is not None
            tenant = tenant_of(source, host="", path="", query={}, headers=req.headers)
            tenant_field = (source.header, tenant) if tenant != DEFAULT_TENANT else None
        generation = self.generations.key_part(tenant)
        return Lookup(
            req,
            route,
            tenant,
            known.url,
            known.path_qs,
            primary_key(tenant, generation, "GET", known.url),
            tenant_field=tenant_field,
            alone="authorization" in req.headers,
        )

    @staticmethod
    def _locate(target: Target, route: Route) -> Located:
        """Normalising costs more than the rest of a hit, hence `url_memory` in front of this."""
        url, path_qs = keyed_url(target, route.cfg.cache.ignore_query)
        query = path_qs.partition("?")[2]
        source = route.cfg.tenant
        if source is not None and source.header is not None:
            return Located(url, path_qs, None)
        tenant = tenant_of(
            source, host=target.hostname, path=target.path, query=query_values(query), headers={}
        )
        return Located(url, path_qs, tenant)

    async def serve(self, req: Incoming, route: Route) -> Reply:
        """Answer a GET or HEAD on a cached route."""
        look = self.locate(req, route)
        for _ in range(2):  # a second round when a fill reveals a Vary this request differs on
            look.vary_on(await self.store.get_vary(vary_record_key(look.tenant, look.url)) or ())
            reply = await self._serve_key(look)
            if reply is not None:
                return reply
        return await self._fill_alone(look, collapsed=False)

    async def _serve_key(self, look: Lookup) -> Reply | None:
        req = look.req
        entry = await self.store.get(look.key)
        now = self.clock()
        soft_since = self.soft_stale_since(entry) if entry is not None else None
        if soft_since is not None and now - soft_since >= self.bust_grace:
            entry = None  # past the grace a soft-busted entry counts as a miss
        fwd = "uri-miss"
        only_if_cached = "Cache-Control" in req.headers and "only-if-cached" in (
            policy.parse_cache_control(req.headers.getall("Cache-Control"))
        )
        client_no_cache = look.route.cfg.cache.client_no_cache
        if entry is not None:
            verdict = policy.judge(
                entry.freshness,
                entry.age(now),
                req.headers,
                soft_since is not None,
                soft_grace=0.0 if soft_since is None else soft_since + self.bust_grace - now,
                client_no_cache=client_no_cache,
                validated_ago=now - entry.response_time,
            )
            if verdict.reuse is policy.Reuse.FRESH:
                self.count("hit", look.tenant)
                status = policy.cache_status(self.name, hit=True, ttl=verdict.ttl)
                return self.from_entry(look, entry, now, "HIT", status)
            if verdict.reuse is policy.Reuse.STALE_WHILE_REVALIDATE:
                self.count("stale_while_revalidate", look.tenant)
                self.refresh_in_background(look, entry)
                status = policy.cache_status(
                    self.name, hit=True, ttl=verdict.ttl, detail="stale-while-revalidate"
                )
                return self.from_entry(look, entry, now, "UPDATING", status)
            look.stale = entry
            fwd = "request" if verdict.detail.startswith("req-") else "stale"
        if only_if_cached:  # RFC 9111 5.2.1.7: never to the origin
            return self.error_reply(504, "not in cache (only-if-cached)", fwd="miss")
        # A request that may not share a fill: credentials, a key known not to be shareable, or
        # no-store (its response must not be stored, and it must not make the key a pass for
        # everyone else; it still joins a fill already running).
        no_store = "no-store" in policy.request_directives(req.headers, client_no_cache)
        if (
            look.alone
            or self._is_pass(look.key)
            or (no_store and not self.flights.in_flight(look.key))
        ):
            return await self._fill_alone(look, collapsed=False)
        task, leader = self.flights.start(look.key, lambda: self.fill(look, look.stale))
        try:
            result = await self.flights.wait(task, None if leader else self.collapse_timeout)
        except TimeoutError:
            self.count("collapse_timeout", look.tenant)
            return await self._fill_alone(look, collapsed=False)
        except OriginError as exc:
            return self.on_origin_error(look, exc, fwd)
        except asyncio.CancelledError:
            if leader:  # nobody else may stream an unshareable response the fill hands back
                task.add_done_callback(_release_passed)
            raise
        if isinstance(result, Passed):
            if leader:
                return self.pass_reply(look, result, fwd)
            self._remember_pass(look.key)
            return await self._fill_alone(look, collapsed=True)
        if not self._answers(look, result.entry):
            return None
        return self.stored_reply(look, result, fwd, collapsed=not leader, own=leader)

    def _answers(self, look: Lookup, entry: Entry) -> bool:
        """Does a fresh fill's entry answer this request? Not when the response varies on a
        field this request has and the fill did not send (the key learns it for next time)."""
        names = look.key_names(entry.vary)
        if names == look.names:
            return entry.key == look.key
        return entry.key == look.key_for(names, look.fields_for(names))

    async def _fill_alone(self, look: Lookup, *, collapsed: bool) -> Reply:
        """A fill outside the single-flight table: after a pass, or for a waiter that gave up
        waiting. What it fetches is still stored when it may be."""
        try:
            result = await self.fill(look, look.stale)
        except OriginError as exc:
            return self.on_origin_error(look, exc, "uri-miss")
        if isinstance(result, Passed):
            return self.pass_reply(look, result, "uri-miss")
        return self.stored_reply(look, result, "uri-miss", collapsed=collapsed, own=True)

    def refresh_in_background(self, look: Lookup, entry: Entry) -> None:
        """One background revalidation per key, on the origin's background budget."""
        if self.flights.in_flight(look.key):
            return
        task, _ = self.flights.start(look.key, lambda: self.fill(look, entry, background=True))
        task.add_done_callback(_release_passed)

    def fill_headers(self, look: Lookup) -> CIMultiDict[str]:
        """Exactly what a fill sends: the gateway's own fields and the keyed ones, plus the
        credentials of a request that fetches alone (see `gateway.canonical`)."""
        headers = fill_request_headers(look.fields, **self._forwarding(look.req, look.route))
        if look.alone:
            for value in look.req.headers.getall("Authorization", []):
                headers.add("Authorization", value)
        return headers

    def pass_headers(self, req: Incoming, route: Route) -> CIMultiDict[str]:
        """What a pass-through request sends (see `pass_request_headers`)."""
        return pass_request_headers(req.headers, **self._forwarding(req, route))

    def _forwarding(self, req: Incoming, route: Route) -> dict[str, Any]:
        """The fields the gateway sets on every request to the route's origin."""
        upstream = self.upstreams[route.cfg.origin]
        return {
            "host": req.target.host if route.cfg.preserve_host else upstream.host,
            "forwarded_host": req.target.host,
            "scheme": req.target.scheme,
            "client_ip": req.client_ip,
            "via": self.via,
        }

    async def fill(self, look: Lookup, stale: Entry | None, *, background: bool = False) -> Fill:
        """Fetch the key from the origin (conditionally when a stale entry has validators)."""
        upstream = self.upstreams[look.route.cfg.origin]
        headers = self.fill_headers(look)
        if stale is not None:
            headers.update(policy.validators(CIMultiDict(stale.headers)))
        epoch = self.generations.epoch  # stamped now: a bust during the fetch still applies
        refused = False
        try:
            resp = await upstream.request("GET", look.path_qs, headers, background=background)
        except OriginUnavailable:
            refused = True  # breaker open or budget full: nothing was sent
            raise
        finally:
            self.count("origin_refused" if refused else "origin_fetches", look.tenant)
        try:
            return await self._absorb(look, stale, resp, epoch)
        except BaseException:
            resp.close()
            raise

    async def _absorb(
        self, look: Lookup, stale: Entry | None, resp: OriginResponse, epoch: int
    ) -> Fill:
        """Turn an origin response into a stored entry or a pass (the response stays open)."""
        route = look.route
        rh = resp.headers
        if policy.coded_without_vary(rh):  # chosen by the Accept-Encoding bucket every fill sends
            rh.add("Vary", "Accept-Encoding")
        if "Date" not in rh:  # RFC 9110 6.6.1: a cache records when it received a dateless one
            rh["Date"] = http_date_text(resp.response_time)
        if stale is not None and resp.status == 304:
            resp.close()
            merged = policy.merge_not_modified(stale.headers, rh)
            entry = self._entry(look, stale.status, CIMultiDict(merged), stale.body, resp, epoch)
            stored = await self.store.put(entry)
            return Stored(entry, "REVALIDATED", 304, stored)
        if (
            stale is not None
            and resp.status in FAILURE_STATUSES
            and policy.usable_if_error(stale.freshness, stale.age(self.clock()), look.req.headers)
        ):
            resp.close()
            raise OriginStatusError(route.cfg.origin, resp.status)
        reason = policy.storable(
            "GET", resp.status, look.req.headers, rh, route.rules, route.cfg.cache.client_no_cache
        )
        if reason is not None:
            return Passed(resp, reason)
        length = rh.get("Content-Length", "")
        if length.isdigit() and int(length) > self.max_object_bytes:
            return Passed(resp, "too-big")
        body, complete = await _read_up_to(resp, self.max_object_bytes)
        if not complete:
            return Passed(resp, "too-big", prefix=body)
        resp.close()
        entry = self._entry(look, resp.status, rh, body, resp, epoch)
        stored = await self.store.put(entry)
        if stored:
            await self.store.set_vary(vary_record_key(look.tenant, look.url), entry.vary)
        self.count("stored" if stored else "not_stored", look.tenant)
        own = self.visible_headers(look, rh, drop=("age",))
        x_cache = "MISS" if stale is None else "EXPIRED"
        return Stored(entry, x_cache, resp.status, stored, own)

    def _entry(
        self,
        look: Lookup,
        status: int,
        rh: CIMultiDict[str],
        body: bytes,
        resp: OriginResponse,
        epoch: int,
    ) -> Entry:
        route = look.route
        strip = NOT_STORED | set(policy.strip_fields(rh, route.rules))
        names = policy.vary_names(rh) or ()
        return Entry(  # keyed on what this fill sent: a Vary name it did not send is absent
            key=look.key_for(look.key_names(names), look.fields),
            tenant=look.tenant,
            url=look.url,
            status=status,
            headers=tuple(end_to_end(rh, strip)),
            body=body,
            response_time=resp.response_time,
            initial_age=policy.initial_age(rh, resp.request_time, resp.response_time),
            freshness=policy.freshness(status, rh, resp.response_time, route.rules),
            etag=rh.get("ETag"),
            last_modified=rh.get("Last-Modified"),
            vary=names,
            tags=tags_of(rh),
            stored_at=resp.response_time,
            soft_generation=epoch,
            visible=tuple(self.visible_headers(look, rh, drop=strip)),
        )

    def visible_headers(
        self, look: Lookup, rh: CIMultiDict[str], *, drop: Iterable[str]
    ) -> list[tuple[str, str]]:
        """What a client sees of an origin response on this route (see client_response_headers)."""
        return client_response_headers(
            rh,
            keep_tags=look.route.cfg.cache.keep_tags,
            consumed=policy.consumed_field(rh, look.route.rules),
            drop=drop,
        )

    def on_origin_error(self, look: Lookup, exc: OriginError, fwd: str) -> Reply:
        """Serve the stale entry where stale-if-error allows it, else a clean JSON error."""
        entry = look.stale
        now = self.clock()
        if entry is not None and policy.usable_if_error(
            entry.freshness, entry.age(now), look.req.headers
        ):
            self.count("stale_if_error", look.tenant)
            fwd_status = exc.status if isinstance(exc, OriginStatusError) else None
            status = policy.cache_status(
                self.name,
                hit=True,
                fwd="stale",
                fwd_status=fwd_status,
                ttl=entry.freshness.lifetime - entry.age(now),
                detail="stale-if-error",
            )
            return self.from_entry(look, entry, now, "STALE", status)
        self.count("origin_errors", look.tenant)
        return self.origin_error_reply(exc, fwd)

    def stored_reply(
        self, look: Lookup, result: Stored, fwd: str, *, collapsed: bool, own: bool
    ) -> Reply:
        """The reply from a fill's entry; `own` when this request ran the fill, which then sees
        the origin's own response rather than the shared copy."""
        now = self.clock()
        entry = result.entry
        self.count("collapsed" if collapsed else "miss", look.tenant)
        status = policy.cache_status(
            self.name,
            hit=False,
            fwd=fwd,
            fwd_status=result.fwd_status,
            stored=result.stored,
            ttl=entry.freshness.lifetime - entry.age(now),
            collapsed=collapsed,
        )
        headers = result.own_headers if own else None
        return self.from_entry(look, entry, now, result.x_cache, status, headers)

    def pass_reply(self, look: Lookup, result: Passed, fwd: str) -> Reply:
        result.claimed = True
        resp = result.response
        self.count("pass", look.tenant)
        headers = self.visible_headers(look, resp.headers, drop=())
        status = policy.cache_status(
            self.name, hit=False, fwd=fwd, fwd_status=resp.status, detail=result.reason
        )
        headers += [("Via", self.via), ("Cache-Status", status), ("X-Cache", "MISS")]
        length = resp.headers.get("Content-Length")
        if length is not None:
            headers.append(("Content-Length", length))
        return Reply(resp.status, headers, result.prefix, stream=resp)

    def from_entry(
        self,
        look: Lookup,
        entry: Entry,
        now: float,
        x_cache: str,
        status: str,
        headers: list[tuple[str, str]] | None = None,
    ) -> Reply:
        """Reply from a stored entry (or with `headers`, the fill's own response): Age,
        Cache-Status, X-Cache; 304 for a matching conditional; 206 / 416 for a Range."""
        req = look.req
        base = entry.visible if headers is None else headers
        extra = [
            ("Via", self.via),
            ("Age", str(int(entry.age(now)))),
            ("Cache-Status", status),
            ("X-Cache", x_cache),
        ]
        if ("If-None-Match" in req.headers or "If-Modified-Since" in req.headers) and (
            policy.not_modified(
                req.headers,
                req.method,
                entry.status,
                CIMultiDict(entry.headers),
                response_time=entry.response_time,
            )
        ):
            return Reply(304, [*_validator_fields(base), *extra])
        if "Range" in req.headers and req.method == "GET" and entry.status == 200:
            return self._range_reply(req, entry, base, extra)
        return Reply(entry.status, [*base, *extra], entry.body)

    @staticmethod
    def _range_reply(
        req: Incoming,
        entry: Entry,
        base: list[tuple[str, str]] | tuple[tuple[str, str], ...],
        extra: list[tuple[str, str]],
    ) -> Reply:
        """206 with the one range asked for, 416 when none of it exists, else the whole 200."""
        length = len(entry.body)
        wanted = ranges.requested_range(req.headers.get("Range"), length)
        if_range = req.headers.get("If-Range")
        if wanted is None or not ranges.if_range_allows(if_range, entry.etag, entry.last_modified):
            return Reply(entry.status, [*base, *extra], entry.body)
        if isinstance(wanted, ranges.ByteRange):
            part = entry.body[wanted.first : wanted.last + 1]
            content_range = ("Content-Range", wanted.content_range(length))
            return Reply(206, [*base, *extra, content_range], part)
        unsatisfied = ("Content-Range", f"bytes */{length}")
        return Reply(416, [*_validator_fields(base), *extra, unsatisfied])

    def origin_error_reply(self, exc: OriginError, fwd: str) -> Reply:
        """The clean JSON 502/503/504 (or 408) for an origin failure, saying what failed."""
        return self.error_reply(
            exc.status, exc.reason, fwd=fwd, retry_after=exc.retry_after, detail=exc.detail
        )

    def error_reply(
        self,
        status: int,
        reason: str,
        *,
        fwd: str,
        retry_after: float | None = None,
        detail: str = "",
    ) -> Reply:
        payload: dict[str, object] = {"error": reason, "status": status}
        if detail:
            payload["detail"] = detail
        body = json.dumps(payload).encode()
        headers = [
            ("Content-Type", "application/json"),
            ("Cache-Control", "no-store"),
            ("Cache-Status", policy.cache_status(self.name, hit=False, fwd=fwd, detail=reason)),
            ("X-Cache", "MISS"),
        ]
        if retry_after is not None:
            headers.append(("Retry-After", str(max(1, round(retry_after)))))
        return Reply(status, headers, body)

    async def invalidate(self, look: Lookup, resp_headers: CIMultiDict[str]) -> int:
        """RFC 9111 4.4: after a successful unsafe request, drop the target URI and same-origin
        Location / Content-Location, every variant of each."""
        urls = [look.url]
        for url in policy.invalidation_targets(look.url, resp_headers):
            try:  # keyed as a request for it would be
                target = absolute_target(url)
            except BadRequest:
                continue  # no request could name it, so nothing is stored under it
            urls.append(keyed_url(target, look.route.cfg.cache.ignore_query)[0])
        purged = 0
        for url in urls:
            purged += await self.store.purge_url(look.tenant, url)
        self.count("invalidated", look.tenant, purged)
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
        self.pass_until[key] = self.clock() + self.pass_ttl
        self.pass_until.move_to_end(key)
        while len(self.pass_until) > PASS_MEMORY:
            self.pass_until.popitem(last=False)


_NOT_MODIFIED_FIELDS = frozenset(
    {"cache-control", "content-location", "date", "etag", "expires", "vary", "last-modified", "via"}
)


def _validator_fields(
    headers: list[tuple[str, str]] | tuple[tuple[str, str], ...],
) -> list[tuple[str, str]]:
    """The fields a bodiless answer about the stored response keeps (304, 416)."""
    return [(k, v) for k, v in headers if k.lower() in _NOT_MODIFIED_FIELDS]


def _release_passed(task: asyncio.Task[Fill]) -> None:
    """A fill nobody will stream (background refresh, cancelled leader) must free its response."""
    if not task.cancelled() and task.exception() is None:
        result = task.result()
        if isinstance(result, Passed):
            result.release_unclaimed()


async def _read_up_to(resp: OriginResponse, limit: int) -> tuple[bytes, bool]:
    """Read the body while it fits in `limit`; (prefix, False) once it does not."""
    chunks: list[bytes] = []
    size = 0
    async for chunk in resp.chunks():
        chunks.append(chunk)
        size += len(chunk)
        if size > limit:
            return b"".join(chunks), False
    return b"".join(chunks), True
