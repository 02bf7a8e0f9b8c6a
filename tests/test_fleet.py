"""Gateways sharing a real Redis: the L2 tier, purges and busts reaching every instance,
generations surviving restarts, and Redis failing open. Each gateway is a real listener on a
loopback port; the Redis is a real `redis-server` started on a free port, or a real
three-master Redis Cluster (every test but the one that kills Redis runs on both)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
from aiohttp.test_utils import TestServer
from redis.asyncio import Redis
from redis.asyncio.cluster import RedisCluster as ClusterClient

from gateway.fleet import link as fleet_link
from gateway.server import Gateway
from gateway.store.tiered import TieredStore
from tests.conftest import GatewayFactory, eventually
from tests.redis_fixtures import redis_cluster, redis_server  # noqa: F401
from tests.redis_servers import HOST, RedisCluster, RedisServer, TcpProxy
from tests.test_gateway_http import origin_count, spec

CACHED = "Cache-Control:max-age=60"
TAGGED = "Surrogate-Key:news"


async def get(
    http: aiohttp.ClientSession, gw: TestServer, path: str
) -> tuple[aiohttp.ClientResponse, bytes]:
    """As clients of a fleet ask: under the one public host name, whichever instance answers
    (the URL, so the key, includes the host)."""
    async with http.get(gw.make_url(path), headers={"Host": "fleet.test"}) as resp:
        return resp, await resp.read()


async def stored_by(gateway: Gateway, count: int) -> None:
    """Until `gateway` has stored `count` fills: a client has the whole body a moment before
    the fill that streamed it to them is written to Redis."""
    await eventually(lambda: gateway.stats()["cache"].get("stored", 0) >= count,  # type: ignore[union-attr]
                     f"{count} fills stored")


def fleet_yaml(url: str, extra: str = "") -> str:
    return f"redis: {{url: '{url}', timeout: 300ms, block: 200ms{extra}}}"


class Backend:
    """Where a test's fleet keeps its state: a standalone Redis, or the module's 3-master
    cluster (flushed before each test)."""

    def __init__(self, url: str, ports: list[int], *, cluster: bool) -> None:
        self.url = url  # the gateways' `redis.url` (a cluster's first node)
        self.ports = ports  # every node's
        self.cluster = cluster
        self.extra = ", cluster: true" if cluster else ""  # for `fleet_yaml`

    def client(self) -> Any:  # Redis | ClusterClient
        """The test's own client, of the kind the gateways use."""
        return ClusterClient.from_url(self.url) if self.cluster else Redis.from_url(self.url)


@pytest.fixture(params=["standalone", "cluster"])
def backend(request: pytest.FixtureRequest) -> Backend:
    if request.param == "cluster":
        cluster: RedisCluster = request.getfixturevalue("redis_cluster")
        cluster.flushall()
        return Backend(cluster.url, cluster.ports, cluster=True)
    server: RedisServer = request.getfixturevalue("redis_server")
    return Backend(server.url, [server.port], cluster=False)


async def start_fleet(
    make_gateway: GatewayFactory, origin: TestServer, redis: Backend, n: int
) -> list[tuple[TestServer, Gateway]]:
    yaml = fleet_yaml(redis.url, redis.extra)
    members = [await make_gateway(str(origin.make_url("/")), top_extra=yaml) for _ in range(n)]
    for _, gateway in members:
        assert gateway.member is not None
        await eventually(lambda g=gateway: g.member.control.ready, "purge stream followed")
    return members


