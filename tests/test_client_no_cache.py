"""A client's no-cache must not drive the origin: `client_no_cache: honor | coalesce | ignore`.

Time is a SettableClock shared by the gateway and the echo origin's `Date`; the origin's request
count is what each test asserts on.
"""

from __future__ import annotations

import asyncio

import aiohttp
import pytest
from aiohttp.test_utils import TestServer

from tests.clock import SettableClock
from tests.conftest import GatewayFactory
from tests.test_gateway_http import get, origin_count, spec

FORCING = [
    {"Cache-Control": "no-cache"},
    {"Cache-Control": "max-age=0"},
    {"Pragma": "no-cache"},
    {"Cache-Control": "min-fresh=3600"},
]


@pytest.mark.parametrize("forcing", FORCING, ids=lambda h: f"{h}")
async def test_coalesce_revalidates_at_most_once_per_second_however_many_clients_ask(
    forcing: dict[str, str],
    clocked_origin: TestServer,
    clock: SettableClock,
    make_gateway: GatewayFactory,
    http: aiohttp.ClientSession,
) -> None:
    gw, _ = await make_gateway(str(clocked_origin.make_url("/")), clock=clock)  # coalesce
    path = spec("/nc", "Cache-Control:max-age=3600", "ETag:\"v\"", delay="0.05")
    await get(http, gw, path)
    clock.advance(5)  # the entry was validated 5 s ago: one client-caused revalidation is due
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as clients:
        asks = [get(clients, gw, path, headers=forcing) for _ in range(50)]
        answers = await asyncio.gather(*asks)
    assert {resp.status for resp, _ in answers} == {200}
    assert await origin_count(clocked_origin) == 2  # the fill, then one shared revalidation
    for _ in range(20):  # within the same second: answered from that result
        clock.advance(0.04)
        resp, _ = await get(http, gw, path, headers=forcing)
        assert resp.headers["X-Cache"] == "HIT"
    assert await origin_count(clocked_origin) == 2
    clock.advance(1.0)
    await get(http, gw, path, headers=forcing)
    assert await origin_count(clocked_origin) == 3


async def test_honor_revalidates_every_time_and_ignore_never(
    echo_origin: TestServer, make_gateway: GatewayFactory, http: aiohttp.ClientSession
) -> None:
    honor, _ = await make_gateway(
        str(echo_origin.make_url("/")), route_cache=", client_no_cache: honor"
    )
    path = spec("/h", "Cache-Control:max-age=3600")
    await get(http, honor, path)
    for _ in range(5):
        resp, _ = await get(http, honor, path, headers={"Cache-Control": "no-cache"})
        assert "fwd=request" in resp.headers["Cache-Status"]
    assert await origin_count(echo_origin) == 6

    ignore, _ = await make_gateway(
        str(echo_origin.make_url("/")), route_cache=", client_no_cache: ignore"
    )
    path = spec("/i", "Cache-Control:max-age=3600")
    await get(http, ignore, path, headers={"Cache-Control": "no-store"})  # stored all the same
    for forcing in FORCING:
        resp, _ = await get(http, ignore, path, headers=forcing)
        assert resp.headers["X-Cache"] == "HIT"
    assert await origin_count(echo_origin) == 7


async def test_a_no_store_client_never_makes_the_key_a_pass_for_everyone(
    echo_origin: TestServer, make_gateway: GatewayFactory, http: aiohttp.ClientSession
) -> None:
    gw, _ = await make_gateway(str(echo_origin.make_url("/")))
    path = spec("/ns", "Cache-Control:max-age=3600", delay="0.2")
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as clients:
        first = asyncio.create_task(get(clients, gw, path, headers={"Cache-Control": "no-store"}))
        await asyncio.sleep(0.05)  # its fetch is on the way when everybody else arrives
        answers = await asyncio.gather(*(get(clients, gw, path) for _ in range(20)))
        resp, _ = await first
    assert "stored" not in resp.headers["Cache-Status"]  # its own response is not kept
    assert sum("collapsed" in r.headers["Cache-Status"] for r, _ in answers) == 19
    assert await origin_count(echo_origin) == 2  # its own fetch, and one shared fill
    hit, _ = await get(http, gw, path, headers={"Cache-Control": "no-store"})
    assert hit.headers["X-Cache"] == "HIT"  # a stored response may answer it (RFC 9111 5.2.1.5)
