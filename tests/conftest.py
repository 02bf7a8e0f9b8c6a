"""Fixtures that start real servers on free loopback ports: origins, gateways, redis."""

from __future__ import annotations

import textwrap
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import aiohttp
import pytest
from aiohttp.test_utils import TestServer

from gateway.admin import admin_app
from gateway.config import load_config
from gateway.server import Gateway
from tests.echo_origin import create_echo_app

BASE_YAML = """\
listen: 127.0.0.1:0
cache:
  name: edge
  memory: {{max_bytes: {max_bytes}, max_object_bytes: {max_object_bytes}}}
  cache_bust: "t1"
  collapse_timeout: {collapse_timeout}
  {cache_extra}
origins:
  o: {{url: "{origin}", connect_timeout: 1s, read_timeout: {read_timeout}{origin_extra}}}
routes:
  - name: nocache
    match: {{path_prefix: /nocache/}}
    origin: o
    cache: false
  - name: all
    match: {{path_prefix: /}}
    origin: o
    tenant: {{query: projectId}}
    cache: {{ignore_query: ["utm_*"]{route_cache}}}
"""

GatewayFactory = Callable[..., Awaitable[tuple[TestServer, Gateway]]]


@pytest.fixture
async def echo_origin(aiohttp_server) -> TestServer:  # type: ignore[no-untyped-def]
    return await aiohttp_server(create_echo_app())


@pytest.fixture
async def make_gateway(aiohttp_raw_server, tmp_path: Path) -> AsyncIterator[GatewayFactory]:  # type: ignore[no-untyped-def]
    """Start a gateway in front of `origin_url`; options fill the BASE_YAML template."""
    started: list[Gateway] = []

    async def start(
        origin_url: str,
        *,
        max_bytes: str = "8MiB",
        max_object_bytes: str = "1MiB",
        read_timeout: str = "5s",
        collapse_timeout: str = "15s",
        route_cache: str = "",
        origin_extra: str = "",
        cache_extra: str = "",
        yaml_text: str | None = None,
    ) -> tuple[TestServer, Gateway]:
        text = yaml_text or BASE_YAML.format(
            origin=origin_url.rstrip("/"),
            max_bytes=max_bytes,
            max_object_bytes=max_object_bytes,
            read_timeout=read_timeout,
            collapse_timeout=collapse_timeout,
            route_cache=route_cache,
            origin_extra=origin_extra,
            cache_extra=cache_extra,
        )
        path = tmp_path / "gateway.yaml"
        path.write_text(textwrap.dedent(text))
        gateway = Gateway(load_config(path, env={}))
        await gateway.start()
        started.append(gateway)
        server = await aiohttp_raw_server(gateway.respond)
        return server, gateway

    yield start
    for gateway in started:
        await gateway.stop()


@pytest.fixture
async def start_admin(aiohttp_server) -> Callable[[Gateway], Awaitable[TestServer]]:  # type: ignore[no-untyped-def]
    """Serve a gateway's admin app on its own loopback port, as `admin.listen` would."""

    async def start(gateway: Gateway) -> TestServer:
        return await aiohttp_server(admin_app(gateway))

    return start


@pytest.fixture
async def http() -> aiohttp.ClientSession:  # type: ignore[misc]
    """A plain client: no cookies kept, no decompression, so tests see what was sent."""
    async with aiohttp.ClientSession(
        cookie_jar=aiohttp.DummyCookieJar(),
        auto_decompress=False,
        timeout=aiohttp.ClientTimeout(total=30),  # a hang fails the test instead of stalling CI
    ) as session:
        yield session