class CutOff:
    """One instance reaching Redis only through `TcpProxy`s, one per node: `cut()` takes it
    off Redis (a network partition) while the others, connected directly, keep working.

    A cluster client learns the nodes' addresses from CLUSTER SLOTS and would connect to them
    directly, past a proxy given as its URL; so the instance's cluster client is built with
    redis-py's `address_remap`, which sends each node's address to that node's proxy."""

    def __init__(self, backend: Backend) -> None:
        self.backend = backend
        self.proxies: list[TcpProxy] = []

    async def start(self) -> CutOff:
        for port in self.backend.ports:
            self.proxies.append(await TcpProxy(HOST, port).start())
        return self

    async def start_member(
        self, make_gateway: GatewayFactory, origin: TestServer, monkeypatch: pytest.MonkeyPatch
    ) -> tuple[TestServer, Gateway]:
        via = Backend(self.proxies[0].url_for(), [p.port for p in self.proxies],
                      cluster=self.backend.cluster)
        if not via.cluster:
            return (await start_fleet(make_gateway, origin, via, 1))[0]
        to_proxy = {port: proxy.port for port, proxy in zip(self.backend.ports, self.proxies,
                                                             strict=True)}

        def remap(address: tuple[str, int]) -> tuple[str, int]:
            host, port = address
            return host, to_proxy.get(port, port)

        class ProxiedCluster(ClusterClient):
            def __init__(self, *args: Any, **kwargs: Any) -> None:
                super().__init__(*args, address_remap=remap, **kwargs)

            async def execute_command(self, *args: Any, **kwargs: Any) -> Any:
                # redis-py 8 sends a new client's first command to a default node whatever its
                # key, and follows the MOVED to the node's own address, which `address_remap`
                # does not map: the client would keep a path around the proxy. So learn the
                # slots first (a no-op once known).
                await self.initialize()
                return await super().execute_command(*args, **kwargs)

        with monkeypatch.context() as patch:  # this instance's clients only
            patch.setattr(fleet_link, "RedisCluster", ProxiedCluster)
            return (await start_fleet(make_gateway, origin, via, 1))[0]

    def cut(self) -> None:
        for proxy in self.proxies:
            proxy.cut()

    def restore(self) -> None:
        for proxy in self.proxies:
            proxy.restore()

    async def close(self) -> None:
        for proxy in self.proxies:
            await proxy.close()


@pytest.fixture
async def cut_off(backend: Backend) -> AsyncIterator[CutOff]:
    proxies = CutOff(backend)
    try:
        yield await proxies.start()
    finally:
        await proxies.close()


async def test_an_entry_filled_through_one_instance_is_a_hit_on_another(
    echo_origin: TestServer, make_gateway: GatewayFactory, http: aiohttp.ClientSession,
    backend: Backend,
) -> None:
    (a, gw_a), (b, _) = await start_fleet(make_gateway, echo_origin, backend, 2)
    path = spec("/shared", CACHED, body="from-a")
    first, _ = await get(http, a, path)
    await stored_by(gw_a, 1)
    second, body = await get(http, b, path)
    assert first.headers["X-Cache"] == "MISS"
    assert second.headers["X-Cache"] == "HIT" and body == b"from-a"
    assert await origin_count(echo_origin) == 1
    third, _ = await get(http, b, path)  # now from B's own memory
    assert third.headers["X-Cache"] == "HIT"


@pytest.mark.parametrize("how", ["urls", "tags", "prefix", "namespace"])
async def test_a_purge_taken_by_one_instance_reaches_the_others(
    how: str, echo_origin: TestServer, make_gateway: GatewayFactory,
    http: aiohttp.ClientSession, backend: Backend,
) -> None:
    fleet = await start_fleet(make_gateway, echo_origin, backend, 3)
    (a, gw_a), (b, gw_b), (c, gw_c) = fleet
    path = spec("/news/today", CACHED, TAGGED, projectId="p1")
    await get(http, a, path)
    await stored_by(gw_a, 1)
    for server in (b, c):
        await get(http, server, path)  # in each instance's memory now
    assert await origin_count(echo_origin) == 1
    selector: dict[str, object] = {
        "urls": {"urls": [path]}, "tags": {"tags": ["news"]}, "prefix": {"prefix": "/news/"},
        "namespace": {},
    }[how]
    tiered = gw_c.cache.store
    assert isinstance(tiered, TieredStore)
    promoted = tiered.l2_hits
    assert await gw_a.purge("p1", **selector) >= 1  # type: ignore[arg-type]
    for gateway in (gw_b, gw_c):
        await eventually(lambda g=gateway: g.member.control.events >= 1, "the purge arrived")
    resp, _ = await get(http, b, path)
    assert resp.headers["X-Cache"] == "MISS"  # B's copy is gone: fetched again, stored in L2
    await stored_by(gw_b, 1)
    resp, _ = await get(http, c, path)
    assert resp.headers["X-Cache"] == "HIT" and tiered.l2_hits == promoted + 1  # B's refill
    assert await origin_count(echo_origin) == 2


