"""The native layer's connection (gateway/client_protocol.py) on a fake transport: what bytes
it is fed and what it writes, when it pauses reading, when it waits for the client to read."""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import AsyncIterator
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway.client_protocol import BODY_BUFFER, MAX_PIPELINED, ClientProtocol, NativeServer
from gateway.exchange import Reply
from gateway.http1 import NativeRequest
from gateway.listener import ClientLimits

CHUNKED = (
    b"POST /up HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n"
    b"5;ext=1\r\nhello\r\n1\r\n \r\nA\r\n0123456789\r\n0\r\nX-Trailer: t\r\n\r\n"
)


class FakeTransport:
    """What the protocol calls on a transport, recorded."""

    def __init__(self, protocol: ClientProtocol) -> None:
        self.protocol = protocol
        self.out = bytearray()
        self.reading = True
        self.pauses = 0
        self.closed = False

    def write(self, data: bytes) -> None:
        self.out += data

    def writelines(self, parts: Any) -> None:
        for part in parts:
            self.out += part

    def pause_reading(self) -> None:
        self.reading = False
        self.pauses += 1

    def resume_reading(self) -> None:
        self.reading = True

    def can_write_eof(self) -> bool:
        return True

    def write_eof(self) -> None:
        pass

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            asyncio.get_running_loop().call_soon(self.protocol.connection_lost, None)

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return ("127.0.0.1", 40000) if name == "peername" else default


Handler = Any


def connection(handler: Handler) -> tuple[ClientProtocol, FakeTransport]:
    server = NativeServer(handler, ClientLimits(), lingering_time=1.0)
    protocol = server()
    transport = FakeTransport(protocol)
    protocol.connection_made(transport)  # type: ignore[arg-type]
    return protocol, transport


async def read_all(request: NativeRequest) -> bytes:
    return b"".join([chunk async for chunk in chunks(request)])


async def chunks(request: NativeRequest) -> AsyncIterator[bytes]:
    while chunk := await request.content.readany():
        yield chunk


async def echo_body(request: NativeRequest, send: Any) -> None:
    await send(request, Reply(200, [("Date", "d")], await read_all(request)))


async def settle() -> None:
    for _ in range(5):
        await asyncio.sleep(0)


@settings(suppress_health_check=[HealthCheck.function_scoped_fixture], deadline=None)
@given(st.sets(st.integers(min_value=1, max_value=len(CHUNKED) - 1), max_size=6))
async def test_a_chunked_body_split_anywhere_is_the_same_body_and_its_trailer_is_dropped(
    cuts: set[int],
) -> None:
    protocol, transport = connection(echo_body)
    edges = [0, *sorted(cuts), len(CHUNKED)]
    for start, end in itertools.pairwise(edges):
        protocol.data_received(CHUNKED[start:end])
    await settle()
    answer = b"HTTP/1.1 200 OK\r\nDate: d\r\nContent-Length: 16\r\n\r\nhello 0123456789"
    assert transport.out == answer
    protocol.connection_lost(None)


async def test_reading_pauses_while_the_handler_has_not_read_the_body_and_resumes_after() -> None:
    release = asyncio.Event()

    async def slow_reader(request: NativeRequest, send: Any) -> None:
        await release.wait()
        await echo_body(request, send)

    protocol, transport = connection(slow_reader)
    size = 4 * BODY_BUFFER
    protocol.data_received(b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: %d\r\n\r\n" % size)
    for _ in range(3):
        protocol.data_received(b"x" * BODY_BUFFER)
        await settle()
    assert not transport.reading and transport.pauses == 1
    release.set()
    await settle()
    assert transport.reading  # read: the client may send the rest
    protocol.data_received(b"x" * BODY_BUFFER)
    await settle()
    assert transport.out.endswith(b"x" * size)
    protocol.connection_lost(None)


async def test_pipelined_requests_wait_in_order_and_too_many_pause_reading() -> None:
    release = asyncio.Event()

    async def numbered(request: NativeRequest, send: Any) -> None:
        await release.wait()
        await send(request, Reply(200, [("Date", "d")], request.raw_path.encode()))

    protocol, transport = connection(numbered)
    count = MAX_PIPELINED + 4
    heads = [b"GET /%d HTTP/1.1\r\nHost: a\r\n\r\n" % n for n in range(count)]
    protocol.data_received(b"".join(heads))
    await settle()
    assert not transport.reading and transport.out == b""
    release.set()
    for _ in range(count):
        await settle()
    assert transport.reading
    bodies = [part.split(b"\r\n\r\n")[1] for part in transport.out.split(b"HTTP/1.1 ")[1:]]
    assert bodies == [b"/%d" % i for i in range(count)]
    protocol.connection_lost(None)


async def test_a_streamed_answer_waits_while_the_client_does_not_read() -> None:
    sent = asyncio.Event()

    class Body:
        async def __aiter__(self) -> AsyncIterator[bytes]:
            for _ in range(3):
                yield b"z" * 10
            sent.set()

        def close(self) -> None:
            pass

    async def streams(request: NativeRequest, send: Any) -> None:
        await send(request, Reply(200, [("Date", "d")], Body()))

    protocol, transport = connection(streams)
    protocol.pause_writing()  # the client reads nothing: the transport's buffer is full
    protocol.data_received(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
    await settle()
    assert transport.out.endswith(b"\r\n\r\na\r\nzzzzzzzzzz\r\n") and not sent.is_set()
    protocol.resume_writing()
    await settle()
    assert sent.is_set() and transport.out.endswith(b"\r\n0\r\n\r\n")
    protocol.connection_lost(None)


async def test_100_continue_goes_out_on_the_first_read_of_the_body_only() -> None:
    protocol, transport = connection(echo_body)
    protocol.data_received(
        b"POST / HTTP/1.1\r\nHost: a\r\nExpect: 100-continue\r\nContent-Length: 2\r\n\r\n"
    )
    await settle()
    assert transport.out == b"HTTP/1.1 100 Continue\r\n\r\n"
    protocol.data_received(b"ok")
    await settle()
    assert transport.out.count(b"100 Continue") == 1 and transport.out.endswith(b"\r\n\r\nok")
    protocol.connection_lost(None)


async def test_a_connection_lost_mid_answer_cancels_its_handler() -> None:
    cancelled = asyncio.Event()

    async def waits(request: NativeRequest, send: Any) -> None:
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            cancelled.set()
            raise

    protocol, _ = connection(waits)
    protocol.data_received(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
    await settle()
    protocol.connection_lost(ConnectionResetError())
    await settle()
    assert cancelled.is_set()


async def test_a_field_that_never_ends_is_refused_once_32_kib_are_held() -> None:
    protocol, transport = connection(echo_body)
    protocol.data_received(b"GET / HTTP/1.1\r\nHost: a\r\nX-Endless: ")
    for _ in range(5):  # httptools holds the field whole: no callback until it ends
        protocol.data_received(b"a" * 8192)
    await settle()
    assert transport.out.startswith(b"HTTP/1.1 431 ") and b"Connection: close" in transport.out
    protocol.connection_lost(None)
