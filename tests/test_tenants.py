"""Tenant namespaces, quotas, versioned busts and tags against a real gateway and origins."""

from __future__ import annotations

import asyncio

import aiohttp
from aiohttp.test_utils import TestServer

from origin.app import create_app
from origin.settings import OriginSettings
from tests.clock import SettableClock
from tests.conftest import GatewayFactory, eventually
from tests.test_gateway_http import get, origin_count, spec, until_hit

CACHED = "Cache-Control:max-age=60"


def tenant_yaml(origin: str, extra_cache: str = "", origin_extra: str = "", route: str = "") -> str:
    return f"""
    listen: 127.0.0.1:0
    cache:
      memory: {{max_bytes: 4MiB, max_object_bytes: 256KiB}}
      {extra_cache}
    origins:
      o: {{url: "{origin.rstrip("/")}", read_timeout: 10s{origin_extra}}}
    tenants:
      noisy: {{max_bytes: 24KiB}}
      quiet: {{}}  # no quota: named, so it has counters of its own
    routes:
      - name: all
        match: {{path_prefix: /}}
        origin: o
        tenant: {{query: projectId}}
        {route}
    """


async def test_tenant_over_quota_evicts_only_its_own_entries(
    echo_origin: TestServer, make_gateway: GatewayFactory, http: aiohttp.ClientSession
) -> None:
    gw, gateway = await make_gateway("", yaml_text=tenant_yaml(str(echo_origin.make_url("/"))))
    quiet = [spec(f"/q{i}", CACHED, body="size:4000", projectId="quiet") for i in range(5)]
    for path in quiet:
        await get(http, gw, path)
    for i in range(40):
        await get(http, gw, spec(f"/n{i}", CACHED, body="size:4000", projectId="noisy"))
    for path in quiet:
        resp, _ = await get(http, gw, path)
        assert resp.headers["X-Cache"] == "HIT", path
    first_noisy, _ = await get(http, gw, spec("/n0", CACHED, body="size:4000", projectId="noisy"))
    assert first_noisy.headers["X-Cache"] == "MISS"
    tenants = gateway.stats()["tenants"]
    assert isinstance(tenants, dict)
    assert tenants["noisy"]["bytes"] <= 24 * 1024
    assert tenants["noisy"]["evictions"] > 0
    assert tenants["quiet"].get("evictions", 0) == 0
    assert tenants["quiet"]["hit"] == 5


async def test_a_scan_of_junk_urls_does_not_evict_a_tenants_hot_entries(
    echo_origin: TestServer, make_gateway: GatewayFactory, http: aiohttp.ClientSession
) -> None:
    gw, gateway = await make_gateway("", yaml_text=tenant_yaml(str(echo_origin.make_url("/"))))
    hot = [spec(f"/bundle{i}", CACHED, body="size:2000", projectId="noisy") for i in range(6)]
    for _ in range(4):  # popular: asked for again and again
        for path in hot:
            await get(http, gw, path)
    for i in range(120):  # one-off junk in the same tenant, enough to fill its quota 5 times
        await get(http, gw, spec("/bundle0", CACHED, body="size:2000", projectId="noisy", j=str(i)))
    for path in hot:
        resp, _ = await get(http, gw, path)
        assert resp.headers["X-Cache"] == "HIT", path
    assert gateway.store.tenant_bytes("noisy") <= 24 * 1024


async def test_hard_bust_of_a_tenant_misses_only_that_tenant(
    echo_origin: TestServer, make_gateway: GatewayFactory, http: aiohttp.ClientSession
) -> None:
    gw, gateway = await make_gateway(str(echo_origin.make_url("/")))
    a, b = spec("/x", CACHED, projectId="a"), spec("/x", CACHED, projectId="b")
    await get(http, gw, a)
    await get(http, gw, b)
    result = await gateway.bust("a", soft=False)
    assert result["hard"] == 1
    assert (await get(http, gw, a))[0].headers["X-Cache"] == "MISS"
    assert (await get(http, gw, b))[0].headers["X-Cache"] == "HIT"
    await gateway.bust("*", soft=False)
    assert (await get(http, gw, b))[0].headers["X-Cache"] == "MISS"


async def test_soft_purge_by_tag_serves_stale_while_refreshing(
    echo_origin: TestServer, make_gateway: GatewayFactory, http: aiohttp.ClientSession
) -> None:
    gw, gateway = await make_gateway(str(echo_origin.make_url("/")))
    tagged = spec("/t", CACHED, "Surrogate-Key:red blue", "X-Gen:{n}", projectId="a")
    other = spec("/u", CACHED, "Surrogate-Key:green", projectId="a")
    await get(http, gw, tagged)
    await get(http, gw, other)
    assert await gateway.purge("a", tags=["blue"], soft=True) == 1
    stale, _ = await get(http, gw, tagged)
    assert stale.headers["X-Cache"] == "UPDATING"
    assert stale.headers["X-Gen"] == "1"
    fresh, _ = await until_hit(http, gw, tagged)  # the one background refresh lands
    assert fresh.headers["X-Cache"] == "HIT"
    assert fresh.headers["X-Gen"] == "2"
    assert await origin_count(echo_origin) == 3  # two fills, one refresh
    assert (await get(http, gw, other))[0].headers["X-Cache"] == "HIT"
    assert await gateway.purge("a", tags=["green"]) == 1
    assert (await get(http, gw, other))[0].headers["X-Cache"] == "MISS"


