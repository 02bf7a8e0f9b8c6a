"""Candidates (c) and (d) of bench/layers.py: a bare `asyncio.Protocol` around an llhttp parser.

No request objects, no header multidicts built for the response, no tasks: the parser's
callback (or its list of messages) looks the target up and writes the pre-rendered head and
the stored body at once. The issue's question is how much of a hit aiohttp's machinery costs;
these two are the answer's lower bound for anything written in Python on an event loop.

  (c) `httptools.HttpRequestParser` (llhttp, the MagicStack binding uvicorn uses): callbacks
      per URL piece and per header, nothing built that we did not ask for;
  (d) aiohttp's own C parser (`aiohttp._http_parser.HttpRequestParser`, llhttp vendored in
      aiohttp, strict for requests): no new dependency, but it builds what aiohttp's server
      needs per request (a `RawRequestMessage`, a `CIMultiDict` of the headers, a yarl `URL`).

Both behave as a real layer must in the ways a hit benchmark touches, so that the numbers do
not flatter them: responses in request order (pipelining; here trivially, since a hit never
waits), HEAD without a body, `Connection: close` and HTTP/1.0 honoured (HTTP/1.0 is simply
closed after the answer), a refused request answered 400 (or 431 for an oversized head) with
`Connection: close`, methods other than GET/HEAD refused with a 405. What a gateway would add
(timeouts, connection limits, bodies, 100-continue, lingering close) is in
docs/architecture.md, "Choosing the client-facing server layer".
"""

from __future__ import annotations

import asyncio
import socket
from typing import Any, cast

import entries as e

try:
    import httptools
except ImportError:  # (d) and the others run without it; (c) says so when started
    httptools = None

MAX_HEAD = 8190 * 4  # bytes of request line + header fields before a 431 (layer (c) only)
NOT_STORED = e.simple_response("404 Not Found", close=False)
NOT_STORED_HEAD = e.simple_response("404 Not Found", close=False, head_only=True)
BAD_REQUEST = e.simple_response("400 Bad Request", close=True)
TOO_LARGE = e.simple_response("431 Request Header Fields Too Large", close=True)
NOT_ALLOWED = e.simple_response("405 Method Not Allowed", close=True)
CLOSE = b"Connection: close\r\n\r\n"


def answer(
    transport: asyncio.Transport, entry: e.Entry | None, clock: e.Clock, head_only: bool,
    close: bool,
) -> None:
    """Write one hit (or a 404) as one writelines call: uvloop sends head and body with a
    single writev, without joining 20 KiB into a new bytes object first."""
    if entry is None:
        transport.write(NOT_STORED_HEAD if head_only else NOT_STORED)
    else:
        head = e.hit_head(entry, clock)
        if close:
            head = head[:-2] + CLOSE  # the last CRLF ends the head: add the field before it
        if head_only:
            transport.write(head)
        else:
            transport.writelines((head, entry.body))
    if close:
        transport.close()


class HeadTooLarge(Exception):
    """Raised from a parser callback: llhttp itself has no limit on a head's size."""


