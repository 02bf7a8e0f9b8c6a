"""HTTP/1.1 as a client speaks it, on raw sockets, against both client-facing layers.

Each test runs on `server: aiohttp` and `server: native`. Where aiohttp's layer falls short
of what the native one does (head size limits, 414, 505, pipelined answers before a refusal,
100-continue), the aiohttp run is an expected failure (`strict`: it is noticed when fixed).
"""

from __future__ import annotations

import asyncio
import json
import logging

import pytest
from aiohttp.test_utils import TestServer

from gateway.__main__ import drain
from tests.conftest import (
    LAYERS,
    GatewayFactory,
    GatewayServer,
    NativeGatewayServer,
    eventually,
)
from tests.echo_origin import echo_state
from tests.test_access_log import emitted
from tests.test_gateway_http import origin_count
from tests.test_listener import LIMITS, OK, connect, read_until_closed


@pytest.fixture(params=LAYERS)
def layer(request: pytest.FixtureRequest) -> str:
    """Every test here runs on both client-facing layers."""
    return str(request.param)


def aiohttp_lacks(
    request: pytest.FixtureRequest, layer: str, what: str, *, run: bool = True
) -> None:
    """Mark this run an expected failure on aiohttp's layer, which does not do `what` (not
    run at all with `run=False`: a run that would hang until its connection is torn down)."""
    if layer == "aiohttp":
        reason = f"aiohttp's layer: {what}"
        if not run:
            pytest.xfail(reason)
        request.applymarker(pytest.mark.xfail(reason=reason, strict=True))


async def start(
    make_gateway: GatewayFactory, origin: TestServer, extra: str = LIMITS
) -> GatewayServer:
    gw, _ = await make_gateway(str(origin.make_url("/")), top_extra=extra)
    return gw


async def read_answer(
    reader: asyncio.StreamReader, *, bodyless: bool = False
) -> tuple[int, dict[str, str], bytes]:
    """One answer: its status, fields (last of each name, lower-case) and body, framed as
    RFC 9112 6.3 says: none, chunked, Content-Length, or until the connection ends."""
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
    status_line, *lines = head.decode("latin-1").split("\r\n")[:-2]
    status = int(status_line.split(" ")[1])
    fields = {n.strip().lower(): v.strip() for n, _, v in (line.partition(":") for line in lines)}
    if bodyless or status in (204, 304) or 100 <= status < 200:
        return status, fields, b""
    if fields.get("transfer-encoding") == "chunked":
        body = b""
        while size := int((await reader.readuntil(b"\r\n")).split(b";")[0], 16):
            body += await reader.readexactly(size)
            assert await reader.readexactly(2) == b"\r\n"
        assert await reader.readuntil(b"\r\n") == b"\r\n"  # no trailers
        return status, fields, body
    if "content-length" in fields:
        return status, fields, await reader.readexactly(int(fields["content-length"]))
    return status, fields, await read_until_closed(reader)


async def exchange(gw: GatewayServer, data: bytes) -> bytes:
    """Send `data` on a new connection; all the answer bytes until the gateway closes."""
    reader, writer = await connect(gw)
    try:
        writer.write(data)
        return await read_until_closed(reader)
    finally:
        writer.close()


def status_of(raw: bytes) -> int:
    return int(raw.split(b" ", 2)[1])


def ok_with(*fields: bytes, version: bytes = b"HTTP/1.1") -> bytes:
    """The OK request with more fields, in `version`."""
    return OK.replace(b"HTTP/1.1", version).replace(b"\r\n\r\n", b"".join(
        b"\r\n" + field for field in fields) + b"\r\n\r\n")


# Head limits and the request line


async def test_a_request_target_over_8_kib_is_a_414(
    request: pytest.FixtureRequest, layer: str, echo_origin: TestServer,
    make_gateway: GatewayFactory,
) -> None:
    aiohttp_lacks(request, layer, "a long line is a 400")
    gw = await start(make_gateway, echo_origin)
    raw = await exchange(gw, b"GET /" + b"a" * 9000 + b" HTTP/1.1\r\nHost: a\r\n\r\n")
    assert status_of(raw) == 414 and b'"status": 414' in raw
    assert await origin_count(echo_origin) == 0


