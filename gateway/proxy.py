"""Pass-through proxying, and writing replies (aiohttp's way, and the part both layers share)."""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import AsyncIterator
from typing import Protocol

from aiohttp import web

from gateway import invalidation
from gateway.cache import Cache
from gateway.cache_status import cache_status
from gateway.canonical import Target, client_fields, parse_target
from gateway.exchange import Body, BodyReader, ClientRequest, Incoming, Reply, StreamCut
from gateway.gcwatch import untracked
from gateway.outcomes import Outcome
from gateway.router import Route
from gateway.upstream import BodyStalled, ClientStalled, OriginError

log = logging.getLogger("gateway.proxy")

NO_BODY_STATUSES = frozenset({204, 304})
TARGET_MEMO = 4096  # parsed request targets remembered
TARGET_MEMO_LENGTH = 1024  # longer targets are parsed each time, not remembered


def incoming(request: ClientRequest) -> Incoming:
    """The request as the gateway understands it; BadRequest for a target it cannot key."""
    return Incoming(
        method=request.method,
        target=_target(request.raw_path, request.headers.get("Host"), request.scheme),
        headers=client_fields(request.headers),
        client_ip=request.remote,
    )


def _target(raw: str, host: str | None, scheme: str) -> Target:
    """`parse_target`, remembered for the short targets that make up nearly every hit."""
    if len(raw) > TARGET_MEMO_LENGTH:
        return parse_target(raw, host, scheme)
    return _remembered_target(raw, host, scheme)


def _parse_kept(raw: str, host: str | None, scheme: str) -> Target:
    """A target the memo keeps: untracked, so full collections do not walk the memo."""
    return untracked(parse_target(raw, host, scheme))


_remembered_target = functools.lru_cache(maxsize=TARGET_MEMO)(_parse_kept)


async def forward(
    request: ClientRequest, req: Incoming, route: Route, cache: Cache, *, body_timeout: float
) -> Reply:
    """Any method, bodies streamed both ways; unsafe successes invalidate the cached URL."""
    upstream = cache.upstreams[route.cfg.origin]
    headers = cache.pass_headers(req, route)
    fwd = "bypass" if not route.cached or req.method in ("GET", "HEAD") else "method"
    try:
        body = await _request_body(request, upstream.cfg.replay_body_limit, body_timeout)
        resp = await upstream.request(req.method, req.target.path_qs, headers, body)
    except OriginError as exc:
        return cache.replies.origin_error(exc, fwd)
    if route.cached and invalidation.invalidates(req.method, resp.status):
        await cache.invalidate(cache.locate(req, route), resp.headers)
    cache.recorder.count(Outcome.BYPASS, None)  # a pass is not worth locating its tenant
    status = cache_status(cache.settings.name, hit=False, fwd=fwd, fwd_status=resp.status)
    return cache.replies.forwarded(resp, status, "BYPASS", keep_tags=route.cfg.cache.keep_tags)


async def _request_body(
    request: ClientRequest, replay_limit: int, idle: float
) -> bytes | AsyncIterator[bytes] | None:
    """The client's body as the origin gets it: read whole when it is small enough to be sent
    again (see Upstream.request), streamed otherwise; ClientStalled if the client stalls."""
    if not request.body_exists:
        return None
    body = _stall_guarded(request.content, idle)
    length = request.content_length
    if length is None or length > replay_limit:
        return body
    try:
        return b"".join([chunk async for chunk in body])
    except BodyStalled:
        raise ClientStalled("client") from None


async def _stall_guarded(content: BodyReader, idle: float) -> AsyncIterator[bytes]:
    """The client's request body as it arrives, until it sends nothing for `idle` seconds: a
    client that stalls mid-upload must not hold an origin connection and budget slot forever."""
    while True:
        try:
            async with asyncio.timeout(idle):
                chunk = await content.readany()
        except TimeoutError:
            raise BodyStalled from None
        if not chunk:
            return
        yield chunk


class BodySink(Protocol):
    """Where a streamed reply goes: its head first, then its body chunk by chunk. Each layer
    has one (`write` below for aiohttp, `client_protocol.StreamSink`)."""

    async def start(self) -> None: ...

    async def write(self, chunk: bytes) -> None: ...

    async def finish(self) -> None: ...

    def abort(self) -> None:
        """Cut the connection: the head is out, so this is the only signal left."""


async def stream_body(request: ClientRequest, reply: Reply, body: Body, sink: BodySink) -> None:
    """Send a reply whose body arrives while it is sent; HEAD, 204 and 304 send none. The
    bytes handed to the sink are counted in `reply.sent`; `body.close()` is always called."""
    bodyless = request.method == "HEAD" or reply.status in NO_BODY_STATUSES
    try:
        await sink.start()
        if not bodyless:
            async for chunk in body:
                await sink.write(chunk)
                reply.sent += len(chunk)
        await sink.finish()
    except (ConnectionError, OSError, OriginError, StreamCut) as exc:
        # The client went away, or the origin did (or was too slow) mid-body, or this client
        # fell too far behind a shared fill. Headers are gone already (with a Content-Length
        # the client would wait for): the only honest signal is to cut the connection.
        log.warning("stream aborted for %s: %s", request.raw_path, exc)
        sink.abort()
    finally:
        body.close()


async def write(request: web.BaseRequest, reply: Reply) -> web.StreamResponse:
    """Send a reply through aiohttp; HEAD keeps the Content-Length of the full body."""
    if isinstance(reply.body, bytes):
        return response_of(reply)
    stream = web.StreamResponse(status=reply.status, headers=reply.headers)
    if reply.close:
        stream.force_close()
    await stream_body(request, reply, reply.body, _AiohttpSink(request, stream))
    return stream


def response_of(reply: Reply) -> web.Response:
    """A reply whose body is in memory as aiohttp's response. aiohttp keeps Content-Length =
    len(body) for HEAD and sends no body."""
    assert isinstance(reply.body, bytes)
    body = None if reply.status in NO_BODY_STATUSES else reply.body
    response = web.Response(status=reply.status, headers=reply.headers, body=body)
    if reply.close:
        response.force_close()
    return response


class _AiohttpSink:
    """`BodySink` on an aiohttp StreamResponse."""

    __slots__ = ("request", "response")

    def __init__(self, request: web.BaseRequest, response: web.StreamResponse) -> None:
        self.request = request
        self.response = response

    async def start(self) -> None:
        await self.response.prepare(self.request)

    async def write(self, chunk: bytes) -> None:
        await self.response.write(chunk)

    async def finish(self) -> None:
        await self.response.write_eof()

    def abort(self) -> None:
        if self.request.transport is not None:
            self.request.transport.close()
