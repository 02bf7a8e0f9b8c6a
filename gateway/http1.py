"""The pure parts of the native HTTP/1.1 layer: head limits, request, body, the answer's head.

llhttp (through httptools) frames requests strictly: it refuses CL+TE together, duplicate or
malformed Content-Length, obs-fold, bare LF, invalid characters and bad chunk sizes. What it
leaves to its caller is here, as nginx does it:

- limits on the head (llhttp has none, and httptools buffers a field whole before handing it
  over): a request line over `MAX_LINE` is a 414; a field over `MAX_FIELD`, a head over
  `MAX_HEAD` or more than `MAX_FIELDS` fields is a 431;
- the request's meaning: a version other than HTTP/1.0 or 1.1 is a 505 (llhttp accepts
  `HTTP/2.0` and `HTTP/0.9` in a request line), HTTP/1.1 without Host or a repeated Host or
  framing field is a 400, an expectation other than `100-continue` a 417;
- rendering the answer's head once, as bytes, with Content-Length or chunked framing, `Date`
  and the connection's fate.

Nothing here does I/O: gateway/client_protocol.py drives it from an asyncio.Protocol.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Callable
from email.utils import formatdate
from http import HTTPStatus
from typing import NamedTuple

from multidict import CIMultiDict, CIMultiDictProxy

from gateway.listener import raw_response

MAX_LINE = 8 * 1024  # request target bytes (nginx's large_client_header_buffers): else 414
MAX_FIELD = 8 * 1024  # one field line, name and value: else 431
MAX_HEAD = 32 * 1024  # all the fields of a head (or of a chunked body's trailers): else 431
MAX_FIELDS = 100  # fields in a head: else 431
# Fields that mean one thing: a second copy (even equal) makes the request ambiguous to
# whoever reads the other one, so it is refused (aiohttp refuses the same ones).
SINGLETONS = ("Host", "Content-Length", "Transfer-Encoding", "Content-Type", "Max-Forwards")
CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"


class Refused(Exception):
    """A request the layer answers itself with `status` and closes the connection after."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason

    def response(self) -> bytes:
        """The whole JSON answer, `Connection: close` included."""
        phrase = HTTPStatus(self.status).phrase
        return raw_response(f"{self.status} {phrase}", self.reason)


class HttpVersion(NamedTuple):
    major: int
    minor: int


HTTP10 = HttpVersion(1, 0)
HTTP11 = HttpVersion(1, 1)
VERSIONS = {"1.0": HTTP10, "1.1": HTTP11}
# The versions the gateway speaks with clients, on either layer (aiohttp's parser takes
# "HTTP/2.0" too: Gateway answers it a 505). Version tuples compare and hash as plain tuples.
SPOKEN = frozenset(VERSIONS.values())


class HeadBuilder:
    """One request head as llhttp hands it over (target pieces, whole fields), with its limits."""

    __slots__ = ("fields", "size", "url")

    def __init__(self) -> None:
        self.url = b""
        self.fields: list[tuple[bytes, bytes]] = []
        self.size = 0  # bytes of the fields so far, as sent ("Name: value\r\n")

    def add_url(self, piece: bytes) -> None:
        self.url += piece  # in pieces when the request line spans two reads
        if len(self.url) > MAX_LINE:
            raise Refused(414, "request target too long")

    def add_field(self, name: bytes, value: bytes) -> None:
        size = len(name) + len(value) + 4
        if size > MAX_FIELD:
            raise Refused(431, "request header field too large")
        self.size += size
        self.fields.append((name, value))
        if self.size > MAX_HEAD or len(self.fields) > MAX_FIELDS:
            raise Refused(431, "request header fields too large")

    def request(
        self, method: bytes, version: str, keep_alive: bool, remote: str | None
    ) -> NativeRequest:
        """The request this head makes; Refused for one the gateway must not act on."""
        known = VERSIONS.get(version)
        if known is None:
            raise Refused(505, f"HTTP version not supported: {version[:10]}")
        headers = CIMultiDict(  # decoded as aiohttp decodes them
            [(n.decode("latin-1"), v.decode("utf-8", "surrogateescape")) for n, v in self.fields]
        )
        if len(headers) != len(headers.keys()):  # (unique names)
            for name in SINGLETONS:  # some name is repeated: one of these?
                if len(headers.getall(name, ())) > 1:
                    raise Refused(400, f"duplicate {name} field")
        if known is HTTP11 and "Host" not in headers:
            raise Refused(400, "missing Host field")
        expect = headers.get("Expect")
        continue_expected = False
        if expect is not None and known is HTTP11:  # RFC 9110 10.1.1: ignored in HTTP/1.0
            if expect.strip().lower() != "100-continue":
                raise Refused(417, "expectation not supported")
            continue_expected = True
        length = headers.get("Content-Length")
        content_length = int(length) if length is not None else None  # llhttp checked digits
        chunked = "Transfer-Encoding" in headers  # llhttp refuses a non-chunked final coding
        return NativeRequest(
            method.decode("ascii"),
            self.url.decode("utf-8", "surrogateescape"),
            CIMultiDictProxy(headers),
            known,
            remote,
            keep_alive,
            content_length,
            chunked or bool(content_length),
            continue_expected,
        )