async def test_a_head_of_many_small_fields_over_32_kib_is_a_431(
    request: pytest.FixtureRequest, layer: str, echo_origin: TestServer,
    make_gateway: GatewayFactory,
) -> None:
    aiohttp_lacks(request, layer, "no bound on a head's total size")
    gw = await start(make_gateway, echo_origin)
    fields = b"".join(b"X-F%d: %s\r\n" % (i, b"v" * 400) for i in range(90))  # ~37 KB
    raw = await exchange(gw, b"GET /ok HTTP/1.1\r\nHost: a\r\n" + fields + b"\r\n")
    assert status_of(raw) == 431 and b"application/json" in raw


async def test_more_than_100_fields_is_a_431(
    request: pytest.FixtureRequest, layer: str, echo_origin: TestServer,
    make_gateway: GatewayFactory,
) -> None:
    aiohttp_lacks(request, layer, "up to 32768 fields")
    gw = await start(make_gateway, echo_origin)
    fields = b"".join(b"X-F%d: v\r\n" % i for i in range(101))
    raw = await exchange(gw, b"GET /ok HTTP/1.1\r\nHost: a\r\n" + fields + b"\r\n")
    assert status_of(raw) == 431


async def test_a_head_within_the_limits_is_served(
    echo_origin: TestServer, make_gateway: GatewayFactory
) -> None:
    gw = await start(make_gateway, echo_origin)
    fields = b"".join(b"X-F%d: %s\r\n" % (i, b"v" * 250) for i in range(98))  # ~26 KB
    target = b"/ok?" + b"q" * 7000
    raw = await exchange(
        gw, b"GET " + target + b" HTTP/1.1\r\nHost: a\r\nConnection: close\r\n" + fields + b"\r\n"
    )
    assert status_of(raw) == 200


@pytest.mark.parametrize("version", [b"HTTP/2.0", b"HTTP/1.2", b"HTTP/0.9", b"HTTP/3.0"])
async def test_a_version_other_than_http_1_0_or_1_1_is_a_505(
    version: bytes, request: pytest.FixtureRequest, layer: str, echo_origin: TestServer,
    make_gateway: GatewayFactory,
) -> None:
    if version in (b"HTTP/1.2", b"HTTP/3.0"):
        aiohttp_lacks(request, layer, "its parser refuses this version with a 400")
    gw = await start(make_gateway, echo_origin)
    raw = await exchange(gw, b"GET /ok HTTP/1.1\r\nHost: a\r\n\r\n".replace(b"HTTP/1.1", version))
    assert status_of(raw) == 505, raw[:100]
    if layer == "native":  # aiohttp answers in the request's version ("HTTP/2.0 505")
        assert raw.startswith(b"HTTP/1.1 505 ")
    assert await origin_count(echo_origin) == 0


# Pipelining


async def test_pipelined_answers_come_in_request_order_even_when_the_first_is_slower(
    echo_origin: TestServer, make_gateway: GatewayFactory
) -> None:
    gw = await start(make_gateway, echo_origin)
    reader, writer = await connect(gw)
    writer.write(
        b"GET /nocache/slow?delay=0.2&body=first HTTP/1.1\r\nHost: a\r\n\r\n"
        b"GET /nocache/fast?body=second HTTP/1.1\r\nHost: a\r\n\r\n"
    )
    assert (await read_answer(reader))[2] == b"first"
    assert (await read_answer(reader))[2] == b"second"
    writer.close()


