"""What an instance checks and says about the Redis it joins."""

from __future__ import annotations

import logging
import signal
from pathlib import Path

import aiohttp
import pytest
from aiohttp.test_utils import TestServer

from tests.conftest import GatewayFactory, eventually
from tests.redis_fixtures import redis_server, require_executables  # noqa: F401
from tests.redis_servers import RedisServer
from tests.test_gateway_http import spec

CACHED = "Cache-Control:max-age=60"


@pytest.mark.parametrize(("policy", "warned"), [("allkeys-lru", True), ("volatile-lru", False)])
async def test_an_eviction_policy_that_could_drop_generations_is_reported_at_start(
    policy: str, warned: bool, echo_origin: TestServer, make_gateway: GatewayFactory,
    tmp_path: Path, caplog: pytest.LogCaptureFixture,
) -> None:
    require_executables("redis-server")
    server = RedisServer("--maxmemory-policy", policy, directory=tmp_path / "redis").start()
    try:
        with caplog.at_level(logging.ERROR, logger="gateway.fleet"):
            await make_gateway(str(echo_origin.make_url("/")),
                               top_extra=f"redis: {{url: '{server.url}'}}")
        assert ("maxmemory-policy is allkeys-lru" in caplog.text) is warned
    finally:
        server.stop()


async def test_a_hung_redis_opens_the_breaker_and_every_request_is_still_answered(
    echo_origin: TestServer, make_gateway: GatewayFactory, http: aiohttp.ClientSession,
    redis_server: RedisServer,  # noqa: F811
) -> None:
    server, gateway = await make_gateway(
        str(echo_origin.make_url("/")),
        top_extra=f"redis: {{url: '{redis_server.url}', timeout: 100ms, block: 200ms}}",
    )
    assert gateway.member is not None and redis_server.proc is not None
    link = gateway.member.link
    await eventually(lambda: gateway.member is not None and gateway.member.control.ready,
                     "joined the fleet")
    redis_server.proc.send_signal(signal.SIGSTOP)  # up, accepting, answering nothing
    try:
        statuses = []
        for i in range(20):  # cold keys: each would ask Redis several times
            async with http.get(server.make_url(spec(f"/hung{i}", CACHED))) as resp:
                statuses.append(resp.status)
        assert statuses == [200] * 20
        assert not link.available  # commands stopped: no timeout (or reconnect) per request
        failed = link.errors
        for i in range(20):
            async with http.get(server.make_url(spec(f"/open{i}", CACHED))) as resp:
                assert resp.status == 200
        assert link.errors <= failed + 2  # a probe a second at most, not one per request
    finally:
        redis_server.proc.send_signal(signal.SIGCONT)
    await eventually(lambda: link.available, "back on Redis once it answers", within=10)
