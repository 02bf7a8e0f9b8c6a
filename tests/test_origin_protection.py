"""Origin protection against a real gateway and real origins on loopback: single flight, pass
memory, collapse bounds, stale-while-revalidate, stale-if-error, revalidation, budgets, breaker.

Time that a cache decision reads (TTLs, stale windows, the breaker's reset) is a SettableClock
the test moves, shared with the origin's `Date`. What happens at the origin is asserted from its
own counters (requests, requests in flight at once), not from how long a client waited; only the
wait bounds that run on the event loop (queue timeouts, body timeouts) are real time.
"""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import aiohttp
from aiohttp.test_utils import TestServer

from gateway.outcomes import Outcome
from origin.app import create_app
from origin.settings import OriginSettings
from tests.clock import SettableClock, http_date, stamp_dates
from tests.conftest import GatewayFactory, eventually
from tests.echo_origin import echo_state
from tests.test_gateway_http import get, origin_count, spec, until_hit

BUNDLE = "/api/v1/loader/code/published?projectId={p}&platform=react"


async def start_loader(
    aiohttp_server: Any, clock: SettableClock | None = None, **overrides: Any
) -> TestServer:
    """The demo loader origin; with `clock`, its `Date` fields come from the test's clock."""
    values: dict[str, Any] = {"projects": 20, "codegen_seconds": 0.05}
    values.update(overrides)
    app = create_app(OriginSettings(**values))
    if clock is not None:
        stamp_dates(app, clock)
    server: TestServer = await aiohttp_server(app)
    return server


async def loader_call(
    http: aiohttp.ClientSession, loader: TestServer, path: str, body: Any = None
) -> dict[str, Any]:
    """GET a control endpoint, or POST `body` to it."""
    method = "GET" if body is None else "POST"
    async with http.request(method, loader.make_url(path), json=body) as resp:
        assert resp.status == 200, await resp.text()
        result: dict[str, Any] = await resp.json()
        return result


async def timed_get(
    http: aiohttp.ClientSession, gw: TestServer, path: str
) -> tuple[aiohttp.ClientResponse, bytes, float]:
    start = time.perf_counter()
    resp, body = await get(http, gw, path)
    return resp, body, time.perf_counter() - start


async def test_200_concurrent_cold_requests_make_one_origin_request_and_one_codegen(
    aiohttp_server: Any, make_gateway: GatewayFactory, http: aiohttp.ClientSession
) -> None:
    loader = await start_loader(aiohttp_server, codegen_seconds=0.3)
    gw, _ = await make_gateway(str(loader.make_url("/")))
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as clients:
        results = await asyncio.gather(
            *(get(clients, gw, BUNDLE.format(p="p1")) for _ in range(200))
        )
    stats = await loader_call(http, loader, "/__stats")
    assert stats["requests_total"] == 1
    assert stats["codegen_runs"] == 1
    assert {resp.status for resp, _ in results} == {200}
    assert len({body for _, body in results}) == 1
    statuses = [resp.headers["Cache-Status"] for resp, _ in results]
    leaders = [s for s in statuses if "fwd=uri-miss" in s and "collapsed" not in s]
    assert len(leaders) == 1
    # The rest waited on the leader's fill, or connected after it landed (the accept backlog
    # is 128) and found the entry.
    assert all("collapsed" in s or s.startswith("edge; hit") for s in statuses if s not in leaders)
    assert sum("collapsed" in s for s in statuses) >= 100


async def test_unshareable_response_releases_every_waiter_at_once_and_is_remembered_as_pass(
    echo_origin: TestServer, make_gateway: GatewayFactory, http: aiohttp.ClientSession
) -> None:
    gw, gateway = await make_gateway(str(echo_origin.make_url("/")))
    origin = echo_state(echo_origin)
    path = spec("/private", "Cache-Control:private, max-age=60", delay="0.3")
    first_wave = await asyncio.gather(*(get(http, gw, path) for _ in range(20)))
    assert len({body for _, body in first_wave}) == 20  # each client got its own response
    assert await origin_count(echo_origin) == 20
    # The leader's request alone, then every waiter's at once: nineteen at the origin together,
    # not one after another, each behind a new leader.
    assert origin.in_flight_max == 19
    origin.reset_peak()
    second_wave = await asyncio.gather(*(get(http, gw, path) for _ in range(5)))
    # Remembered as pass: nobody queues behind a leader any more, all five at once.
    assert origin.in_flight_max == 5
    assert all("collapsed" not in r.headers["Cache-Status"] for r, _ in second_wave)
    assert gateway.recorder.totals[Outcome.PASS] == 25


