"""A scriptable origin for protocol tests: each response is described by the request's query.

`GET /any/path?status=200&h=Cache-Control:max-age%3D60&h=Vary:Accept&body=text&delay=0.1`
answers with that status, those headers and that body, and counts requests per path+query.
`/__count` reports the counts. Headers of the request are echoed as JSON when `body=echo`; with
`read=1` the request body is read before answering.
"""

from __future__ import annotations

import asyncio
import json
from collections import Counter

from aiohttp import web

COUNTS: web.AppKey[Counter[str]] = web.AppKey("counts")


async def respond(request: web.Request) -> web.StreamResponse:
    counts = request.app[COUNTS]
    if request.path == "/__count":
        return web.json_response(dict(counts))
    counts[request.path_qs] += 1
    counts["__total__"] += 1
    n = counts[request.path_qs]  # this request's number, before any delay lets others count
    q = request.query
    if "read" in q:  # the whole request body before answering, as most origins do
        await request.read()
    if "delay" in q:
        await asyncio.sleep(float(q["delay"]))
    status = int(q.get("status", "200"))
    headers = [tuple(h.split(":", 1)) for h in q.getall("h", [])]
    if "stream" in q:
        return await _stream(request, status, headers, int(q["stream"]))
    body_spec = q.get("body", f"body of {request.path} #{n}")
    if body_spec == "echo":
        echoed = {"__raw_path": request.raw_path, **dict(request.headers.items())}
        body = json.dumps(echoed).encode()
    elif body_spec.startswith("size:"):
        body = b"x" * int(body_spec[5:])
    else:
        body = body_spec.encode()
    if "inm" in q and request.headers.get("If-None-Match") == q["inm"]:
        status, body = 304, b""
    resp = web.Response(status=status, body=body if status not in (204, 304) else None)
    for name, value in headers:
        resp.headers.add(name, value.replace("{n}", str(n)))
    return resp


async def _stream(
    request: web.Request, status: int, headers: list[tuple[str, ...]], size: int
) -> web.StreamResponse:
    """`size` bytes in 64 KiB chunks, chunked (no Content-Length): no whole body held."""
    resp = web.StreamResponse(status=status)
    for name, value in headers:
        resp.headers.add(name, value)
    await resp.prepare(request)
    chunk = b"y" * 65536
    sent = 0
    while sent < size:
        part = chunk[: min(len(chunk), size - sent)]
        await resp.write(part)
        sent += len(part)
    await resp.write_eof()
    return resp


def create_echo_app() -> web.Application:
    app = web.Application()
    app[COUNTS] = Counter()
    app.router.add_route("*", "/{tail:.*}", respond)
    return app
