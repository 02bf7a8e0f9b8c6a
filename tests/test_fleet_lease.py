"""One origin fetch per cold key across a fleet: leases in a real Redis (standalone and a
3-master cluster), gateways on real loopback listeners, and the echo origin holding its answer
behind a gate so that every client is waiting while the fill is in flight."""

from __future__ import annotations

import asyncio

import aiohttp
from aiohttp.test_utils import TestServer
from multidict import CIMultiDict

from gateway.canonical import parse_target
from gateway.exchange import Incoming
from gateway.key import vary_record_key
from gateway.server import Gateway
from tests.conftest import GatewayFactory, eventually
from tests.echo_origin import echo_state
from tests.redis_fixtures import redis_cluster, redis_server  # noqa: F401
from tests.test_fleet import Backend, backend, get, start_fleet, stored_by  # noqa: F401
from tests.test_gateway_http import origin_count, spec

CACHED = "Cache-Control:max-age=60"


async def test_300_clients_over_3_instances_cost_one_origin_fetch(
    echo_origin: TestServer, make_gateway: GatewayFactory, http: aiohttp.ClientSession,
    backend: Backend,  # noqa: F811
) -> None:
    fleet = await start_fleet(make_gateway, echo_origin, backend, 3)
    gate = echo_state(echo_origin).gate("cold")
    gate.clear()
    path = spec("/cold", CACHED, hold="cold", body="bundle")
    clients = [asyncio.create_task(get(http, fleet[i % 3][0], path)) for i in range(300)]
    await eventually(lambda: echo_state(echo_origin).in_flight == 1, "the leader's fetch")
    await eventually(lambda: _waiting_elsewhere(fleet) == 2, "the other instances wait")
    gate.set()
    answers = await asyncio.gather(*clients)
    assert [resp.status for resp, _ in answers] == [200] * 300
    assert {body for _, body in answers} == {b"bundle"}
    stats = [g.stats() for _, g in fleet]
    assert await origin_count(echo_origin) == 1, stats


def _waiting_elsewhere(fleet: list[tuple[TestServer, Gateway]]) -> int:
    return sum(g.member.leases.waited for _, g in fleet if g.member is not None)


async def test_an_answer_that_may_not_be_shared_sends_the_waiters_to_the_origin_at_once(
    echo_origin: TestServer, make_gateway: GatewayFactory, http: aiohttp.ClientSession,
    backend: Backend,  # noqa: F811
) -> None:
    (a, _), (b, gw_b) = await start_fleet(make_gateway, echo_origin, backend, 2)
    gate = echo_state(echo_origin).gate("private")
    gate.clear()
    path = spec("/private", "Cache-Control:private", hold="private")
    leader = asyncio.create_task(get(http, a, path))
    await eventually(lambda: echo_state(echo_origin).in_flight == 1, "the leader's fetch")
    waiter = asyncio.create_task(get(http, b, path))
    await eventually(lambda: gw_b.member is not None and gw_b.member.leases.waited == 1,
                     "B waits on A's lease")
    gate.set()
    (first, _), (second, _) = await asyncio.gather(leader, waiter)
    assert first.status == second.status == 200
    assert await origin_count(echo_origin) == 2
    assert gw_b.member is not None and gw_b.member.leases.timeouts == 0  # told, not timed out


async def test_a_lease_whose_holder_died_is_taken_over_by_a_waiter(
    echo_origin: TestServer, make_gateway: GatewayFactory, http: aiohttp.ClientSession,
    backend: Backend,  # noqa: F811
) -> None:
    [(b, gw_b)] = await start_fleet(make_gateway, echo_origin, backend, 1)
    assert gw_b.member is not None
    path = spec("/orphan", CACHED, body="late")
    # A holder that will never commit, as a crashed instance leaves its lease behind.
    look = gw_b.cache.locate(_incoming(path), gw_b.router.match("fleet.test", "/orphan", "GET"))
    name = gw_b.member.keys.lease(vary_record_key(look.tenant, look.url), look.vary_on(()))
    client = backend.client()
    await client.set(name, "dead-holder", px=300)
    await client.aclose()
    resp, body = await get(http, b, path)
    assert resp.status == 200 and body == b"late"
    assert gw_b.member.leases.waited == 1  # it waited, then took the lapsed lease over
    assert await origin_count(echo_origin) == 1


def _incoming(path: str) -> Incoming:
    return Incoming("GET", parse_target(path, "fleet.test", "http"), CIMultiDict(), None)


async def test_a_fill_redis_does_not_take_releases_its_lease_at_once(
    echo_origin: TestServer, make_gateway: GatewayFactory, http: aiohttp.ClientSession,
    backend: Backend,  # noqa: F811
) -> None:
    # Nothing to keep in Redis: no freshness, no stale window, no grace, no keep_stale.
    extra = f"redis: {{url: '{backend.url}', keep_stale: 0s{backend.extra}}}"
    (a, gw_a), (b, gw_b) = [
        await make_gateway(str(echo_origin.make_url("/")), top_extra=extra,
                           cache_extra="bust_grace: 0s")
        for _ in range(2)
    ]
    assert gw_b.member is not None
    path = spec("/unkept", "Cache-Control:max-age=0", body="once")
    first, _ = await get(http, a, path)
    assert first.status == 200
    await stored_by(gw_a, 1)  # its fill is over (in A's memory only)
    second, _ = await get(http, b, path)
    assert second.status == 200
    assert gw_b.member.leases.waited == 0  # A let go of the lease: nothing to wait for