async def test_two_pipelined_requests_then_garbage_get_two_answers_then_a_400(
    request: pytest.FixtureRequest, layer: str, echo_origin: TestServer,
    make_gateway: GatewayFactory,
) -> None:
    aiohttp_lacks(request, layer, "the 400 replaces the answers to the requests before it")
    gw = await start(make_gateway, echo_origin)
    reader, writer = await connect(gw)
    writer.write(OK * 2 + b"GARBAGE\x01 / HTTP/1.1\r\n\r\n")
    assert (await read_answer(reader))[0] == 200
    assert (await read_answer(reader))[0] == 200
    status, fields, body = await read_answer(reader)
    assert (status, fields["connection"]) == (400, "close")
    assert json.loads(body)["status"] == 400
    assert await read_until_closed(reader) == b""
    writer.close()


# Bodyless answers


async def test_head_gets_the_content_length_of_get_and_no_body_so_the_next_answer_parses(
    echo_origin: TestServer, make_gateway: GatewayFactory
) -> None:
    gw = await start(make_gateway, echo_origin)
    reader, writer = await connect(gw)
    for target in (
        b"/stored?h=Cache-Control:max-age%3D60&body=hello",  # a body in memory
        b"/nocache/passed?body=hello",  # streamed, with the origin's Content-Length
    ):
        writer.write(b"GET %s HTTP/1.1\r\nHost: a\r\n\r\n" % target)
        _, got, body = await read_answer(reader)
        writer.write(b"HEAD %s HTTP/1.1\r\nHost: a\r\n\r\n" % target + OK)
        status, fields, _ = await read_answer(reader, bodyless=True)
        assert (status, fields["content-length"], body) == (200, got["content-length"], b"hello")
        assert (await read_answer(reader))[0] == 200  # OK, right after the HEAD's head
    writer.close()


@pytest.mark.parametrize("status", [204, 304])
async def test_204_and_304_carry_no_body(
    status: int, echo_origin: TestServer, make_gateway: GatewayFactory
) -> None:
    gw = await start(make_gateway, echo_origin)
    reader, writer = await connect(gw)
    writer.write(b"GET /nocache/x?status=%d HTTP/1.1\r\nHost: a\r\n\r\n" % status + OK)
    assert (await read_answer(reader))[0] == status
    assert (await read_answer(reader))[0] == 200
    writer.close()


# Expect: 100-continue


async def test_100_continue_is_sent_when_the_body_is_read_then_the_answer(
    request: pytest.FixtureRequest, layer: str, echo_origin: TestServer,
    make_gateway: GatewayFactory,
) -> None:
    aiohttp_lacks(request, layer, "its low-level server never sends 100 Continue", run=False)
    gw = await start(make_gateway, echo_origin)
    reader, writer = await connect(gw)
    writer.write(
        b"POST /nocache/up?body=request HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n"
        b"Expect: 100-continue\r\n\r\n"
    )
    interim = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 2)
    assert interim == b"HTTP/1.1 100 Continue\r\n\r\n"
    writer.write(b"hello")
    assert (await read_answer(reader))[::2] == (200, b"hello")
    writer.close()


async def test_no_100_continue_for_a_request_answered_without_reading_its_body(
    echo_origin: TestServer, make_gateway: GatewayFactory
) -> None:
    gw = await start(make_gateway, echo_origin)
    reader, writer = await connect(gw)
    writer.write(
        b"POST /nocache/up HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip, chunked\r\n"
        b"Expect: 100-continue\r\n\r\n"
    )
    assert (await read_answer(reader))[0] == 501  # not a 100 first: the body was not read
    writer.close()


async def test_an_unknown_expectation_is_a_417(
    echo_origin: TestServer, make_gateway: GatewayFactory
) -> None:
    gw = await start(make_gateway, echo_origin)
    raw = await exchange(gw, b"POST /nocache/x HTTP/1.1\r\nHost: a\r\nExpect: teapot\r\n\r\n")
    assert status_of(raw) == 417
    assert await origin_count(echo_origin) == 0


# Request bodies


