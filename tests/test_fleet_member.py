"""What an instance checks and says about the Redis it joins."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
from aiohttp.test_utils import TestServer

from tests.conftest import GatewayFactory
from tests.redis_fixtures import require_executables
from tests.redis_servers import RedisServer


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