async def test_a_soft_purge_leaves_a_stale_copy_to_serve_while_refreshing(
    echo_origin: TestServer, make_gateway: GatewayFactory, http: aiohttp.ClientSession,
    backend: Backend,
) -> None:
    (a, gw_a), (b, gw_b) = await start_fleet(make_gateway, echo_origin, backend, 2)
    path = spec("/soft", CACHED, projectId="p1")
    await get(http, a, path)
    await get(http, b, path)
    await gw_a.purge("p1", urls=[path], soft=True)
    await eventually(lambda: gw_b.member is not None and gw_b.member.control.events >= 1,
                     "the soft purge reached B")
    resp, _ = await get(http, b, path)
    assert resp.headers["X-Cache"] == "UPDATING"


async def test_busts_reach_every_instance_and_survive_a_restart(
    echo_origin: TestServer, make_gateway: GatewayFactory, http: aiohttp.ClientSession,
    backend: Backend,
) -> None:
    (a, gw_a), (b, gw_b) = await start_fleet(make_gateway, echo_origin, backend, 2)
    path = spec("/bundle", CACHED, projectId="p1")
    await get(http, a, path)
    await get(http, b, path)
    result = await gw_a.bust("p1", soft=False)
    assert result["hard"] == 1
    await eventually(lambda: gw_b.cache.generations.hard.get("p1") == 1, "B knows the bust")
    resp, _ = await get(http, b, path)
    assert resp.headers["X-Cache"] == "MISS"  # a new key: the busted entry is unreachable
    # a fill answers before it has stored its entry in Redis; one still running when the soft
    # bust lands would take the refresh's place (one fill per key) and store a stale copy
    await eventually(lambda: not gw_b.cache.flights.running, "B's fill stored")

    await gw_a.bust("p1", soft=True)
    await eventually(lambda: len(gw_b.cache.generations.soft.get("p1", [])) == 1,
                     "B knows the soft bust")
    resp, _ = await get(http, b, path)
    assert resp.headers["X-Cache"] == "UPDATING"  # stale within the grace, refreshed once
    await eventually(lambda: not gw_b.cache.flights.running, "B's refresh stored")

    # A new instance (a restart) starts from Redis's generations, not from 0.
    [(fresh, gw_fresh)] = await start_fleet(make_gateway, echo_origin, backend, 1)
    assert gw_fresh.cache.generations.hard.get("p1") == 1
    assert gw_fresh.cache.generations.epoch == gw_a.cache.generations.epoch
    # The echo origin numbers its answers: #1 before the busts, #2 after the hard one, #3 the
    # soft bust's refresh. Generations back at 0 would find #1, still in Redis under its key.
    before = await origin_count(echo_origin)
    resp, body = await get(http, fresh, path)
    assert resp.headers["X-Cache"] == "HIT" and body.endswith(b"#3")
    assert await origin_count(echo_origin) == before == 3