async def test_a_chunked_body_reaches_the_origin_whole_and_its_trailers_do_not(
    echo_origin: TestServer, make_gateway: GatewayFactory
) -> None:
    gw = await start(make_gateway, echo_origin)
    raw = await exchange(
        gw,
        b"POST /nocache/up?body=request HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n"
        b"Connection: close\r\n\r\n5;ext=1\r\nhello\r\n1\r\n \r\n5\r\nworld\r\n0\r\n"
        b"X-Trailer: evil\r\n\r\n",
    )
    assert status_of(raw) == 200 and raw.endswith(b"\r\n\r\nhello world")


async def test_a_large_body_streams_to_the_origin_whole(
    echo_origin: TestServer, make_gateway: GatewayFactory
) -> None:
    gw = await start(make_gateway, echo_origin)
    reader, writer = await connect(gw)
    body = bytes(range(256)) * 4096  # 1 MiB, past every buffer on the way
    writer.write(
        b"POST /nocache/big?body=request HTTP/1.1\r\nHost: a\r\n"
        b"Content-Length: %d\r\n\r\n" % len(body)
    )
    for start_at in range(0, len(body), 65536):
        writer.write(body[start_at : start_at + 65536])
        await writer.drain()
    status, _, echoed = await read_answer(reader)
    assert (status, echoed == body) == (200, True)
    writer.close()


async def test_an_unread_body_is_drained_so_the_client_reads_the_answer_not_a_reset(
    echo_origin: TestServer, make_gateway: GatewayFactory
) -> None:
    gw = await start(make_gateway, echo_origin)
    reader, writer = await connect(gw)
    writer.write(b"GET /c HTTP/1.1\r\nHost: a\r\nContent-Length: 2000000\r\n\r\n" + b"x" * 1000)
    status, fields, body = await read_answer(reader)  # a GET with a body on a cached route
    assert (status, fields["connection"]) == (400, "close") and b"body" in body
    for _ in range(8):  # the client goes on sending: read and dropped, not reset
        writer.write(b"x" * 65536)
        await writer.drain()
    writer.close()


# Answers


async def test_a_streamed_answer_of_unknown_length_is_chunked_for_1_1_and_ends_the_1_0_connection(
    echo_origin: TestServer, make_gateway: GatewayFactory
) -> None:
    gw = await start(make_gateway, echo_origin)
    reader, writer = await connect(gw)
    writer.write(b"GET /nocache/s?stream=150000 HTTP/1.1\r\nHost: a\r\n\r\n")
    status, fields, body = await read_answer(reader)
    assert (status, fields["transfer-encoding"], len(body)) == (200, "chunked", 150000)
    writer.write(
        b"GET /nocache/s?stream=150000 HTTP/1.0\r\nHost: a\r\nConnection: keep-alive\r\n\r\n"
    )
    status, fields, body = await read_answer(reader)
    assert "transfer-encoding" not in fields and "content-length" not in fields
    assert (status, fields.get("connection", "close"), len(body)) == (200, "close", 150000)
    writer.close()


async def test_http_1_0_keeps_the_connection_only_when_asked(
    echo_origin: TestServer, make_gateway: GatewayFactory
) -> None:
    gw = await start(make_gateway, echo_origin)
    reader, writer = await connect(gw)
    writer.write(ok_with(b"Connection: keep-alive", version=b"HTTP/1.0"))
    status, fields, _ = await read_answer(reader)
    assert (status, fields["connection"].lower()) == (200, "keep-alive")
    writer.write(ok_with(version=b"HTTP/1.0"))
    assert (await read_answer(reader))[0] == 200
    assert await read_until_closed(reader) == b""
    writer.close()


async def test_connection_close_is_honoured_and_every_answer_has_a_date(
    echo_origin: TestServer, make_gateway: GatewayFactory
) -> None:
    gw = await start(make_gateway, echo_origin)
    raw = await exchange(gw, ok_with(b"Connection: close"))
    head = raw.split(b"\r\n\r\n")[0].lower()
    assert b"\r\nconnection: close" in head and b"\r\ndate: " in head


# Clients that leave, errors, shutdown


