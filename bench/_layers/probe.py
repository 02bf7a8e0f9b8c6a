"""What each HTTP/1.1 request parser does with the requests that framing and smuggling tests
send: experiments, not assumptions (bench/layers.py --probe-only prints the table).

Four parsers, all fed the same bytes in one `feed_data` call:

  aiohttp C    `aiohttp._http_parser.HttpRequestParser` built as aiohttp's server builds it
               (8190-byte line and field limits, 128 fields): what candidates (a), (b), (b+)
               and (d) of bench/layers.py parse with, and what the gateway parses with now
  aiohttp Py   aiohttp's pure-Python parser, what aiohttp falls back to without its C
               extension (AIOHTTP_NO_EXTENSIONS=1 or no wheel for the platform)
  httptools    `httptools.HttpRequestParser`, llhttp with its defaults (strict): candidate (c)
  httptools+L  the same with every `set_dangerous_leniencies` flag on, to show what each
               strictness is worth (aiohttp's *response* parser turns three of them on)

Each cell says what the parser delivered: the requests it completed (method, target, body
bytes, trailer fields, `X` header value where the case is about it), then `ERR` and the
parser's reason if it raised, or `+incomplete` if it is still waiting for bytes. A layer on
top must add what a cell shows missing; docs/architecture.md draws the conclusions.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

LONG = b"x" * 10_000
Case = tuple[str, str, bytes]  # name, what a strict edge should do, the bytes

CASES: list[Case] = [
    ("plain GET", "serve", b"GET /a HTTP/1.1\r\nHost: a\r\n\r\n"),
    ("CL + TE: chunked", "400",
     b"POST /a HTTP/1.1\r\nHost: a\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n"
     b"0\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: a\r\n\r\n"),
    ("TE: chunked + CL", "400",
     b"POST /a HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nContent-Length: 4\r\n\r\n"
     b"0\r\n\r\n"),
    ("two CL, different", "400",
     b"POST /a HTTP/1.1\r\nHost: a\r\nContent-Length: 4\r\nContent-Length: 5\r\n\r\nabcde"),
    ("two CL, same", "400 (or one)",
     b"POST /a HTTP/1.1\r\nHost: a\r\nContent-Length: 4\r\nContent-Length: 4\r\n\r\nabcd"),
    ("CL: 4, 4", "400 (or one)",
     b"POST /a HTTP/1.1\r\nHost: a\r\nContent-Length: 4, 4\r\n\r\nabcd"),
    ("CL: +4", "400", b"POST /a HTTP/1.1\r\nHost: a\r\nContent-Length: +4\r\n\r\nabcd"),
    ("TE: chunked, gzip", "400",
     b"POST /a HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked, gzip\r\n\r\n0\r\n\r\n"),
    ("TE: gzip, chunked", "501",
     b"POST /a HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n"),
    ("TE: xchunked", "400/501",
     b"POST /a HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: xchunked\r\n\r\n0\r\n\r\n"),
    ("TE : chunked (space)", "400",
     b"POST /a HTTP/1.1\r\nHost: a\r\nTransfer-Encoding : chunked\r\n\r\n0\r\n\r\n"),
    ("TE: obs-folded chunked", "400",
     b"POST /a HTTP/1.1\r\nHost: a\r\nTransfer-Encoding:\r\n chunked\r\n\r\n0\r\n\r\n"),
    ("obs-fold in X", "400", b"GET /a HTTP/1.1\r\nHost: a\r\nX: a\r\n b\r\n\r\n"),
    ("bare LF everywhere", "400", b"GET /a HTTP/1.1\nHost: a\n\n"),
    ("bare LF ends a field", "400", b"GET /a HTTP/1.1\r\nHost: a\nX: b\r\n\r\n"),
    ("bare CR in X", "400", b"GET /a HTTP/1.1\r\nHost: a\r\nX: a\rb\r\n\r\n"),
    ("NUL in X", "400", b"GET /a HTTP/1.1\r\nHost: a\r\nX: a\x00b\r\n\r\n"),
    ("X of 10,000 bytes", "431", b"GET /a HTTP/1.1\r\nHost: a\r\nX: " + LONG + b"\r\n\r\n"),
    ("target of 10,000 bytes", "414", b"GET /" + LONG + b" HTTP/1.1\r\nHost: a\r\n\r\n"),
    ("200 fields", "431",
     b"GET /a HTTP/1.1\r\nHost: a\r\n" + b"".join(b"X%d: v\r\n" % i for i in range(200))
     + b"\r\n"),
    ("100 fields of 1,000 B", "431",
     b"GET /a HTTP/1.1\r\nHost: a\r\n"
     + b"".join(b"X%d: %s\r\n" % (i, b"v" * 1000) for i in range(100)) + b"\r\n"),
    ("HTTP/1.1 without Host", "400", b"GET /a HTTP/1.1\r\n\r\n"),
    ("two Host", "400", b"GET /a HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n"),
    ("HTTP/1.0 without Host", "serve, close", b"GET /a HTTP/1.0\r\n\r\n"),
    ("3 pipelined GETs", "3 answers",
     b"GET /1 HTTP/1.1\r\nHost: a\r\n\r\nGET /2 HTTP/1.1\r\nHost: a\r\n\r\n"
     b"HEAD /3 HTTP/1.1\r\nHost: a\r\n\r\n"),
    ("GET after Connection: close", "1 answer",
     b"GET /1 HTTP/1.1\r\nHost: a\r\n\r\nGET /2 HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n"
     b"GET /3 HTTP/1.1\r\nHost: a\r\n\r\n"),
    ("Expect: 100-continue", "100, then body",
     b"POST /a HTTP/1.1\r\nHost: a\r\nExpect: 100-continue\r\nContent-Length: 5\r\n\r\n"),
    ("chunked + trailer X", "serve",
     b"POST /a HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n"
     b"5\r\nhello\r\n0\r\nX: t\r\n\r\n"),
    ("chunk extension", "serve",
     b"POST /a HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n"
     b"5;a=b\r\nhello\r\n0\r\n\r\n"),
    ("chunk lines end in LF", "400",
     b"POST /a HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n5\nhello\n0\n\n"),
    ("chunk size 'ffff...f1'", "400",
     b"POST /a HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n"
     b"fffffffffffffffff1\r\nhello\r\n0\r\n\r\n"),
    ("chunk size '5 '", "400",
     b"POST /a HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n"
     b"5 \r\nhello\r\n0\r\n\r\n"),
    ("GET with CL: 5 body", "400 (gateway)",
     b"GET /a HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\nhello"),
    ("method G@T", "400", b"G@T /a HTTP/1.1\r\nHost: a\r\n\r\n"),
    ("method get", "400/501", b"get /a HTTP/1.1\r\nHost: a\r\n\r\n"),
    ("HTTP/1.2", "serve/505", b"GET /a HTTP/1.2\r\nHost: a\r\n\r\n"),
    ("HTTP/2.0 line", "505", b"GET /a HTTP/2.0\r\nHost: a\r\n\r\n"),
    ("absolute-form", "serve", b"GET http://a/b HTTP/1.1\r\nHost: a\r\n\r\n"),
    ("CTL in target", "400", b"GET /a\x01b HTTP/1.1\r\nHost: a\r\n\r\n"),
    ("space in target", "400", b"GET /a b HTTP/1.1\r\nHost: a\r\n\r\n"),
    ("space in field name", "400", b"GET /a HTTP/1.1\r\nHost: a\r\nX Y: 1\r\n\r\n"),
    ("first field indented", "400", b"GET /a HTTP/1.1\r\n Host: a\r\n\r\n"),
    ("CRLF before the line", "serve", b"\r\nGET /a HTTP/1.1\r\nHost: a\r\n\r\n"),
    ("Upgrade: websocket", "refuse",
     b"GET /a HTTP/1.1\r\nHost: a\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n"),
    ("CONNECT", "refuse", b"CONNECT a:443 HTTP/1.1\r\nHost: a:443\r\n\r\n"),
    ("TLS ClientHello", "400", b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + b"\x00" * 32),
]


@dataclass
class Message:
    """One request as a parser delivered it."""

    method: str
    target: str
    body: int = 0
    trailers: int = 0
    x: str | None = None  # the value of a field named X, when there is one
    version: str = "1.1"

    def show(self) -> str:
        text = f"{self.method} {self.target[:12]}"
        if self.version != "1.1":
            text += f" (HTTP/{self.version})"
        if self.body:
            text += f" body={self.body}"
        if self.trailers:
            text += f" trailers={self.trailers}"
        if self.x is not None:
            text += f" X={self.x[:10]!r}"
        return text


@dataclass
class Outcome:
    """What one parser made of one case's bytes."""

    messages: list[Message] = field(default_factory=list)
    error: str | None = None
    incomplete: bool = False

    def show(self) -> str:
        parts = [m.show() for m in self.messages]
        if self.error is not None:
            parts.append(f"ERR {self.error}")
        elif self.incomplete:
            parts.append("+incomplete")
        return "; ".join(parts) or "(nothing)"