async def test_waiter_that_gives_up_fetches_for_itself_and_its_response_is_stored(
    echo_origin: TestServer, make_gateway: GatewayFactory, http: aiohttp.ClientSession
) -> None:
    gw, _ = await make_gateway(str(echo_origin.make_url("/")), collapse_timeout="200ms")
    origin = echo_state(echo_origin)
    path = spec("/slowfill", "Cache-Control:max-age=60", hold="slowfill")
    origin.gate("slowfill").clear()  # the origin answers nothing until the test says so
    leader = asyncio.create_task(get(http, gw, path))
    await eventually(lambda: origin.in_flight == 1, "the leader's fill reaches the origin")
    waiter = asyncio.create_task(get(http, gw, path))
    # The leader's fill is still held: a second request at the origin is the waiter's own,
    # sent once it gave up waiting (collapse_timeout, on the event loop's clock).
    await eventually(lambda: origin.in_flight == 2, "the waiter gives up and fetches itself")
    origin.gate("slowfill").set()
    (resp, _), _ = await asyncio.gather(waiter, leader)
    assert resp.status == 200
    assert "collapsed" not in resp.headers["Cache-Status"]
    assert "stored" in resp.headers["Cache-Status"]
    assert await origin_count(echo_origin) == 2
    assert (await get(http, gw, path))[0].headers["X-Cache"] == "HIT"


async def test_client_disconnect_mid_fill_leaves_the_other_waiters_answered(
    echo_origin: TestServer, make_gateway: GatewayFactory, http: aiohttp.ClientSession
) -> None:
    gw, _ = await make_gateway(str(echo_origin.make_url("/")))
    origin = echo_state(echo_origin)
    path = spec("/abandoned", "Cache-Control:max-age=60", hold="abandoned")
    origin.gate("abandoned").clear()  # the fill stays at the origin until the test lets it go
    async with aiohttp.ClientSession() as leaving:
        leader = asyncio.create_task(get(leaving, gw, path))
        await eventually(lambda: origin.in_flight == 1, "the leader's fill reaches the origin")
        waiters = [asyncio.create_task(get(http, gw, path)) for _ in range(10)]
        await asyncio.sleep(0.1)  # their requests reach the gateway (loopback) and join the fill
        leader.cancel()  # the leader's client goes away; aiohttp cancels its handler
    origin.gate("abandoned").set()
    results = await asyncio.gather(*waiters)
    assert leader.cancelled()
    assert {resp.status for resp, _ in results} == {200}
    assert all("collapsed" in resp.headers["Cache-Status"] for resp, _ in results)
    assert await origin_count(echo_origin) == 1
    assert (await get(http, gw, path))[0].headers["X-Cache"] == "HIT"


async def test_stale_while_revalidate_answers_at_hit_speed_and_refreshes_once(
    clocked_origin: TestServer,
    clock: SettableClock,
    make_gateway: GatewayFactory,
    http: aiohttp.ClientSession,
) -> None:
    gw, _ = await make_gateway(str(clocked_origin.make_url("/")), clock=clock)
    origin = echo_state(clocked_origin)
    path = spec(
        "/swr", "Cache-Control:max-age=1, stale-while-revalidate=30", "X-Gen:{n}", hold="swr"
    )
    await get(http, gw, path)
    clock.advance(2)
    origin.gate("swr").clear()  # the revalidation will be held at the origin
    # Every answer comes back while the one revalidation cannot have finished: hit speed, not
    # the origin's (were they waiting for it, this would time out).
    stale = await asyncio.wait_for(asyncio.gather(*(get(http, gw, path) for _ in range(10))), 5)
    assert {resp.headers["X-Cache"] for resp, _ in stale} == {"UPDATING"}
    assert {resp.headers["X-Gen"] for resp, _ in stale} == {"1"}
    await eventually(lambda: origin.in_flight == 1, "the background revalidation is sent")
    origin.gate("swr").set()
    resp, _ = await until_hit(http, gw, path)  # the one background revalidation
    assert resp.headers["X-Cache"] == "HIT"
    assert resp.headers["X-Gen"] == "2"
    assert await origin_count(clocked_origin) == 2


