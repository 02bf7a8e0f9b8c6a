"""Pass-through proxying and writing replies: the aiohttp side of a request."""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import AsyncIterator

from aiohttp import StreamReader, web

from gateway import invalidation
from gateway.cache import Cache
from gateway.cache_status import cache_status
from gateway.canonical import Target, client_fields, parse_target
from gateway.exchange import Incoming, Reply, StreamCut
from gateway.gcwatch import untracked
from gateway.outcomes import Outcome
from gateway.router import Route
from gateway.upstream import BodyStalled, ClientStalled, OriginError

log = logging.getLogger("gateway.proxy")

NO_BODY_STATUSES = frozenset({204, 304})
TARGET_MEMO = 4096  # parsed request targets remembered
TARGET_MEMO_LENGTH = 1024  # longer targets are parsed each time, not remembered


def incoming(request: web.BaseRequest) -> Incoming:
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
    request: web.BaseRequest, req: Incoming, route: Route, cache: Cache, *, body_timeout: float
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
    request: web.BaseRequest, replay_limit: int, idle: float
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


async def _stall_guarded(content: StreamReader, idle: float) -> AsyncIterator[bytes]:
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


async def write(request: web.BaseRequest, reply: Reply) -> web.StreamResponse:
    """Send a reply; HEAD, 204 and 304 carry no body (Content-Length of the full body kept).
    The bytes of a streamed body handed to the transport are counted in `reply.sent`."""
    headers = reply.headers  # aiohttp copies them into its own CIMultiDict once
    bodyless = request.method == "HEAD" or reply.status in NO_BODY_STATUSES
    if isinstance(reply.body, bytes):
        # aiohttp keeps Content-Length = len(body) for HEAD and sends no body.
        body = None if reply.status in NO_BODY_STATUSES else reply.body
        return web.Response(status=reply.status, headers=headers, body=body)
    stream = reply.body
    try:
        resp = web.StreamResponse(status=reply.status, headers=headers)
        await resp.prepare(request)
        if not bodyless:
            async for chunk in stream:
                await resp.write(chunk)
                reply.sent += len(chunk)
        await resp.write_eof()
        return resp
    except (ConnectionError, OSError, OriginError, StreamCut) as exc:
        # The client went away, or the origin did (or was too slow) mid-body, or this client
        # fell too far behind a shared fill. Headers are gone already (with a Content-Length
        # the client would wait for): the only honest signal is to cut the connection.
        log.warning("stream aborted for %s: %s", request.path, exc)
        if request.transport is not None:
            request.transport.close()
        return resp
    finally:
        stream.close()
