"""Client connections on raw sockets: slow heads, idle keep-alive, the connection limit, garbage.

The limits are set small (fractions of a second) so each test waits a bounded, short time;
what is asserted is whether and how a connection ends, not how fast.
"""

from __future__ import annotations

import asyncio
import gzip
import json
import logging

import pytest
from aiohttp.test_utils import TestServer

from tests.conftest import LAYERS, GatewayFactory, GatewayServer
from tests.test_gateway_http import origin_count


@pytest.fixture(params=LAYERS)
def layer(request: pytest.FixtureRequest) -> str:
    """Every test here runs on both client-facing layers."""
    return str(request.param)


LIMITS = "client_header_timeout: 300ms\nkeepalive_timeout: 1s\nmax_connections: 50"
OK = b"GET /ok?h=Cache-Control:max-age%3D60 HTTP/1.1\r\nHost: a\r\n\r\n"


async def connect(gw: GatewayServer) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    return await asyncio.open_connection(gw.host, gw.port)


async def read_until_closed(reader: asyncio.StreamReader, limit: float = 5.0) -> bytes:
    """Everything the gateway sends until it closes the connection (bounded)."""
    out = b""
    async with asyncio.timeout(limit):
        while chunk := await reader.read(65536):
            out += chunk
    return out


async def one_response(reader: asyncio.StreamReader) -> bytes:
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
    length = next(
        int(line.split(b":")[1]) for line in head.split(b"\r\n")
        if line.lower().startswith(b"content-length:")
    )
    return head + await asyncio.wait_for(reader.readexactly(length), 5)


async def test_a_connection_that_sends_nothing_is_closed_after_the_header_timeout(
    echo_origin: TestServer, make_gateway: GatewayFactory
) -> None:
    gw, _ = await make_gateway(str(echo_origin.make_url("/")), top_extra=LIMITS)
    reader, writer = await connect(gw)
    assert await read_until_closed(reader) == b""  # closed silently, as nginx does
    writer.close()


async def test_a_head_dripping_byte_by_byte_gets_408_at_the_header_timeout(
    echo_origin: TestServer, make_gateway: GatewayFactory
) -> None:
    gw, _ = await make_gateway(str(echo_origin.make_url("/")), top_extra=LIMITS)
    reader, writer = await connect(gw)

    async def drip() -> None:
        for byte in b"GET /slow HTTP/1.1\r\nHost: a\r\nX-Slow: " + b"y" * 200:
            writer.write(bytes([byte]))
            await writer.drain()
            await asyncio.sleep(0.02)

    dripping = asyncio.create_task(drip())
    try:
        answer = await read_until_closed(reader)
    finally:
        dripping.cancel()
        writer.close()
    assert answer.startswith(b"HTTP/1.1 408 ")
    assert await origin_count(echo_origin) == 0


async def test_an_idle_keep_alive_connection_lives_until_keepalive_timeout_only(
    echo_origin: TestServer, make_gateway: GatewayFactory
) -> None:
    gw, _ = await make_gateway(str(echo_origin.make_url("/")), top_extra=LIMITS)
    reader, writer = await connect(gw)
    writer.write(OK)
    assert (await one_response(reader)).startswith(b"HTTP/1.1 200 ")
    await asyncio.sleep(0.5)  # past the header timeout: idle is not a slow head
    writer.write(OK)
    assert (await one_response(reader)).startswith(b"HTTP/1.1 200 ")
    assert await read_until_closed(reader) == b""  # then closed after keepalive_timeout
    writer.close()


async def test_a_slow_upload_is_governed_by_the_body_timeout_not_the_header_timeout(
    echo_origin: TestServer, make_gateway: GatewayFactory
) -> None:
    gw, _ = await make_gateway(str(echo_origin.make_url("/")), top_extra=LIMITS)
    reader, writer = await connect(gw)
    writer.write(b"POST /nocache/up?read=1 HTTP/1.1\r\nHost: a\r\nContent-Length: 10\r\n\r\n")
    for _ in range(10):  # 10 bytes over ~1 s: longer than the header timeout
        await asyncio.sleep(0.1)
        writer.write(b"x")
    assert (await one_response(reader)).startswith(b"HTTP/1.1 200 ")
    writer.close()


async def test_pipelined_requests_are_all_answered(
    echo_origin: TestServer, make_gateway: GatewayFactory
) -> None:
    gw, _ = await make_gateway(str(echo_origin.make_url("/")), top_extra=LIMITS)
    reader, writer = await connect(gw)
    writer.write(OK * 3)
    for _ in range(3):
        assert (await one_response(reader)).startswith(b"HTTP/1.1 200 ")
    writer.close()