async def test_route_stale_while_revalidate_applies_unless_the_origin_forbids_stale(
    clocked_origin: TestServer,
    clock: SettableClock,
    make_gateway: GatewayFactory,
    http: aiohttp.ClientSession,
) -> None:
    gw, _ = await make_gateway(
        str(clocked_origin.make_url("/")), route_cache=", stale_while_revalidate: 30s", clock=clock
    )
    plain = spec("/default-swr", "Cache-Control:max-age=1")
    strict = spec("/strict", "Cache-Control:max-age=1, must-revalidate")
    await get(http, gw, plain)
    await get(http, gw, strict)
    clock.advance(2)
    assert (await get(http, gw, plain))[0].headers["X-Cache"] == "UPDATING"
    assert (await get(http, gw, strict))[0].headers["X-Cache"] == "EXPIRED"


async def test_stale_if_error_serves_the_stale_entry_for_each_kind_of_origin_failure(
    aiohttp_server: Any,
    clock: SettableClock,
    make_gateway: GatewayFactory,
    http: aiohttp.ClientSession,
) -> None:
    loader = await start_loader(aiohttp_server, clock, s_maxage=1, swr=0)
    gw, _ = await make_gateway(
        str(loader.make_url("/")),
        read_timeout="400ms",
        route_cache=", stale_if_error: 5m, stale_overrides_origin: true",  # over s-maxage
        origin_extra=", breaker: {failures: 100}",
        clock=clock,
    )
    cached, cold = BUNDLE.format(p="p1"), BUNDLE.format(p="p2")
    fresh, fresh_body = await get(http, gw, cached)
    assert (await get(http, gw, cached))[0].headers["X-Cache"] == "HIT"
    clock.advance(2)

    await loader_call(http, loader, "/__faults", {"status": 503})
    resp, body = await get(http, gw, cached)
    assert (resp.status, resp.headers["X-Cache"], body) == (200, "STALE", fresh_body)
    assert "fwd=stale; fwd-status=503" in resp.headers["Cache-Status"]
    resp, body = await get(http, gw, cold)
    assert resp.status == 503 and json.loads(body)["error"] == "injected fault"

    await loader_call(http, loader, "/__faults", {"reset": True, "delay_seconds": 2})
    resp, body = await get(http, gw, cached)
    assert (resp.status, resp.headers["X-Cache"], body) == (200, "STALE", fresh_body)
    resp, body = await get(http, gw, cold)
    assert resp.status == 504 and json.loads(body)["error"] == "origin timed out"

    await loader.close()
    resp, body = await get(http, gw, cached)
    assert (resp.status, resp.headers["X-Cache"], body) == (200, "STALE", fresh_body)
    assert resp.headers["ETag"] == fresh.headers["ETag"]
    resp, body = await get(http, gw, cold)
    assert resp.status == 502 and json.loads(body)["error"] == "origin unreachable"


async def test_route_grace_does_not_serve_an_s_maxage_response_stale_rfc9111_5_2_2_10(
    aiohttp_server: Any,
    clock: SettableClock,
    make_gateway: GatewayFactory,
    http: aiohttp.ClientSession,
) -> None:
    loader = await start_loader(aiohttp_server, clock, s_maxage=1, swr=0)
    gw, _ = await make_gateway(
        str(loader.make_url("/")),
        route_cache=", stale_if_error: 5m, stale_while_revalidate: 5m",
        origin_extra=", breaker: {failures: 100}",
        clock=clock,
    )
    cached = BUNDLE.format(p="p1")
    await get(http, gw, cached)
    assert (await get(http, gw, cached))[0].headers["X-Cache"] == "HIT"
    clock.advance(2)  # s-maxage=1 implies proxy-revalidate: stale now means revalidate
    await loader_call(http, loader, "/__faults", {"status": 503})
    resp, _ = await get(http, gw, cached)
    assert (resp.status, resp.headers["X-Cache"]) == (503, "MISS")


