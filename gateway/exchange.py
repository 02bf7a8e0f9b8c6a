"""The values that cross the gateway's layers: a client request, a reply, a streamed body.

Either client-facing layer (aiohttp's, or the native one of gateway/client_protocol.py) hands
the gateway a `ClientRequest`, which the gateway turns into an `Incoming`; the cache and the
pass-through path answer with a `Reply`, which the layer writes (`proxy.write` for aiohttp,
`ClientProtocol.send` for the native layer, both streaming through `proxy.stream_body`). A body
that is not in memory is a `Body`: the origin's response, or a reader of a fill that other
clients share.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any, Protocol

from multidict import CIMultiDictProxy

from gateway.canonical import Target


class BodyReader(Protocol):
    """A request body as it arrives: `readany()` returns what is there (waiting for at least a
    byte), b"" at its end. Reading is what lets the client send more (flow control)."""

    async def readany(self) -> bytes: ...


class ClientRequest(Protocol):
    """What the gateway reads of a client request, on either layer: aiohttp's `BaseRequest`
    has these, and so has `http1.NativeRequest`. `raw_path` is the request target as sent;
    `body_exists` is false for no body and for `Content-Length: 0`."""

    @property
    def method(self) -> str: ...
    @property
    def raw_path(self) -> str: ...
    @property
    def headers(self) -> CIMultiDictProxy[str]: ...
    @property
    def version(self) -> tuple[int, int]: ...
    @property
    def remote(self) -> str | None: ...
    @property
    def scheme(self) -> str: ...
    @property
    def body_exists(self) -> bool: ...
    @property
    def content_length(self) -> int | None: ...
    @property
    def content(self) -> BodyReader: ...


@dataclass(frozen=True, slots=True)
class Incoming:
    """The parts of a client request the cache needs, detached from aiohttp's request object
    so a fill that outlives the handler holds no reference to it. `headers` is the proxy's view
    of the client's fields (no hop-by-hop or Connection-listed ones)."""

    method: str
    target: Target
    headers: Any  # canonical.client_fields: a multidict without hop-by-hop or Connection-listed
    client_ip: str | None


class Body(Protocol):
    """A body that arrives while it is sent. Iterated at most once; `close()` is always called,
    iterated or not (a HEAD, a client gone), and frees what the body holds."""

    def __aiter__(self) -> AsyncIterator[bytes]: ...

    def close(self) -> None: ...


class StreamCut(Exception):
    """A streamed body cannot go on (say, its reader fell too far behind a shared fill): the
    headers are sent, so the client's connection is cut."""


@dataclass(slots=True)
class Reply:
    """What the listener writes: status, headers and a body in memory or streamed. `close`
    ends the connection after it (what follows a refused request cannot be trusted). The last
    three are for the access log: the tenant (set on the cache path), the origin's time to
    the response head when this request fetched it alone (pass, bypass), and the body bytes
    `proxy.stream_body` sent of a streamed body."""

    status: int
    headers: list[tuple[str, str]]
    body: bytes | Body = b""
    close: bool = False
    tenant: str | None = None
    origin_time: float | None = None
    sent: int = 0