class BodyStream:
    """A request body as the parser delivers it, read by the handler with `readany()`.

    `on_read` is called on every read, before waiting: the connection sends `100 Continue` on
    the first one and resumes reading once `buffered` is low again (flow control)."""

    __slots__ = ("_chunks", "_error", "_waiter", "buffered", "complete", "on_read")

    def __init__(self) -> None:
        self._chunks: deque[bytes] = deque()
        self._waiter: asyncio.Future[None] | None = None
        self._error: BaseException | None = None
        self.buffered = 0
        self.complete = False  # the parser has seen its end
        self.on_read: Callable[[], None] | None = None

    def feed(self, chunk: bytes) -> None:
        self._chunks.append(chunk)
        self.buffered += len(chunk)
        self._wake()

    def end(self) -> None:
        self.complete = True
        self._wake()

    def fail(self, error: BaseException) -> None:
        """The connection is gone before the body's end."""
        if not self.complete:
            self._error = error
            self._wake()

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    async def readany(self) -> bytes:
        while True:
            if self._chunks:
                chunk = self._chunks.popleft()
                self.buffered -= len(chunk)
                if self.on_read is not None:
                    self.on_read()
                return chunk
            if self.complete:
                return b""
            if self._error is not None:
                raise self._error
            if self.on_read is not None:
                self.on_read()
            self._waiter = asyncio.get_running_loop().create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None


NO_BODY = BodyStream()  # the content of every request without a body: ended, never fed
NO_BODY.end()


class NativeRequest:
    """A parsed request: what `exchange.ClientRequest` asks for, plus its connection's say."""

    __slots__ = (
        "body_exists", "content", "content_length", "continue_expected", "headers",
        "keep_alive", "method", "raw_path", "remote", "version",
    )
    scheme = "http"

    def __init__(
        self,
        method: str,
        raw_path: str,
        headers: CIMultiDictProxy[str],
        version: HttpVersion,
        remote: str | None,
        keep_alive: bool,
        content_length: int | None,
        body_exists: bool,
        continue_expected: bool,
    ) -> None:
        self.method = method
        self.raw_path = raw_path
        self.headers = headers
        self.version = version
        self.remote = remote
        self.keep_alive = keep_alive  # the client allows another request after this one
        self.content_length = content_length
        self.body_exists = body_exists
        self.continue_expected = continue_expected  # `Expect: 100-continue`, not answered yet
        self.content = BodyStream() if body_exists else NO_BODY


class _DateCache:
    """The `Date` field, formatted once a second rather than on every answer."""

    __slots__ = ("line", "second")

    def __init__(self) -> None:
        self.second = -1
        self.line = b""

    def __call__(self) -> bytes:
        now = time.time()
        second = int(now)
        if second != self.second:
            self.second = second
            self.line = f"Date: {formatdate(now, usegmt=True)}\r\n".encode()
        return self.line


date_line = _DateCache()


def render_head(
    status: int,
    headers: list[tuple[str, str]],
    version: HttpVersion,
    *,
    length: int | None,
    chunked: bool,
    close: bool,
) -> bytes:
    """The answer's head as bytes. `length` is a body in memory's Content-Length (such a reply
    carries none of its own: `headers.client_response_headers` drops the origin's); `chunked`
    adds Transfer-Encoding; `close` says the connection ends after this answer, otherwise an
    HTTP/1.0 client is told it stays open. `Date` is added unless the reply has one.
    ValueError for a field that would split the head (CR or LF in it)."""
    fields = "".join([f"{name}: {value}\r\n" for name, value in headers])
    if fields.count("\n") != len(headers) or fields.count("\r") != len(headers):
        raise ValueError("CR or LF in a response field")
    parts = [_status_line(status), fields]
    if length is not None:
        parts.append(f"Content-Length: {length}\r\n")
    if chunked:
        parts.append("Transfer-Encoding: chunked\r\n")
    if close:
        parts.append("Connection: close\r\n")
    elif version is HTTP10:
        parts.append("Connection: keep-alive\r\n")
    head = "".join(parts).encode("utf-8", "surrogateescape")
    if "\ndate: " in f"\n{fields}".lower():  # a field name follows a line break, and only then
        return head + b"\r\n"
    return head + date_line() + b"\r\n"


_STATUS_LINES = {s.value: f"HTTP/1.1 {s.value} {s.phrase}\r\n" for s in HTTPStatus}


def _status_line(status: int) -> str:
    return _STATUS_LINES.get(status) or f"HTTP/1.1 {status} Unknown\r\n"