async def test_304_from_the_origin_refreshes_headers_and_keeps_the_body(
    aiohttp_server: Any,
    clock: SettableClock,
    make_gateway: GatewayFactory,
    http: aiohttp.ClientSession,
) -> None:
    loader = await start_loader(aiohttp_server, clock, s_maxage=1, swr=0)
    gw, _ = await make_gateway(str(loader.make_url("/")), clock=clock)
    path = BUNDLE.format(p="p3")
    first, body1 = await get(http, gw, path)
    clock.advance(2)
    again, body2 = await get(http, gw, path)
    assert again.headers["X-Cache"] == "REVALIDATED"
    assert body2 == body1
    assert first.headers["Date"] != again.headers["Date"] == http_date(clock)  # the 304's
    assert again.headers["Age"] == "0"
    stats = await loader_call(http, loader, "/__stats")
    assert (stats["not_modified"], stats["codegen_runs"], stats["requests_total"]) == (1, 1, 2)
    assert (await get(http, gw, path))[0].headers["X-Cache"] == "HIT"


async def test_breaker_opens_after_failures_then_serves_stale_or_503_and_closes_after_a_probe(
    clocked_origin: TestServer,
    clock: SettableClock,
    make_gateway: GatewayFactory,
    http: aiohttp.ClientSession,
) -> None:
    gw, gateway = await make_gateway(
        str(clocked_origin.make_url("/")),
        origin_extra=", breaker: {failures: 3, reset: 2s}",
        clock=clock,
    )
    stale_ok = spec("/sie", "Cache-Control:max-age=1, stale-if-error=60")
    await get(http, gw, stale_ok)
    for i in range(3):
        resp, _ = await get(http, gw, f"/nocache/fail{i}?status=503")
        assert resp.status == 503  # the origin's own answer, passed through
    assert gateway.upstreams["o"].breaker.state == "open"
    before = await origin_count(clocked_origin)
    resp, body = await get(http, gw, "/nocache/ok")
    assert resp.status == 503 and resp.headers["Retry-After"] == "2"  # the whole reset to go
    assert json.loads(body)["error"] == "origin unavailable"
    clock.advance(1.5)
    resp, _ = await get(http, gw, stale_ok)
    assert (resp.status, resp.headers["X-Cache"]) == (200, "STALE")
    resp, _ = await get(http, gw, "/nocache/ok")
    assert (resp.status, resp.headers["Retry-After"]) == (503, "1")  # still open: 0.5 s to go
    assert await origin_count(clocked_origin) == before  # open: nothing reached the origin
    clock.advance(0.5)
    resp, _ = await get(http, gw, "/nocache/ok")
    assert resp.status == 200  # the probe after `reset`
    assert gateway.upstreams["o"].breaker.state == "closed"
    assert (await get(http, gw, "/nocache/again"))[0].status == 200


async def test_one_resource_answering_500_does_not_cut_off_the_origin(
    echo_origin: TestServer, make_gateway: GatewayFactory, http: aiohttp.ClientSession
) -> None:
    gw, gateway = await make_gateway(
        str(echo_origin.make_url("/")), origin_extra=", breaker: {failures: 3}"
    )
    for i in range(10):
        assert (await get(http, gw, f"/nocache/bug{i}?status=500"))[0].status == 500
    for i in range(3):  # some 503s, but among successes: not the origin being down
        assert (await get(http, gw, f"/nocache/busy{i}?status=503"))[0].status == 503
        assert (await get(http, gw, f"/nocache/ok{i}"))[0].status == 200
        assert (await get(http, gw, f"/nocache/ok{i}b"))[0].status == 200
    assert gateway.upstreams["o"].breaker.state == "closed"


