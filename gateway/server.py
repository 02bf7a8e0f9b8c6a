"""The gateway process: builds the parts from a config and serves the public and admin apps."""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

from aiohttp import web

from gateway.access_log import FORMATTERS, AccessRecord, LineWriter, reply_fields
from gateway.cache import Cache
from gateway.canonical import BadRequest, absolute_target, keyed_url, parse_target
from gateway.client_protocol import NativeServer
from gateway.config import (
    ConfigError,
    ConfigIssue,
    GatewayConfig,
    demo_token_refusal,
    load_config,
)
from gateway.exchange import ClientRequest, Reply
from gateway.fleet.census import Census
from gateway.fleet.control import purge_event
from gateway.fleet.link import RedisUnavailable
from gateway.fleet.member import Member
from gateway.gcwatch import GENERATIONS, PauseRecorder
from gateway.generations import Generations
from gateway.heap import Trimmer
from gateway.http1 import SPOKEN
from gateway.listener import ClientLimits, PublicServer
from gateway.metrics import GC_PAUSE, Exporter, Meter, Sample
from gateway.outcomes import Outcome, Recorder
from gateway.plan import soft_stale_since
from gateway.proxy import NO_BODY_STATUSES, forward, incoming, response_of, write
from gateway.router import Route, Router
from gateway.settings import CacheSettings
from gateway.store import Entry, Store, purge
from gateway.store.memory import MemoryStore
from gateway.upstream import Upstream

log = logging.getLogger("gateway")

GATEWAY_KEY: web.AppKey[Gateway] = web.AppKey("gateway")
RETIRE_AFTER = 60.0  # seconds a replaced origin client keeps serving requests in flight
# Read when the listeners, the connection limits and the fleet are set up: a reload keeps them.
RESTART_ONLY = (
    "listen", "listen_backlog", "max_connections", "client_header_timeout",
    "keepalive_timeout", "redis", "workers", "server",
)
LINGERING = 5.0  # seconds an unread request body is drained after the answer
CLIENT_CLOSED = 499  # logged (nginx's code) for a request whose client went away first
# Metric keys (gateway/metrics.py): label values that are not names from the config.
EVICTIONS = "gateway_cache_evictions_total"
NO_ROUTE = "none"
ANSWERED_BY_GATEWAY = "NONE"  # cache_status of the gateway's own answers (no X-Cache)
FROM_CACHE = frozenset({"HIT", "UPDATING", "STALE"})  # the `hit` requests of the histogram
STATUS_CLASSES = tuple(f"{n}xx" for n in range(10))
HEAP_CHECK_INTERVAL = 1.0  # seconds between two looks at whether the heap needs a trim
GC_GENERATIONS = tuple(str(n) for n in range(GENERATIONS))  # label values
Request = TypeVar("Request", bound=ClientRequest)  # a layer's request type
Sent = TypeVar("Sent")  # what a layer's writer returns (aiohttp: the response it returns)


def json_reply(
    status: int, payload: dict[str, object], headers: dict[str, str] | None = None
) -> Reply:
    fields = [("Content-Type", "application/json"), ("Cache-Control", "no-store")]
    fields += (headers or {}).items()
    return Reply(status, fields, json.dumps(payload).encode())


def json_response(
    status: int, payload: dict[str, object], headers: dict[str, str] | None = None
) -> web.Response:
    return response_of(json_reply(status, payload, headers))


class JsonError(Exception):
    """A client error answered as `{"error": reason, "status": N, ...details}`."""

    def __init__(
        self, status: int, reason: str, headers: dict[str, str] | None = None, **details: object
    ) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason
        self.headers = headers
        self.details = details