async def test_purge_by_path_finds_every_variant_on_the_tenants_hosts(
    echo_origin: TestServer, make_gateway: GatewayFactory, http: aiohttp.ClientSession
) -> None:
    gw, gateway = await make_gateway(str(echo_origin.make_url("/")))
    path = spec("/v", CACHED, "Vary:Accept-Encoding", projectId="a")
    await get(http, gw, path, headers={"Accept-Encoding": "gzip"})
    await get(http, gw, path, headers={"Accept-Encoding": "br"})
    assert await gateway.purge("a", urls=[path]) == 2
    resp, _ = await get(http, gw, path, headers={"Accept-Encoding": "gzip"})
    assert resp.headers["X-Cache"] == "MISS"


async def test_soft_bust_past_its_grace_counts_as_a_miss(
    clocked_origin: TestServer,
    clock: SettableClock,
    make_gateway: GatewayFactory,
    http: aiohttp.ClientSession,
) -> None:
    yaml_text = tenant_yaml(str(clocked_origin.make_url("/")), extra_cache="bust_grace: 30s")
    gw, gateway = await make_gateway("", yaml_text=yaml_text, clock=clock)
    path = spec("/g", CACHED, projectId="a")
    other = spec("/g", CACHED, projectId="b")
    await get(http, gw, path)
    await get(http, gw, other)
    await gateway.bust("a", soft=True)
    clock.advance(31)  # past the grace; by its max-age=60 the entry would still be fresh
    resp, _ = await get(http, gw, path)
    assert resp.headers["X-Cache"] == "MISS"
    assert "fwd=uri-miss" in resp.headers["Cache-Status"]
    assert (await get(http, gw, other))[0].headers["X-Cache"] == "HIT"  # not tenant b's
    assert await origin_count(clocked_origin) == 3


async def test_tag_headers_reach_clients_only_when_the_route_keeps_them(
    echo_origin: TestServer, make_gateway: GatewayFactory, http: aiohttp.ClientSession
) -> None:
    yaml_text = tenant_yaml(str(echo_origin.make_url("/")), route="cache: {keep_tags: true}")
    gw, _ = await make_gateway("", yaml_text=yaml_text)
    path = spec("/k", CACHED, "Cache-Tag:one,two")
    await get(http, gw, path)
    resp, _ = await get(http, gw, path)
    assert resp.headers["X-Cache"] == "HIT"
    assert resp.headers["Cache-Tag"] == "one,two"


async def test_soft_bust_of_many_hot_keys_stays_within_the_background_budget(
    aiohttp_server, make_gateway: GatewayFactory, http: aiohttp.ClientSession  # type: ignore[no-untyped-def]
) -> None:
    settings = OriginSettings(projects=40, codegen_seconds=0.05, s_maxage=300, swr=0)
    loader = await aiohttp_server(create_app(settings))
    yaml_text = tenant_yaml(
        str(loader.make_url("/")), origin_extra=", background_concurrency: 2, max_concurrency: 32"
    )
    gw, gateway = await make_gateway("", yaml_text=yaml_text)
    paths = [
        f"/api/v1/loader/code/published?projectId=p{i}&platform=react" for i in range(1, 41)
    ]
    warm = await asyncio.gather(*(get(http, gw, p) for p in paths))
    async with http.post(loader.make_url("/api/v1/projects/p1/publish")):
        pass
    async with http.post(loader.make_url("/__stats/reset")):
        pass
    await gateway.bust("*", soft=True)
    labels: list[str] = []
    for _ in range(3):  # three rounds of every hot key at once
        answers = await asyncio.gather(*(get(http, gw, p) for p in paths))
        labels += [resp.headers["X-Cache"] for resp, _ in answers]
    await eventually(lambda: gateway.stats()["in_flight_fills"] == 0, "the refreshes drain")
    async with http.get(loader.make_url("/__stats")) as resp:
        stats = await resp.json()
    assert stats["in_flight_max"] <= 2
    assert stats["requests_total"] == 40  # one revalidation per key
    assert labels.count("UPDATING") >= 40
    assert "MISS" not in labels
    after = [(await get(http, gw, p))[0] for p in paths]
    assert all(r.headers["X-Cache"] == "HIT" for r in after)
    assert after[0].headers["ETag"] != warm[0][0].headers["ETag"]  # p1 was republished
    assert after[1].headers["ETag"] == warm[1][0].headers["ETag"]  # p2 revalidated, unchanged


async def test_a_tenant_taken_from_a_header_is_found_per_request_not_remembered(
    echo_origin: TestServer, make_gateway: GatewayFactory, http: aiohttp.ClientSession
) -> None:
    yaml_text = tenant_yaml(str(echo_origin.make_url("/"))).replace(
        "tenant: {query: projectId}", "tenant: {header: X-Tenant}"
    )
    gw, gateway = await make_gateway("", yaml_text=yaml_text)
    path = spec("/same", CACHED)
    for tenant in ("red", "blue"):
        first, _ = await get(http, gw, path, headers={"X-Tenant": tenant})
        again, _ = await get(http, gw, path, headers={"X-Tenant": tenant})
        assert (first.headers["X-Cache"], again.headers["X-Cache"]) == ("MISS", "HIT"), tenant
    tenants = gateway.stats()["tenants"]
    assert isinstance(tenants, dict)
    assert tenants["red"]["entries"] == tenants["blue"]["entries"] == 1
