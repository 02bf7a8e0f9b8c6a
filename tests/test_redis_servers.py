"""The real-Redis fixtures do what the fleet tests rely on: a server that dies and comes back
on the same port, a cluster whose keys live on three nodes, a proxy that cuts one client off."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from redis.asyncio import Redis
from redis.asyncio.cluster import RedisCluster as ClusterClient
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from tests.redis_fixtures import redis_cluster, redis_server, require_executables  # noqa: F401
from tests.redis_servers import RedisCluster, RedisServer, TcpProxy

DOWN = (RedisConnectionError, RedisTimeoutError)


def client(url: str) -> Redis:
    """Short timeouts and no retries: a dead server must fail the command now, not after the
    client's default backoff."""
    return Redis.from_url(
        url, socket_timeout=0.5, socket_connect_timeout=0.5, retry=Retry(NoBackoff(), 0)
    )


@pytest.fixture
async def proxy(redis_server: RedisServer) -> AsyncIterator[TcpProxy]:  # noqa: F811
    async with TcpProxy("127.0.0.1", redis_server.port) as relay:
        yield relay


async def test_server_survives_kill_and_restart_on_same_port(
    redis_server: RedisServer,  # noqa: F811
) -> None:
    port = redis_server.port
    assert redis_server.url == f"redis://127.0.0.1:{port}/0"
    redis = client(redis_server.url)
    try:
        await redis.set("k", "v")
        assert await redis.get("k") == b"v"

        redis_server.kill()
        with pytest.raises(DOWN):
            await redis.get("k")

        redis_server.restart()
        assert redis_server.port == port
        assert await redis.ping()
        await redis.set("k", "again")  # no persistence: whatever was there is gone
        assert await redis.get("k") == b"again"
    finally:
        await redis.aclose()


async def test_server_extra_args_reach_the_command_line(tmp_path: Path) -> None:
    require_executables("redis-server")
    with RedisServer("--maxmemory-policy", "volatile-lru", directory=tmp_path) as server:
        redis = client(server.url)
        try:
            policy = await redis.config_get("maxmemory-policy")
            assert policy == {"maxmemory-policy": "volatile-lru"}
        finally:
            await redis.aclose()
    assert not server.running


async def test_cluster_spreads_keys_over_three_masters(
    redis_cluster: RedisCluster,  # noqa: F811
) -> None:
    redis_cluster.flushall()
    assert len(set(redis_cluster.ports)) == 3
    cluster = ClusterClient.from_url(redis_cluster.url, socket_timeout=2)
    try:
        keys = [f"spread:{i}" for i in range(50)]
        for key in keys:
            await cluster.set(key, key)
        assert await cluster.get("spread:7") == b"spread:7"

        per_node: dict[int, int] = {}
        for port in redis_cluster.ports:
            node = client(f"redis://127.0.0.1:{port}/0")
            try:
                per_node[port] = await node.dbsize()
                # each key the node holds counts in its slot there (the node owns the slot)
                async for key in node.scan_iter(match="spread:*"):
                    slot = await node.execute_command("CLUSTER", "KEYSLOT", key)
                    assert await node.execute_command("CLUSTER", "COUNTKEYSINSLOT", slot) >= 1
            finally:
                await node.aclose()
        assert sum(per_node.values()) == 50
        assert all(count > 0 for count in per_node.values()), per_node
    finally:
        await cluster.aclose()


async def test_cluster_runs_lua_on_keys_sharing_a_hash_tag(
    redis_cluster: RedisCluster,  # noqa: F811
) -> None:
    cluster = ClusterClient.from_url(redis_cluster.url, socket_timeout=2)
    try:
        script = "redis.call('SET', KEYS[1], ARGV[1]); return redis.call('INCRBY', KEYS[2], 2)"
        assert await cluster.eval(script, 2, "{t}:a", "{t}:b", "x") == 2
        assert await cluster.eval(script, 2, "{t}:a", "{t}:b", "y") == 4
        assert await cluster.get("{t}:a") == b"y"
    finally:
        await cluster.aclose()


async def test_proxy_relays_then_cuts_then_restores(
    redis_server: RedisServer,  # noqa: F811
    proxy: TcpProxy,
) -> None:
    assert proxy.url_for() == f"redis://127.0.0.1:{proxy.port}/0"
    via_proxy = client(proxy.url_for())
    direct = client(redis_server.url)
    try:
        await via_proxy.set("p", "1")
        assert await direct.get("p") == b"1"
        assert proxy.connections == 1

        proxy.cut()
        with pytest.raises(DOWN):
            await via_proxy.get("p")
        with pytest.raises(DOWN):  # a new connection is dropped too, not relayed
            await via_proxy.get("p")
        assert await direct.get("p") == b"1"  # the others stay connected

        proxy.restore()
        assert await via_proxy.get("p") == b"1"
    finally:
        await via_proxy.aclose()
        await direct.aclose()


async def test_proxy_close_leaves_no_relay_tasks(redis_server: RedisServer) -> None:  # noqa: F811
    before = asyncio.all_tasks()
    relay = await TcpProxy("127.0.0.1", redis_server.port).start()
    redis = client(relay.url_for())
    try:
        await asyncio.gather(*(redis.incr("n") for _ in range(5)))  # several pooled connections
        assert relay.connections >= 1
    finally:
        await relay.close()
        await redis.aclose()
    assert relay.connections == 0
    assert asyncio.all_tasks() - before == set()
