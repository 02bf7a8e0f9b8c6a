"""A scriptable origin for protocol tests: each response is described by the request's query.

`GET /any/path?status=200&h=Cache-Control:max-age%3D60&h=Vary:Accept&body=text&delay=0.1`
answers with that status, those headers and that body (`body=size:N` is N bytes, `body=b64:...`
binary bytes in URL-safe base64), and counts requests per path+query.
`/__count` reports the counts. Headers of the request are echoed as JSON when `body=echo`, its
body as it came when `body=request`; with `read=1` the request body is read before answering.
With `hold=NAME` the request waits while the test keeps the gate NAME closed
(`echo_state(server).gate(NAME).clear()`), so a test can have an origin request in flight for
as long as it needs, without guessing a delay. `echo_state` also counts the requests in flight
and their peak.

`create_echo_app(clock)` stamps `Date` from the test's clock (a SettableClock also given to the
gateway) rather than the real time.
"""

from __future__ import annotations

import asyncio
import base64
import json
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

from aiohttp import web
from aiohttp.test_utils import TestServer

from tests.clock import http_date

COUNTS: web.AppKey[Counter[str]] = web.AppKey("counts")
CLOCK: web.AppKey[Callable[[], float] | None] = web.AppKey("clock")


@dataclass
class EchoState:
    in_flight: int = 0  # requests being answered now (control paths excluded)
    in_flight_max: int = 0  # their peak since start or `reset_peak`
    gates: dict[str, asyncio.Event] = field(default_factory=dict)

    def gate(self, name: str) -> asyncio.Event:
        """`hold=name` requests wait while this is clear; it is open until a test clears it."""
        if name not in self.gates:
            self.gates[name] = asyncio.Event()
            self.gates[name].set()
        return self.gates[name]

    def reset_peak(self) -> None:
        self.in_flight_max = self.in_flight


STATE: web.AppKey[EchoState] = web.AppKey("echo_state")


def echo_state(server: TestServer) -> EchoState:
    """The in-process state of an echo origin started with `aiohttp_server`."""
    assert server.app is not None
    return server.app[STATE]


async def respond(request: web.Request) -> web.StreamResponse:
    counts = request.app[COUNTS]
    if request.path == "/__count":
        return web.json_response(dict(counts))
    counts[request.path_qs] += 1
    counts["__total__"] += 1
    n = counts[request.path_qs]  # this request's number, before any delay lets others count
    state = request.app[STATE]
    state.in_flight += 1
    state.in_flight_max = max(state.in_flight_max, state.in_flight)
    try:
        return await _answer(request, n)
    finally:
        state.in_flight -= 1


async def _answer(request: web.Request, n: int) -> web.StreamResponse:
    q = request.query
    if "read" in q:  # the whole request body before answering, as most origins do
        await request.read()
    if "hold" in q:
        await request.app[STATE].gate(q["hold"]).wait()
    if "delay" in q:
        await asyncio.sleep(float(q["delay"]))
    status = int(q.get("status", "200"))
    headers = [tuple(h.split(":", 1)) for h in q.getall("h", [])]
    clock = request.app[CLOCK]
    if clock is not None and not any(name.lower() == "date" for name, _ in headers):
        headers.append(("Date", http_date(clock)))  # else aiohttp stamps the real time
    if "stream" in q:
        return await _stream(request, status, headers, int(q["stream"]))
    body_spec = q.get("body", f"body of {request.path} #{n}")
    if body_spec == "request":
        body = await request.read()
    elif body_spec == "echo":
        echoed = {"__raw_path": request.raw_path, **dict(request.headers.items())}
        body = json.dumps(echoed).encode()
    elif body_spec.startswith("size:"):
        body = b"x" * int(body_spec[5:])
    elif body_spec.startswith("b64:"):  # binary, such as gzip bytes: URL-safe base64
        body = base64.urlsafe_b64decode(body_spec[4:])
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


def create_echo_app(clock: Callable[[], float] | None = None) -> web.Application:
    """The echo origin; with `clock`, its responses' `Date` is that clock's time."""
    app = web.Application()
    app[COUNTS] = Counter()
    app[STATE] = EchoState()
    app[CLOCK] = clock
    app.router.add_route("*", "/{tail:.*}", respond)
    return app