async def test_a_purge_taken_while_an_instance_is_cut_off_reaches_it_on_reconnect(
    echo_origin: TestServer, make_gateway: GatewayFactory, http: aiohttp.ClientSession,
    backend: Backend, cut_off: CutOff, monkeypatch: pytest.MonkeyPatch,
) -> None:
    (a, gw_a), = await start_fleet(make_gateway, echo_origin, backend, 1)
    c, gw_c = await cut_off.start_member(make_gateway, echo_origin, monkeypatch)
    path = spec("/cut", CACHED, projectId="p1")
    await get(http, a, path)
    await get(http, c, path)
    cut_off.cut()
    await gw_a.purge("p1", urls=[path])
    await asyncio.sleep(0.3)  # what C would see before it reconnects: its own stale memory
    resp, _ = await get(http, c, path)
    assert resp.headers["X-Cache"] == "HIT"
    for i in range(3):  # fails open: a cluster client's rediscovery failing too (the 2nd)
        resp, _ = await get(http, c, spec(f"/cold{i}", CACHED))
        assert resp.status == 200
    assert gw_c.member is not None
    events = gw_c.member.control.events
    cut_off.restore()
    await eventually(lambda: gw_c.member is not None and gw_c.member.control.events > events,
                     "C replayed the purge after reconnecting")
    resp, _ = await get(http, c, path)
    assert resp.headers["X-Cache"] == "MISS"


async def test_an_instance_that_missed_trimmed_events_flushes_its_memory(
    echo_origin: TestServer, make_gateway: GatewayFactory, http: aiohttp.ClientSession,
    backend: Backend, cut_off: CutOff, monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    (_a, gw_a), = await start_fleet(make_gateway, echo_origin, backend, 1)
    c, gw_c = await cut_off.start_member(make_gateway, echo_origin, monkeypatch)
    path = spec("/trimmed", CACHED, projectId="p1")
    await get(http, c, path)
    assert gw_c.member is not None
    await gw_a.purge("p1", urls=["/elsewhere"])  # an event C reads: it has a position
    await eventually(lambda: gw_c.member is not None and gw_c.member.control.events >= 1,
                     "C read the first event")
    cut_off.cut()
    await gw_a.purge("p1", urls=[path])
    assert gw_a.member is not None
    client = backend.client()
    await client.xtrim(gw_a.member.keys.stream, maxlen=0)  # C's next events are gone
    await client.aclose()
    with caplog.at_level(logging.WARNING, logger="gateway.fleet"):
        cut_off.restore()
        await eventually(lambda: gw_c.member is not None and gw_c.member.control.flushes == 1,
                         "C flushed its memory")
    assert "flushing this instance's memory tier" in caplog.text
    assert len(gw_c.store) == 0


# Standalone only: the cluster is shared by the module and its nodes are not to be killed (a
# restarted node would come back empty and without its slots); being cut off from a whole
# cluster is the CutOff tests' case on the cluster.
async def test_redis_down_fails_open_and_purges_flow_again_when_it_returns(
    echo_origin: TestServer, make_gateway: GatewayFactory, http: aiohttp.ClientSession,
    redis_server: RedisServer,  # noqa: F811
) -> None:
    standalone = Backend(redis_server.url, [redis_server.port], cluster=False)
    (a, gw_a), (b, gw_b) = await start_fleet(make_gateway, echo_origin, standalone, 2)
    hot = spec("/hot", CACHED, projectId="p1")
    await get(http, a, hot)
    redis_server.kill()
    statuses = []
    for i in range(30):  # hits from memory, cold keys from the origin: nothing fails
        resp, _ = await get(http, a if i % 2 else b, hot if i % 3 else spec(f"/cold{i}", CACHED))
        statuses.append(resp.status)
    assert statuses == [200] * 30
    from gateway.server import JsonError
    with pytest.raises(JsonError) as refused:
        await gw_a.purge("p1", urls=[hot])
    assert refused.value.status == 503

    redis_server.restart()  # empty: the fleet's generations were only in its memory
    await eventually(lambda: all(g.member is not None and g.member.link.available
                                 and g.member.control.ready for g in (gw_a, gw_b)),
                     "both instances back on Redis", within=10)
    await get(http, b, hot)
    await gw_a.purge("p1", urls=[hot])
    await eventually(lambda: gw_b.member is not None and gw_b.member.control.events >= 1,
                     "the purge reached B again")
    resp, _ = await get(http, b, hot)
    assert resp.headers["X-Cache"] == "MISS"
