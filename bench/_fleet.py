"""Bench origin for the fleet benchmark (bench/fleet.py): a slow, cacheable object per URL, and
a count of the requests for each path.

GET /slow/<anything> answers after `--delay` seconds; GET /fast/<anything> at once (for keys the
bench only needs to exist: purge targets, L2 pre-fills, cold requests of the Redis-kill load).
Both send `--kib` KiB with `Cache-Control: max-age=60` and a Content-Length; every URL is its
own object, so a new path is always a cold key.

GET /__stats answers JSON: requests per path, in flight now and at most;
POST /__stats/reset zeroes it. GET /healthz answers 204.

    python bench/_fleet.py --port P [--delay 0.5] [--kib 20]
"""

from __future__ import annotations

import argparse
import asyncio

from _harness import OriginCounts, event_loop
from aiohttp import web

HOST = "127.0.0.1"  # loopback only


def make_app(delay: float, size: int) -> web.Application:
    body = (b"fleet-bench-" * (size // 12 + 1))[:size]
    counts = OriginCounts()
    headers = {"Cache-Control": "max-age=60", "Content-Type": "application/octet-stream"}

    async def answer(request: web.Request, wait: float) -> web.Response:
        with counts.request(request.path_qs):
            if wait > 0:
                await asyncio.sleep(wait)
            return web.Response(body=body, headers=headers)

    async def slow(request: web.Request) -> web.Response:
        return await answer(request, delay)

    async def fast(request: web.Request) -> web.Response:
        return await answer(request, 0.0)

    app = web.Application()
    app.router.add_route("GET", "/slow/{name:.+}", slow)
    app.router.add_route("GET", "/fast/{name:.+}", fast)
    counts.add_routes(app)
    return app


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--delay", type=float, default=0.5, help="seconds before /slow/ answers")
    parser.add_argument("--kib", type=int, default=20, help="body size in KiB")
    args = parser.parse_args()
    loop = event_loop()
    app = make_app(args.delay, args.kib << 10)
    web.run_app(app, host=HOST, port=args.port, access_log=None, loop=loop, print=None)


if __name__ == "__main__":
    main()
