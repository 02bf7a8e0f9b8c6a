"""The origin client against origins that misbehave on purpose, written on raw sockets: one that
drips its body, one that drops kept-alive connections as a request arrives on them."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

import aiohttp
import pytest

from tests.clock import SettableClock
from tests.conftest import GatewayFactory
from tests.test_gateway_http import get

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


@asynccontextmanager
async def raw_origin(handler: Handler) -> AsyncIterator[str]:
    server = await asyncio.start_server(handler, "127.0.0.1", 0)
    try:
        yield f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}"
    finally:
        server.close()


async def read_request(reader: asyncio.StreamReader) -> tuple[bytes, bytes]:
    """One request's head and body (Content-Length framing, as the gateway sends)."""
    head = await reader.readuntil(b"\r\n\r\n")
    length = 0
    for line in head.split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            length = int(line.split(b":")[1])
    return head, await reader.readexactly(length)


def dripping(interval: float, size: int = 1000) -> Handler:
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(
            b"HTTP/1.1 200 OK\r\nCache-Control: max-age=1\r\n"
            + f"Content-Length: {size}\r\n\r\n".encode()
        )
        try:
            for _ in range(size):
                writer.write(b"x")
                await writer.drain()
                await asyncio.sleep(interval)
        except (ConnectionError, OSError):
            pass
        finally:
            writer.close()

    return handle


async def cut_short(http: aiohttp.ClientSession, url: object) -> tuple[int, int]:
    """Status and bytes of a response whose body the gateway cuts off (headers streamed first)."""
    received = 0
    async with http.get(url) as resp:  # type: ignore[arg-type]
        try:
            async for chunk in resp.content.iter_any():
                received += len(chunk)
        except aiohttp.ClientPayloadError:
            return resp.status, received
    raise AssertionError(f"the whole body came: {received} bytes")


async def test_a_dripping_origin_is_cut_at_the_fetch_deadline_and_frees_its_slot(
    make_gateway: GatewayFactory, http: aiohttp.ClientSession
) -> None:
    async with raw_origin(dripping(0.05)) as url:
        gw, gateway = await make_gateway(url, origin_extra=", fetch_timeout: 500ms")
        # The fill streams what arrives: the head goes out at once, and the body is cut at
        # the deadline, long before the 50 s it would take.
        status, received = await cut_short(http, gw.make_url("/drip"))
        assert status == 200 and 0 < received < 1000
        upstream = gateway.upstreams["o"]
        assert upstream.foreground.in_use == 0
        assert gateway.stats()["cache"]["origin_errors"] == 1


async def test_a_dripping_origin_is_cut_below_the_minimum_rate(
    make_gateway: GatewayFactory, http: aiohttp.ClientSession, caplog: pytest.LogCaptureFixture
) -> None:
    async with raw_origin(dripping(0.05)) as url:  # 20 bytes a second
        gw, gateway = await make_gateway(
            url, origin_extra=", min_transfer_rate: 1KiB, min_rate_grace: 300ms"
        )
        status, received = await cut_short(http, gw.make_url("/slow"))
        assert status == 200 and received < 1000
        assert "below min_transfer_rate" in caplog.text
        assert gateway.upstreams["o"].foreground.in_use == 0


async def test_a_dripping_origin_behind_a_stale_entry_serves_it_stale(
    clock: SettableClock, make_gateway: GatewayFactory, http: aiohttp.ClientSession
) -> None:
    fast = {"drip": False}

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if fast["drip"]:
            await dripping(0.05)(reader, writer)
            return
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nCache-Control: max-age=1, stale-if-error=600\r\n"
                     b"Content-Length: 5\r\n\r\nfresh")
        await writer.drain()
        writer.close()

    async with raw_origin(handle) as url:
        gw, _ = await make_gateway(url, origin_extra=", fetch_timeout: 500ms", clock=clock)
        await get(http, gw, "/s")  # no Date: the gateway dates it by its own clock
        clock.advance(10)  # stale now; the origin starts dripping
        fast["drip"] = True
        resp, body = await get(http, gw, "/s")
        assert (resp.status, resp.headers["X-Cache"], body) == (200, "STALE", b"fresh")


@dataclass
class DroppingOrigin:
    """Answers with `Keep-Alive: timeout=N` when `announce` is set; a request arriving on a
    connection idle for `drop_after` seconds or more gets the connection closed, unanswered:
    the race of an origin closing a kept-alive connection just as a request goes out on it."""

    drop_after: float
    announce: int | None = None
    seen: list[bytes] = field(default_factory=list)
    dropped: int = 0

    async def __call__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        idle_since = time.monotonic()
        try:
            while True:
                head, _ = await read_request(reader)
                self.seen.append(head.split(b"\r\n")[0])
                if len(self.seen) > 1 and time.monotonic() - idle_since >= self.drop_after:
                    self.dropped += 1
                    return
                keep_alive = b"" if self.announce is None else (
                    f"Keep-Alive: timeout={self.announce}\r\n".encode())
                writer.write(b"HTTP/1.1 200 OK\r\n" + keep_alive + b"Content-Length: 2\r\n\r\nok")
                await writer.drain()
                idle_since = time.monotonic()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()


async def post(http: aiohttp.ClientSession, url: object, body: bytes) -> int:
    async with http.post(url, data=body) as resp:  # type: ignore[arg-type]
        await resp.read()
        return resp.status


async def test_a_small_post_is_sent_again_when_its_kept_alive_connection_drops(
    make_gateway: GatewayFactory, http: aiohttp.ClientSession
) -> None:
    origin = DroppingOrigin(drop_after=0.2)
    async with raw_origin(origin) as url:
        gw, gateway = await make_gateway(url)  # idle_timeout 4 s: the connection is reused
        assert await post(http, gw.make_url("/nocache/a"), b"first") == 200
        await asyncio.sleep(0.3)
        assert await post(http, gw.make_url("/nocache/b"), b"small body") == 200
        assert origin.dropped == 1 and gateway.upstreams["o"].replays == 1
        await asyncio.sleep(0.3)  # a body too big to keep cannot be sent again: a clean 502
        big = b"y" * (128 << 10)
        assert await post(http, gw.make_url("/nocache/c"), big) == 502


async def test_the_origins_keep_alive_timeout_is_honoured(
    make_gateway: GatewayFactory, http: aiohttp.ClientSession
) -> None:
    origin = DroppingOrigin(drop_after=0.2, announce=1)  # "I close after 1 s", and it does early
    async with raw_origin(origin) as url:
        gw, gateway = await make_gateway(url)
        assert await post(http, gw.make_url("/nocache/a"), b"first") == 200
        await asyncio.sleep(0.3)  # past the 0.1 s the gateway now reuses a connection for
        big = b"y" * (128 << 10)  # streamed: it could not be sent again if it were dropped
        assert await post(http, gw.make_url("/nocache/b"), big) == 200
        assert origin.dropped == 0 and gateway.upstreams["o"].replays == 0