async def test_excess_load_gets_a_fast_503_and_the_origin_never_sees_more_than_the_budget(
    aiohttp_server: Any, make_gateway: GatewayFactory, http: aiohttp.ClientSession
) -> None:
    loader = await start_loader(aiohttp_server, codegen_seconds=0)
    await loader_call(http, loader, "/__faults", {"delay_seconds": 0.5})
    gw, _ = await make_gateway(
        str(loader.make_url("/")),
        origin_extra=", max_concurrency: 2, max_queue: 8, queue_timeout: 1s",
    )
    results = await asyncio.gather(
        *(timed_get(http, gw, BUNDLE.format(p=f"p{i}")) for i in range(1, 21))
    )
    stats = await loader_call(http, loader, "/__stats")
    assert stats["in_flight_max"] <= 2
    rejected = [(resp, body, took) for resp, body, took in results if resp.status == 503]
    assert len(rejected) >= 10  # 2 running + 8 queued at most; the rest refused at once
    for resp, body, _ in rejected:
        assert json.loads(body)["error"] == "origin unavailable"
        assert "Retry-After" in resp.headers
    assert min(took for _, _, took in rejected) < 0.25  # refused, not queued behind the origin


async def test_only_idempotent_requests_are_retried_and_only_once(
    aiohttp_server: Any, make_gateway: GatewayFactory, http: aiohttp.ClientSession
) -> None:
    loader = await start_loader(aiohttp_server)
    gw, _ = await make_gateway(str(loader.make_url("/")), origin_extra=", retries: 1")
    await loader_call(http, loader, "/__faults", {"drop": True})
    resp, _ = await get(http, gw, BUNDLE.format(p="p1"))
    assert resp.status == 502
    stats = await loader_call(http, loader, "/__stats")
    # Sent, then dropped: resent once (RFC 9112 9.3.1), not once more by the gateway's retry.
    assert stats["requests_by_method"] == {"GET": 2}
    await loader_call(http, loader, "/__stats/reset", {})
    async with http.post(gw.make_url("/api/v1/projects/p1/publish"), data=b"{}") as resp:
        assert resp.status == 502
    stats = await loader_call(http, loader, "/__stats")
    assert stats["requests_by_method"] == {"POST": 1}

    dead, gateway = await make_gateway("http://127.0.0.1:9", origin_extra=", retries: 1")
    assert (await get(http, dead, "/x"))[0].status == 502
    assert gateway.upstreams["o"].fetches == 2  # a failed connect: the origin never saw it
    async with http.post(dead.make_url("/x"), data=b"x") as resp:
        assert resp.status == 502
    assert gateway.upstreams["o"].fetches == 3  # a request with a body is never retried


async def test_a_client_stalling_mid_upload_gets_408_and_frees_its_origin_slot(
    aiohttp_server: Any, make_gateway: GatewayFactory, http: aiohttp.ClientSession
) -> None:
    loader = await start_loader(aiohttp_server)
    base = BASE_YAML_FOR_STALL.format(origin=str(loader.make_url("/")).rstrip("/"))
    gw, gateway = await make_gateway("", yaml_text=base)
    reader, writer = await asyncio.open_connection("127.0.0.1", gw.port)
    try:
        writer.write(b"POST /api/v1/server-data/sources/s1/execute HTTP/1.1\r\nHost: a\r\n"
                     b"Content-Length: 1000\r\n\r\n" + b"{" * 10)  # then nothing more
        await writer.drain()
        start = time.perf_counter()
        head = await asyncio.wait_for(reader.read(200), 5)
        assert head.startswith(b"HTTP/1.1 408"), head
        assert time.perf_counter() - start < 2  # the 300 ms idle bound, not a read timeout
    finally:
        writer.close()
    upstream = gateway.upstreams["o"]
    assert upstream.foreground.in_use == 0
    assert upstream.breaker.state == "closed" and upstream.failures == 0  # not the origin's fault
    resp, _ = await get(http, gw, BUNDLE.format(p="p2"))  # the one slot serves others again
    assert resp.status == 200


BASE_YAML_FOR_STALL = """
listen: 127.0.0.1:0
client_body_timeout: 300ms
origins:
  o: {{url: "{origin}", read_timeout: 10s, max_concurrency: 1, max_queue: 0}}
routes:
  - {{name: all, match: {{path_prefix: /}}, origin: o, tenant: {{query: projectId}}}}
"""