class _Recorder:
    """httptools' callback object: builds Messages as llhttp reports the pieces."""

    def __init__(self) -> None:
        self.done: list[Message] = []
        self.url = b""
        self.fields: list[tuple[bytes, bytes]] = []
        self.headers_done = False
        self.trailers = 0
        self.body = 0
        self.parser: Any = None
        self.started = False

    def on_message_begin(self) -> None:
        self.url, self.fields, self.headers_done = b"", [], False
        self.trailers = self.body = 0
        self.started = True

    def on_url(self, url: bytes) -> None:
        self.url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        if self.headers_done:
            self.trailers += 1  # llhttp reports trailer fields through the same callback
        else:
            self.fields.append((name, value))

    def on_headers_complete(self) -> None:
        self.headers_done = True

    def on_body(self, body: bytes) -> None:
        self.body += len(body)

    def message(self) -> Message:
        x = next((v.decode("latin-1") for k, v in self.fields if k.lower() == b"x"), None)
        method = self.parser.get_method().decode("latin-1")
        version = self.parser.get_http_version()
        return Message(method, self.url.decode("latin-1"), self.body, self.trailers, x, version)

    def on_message_complete(self) -> None:
        self.done.append(self.message())
        self.started = False


def httptools_outcome(data: bytes, *, lenient: bool) -> Outcome:
    import httptools

    recorder = _Recorder()
    parser = httptools.HttpRequestParser(recorder)
    recorder.parser = parser
    if lenient:
        parser.set_dangerous_leniencies(
            lenient_headers=True,
            lenient_chunked_length=True,
            lenient_keep_alive=True,
            lenient_transfer_encoding=True,
            lenient_version=True,
            lenient_data_after_close=True,
            lenient_optional_lf_after_cr=True,
            lenient_optional_cr_before_lf=True,
            lenient_optional_crlf_after_chunk=True,
            lenient_spaces_after_chunk_size=True,
        )
    outcome = Outcome(recorder.done)
    try:
        parser.feed_data(data)
    except httptools.HttpParserUpgrade:
        outcome.error = "HttpParserUpgrade (app decides)"
    except httptools.HttpParserError as exc:
        outcome.error = _short(str(exc))
    if recorder.started and recorder.headers_done and outcome.error is None:
        # A head is in, its body is not (100-continue): show it as aiohttp does, since both
        # let the layer act on a head before the body arrives.
        outcome.messages.append(recorder.message())
    outcome.incomplete = recorder.started
    return outcome