async def test_at_max_connections_an_idle_one_makes_room_else_the_newcomer_gets_503(
    echo_origin: TestServer, make_gateway: GatewayFactory, caplog: pytest.LogCaptureFixture
) -> None:
    limits = "client_header_timeout: 5s\nkeepalive_timeout: 5s\nmax_connections: 3"
    gw, _ = await make_gateway(str(echo_origin.make_url("/")), top_extra=limits)
    idle = [await connect(gw) for _ in range(3)]
    for reader, writer in idle:
        writer.write(OK)
        await one_response(reader)
    reader, writer = await connect(gw)  # the oldest idle connection is closed for it
    writer.write(OK)
    assert (await one_response(reader)).startswith(b"HTTP/1.1 200 ")
    assert await read_until_closed(idle[0][0]) == b""

    for _, w in [*idle[1:], (reader, writer)]:  # now three that are mid-head: none is idle
        w.write(b"GET /half HTTP/1.1\r\n")
        await w.drain()
    await asyncio.sleep(0.05)
    caplog.set_level(logging.WARNING, "gateway.listener")
    refused_reader, refused_writer = await connect(gw)
    answer = await read_until_closed(refused_reader)
    assert answer.startswith(b"HTTP/1.1 503 ") and b"too many client connections" in answer
    assert "max_connections (3) reached" in caplog.text
    for _, w in [*idle, (reader, writer), (refused_reader, refused_writer)]:
        w.close()


async def test_many_half_open_connections_are_shed_and_clients_are_still_served(
    echo_origin: TestServer, make_gateway: GatewayFactory
) -> None:
    many = LIMITS.replace("max_connections: 50", "max_connections: 400")
    gw, _ = await make_gateway(str(echo_origin.make_url("/")), top_extra=many)
    half_open = []
    for _ in range(300):  # each starts its head at once: its deadline runs from that byte
        reader, writer = await connect(gw)
        writer.write(b"GET / HTTP/1.1\r\nHost: a\r\n")  # never finished
        half_open.append((reader, writer))
    reader, writer = await connect(gw)
    writer.write(OK)
    assert (await one_response(reader)).startswith(b"HTTP/1.1 200 ")
    closed = await asyncio.gather(*(read_until_closed(r) for r, _ in half_open))
    assert all(c.startswith(b"HTTP/1.1 408 ") for c in closed)
    for _, w in [*half_open, (reader, writer)]:
        w.close()


@pytest.mark.parametrize(
    "garbage",
    [
        b"GET /a\x01b HTTP/1.1\r\nHost: a\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: a\r\nX: a\r\n b\r\n\r\n",  # obs-fold
        b"GET / HTTP/1.1\nHost: a\n\n",  # bare LF
        b"GET / HTTP/1.1\r\nHost: a\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n",
        b"GET / HTTP/1.1\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: a\r\nX-Long: " + b"x" * 10000 + b"\r\n\r\n",
        b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03",  # TLS to the HTTP port
    ],
)
async def test_a_malformed_request_gets_a_json_400_and_no_traceback(
    garbage: bytes,
    echo_origin: TestServer,
    make_gateway: GatewayFactory,
    caplog: pytest.LogCaptureFixture,
) -> None:
    gw, _ = await make_gateway(str(echo_origin.make_url("/")), top_extra=LIMITS)
    reader, writer = await connect(gw)
    writer.write(garbage)
    answer = await read_until_closed(reader)
    writer.close()
    status_line, _, rest = answer.partition(b"\r\n")
    assert status_line.split(b" ")[1] in (b"400", b"431"), answer
    assert b'"status": 4' in rest and b"application/json" in rest
    assert "Traceback" not in caplog.text and "ERROR" not in caplog.text
    assert await origin_count(echo_origin) == 0


@pytest.mark.parametrize("coding", ["gzip, chunked", "CHUNKED, gzip", "deflate", "x-custom"])
async def test_a_transfer_coding_other_than_chunked_is_a_501_and_never_forwarded(
    coding: str, echo_origin: TestServer, make_gateway: GatewayFactory
) -> None:
    gw, _ = await make_gateway(str(echo_origin.make_url("/")), top_extra=LIMITS)
    reader, writer = await connect(gw)
    writer.write(
        f"POST /nocache/te HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: {coding}\r\n"
        "Connection: close\r\n\r\n5\r\nhello\r\n0\r\n\r\n".encode()
    )
    answer = await read_until_closed(reader)
    writer.close()
    assert answer.split(b" ")[1] in (b"400", b"501"), answer  # the parser may refuse it first
    assert await origin_count(echo_origin) == 0


async def test_a_compressed_request_body_reaches_the_origin_as_sent(
    echo_origin: TestServer, make_gateway: GatewayFactory
) -> None:
    gw, _ = await make_gateway(str(echo_origin.make_url("/")), top_extra=LIMITS)
    body = gzip.compress(b"payload " * 100)
    reader, writer = await connect(gw)
    writer.write(
        b"POST /nocache/gz?body=echo&read=1 HTTP/1.1\r\nHost: a\r\nContent-Encoding: gzip\r\n"
        + f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n".encode() + body
    )
    answer = await read_until_closed(reader)
    writer.close()
    seen = json.loads(answer.split(b"\r\n\r\n", 1)[1])
    assert seen["Content-Length"] == str(len(body))  # not inflated on the way
