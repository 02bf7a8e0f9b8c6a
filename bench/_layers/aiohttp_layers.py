"""Candidates (a), (b) and (b+) of bench/layers.py: the hit on aiohttp's own server layers.

All three run the same handler (one dict lookup by `raw_path`, the target as received, and a
`web.Response` built from the entry's header pairs, as `gateway.proxy.write` does), so the
difference between them is only what aiohttp does around it:

  (a)  `web.Application` with one catch-all route: the router and the (empty) middleware chain
       on top of the low-level server, which is where the gateway started;
  (b)  aiohttp's low-level `web.Server`, no router: what the gateway uses now;
  (b+) `gateway.listener.PublicServer` with the gateway's own keyword arguments: (b) plus the
       head timer, the connection limit and the data_received bookkeeping of the real listener.

Also the origin nginx fills from: the same bytes without the per-hit fields.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Awaitable, Callable

import entries as e
from aiohttp import web

Handler = Callable[[web.BaseRequest], Awaitable[web.StreamResponse]]


def hit_handler() -> Handler:
    """The one handler every aiohttp candidate runs."""
    table = e.make_entries()
    clock = e.Clock()

    async def hit(request: web.BaseRequest) -> web.StreamResponse:
        entry = table.get(request.raw_path)
        if entry is None:
            return web.Response(status=404, text="not stored\n")
        # aiohttp sends no body for HEAD and keeps Content-Length; it copies the pairs once.
        return web.Response(body=entry.body, headers=e.hit_fields(entry, clock))

    return hit


def origin_handler() -> Handler:
    """The origin nginx's proxy_cache fills from: same heads, no Age/Cache-Status/X-Cache."""
    table = e.make_entries()

    async def origin(request: web.BaseRequest) -> web.StreamResponse:
        entry = table.get(request.raw_path)
        if entry is None:
            return web.Response(status=404, text="not stored\n")
        return web.Response(body=entry.body, headers=entry.fields)

    return origin


async def serve_web_app(sock: socket.socket) -> None:
    """(a): one route on a `web.Application`, served by AppRunner as `web.run_app` would."""
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", hit_handler())
    runner = web.AppRunner(app, access_log=None, handle_signals=False)
    await runner.setup()
    await web.SockSite(runner, sock).start()
    await asyncio.Event().wait()


async def serve_low_level(sock: socket.socket, *, origin: bool = False) -> None:
    """(b): `web.Server` with the handler, on the loop's create_server."""
    handler = origin_handler() if origin else hit_handler()
    server = web.Server(handler, access_log=None)
    await serve_forever(server, sock)


async def serve_gateway_listener(sock: socket.socket) -> None:
    """(b+): the gateway's PublicServer, built with the arguments `public_server` passes."""
    from gateway.listener import ClientLimits, PublicServer
    from gateway.server import LINGERING

    server = PublicServer(
        hit_handler(),
        ClientLimits(),
        handler_cancellation=True,
        access_log=None,
        lingering_time=LINGERING,
        auto_decompress=False,
    )
    await serve_forever(server, sock)


async def serve_forever(factory: object, sock: socket.socket) -> None:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(factory, sock=sock)  # type: ignore[arg-type]
    async with server:
        await server.serve_forever()
