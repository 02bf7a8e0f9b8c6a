"""Fills stream to every client that joined them: bytes as they arrive, one origin fetch.

The origin here is a raw socket that sends the head and part of the body, then holds the rest
until the test opens a gate, so "before the body is complete" is a state, not a timing.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

import aiohttp

from tests.clock import SettableClock
from tests.conftest import GatewayFactory, eventually
from tests.test_upstream import raw_origin, read_request


@dataclass
class HeldOrigin:
    """Answers every request with `size` bytes (with a Content-Length unless `chunked_size`),
    sends `first` of them at once and the rest when `gate` opens."""

    size: int
    first: int
    cache_control: str = "public, max-age=60"
    gate: asyncio.Event = field(default_factory=asyncio.Event)
    requests: int = 0

    async def __call__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            await read_request(reader)
            self.requests += 1
            writer.write(
                b"HTTP/1.1 200 OK\r\nContent-Type: application/javascript\r\n"
                + f"Cache-Control: {self.cache_control}\r\n".encode()
                + f"Content-Length: {self.size}\r\nConnection: close\r\n\r\n".encode()
                + b"a" * self.first
            )
            await writer.drain()
            await self.gate.wait()
            rest = self.size - self.first
            for start in range(0, rest, 65536):
                writer.write(b"b" * min(65536, rest - start))
                await writer.drain()
        except (ConnectionError, OSError):
            pass
        finally:
            writer.close()


@asynccontextmanager
async def held_origin(origin: HeldOrigin) -> AsyncIterator[str]:
    async with raw_origin(origin) as url:
        yield url


async def first_bytes(
    http: aiohttp.ClientSession, url: object, n: int
) -> tuple[aiohttp.ClientResponse, bytes]:
    """Open a request and read its first `n` body bytes; the response stays open."""
    resp = await http.get(url)  # type: ignore[arg-type]
    return resp, await resp.content.readexactly(n)


async def test_joined_clients_get_the_first_bytes_before_the_body_is_complete(
    make_gateway: GatewayFactory, http: aiohttp.ClientSession
) -> None:
    origin = HeldOrigin(size=300_000, first=1000)
    async with held_origin(origin) as url:
        gw, gateway = await make_gateway(url)
        url_b = gw.make_url("/b")
        opened = await asyncio.gather(*(first_bytes(http, url_b, 1000) for _ in range(5)))
        assert all(part == b"a" * 1000 for _, part in opened)  # the rest is still held back
        statuses = [resp.headers["Cache-Status"] for resp, _ in opened]
        assert sum("collapsed" in s for s in statuses) == 4
        origin.gate.set()
        for resp, part in opened:
            rest = await resp.read()
            assert len(part) + len(rest) == 300_000 and rest.endswith(b"b")
            resp.close()
        assert origin.requests == 1
        async with http.get(gw.make_url("/b")) as resp:
            assert resp.headers["X-Cache"] == "HIT" and len(await resp.read()) == 300_000
        assert origin.requests == 1
        assert gateway.stats()["cache"]["stored"] == 1


async def test_a_client_joining_mid_fill_gets_what_arrived_then_the_rest(
    make_gateway: GatewayFactory, http: aiohttp.ClientSession
) -> None:
    origin = HeldOrigin(size=200_000, first=5000)
    async with held_origin(origin) as url:
        gw, _ = await make_gateway(url)
        leader, _ = await first_bytes(http, gw.make_url("/mid"), 5000)
        late, part = await first_bytes(http, gw.make_url("/mid"), 5000)
        assert part == b"a" * 5000 and "collapsed" in late.headers["Cache-Status"]
        origin.gate.set()
        assert len(await late.read()) == 195_000
        assert len(await leader.read()) == 195_000
        leader.close()
        late.close()
        assert origin.requests == 1


async def test_a_body_too_big_to_store_is_fetched_once_for_all_its_clients(
    make_gateway: GatewayFactory, http: aiohttp.ClientSession
) -> None:
    origin = HeldOrigin(size=512 * 1024, first=1000)
    async with held_origin(origin) as url:
        gw, gateway = await make_gateway(url, max_object_bytes="64KiB")
        opened = await asyncio.gather(
            *(first_bytes(http, gw.make_url("/big"), 1000) for _ in range(10))
        )
        assert all("detail=too-big" in r.headers["Cache-Status"] for r, _ in opened)
        origin.gate.set()
        sizes = []
        for resp, part in opened:
            sizes.append(len(part) + len(await resp.read()))
            resp.close()
        assert sizes == [512 * 1024] * 10
        assert origin.requests == 1
        assert gateway.store.stats()["bytes"] == 0  # shared, not stored
        origin.gate = asyncio.Event()
        origin.gate.set()
        async with http.get(gw.make_url("/big")) as resp:
            assert resp.headers["X-Cache"] == "MISS" and len(await resp.read()) == 512 * 1024
        assert origin.requests == 2


async def test_a_reader_far_behind_an_unstored_fill_is_cut_and_the_others_finish(
    make_gateway: GatewayFactory, http: aiohttp.ClientSession
) -> None:
    size = 64 * 1024 * 1024  # far more than the socket buffers between gateway and client
    origin = HeldOrigin(size=size, first=1000)
    async with held_origin(origin) as url:
        gw, gateway = await make_gateway(url, max_object_bytes="256KiB", max_bytes="1MiB")
        fast, _ = await first_bytes(http, gw.make_url("/huge"), 1000)
        # A raw socket that reads the head and then nothing: the kernel's buffers fill, and
        # the gateway's writes to it stop (an aiohttp client would keep reading into memory).
        reader, writer = await asyncio.open_connection("127.0.0.1", gw.port)
        writer.write(f"GET /huge HTTP/1.1\r\nHost: 127.0.0.1:{gw.port}\r\n\r\n".encode())
        head = await reader.readuntil(b"\r\n\r\n")
        assert b"collapsed" in head
        origin.gate.set()
        received = 1000
        async for chunk in fast.content.iter_any():  # while the stalled client reads nothing
            received += len(chunk)
        assert received == size
        fast.close()
        rest = await reader.read()  # everything it can still get, up to the cut
        assert len(rest) < size  # cut: it fell further behind than the fill may hold
        writer.close()
        assert origin.requests == 1
        assert gateway.stats()["cache"].get("origin_errors", 0) == 0


async def test_the_fill_is_stored_when_every_client_has_gone(
    make_gateway: GatewayFactory, http: aiohttp.ClientSession
) -> None:
    origin = HeldOrigin(size=100_000, first=1000)
    async with held_origin(origin) as url:
        gw, gateway = await make_gateway(url)
        resp, _ = await first_bytes(http, gw.make_url("/left"), 1000)
        resp.close()  # the only client leaves mid-body
        origin.gate.set()
        await eventually(lambda: gateway.stats()["cache"].get("stored") == 1, "the fill stored")
        async with http.get(gw.make_url("/left")) as again:
            assert again.headers["X-Cache"] == "HIT" and len(await again.read()) == 100_000
        assert origin.requests == 1


async def test_a_revalidation_whose_new_body_is_too_big_to_store_streams_it(
    clock: SettableClock, make_gateway: GatewayFactory, http: aiohttp.ClientSession
) -> None:
    # The stale entry may stand in for an error, so a revalidation answers once its body is
    # whole; a body too big to store could never replace it, so it is streamed at once.
    origin = HeldOrigin(size=1000, first=1000, cache_control="max-age=1, stale-if-error=600")
    origin.gate.set()
    async with held_origin(origin) as url:
        gw, _ = await make_gateway(url, max_object_bytes="64KiB", clock=clock)
        async with http.get(gw.make_url("/grows")) as resp:
            assert resp.headers["X-Cache"] == "MISS" and len(await resp.read()) == 1000
        clock.advance(10)
        origin.size, origin.gate = 512 * 1024, asyncio.Event()
        resp, part = await first_bytes(http, gw.make_url("/grows"), 1000)
        assert resp.status == 200 and "detail=too-big" in resp.headers["Cache-Status"]
        origin.gate.set()
        assert len(part) + len(await resp.read()) == 512 * 1024
        resp.close()