def aiohttp_outcome(data: bytes, *, c_parser: bool) -> Outcome:
    from aiohttp.base_protocol import BaseProtocol
    from aiohttp.http_exceptions import HttpProcessingError
    from aiohttp.http_parser import HttpRequestParserC, HttpRequestParserPy

    loop = asyncio.new_event_loop()
    try:
        cls: Any = HttpRequestParserC if c_parser else HttpRequestParserPy
        parser = cls(
            BaseProtocol(loop),
            loop,
            2**16,
            max_line_size=8190,
            max_field_size=8190,
            max_headers=128,
            auto_decompress=False,
        )
        outcome = Outcome()
        try:
            messages, upgraded, _tail = parser.feed_data(data)
        except HttpProcessingError as exc:
            outcome.error = _short(f"{type(exc).__name__}: {exc.message}")
            return outcome
        for msg, payload in messages:
            body = sum(len(chunk) for chunk in getattr(payload, "_buffer", ()))
            x = msg.headers.get("X")
            version = f"{msg.version.major}.{msg.version.minor}"
            outcome.messages.append(Message(msg.method, msg.path, body, 0, x, version))
            if not payload.is_eof():
                outcome.incomplete = True
        if upgraded:
            outcome.error = "upgraded (app decides)"
        return outcome
    finally:
        loop.close()


def _short(reason: str) -> str:
    """The parser's reason on one line, without the echoed request bytes."""
    first = reason.strip().replace("\n", " ").split("  ")[0]
    return first[:44]


PARSERS: dict[str, Callable[[bytes], Outcome]] = {
    "aiohttp C (a, b, d)": lambda data: aiohttp_outcome(data, c_parser=True),
    "aiohttp Py": lambda data: aiohttp_outcome(data, c_parser=False),
    "httptools (c)": lambda data: httptools_outcome(data, lenient=False),
    "httptools+L": lambda data: httptools_outcome(data, lenient=True),
}


def probe() -> tuple[list[str], list[list[str]]]:
    """Columns and one row per case; a parser that is not installed shows `not installed`."""
    columns = ["strict edge", *PARSERS]
    rows = []
    for name, expected, data in CASES:
        row = [name, expected]
        for run in PARSERS.values():
            try:
                row.append(run(data).show())
            except ImportError:
                row.append("not installed")
        rows.append(row)
    return columns, rows


def versions() -> str:
    """The parser versions the table was made with."""
    import aiohttp

    text = f"aiohttp {aiohttp.__version__}"
    with contextlib.suppress(ImportError):
        import httptools

        text += f", httptools {httptools.__version__}"
    return text