class HttptoolsHit(asyncio.Protocol):
    """(c): one connection, parsed by httptools; every callback is a method of this object."""

    __slots__ = ("clock", "closing", "head_size", "headers", "parser", "table", "transport",
                 "url")

    def __init__(self, table: dict[bytes, e.Entry], clock: e.Clock) -> None:
        self.table = table
        self.clock = clock
        self.parser = httptools.HttpRequestParser(self)
        self.transport: asyncio.Transport | None = None
        self.closing = False
        self.url = b""
        self.headers: list[tuple[bytes, bytes]] = []
        self.head_size = 0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.Transport subclasses: no isinstance check.
        sock = transport.get_extra_info("socket")
        if sock is not None:  # as aiohttp does for its connections
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.transport = cast(asyncio.Transport, transport)

    def connection_lost(self, exc: BaseException | None) -> None:
        self.transport = None

    def data_received(self, data: bytes) -> None:
        if self.closing:
            return
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self.refuse(BAD_REQUEST)  # no Upgrade or CONNECT on an edge cache's hit path
        except httptools.HttpParserError as exc:
            # An exception raised in a callback comes back as HttpParserCallbackError, with the
            # callback's own exception as its context.
            too_large = isinstance(exc.__context__, HeadTooLarge)
            self.refuse(TOO_LARGE if too_large else BAD_REQUEST)

    def refuse(self, response: bytes) -> None:
        if self.transport is not None and not self.closing:
            self.closing = True
            self.transport.write(response)
            self.transport.close()

    # llhttp callbacks, in the order they come

    def on_message_begin(self) -> None:
        self.url = b""
        self.headers = []
        self.head_size = 0

    def on_url(self, url: bytes) -> None:
        self.url += url  # may come in pieces when the line spans two reads
        self.head_size += len(url)
        if self.head_size > MAX_HEAD:
            raise HeadTooLarge

    def on_header(self, name: bytes, value: bytes) -> None:
        # A real layer needs the fields (Host, conditionals, Cache-Control): collect them, as
        # the cheapest structure that keeps order and repeats.
        self.headers.append((name, value))
        self.head_size += len(name) + len(value) + 4
        if self.head_size > MAX_HEAD:
            raise HeadTooLarge

    def on_message_complete(self) -> None:
        transport = self.transport
        if transport is None or self.closing:
            return  # a pipelined request after one that closed the connection
        parser = self.parser
        method = parser.get_method()
        if method != b"GET" and method != b"HEAD":
            self.refuse(NOT_ALLOWED)
            return
        close = not parser.should_keep_alive() or parser.get_http_version() != "1.1"
        self.closing = close
        answer(transport, self.table.get(self.url), self.clock, method == b"HEAD", close)


def aiohttp_parser_protocol() -> type[asyncio.Protocol]:
    """(d)'s class, built on first use so that (c) runs without importing aiohttp."""
    from aiohttp.base_protocol import BaseProtocol
    from aiohttp.http_exceptions import HttpProcessingError, LineTooLong
    from aiohttp.http_parser import HttpRequestParserC, HttpVersion11

    class AiohttpParserHit(BaseProtocol):
        """(d): one connection, parsed by aiohttp's C parser (the one aiohttp's server makes,
        with its limits: 8190-byte lines and fields, 128 fields). BaseProtocol gives it the
        flow-control methods a request body's StreamReader calls."""

        __slots__ = ("clock", "closing", "table")

        def __init__(
            self, loop: asyncio.AbstractEventLoop, table: dict[str, e.Entry], clock: e.Clock
        ) -> None:
            parser: Any = HttpRequestParserC(
                self,
                loop,
                2**16,
                max_line_size=8190,
                max_field_size=8190,
                max_headers=128,
                auto_decompress=False,
            )
            super().__init__(loop, parser)
            self.table = table
            self.clock = clock
            self.closing = False

        def data_received(self, data: bytes) -> None:
            if self.closing or self.transport is None:
                return
            try:
                messages, upgraded, _tail = self._parser.feed_data(data)  # type: ignore[union-attr]
            except HttpProcessingError as exc:
                self.refuse(TOO_LARGE if isinstance(exc, LineTooLong) else BAD_REQUEST)
                return
            for msg, _payload in messages:
                if self.closing:
                    return
                if msg.method != "GET" and msg.method != "HEAD":
                    self.refuse(NOT_ALLOWED)
                    return
                close = msg.should_close or msg.version != HttpVersion11
                self.closing = close
                entry = self.table.get(msg.path)
                answer(self.transport, entry, self.clock, msg.method == "HEAD", close)
            if upgraded and not self.closing:
                self.refuse(BAD_REQUEST)

        def refuse(self, response: bytes) -> None:
            if self.transport is not None and not self.closing:
                self.closing = True
                self.transport.write(response)
                self.transport.close()

    return AiohttpParserHit


async def serve(layer: str, sock: socket.socket) -> None:
    """Serve (c) or (d) on a listening socket until killed."""
    loop = asyncio.get_running_loop()
    clock = e.Clock()
    table = e.make_entries()
    factory: Any
    if layer == "httptools":
        by_bytes = {target.encode("latin-1"): entry for target, entry in table.items()}
        factory = lambda: HttptoolsHit(by_bytes, clock)  # noqa: E731
    else:
        cls = aiohttp_parser_protocol()
        factory = lambda: cls(loop, table, clock)  # noqa: E731
    server = await loop.create_server(factory, sock=sock)
    async with server:
        await server.serve_forever()
