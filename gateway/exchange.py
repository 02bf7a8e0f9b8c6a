"""The values that cross the gateway's layers: a client request, a reply, a streamed body.

The listener turns aiohttp's request into an `Incoming`; the cache and the pass-through path
answer with a `Reply`; `proxy.write` is the only code that turns a reply back into aiohttp's
objects. A body that is not in memory is a `Body`: the origin's response, or a reader of a fill
that other clients share.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any, Protocol

from gateway.canonical import Target


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
    """What the listener writes: status, headers and a body in memory or streamed. The last
    three are for the access log: the tenant (set on the cache path), the origin's time to
    the response head when this request fetched it alone (pass, bypass), and the body bytes
    `proxy.write` sent of a streamed body."""

    status: int
    headers: list[tuple[str, str]]
    body: bytes | Body = b""
    tenant: str | None = None
    origin_time: float | None = None
    sent: int = 0