async def test_a_client_gone_mid_request_is_logged_as_499(
    echo_origin: TestServer, make_gateway: GatewayFactory, capsys: pytest.CaptureFixture[str]
) -> None:
    gw, gateway = await make_gateway(str(echo_origin.make_url("/")))
    gate = echo_state(echo_origin).gate("gone")
    gate.clear()
    _, writer = await connect(gw)
    writer.write(b"GET /nocache/held?hold=gone HTTP/1.1\r\nHost: a\r\n\r\n")
    await eventually(lambda: echo_state(echo_origin).in_flight > 0, "the origin asked")
    writer.close()
    await eventually(lambda: bool(gateway.meter.answers), "the abandoned request counted")
    gate.set()
    lines = [json.loads(line) for line in emitted(gateway, capsys)]
    assert [(r["path"], r["status"]) for r in lines] == [("/nocache/held?hold=gone", 499)]


async def test_an_unexpected_error_is_a_json_500_and_a_log_line_without_a_traceback_sent(
    echo_origin: TestServer, make_gateway: GatewayFactory, caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    gw, gateway = await make_gateway(str(echo_origin.make_url("/")))

    async def broken(*args: object, **kwargs: object) -> None:
        raise RuntimeError("a bug")

    monkeypatch.setattr(gateway.cache, "serve", broken)
    raw = await exchange(gw, ok_with(b"Connection: close"))
    assert status_of(raw) == 500 and b"internal gateway error" in raw
    assert b"a bug" not in raw and b"Traceback" not in raw
    assert "unhandled error on GET /ok" in caplog.text


async def test_a_drain_closes_idle_connections_at_once_and_lets_an_answer_in_flight_finish(
    echo_origin: TestServer, make_gateway: GatewayFactory, caplog: pytest.LogCaptureFixture
) -> None:
    gw = await start(make_gateway, echo_origin, "keepalive_timeout: 30s")
    idle_reader, idle_writer = await connect(gw)
    idle_writer.write(OK)
    assert (await read_answer(idle_reader))[0] == 200
    gate = echo_state(echo_origin).gate("drain")
    gate.clear()
    reader, writer = await connect(gw)
    writer.write(b"GET /nocache/held?hold=drain&body=done HTTP/1.1\r\nHost: a\r\n\r\n")
    await eventually(lambda: echo_state(echo_origin).in_flight > 0, "the origin asked")
    caplog.set_level(logging.WARNING)
    if isinstance(gw, NativeGatewayServer):
        draining = asyncio.create_task(drain([], gw.native))
    else:
        assert gw.runner is not None
        draining = asyncio.create_task(drain([gw.runner]))
    assert await read_until_closed(idle_reader, limit=2) == b""  # at once, not in 30 s
    gate.set()
    status, _, body = await read_answer(reader)
    assert (status, body) == (200, b"done")
    await asyncio.wait_for(draining, 5)
    assert "still answering" not in caplog.text
    idle_writer.close()
    writer.close()


async def test_nothing_after_a_connection_close_request_is_answered(
    request: pytest.FixtureRequest, layer: str, echo_origin: TestServer,
    make_gateway: GatewayFactory,
) -> None:
    aiohttp_lacks(request, layer, "the whole read is refused with a 400 instead")
    gw = await start(make_gateway, echo_origin)
    raw = await exchange(gw, ok_with(b"Connection: close") + OK + b"GARBAGE\r\n\r\n")
    assert raw.count(b"HTTP/1.1 ") == 1 and status_of(raw) == 200


async def test_an_upgrade_request_is_answered_as_a_plain_one_then_the_connection_closes(
    echo_origin: TestServer, make_gateway: GatewayFactory
) -> None:
    gw = await start(make_gateway, echo_origin)
    upgrade = ok_with(b"Connection: Upgrade", b"Upgrade: websocket")
    raw = await exchange(gw, upgrade + b"\x81\x05hello")
    assert raw.count(b"HTTP/1.1 ") == 1 and status_of(raw) == 200
