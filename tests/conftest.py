"""Fixtures that start real servers on free loopback ports: origins, gateways, redis."""

from __future__ import annotations

import asyncio
import textwrap
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import BaseTestServer, TestServer
from yarl import URL

from gateway.admin import admin_app
from gateway.client_protocol import NativeServer
from gateway.config import load_config
from gateway.server import Gateway, native_server, public_server
from tests.clock import SettableClock
from tests.echo_origin import create_echo_app

BASE_YAML = """\
listen: 127.0.0.1:0
{top_extra}
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

GatewayFactory = Callable[..., Awaitable[tuple["GatewayServer", Gateway]]]


@pytest.fixture
async def echo_origin(aiohttp_server) -> TestServer:  # type: ignore[no-untyped-def]
    return await aiohttp_server(create_echo_app())


@pytest.fixture
def clock() -> SettableClock:
    """The test's one clock: give it to `make_gateway(..., clock=clock)` and to the origins
    (`clocked_origin`, or tests.clock.stamp_dates), then `clock.advance(s)` instead of sleeping."""
    return SettableClock()


@pytest.fixture
async def clocked_origin(aiohttp_server, clock: SettableClock) -> TestServer:  # type: ignore[no-untyped-def]
    """The echo origin stamping `Date` from `clock`: after `clock.advance`, what it sends is
    new to the gateway, not as old as the advance (RFC 9111 4.2.3 apparent age)."""
    return await aiohttp_server(create_echo_app(clock))


async def eventually(check: Callable[[], bool], what: str, within: float = 5.0) -> None:
    """Poll `check` until it is true, or fail after `within` seconds naming `what`: for a
    state another task or process reaches in its own time (a background refresh, a request
    arriving at an origin), never for a TTL to pass (move the clock instead)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    while not check():
        if loop.time() > deadline:
            raise AssertionError(f"not within {within} s: {what}")
        await asyncio.sleep(0.01)


class GatewayServer(BaseTestServer):
    """The public listener exactly as `python -m gateway` serves it (`public_server`), on a free
    loopback port, so that connection handling is tested as it runs."""

    def __init__(self, gateway: Gateway) -> None:
        super().__init__(host="127.0.0.1")
        self.gateway = gateway

    async def _make_runner(self, **kwargs: Any) -> web.ServerRunner:
        return web.ServerRunner(public_server(self.gateway), **kwargs)


class NativeGatewayServer(GatewayServer):
    """The native public listener (`server: native`, `native_server`) on a free loopback
    port, with what the tests use of GatewayServer: host, port, make_url, gateway, close."""

    native: NativeServer | None = None

    async def start_server(self, loop: Any = None, **kwargs: Any) -> None:
        self.native = native_server(self.gateway)
        listener = await self.native.listen(self.host, 0)
        self.port = listener.sockets[0].getsockname()[1]
        self.scheme = "http"
        self._root = URL(f"http://{self.host}:{self.port}")

    async def close(self) -> None:
        if self.native is not None and not self._closed:
            await self.native.drain(0)
            self._closed = True


LAYERS = ("aiohttp", "native")  # the values of `server:`, for tests run on both layers


@pytest.fixture
def layer() -> str | None:
    """The client-facing layer `make_gateway` serves on: None for the config's `server`. A
    module testing connection handling overrides it with a fixture of `params=LAYERS`."""
    return None


@pytest.fixture
async def make_gateway(tmp_path: Path, layer: str | None) -> AsyncIterator[GatewayFactory]:
    """Start a gateway in front of `origin_url`; options fill the BASE_YAML template. With
    `clock` (say a tests.clock.SettableClock) the gateway's time moves only when the test
    moves it."""
    started: list[Gateway] = []
    servers: list[GatewayServer] = []

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
        top_extra: str = "",
        yaml_text: str | None = None,
        clock: Callable[[], float] | None = None,
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
            top_extra=top_extra,
        )
        path = tmp_path / "gateway.yaml"
        path.write_text(textwrap.dedent(text))
        config = load_config(path, env={})
        gateway = Gateway(config) if clock is None else Gateway(config, clock=clock)
        await gateway.start()
        started.append(gateway)
        native = (layer or config.server) == "native"
        server = NativeGatewayServer(gateway) if native else GatewayServer(gateway)
        await server.start_server()
        servers.append(server)
        return server, gateway

    yield start
    for server in servers:
        await server.close()
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