class Gateway:
    """Everything one gateway instance owns; the handlers are thin calls into it."""

    def __init__(
        self,
        config: GatewayConfig,
        clock: Callable[[], float] = time.time,
        *,
        machine: str | None = None,
        worker: int = 0,
        demo: bool = False,
    ) -> None:
        self.config = config
        self.demo = demo  # started with --demo: the published demo admin token is accepted
        self.started_with = config  # RESTART_ONLY settings keep these values until a restart
        self.clock = clock  # the one wall clock: cache decisions, origin times, purges, busts
        self.router = Router(config)
        self.recorder = Recorder(named_tenants(config))
        self.meter = Meter()  # what /metrics shows beyond the recorder's counts
        self.store = MemoryStore(  # this process's tier (L1 when there is a fleet)
            config.cache.memory.max_bytes,
            config.cache.memory.max_object_bytes,
            tenant_quota=config.tenant_quota,
            on_evict=self._evicted,
        )
        self.upstreams = {
            name: Upstream(name, cfg, self.now, self.meter)
            for name, cfg in config.origins.items()
        }
        self._retiring: dict[asyncio.Task[None], Upstream] = {}
        settings = CacheSettings.of(config.cache)
        generations = Generations(config.cache.cache_bust)
        store: Store = self.store
        self.member: Member | None = None
        if config.redis is not None:
            self.member = Member(
                config.redis,
                memory=self.store,
                generations=generations,
                settings=settings,
                clock=self.now,
                current=self._current,
                meter=self.meter,
            )
            store = self.member.store
        self.cache = Cache(
            settings=settings,
            store=store,
            upstreams=self.upstreams,
            recorder=self.recorder,
            clock=self.now,
            generations=generations,
        )
        self.census: Census | None = None  # with a fleet: /admin/stats for every worker
        if self.member is not None:
            self.cache.filler.leases = self.member.leases
            member = self.member
            self.census = Census(
                member.link, member.keys, machine or member.instance, worker, self.stats
            )
        # Set by a worker of `workers: N`: have the supervisor reload every worker.
        self.reload_all: Callable[[], None] | None = None
        # The access log: None when `access_log: off` (then `respond` does nothing more).
        self.access_format: Callable[[AccessRecord], str] | None = None
        self.access_writer: LineWriter | None = None
        self._access_log(config.access_log, start=False)
        self.exporter = Exporter(self.meter, self.gauges, self.counted)
        # Every collection's pause, from `start` to `stop`: /admin/stats and /metrics.
        self.gc = PauseRecorder(on_pause=self._gc_paused)
        # Heap pages that evicted entries freed go back to the system (gateway.heap).
        self.trimmer = Trimmer(self.store)
        self._upkeep: asyncio.Task[None] | None = None

    def now(self) -> float:
        """`clock()`, looked up each time so that tests can move time for every part at once."""
        return self.clock()

    def _current(self, entry: Entry) -> bool:
        """May an L1 entry be answered without asking L2 for a newer one? When it is fresh
        and no soft purge or bust has made it stale."""
        return (
            entry.age(self.clock()) < entry.freshness.lifetime
            and soft_stale_since(entry, self.cache.generations) is None
        )

    def _access_log(self, mode: str, *, start: bool) -> None:
        """Log as `mode` from now on; the writer thread, once made, stays until `stop`."""
        self.access_format = FORMATTERS.get(mode)
        if self.access_format is not None and self.access_writer is None:
            self.access_writer = LineWriter()
            if start:
                self.access_writer.start()

    async def start(self) -> None:
        self.gc.install()
        self._upkeep = asyncio.create_task(self._keep_heap())
        if self.access_writer is not None:
            self.access_writer.start()
        self.exporter.start()
        for upstream in self.upstreams.values():
            upstream.open()
        if self.member is not None:
            await self.member.start()
        if self.census is not None:
            await self.census.start()

    async def stop(self) -> None:
        if self._upkeep is not None:
            self._upkeep.cancel()
        for task, upstream in list(self._retiring.items()):
            task.cancel()
            await upstream.close()
        for upstream in self.upstreams.values():
            await upstream.close()
        if self.census is not None:
            await self.census.stop()  # before the member closes the link it writes on
        if self.member is not None:
            await self.member.stop()
        await self.exporter.stop()
        if self.access_writer is not None:
            self.access_writer.close()  # what is queued is written (up to a second)
        self.gc.uninstall()

    def reload(self) -> list[str]:
        """Re-read the routing file; on ConfigError the running config stays as it was.
        Returns the settings that changed but take effect only at the next restart."""
        path = self.config.source_path
        if path is None:
            raise ConfigError([ConfigIssue("<none>", None, "", "config was not read from a file")])
        config = load_config(path)
        refusal = demo_token_refusal(config, demo=self.demo)
        if refusal is not None:
            raise ConfigError([ConfigIssue(str(path), None, "admin.tokens", refusal)])
        return self.apply(config)

    def apply(self, config: GatewayConfig) -> list[str]:
        """Take `config` for new requests; returns the settings fixed at start that it
        changes (listeners, connection limits, the fleet), which keep their old values."""
        old = self.config
        upstreams = dict(self.upstreams)
        for name, cfg in config.origins.items():
            if name not in upstreams or old.origins.get(name) != cfg:
                upstreams[name] = Upstream(name, cfg, self.now, self.meter)
                upstreams[name].open()
        retired = [u for n, u in self.upstreams.items() if upstreams.get(n) is not u]
        for name in set(upstreams) - set(config.origins):
            retired.append(upstreams.pop(name))
        self.config = config
        self.router = Router(config)
        self.cache.locator.forget()  # route names may now stand for other rules
        self.upstreams = self.cache.upstreams = upstreams
        c = config.cache
        self.store.max_bytes = c.memory.max_bytes
        self.store.max_object_bytes = c.memory.max_object_bytes
        self.store.tenant_quota = config.tenant_quota
        self.cache.settings.update(c)
        self.cache.generations.cache_bust = c.cache_bust
        self.recorder.name_tenants(named_tenants(config))
        self._access_log(config.access_log, start=True)
        started = self.started_with  # what the listeners and the fleet really run with
        fixed = [n for n in RESTART_ONLY if getattr(config, n) != getattr(started, n)]
        if config.admin.listen != started.admin.listen:
            fixed.append("admin.listen")
        if fixed:
            log.warning("config reloaded, but these take effect at the next restart only: %s",
                        ", ".join(fixed))
        for upstream in retired:  # requests in flight on them finish first
            task = asyncio.get_running_loop().create_task(_close_later(upstream))
            self._retiring[task] = upstream
            task.add_done_callback(lambda t: self._retiring.pop(t, None))
        log.info("config reloaded from %s: %d routes", config.source_path, len(config.routes))
        return fixed

    async def purge(
        self,
        tenant: str,
        *,
        urls: list[str] | None = None,
        prefix: str | None = None,
        tags: list[str] | None = None,
        soft: bool = False,
    ) -> int:
        """Purge one tenant's entries by URL, prefix, tag, or all; soft marks them stale.

        In a fleet: Redis first, then the stream record, then this instance's memory, then the
        answer. Redis before the record, so that no other instance, purging its memory on the
        record, can copy the entry back from Redis meanwhile; the record before the answer,
        so that an accepted purge is never lost (503 otherwise: purges are idempotent, the
        caller retries). This instance's memory is purged whatever happened in Redis."""
        soft_at = self.clock() if soft else None
        items: list[str] | str | None
        if urls is not None:
            kind, sites = "urls", await self._sites(tenant)
            items = [full for url in urls for full in self.normalised(url, sites)]
        elif prefix is not None:
            kind, items = "prefix", prefix
        elif tags is not None:
            kind, items = "tags", tags
        else:
            kind, items = "namespace", None
        shared = 0
        try:
            if self.member is not None:
                try:
                    shared = await purge(self.member.l2, tenant, kind, items, soft_at)
                    await self.member.control.record(purge_event(tenant, kind, items, soft_at))
                except RedisUnavailable as exc:
                    raise _fleet_unavailable("purge not recorded for the fleet", exc) from None
        finally:
            count = max(shared, await purge(self.store, tenant, kind, items, soft_at))
        self.recorder.count(Outcome.SOFT_PURGED if soft else Outcome.PURGED, tenant, count)
        return count

    async def _sites(self, tenant: str) -> list[str]:
        """Every site the tenant's entries are on, here and (in a fleet) in Redis."""
        try:
            return await self.cache.store.sites(tenant)
        except RedisUnavailable as exc:
            raise _fleet_unavailable("tenant's sites unreadable, nothing purged", exc) from None

    def normalised(self, url: str, sites: list[str]) -> list[str]:
        """A purge URL as stored: absolute as given, or a path on each of the tenant's sites;
        keyed exactly as a request for it would be (BadRequest if no request could be)."""
        if url.startswith("/"):
            targets = [parse_target(url, host, scheme) for scheme, _, host in
                       (site.partition("://") for site in sites)]
        else:
            targets = [absolute_target(url)]
        out = []
        for target in targets:
            route = self.router.match(target.hostname, target.path, "GET")
            ignore = route.cfg.cache.ignore_query if route is not None else []
            out.append(keyed_url(target, ignore)[0])
        return out

    async def bust(self, tenant: str, *, soft: bool) -> dict[str, object]:
        """Bump the tenant's (or with `*` the global) generation: hard = new keys, O(1). In
        a fleet the bump happens in Redis and is recorded on the stream in one step."""
        if self.member is None:
            result = self.cache.generations.bump(tenant, soft=soft, now=self.clock())
        else:
            try:
                result = await self.member.control.bust(tenant, soft=soft, now=self.clock())
            except RedisUnavailable as exc:
                raise _fleet_unavailable("bust not recorded, nothing changed", exc) from None
        self.recorder.count(Outcome.SOFT_BUST if soft else Outcome.HARD_BUST, tenant)
        return result

    async def respond(self, request: web.BaseRequest) -> web.StreamResponse:
        """The handler of aiohttp's layer (`server: aiohttp`)."""
        return await self.serve(request, write)

    async def serve(
        self, request: Request, send: Callable[[Request, Reply], Awaitable[Sent]]
    ) -> Sent:
        """The public listener's handler on either layer: the answer (errors as JSON) handed to
        the layer's `send`, then what it is counted and logged as."""
        loop = asyncio.get_running_loop()
        started, at = loop.time(), self.clock()
        route: Route | None = None
        reply: Reply | None = None  # the gateway's answer, if it got that far
        sent: Reply | None = None  # what the client was sent
        try:
            try:
                route, reply = await self._answer(request)
                sent = reply
                result = await send(request, reply)
            except Exception as exc:
                sent = error_reply(request, exc)
                result = await send(request, sent)
        except asyncio.CancelledError:  # the client went away: nginx's 499
            self._answered(request, at, loop.time() - started, route, reply, None)
            raise
        self._answered(request, at, loop.time() - started, route, reply, sent)
        return result

    def _answered(
        self,
        request: ClientRequest,
        at: float,
        duration: float,
        route: Route | None,
        reply: Reply | None,
        sent: Reply | None,
    ) -> None:
        """Count an answered (or, with nothing `sent`, abandoned) request, and log it."""
        x_cache, collapsed = reply_fields(reply) if reply is not None else (None, False)
        status = CLIENT_CLOSED if sent is None else sent.status
        route_name = NO_ROUTE if route is None else route.name
        cache = x_cache or ANSWERED_BY_GATEWAY
        tenant = reply.tenant if reply is not None else None
        if tenant is not None:
            tenant = self.recorder.label(tenant)
        self.meter.answered(
            route_name, cache, STATUS_CLASSES[status // 100], tenant, cache in FROM_CACHE, duration
        )
        formatter = self.access_format
        if formatter is None or self.access_writer is None:
            return
        size: int | None
        if sent is None:
            size = None if reply is None or isinstance(reply.body, bytes) else reply.sent
        elif request.method == "HEAD" or status in NO_BODY_STATUSES:
            size = 0
        elif isinstance(sent.body, bytes):
            size = len(sent.body)
        else:
            size = sent.sent
        headers = request.headers
        version = request.version
        record = AccessRecord(
            time=at,
            method=request.method,
            host=headers.get("Host"),
            path=request.raw_path,
            status=status,
            bytes=size,
            duration=duration,
            cache=x_cache,
            tenant=None if reply is None else reply.tenant,
            route=None if route is None else route.name,
            origin_time=None if reply is None else reply.origin_time,
            collapsed=collapsed,
            client=request.remote,
            protocol=f"HTTP/{version[0]}.{version[1]}",
            referer=headers.get("Referer"),
            user_agent=headers.get("User-Agent"),
        )
        self.access_writer.put(formatter(record))

    async def _answer(self, request: ClientRequest) -> tuple[Route | None, Reply]:
        """The route the request matched, and its reply (or the gateway's own answer)."""
        if request.version not in SPOKEN:  # aiohttp's parser takes "HTTP/2.0", say
            raise JsonError(505, "HTTP version not supported")
        coding = request.headers.get("Transfer-Encoding")
        if coding is not None and coding.strip().lower() != "chunked":
            # RFC 9112 6.1: a transfer coding the gateway does not implement is a 501; the
            # parser has framed the body as chunked, and a forwarded body must mean what it says.
            raise JsonError(501, f"transfer coding not implemented: {coding[:40]!r}")
        req = incoming(request)
        route = self.router.match(req.target.hostname, req.target.path, request.method)
        if route is None:
            return None, json_reply(404, {"error": "no route matches", "path": req.target.path})
        if route.cached and request.method in ("GET", "HEAD"):
            if request.body_exists:  # its key cannot hold the body: never forward one half
                raise BadRequest(f"a {request.method} with a body is refused on a cached route")
            return route, await self.cache.serve(req, route)
        idle = self.config.client_body_timeout
        return route, await forward(request, req, route, self.cache, body_timeout=idle)

    async def _keep_heap(self) -> None:
        while True:
            await asyncio.sleep(HEAP_CHECK_INTERVAL)
            await self.trimmer.check()

    def _gc_paused(self, generation: int, seconds: float) -> None:
        """A collection's pause, into gateway_gc_pause_seconds (called inside `gc.callbacks`:
        the meter's few dict operations, nothing that waits)."""
        self.meter.observe((GC_PAUSE, GC_GENERATIONS[generation]), seconds)

    def _evicted(self, entry: Entry, why: str) -> None:
        self.recorder.count(Outcome.EVICTION, entry.tenant)
        self.meter.count((EVICTIONS, self.recorder.label(entry.tenant), why))

    def counted(self) -> dict[tuple[str, ...], int]:
        """The recorder's running totals that /metrics shows, by metric key."""
        totals = self.recorder.totals
        return {
            ("gateway_collapsed_total",):
                totals[Outcome.COLLAPSED] + totals[Outcome.FLEET_COLLAPSED],
            ("gateway_background_refreshes_total",): totals[Outcome.BACKGROUND_REFRESH],
        }

    def gauges(self) -> list[Sample]:
        """The gauges of /metrics, now: origins' load and breakers, what the memory tier holds
        (per tenant under the recorder's bounded labels), and the fleet's state."""
        out = []
        now = self.clock()
        for name, upstream in self.upstreams.items():
            fg, bg = upstream.foreground, upstream.background
            out += [
                Sample("gateway_origin_in_flight", (name,), fg.in_use + bg.in_use),
                Sample("gateway_origin_concurrency_limit", (name,), fg.limit),
                Sample("gateway_origin_queue", (name,), fg.queued + bg.queued),
                Sample("gateway_breaker_open", (name,), upstream.breaker.refusing(now)),
            ]
        held = self.store.stats()
        by_label: dict[str, int] = {}
        for tenant, counts in held["tenants"].items():
            label = self.recorder.label(tenant)
            by_label[label] = by_label.get(label, 0) + counts["bytes"]
        out += [Sample("gateway_cache_bytes", ("memory", t), n) for t, n in by_label.items()]
        out += [
            Sample("gateway_cache_max_bytes", ("memory",), held["max_bytes"]),
            Sample("gateway_cache_entries", ("memory",), held["entries"]),
            Sample("gateway_gc_pause_max_seconds", (), max(self.gc.longest)),
        ]
        if self.member is not None:
            out += [
                Sample("gateway_purge_stream_lag_seconds", (), self.member.control.lag),
                Sample("gateway_redis_available", (), self.member.link.available),
            ]
        return out

    def stats(self) -> dict[str, object]:
        store = self.store.stats()
        tenants = self.recorder.tenants_by_name()
        for name, held in store["tenants"].items():
            tenants.setdefault(name, {}).update(held)
        return {
            "cache": self.recorder.totals_by_name(),
            "store": {k: v for k, v in store.items() if k != "tenants"},
            "tenants": tenants,
            "origins": {name: u.stats() for name, u in self.upstreams.items()},
            "in_flight_fills": len(self.cache.flights),
            "generations": self.cache.generations.describe("*"),
            "gc": self.gc.summary(),
            "heap_trims": self.trimmer.trims,
            **({"fleet": self.member.stats()} if self.member is not None else {}),
        }


def named_tenants(config: GatewayConfig) -> set[str]:
    """The tenants the config names (quotas, admin token scopes): each has its own series."""
    named = set(config.tenants)
    for token in config.admin.tokens:
        named.update(t for t in token.tenants if t != "*")
    return named


def _fleet_unavailable(what: str, exc: Exception) -> JsonError:
    """A 503 for an admin action Redis did not take: the caller retries, nothing is lost."""
    return JsonError(503, f"{what}: redis unavailable ({exc})", {"Retry-After": "1"})


async def _close_later(upstream: Upstream) -> None:
    await asyncio.sleep(RETIRE_AFTER)
    await upstream.close()


def error_reply(request: ClientRequest, exc: Exception) -> Reply:
    """No traceback page ever: client errors and unexpected ones become JSON (and a log line)."""
    if isinstance(exc, JsonError):
        payload = {"error": exc.reason, "status": exc.status, **exc.details}
        return json_reply(exc.status, payload, exc.headers)
    if isinstance(exc, BadRequest):
        # What follows on the connection (an unread body, say) cannot be trusted: close it.
        reply = json_reply(400, {"error": exc.reason, "status": 400})
        reply.close = True
        return reply
    if isinstance(exc, web.HTTPException):
        return json_reply(exc.status, {"error": exc.reason, "status": exc.status})
    log.error("unhandled error on %s %s", request.method, request.raw_path, exc_info=exc)
    return json_reply(500, {"error": "internal gateway error"})


def error_response(request: web.BaseRequest, exc: Exception) -> web.Response:
    return response_of(error_reply(request, exc))


@web.middleware
async def errors_as_json(
    request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> web.StreamResponse:
    try:
        return await handler(request)
    except Exception as exc:
        return error_response(request, exc)


def _limits(config: GatewayConfig) -> ClientLimits:
    return ClientLimits(
        header_timeout=config.client_header_timeout,
        keepalive_timeout=config.keepalive_timeout,
        max_connections=config.max_connections,
    )


def public_server(gateway: Gateway) -> PublicServer:
    """The public listener: every request goes to `Gateway.respond`, so it is a low-level
    server with no router or middleware chain to pay for on each hit. The caller runs
    `gateway.start()` before serving and `gateway.stop()` after. Limits are read at start.

    A body the gateway did not read (a refused request, an origin that answered early) is read
    and dropped for up to LINGERING seconds after the answer, which says `Connection: close`,
    so that the client sees the answer rather than a reset (nginx's lingering close)."""
    return PublicServer(
        gateway.respond,
        _limits(gateway.config),
        handler_cancellation=True,
        access_log=None,
        lingering_time=LINGERING,
        auto_decompress=False,  # a proxy forwards a gzip request body as gzip
    )


def native_server(gateway: Gateway) -> NativeServer:
    """The public listener of `server: native` (gateway/client_protocol.py): the same limits
    and lingering close as `public_server`, on a protocol of its own."""
    return NativeServer(gateway.serve, _limits(gateway.config), lingering_time=LINGERING)
