"""Reference point for the benchmarks: about the least a Python cache on one event loop can do.

A dict from path to (status, headers, body) in front of the origin, plus single flight (one
task per missing path, every concurrent request awaits it), on aiohttp + uvloop like the
gateway, and none of the gateway's rules (freshness, keys, tenants, Vary, budgets, stats).
Its figures are the floor the gateway is measured against, next to nginx: hit throughput in
bench/hit.py, and in bench/stampede.py how fast N parked requests can be answered at once.
Not a cache to use: it never expires anything and stores every 200.

    python bench/_dictcache.py --port P --origin http://127.0.0.1:9000
"""

from __future__ import annotations

import argparse
import asyncio
from collections.abc import AsyncIterator

import aiohttp
from _harness import event_loop
from aiohttp import web

KEPT = ("Content-Type", "Cache-Control", "ETag", "Last-Modified")
Stored = tuple[int, dict[str, str], bytes]


def make_app(origin: str) -> web.Application:
    cache: dict[str, Stored] = {}
    fills: dict[str, asyncio.Task[Stored]] = {}
    client: list[aiohttp.ClientSession] = []

    async def session(app: web.Application) -> AsyncIterator[None]:
        client.append(aiohttp.ClientSession(auto_decompress=False))
        yield
        await client[0].close()

    async def fill(key: str) -> Stored:
        try:
            async with client[0].get(origin + key) as resp:
                headers = {k: resp.headers[k] for k in KEPT if k in resp.headers}
                stored = (resp.status, headers, await resp.read())
            if resp.status == 200:
                cache[key] = stored
            return stored
        finally:
            del fills[key]

    async def ready(request: web.Request) -> web.Response:
        return web.Response(status=204)

    async def handle(request: web.Request) -> web.Response:
        key = request.path_qs
        x_cache = "HIT"
        stored = cache.get(key)
        if stored is None:
            task = fills.get(key)
            if task is None:
                task = fills[key] = asyncio.ensure_future(fill(key))
                x_cache = "MISS"
            stored = await asyncio.shield(task)
        status, headers, body = stored
        return web.Response(status=status, body=body, headers={**headers, "X-Cache": x_cache})

    app = web.Application()
    app.cleanup_ctx.append(session)
    app.router.add_get("/__bench/ready", ready)
    app.router.add_get("/{tail:.*}", handle)
    return app


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--origin", required=True)
    args = parser.parse_args()
    loop = event_loop()
    web.run_app(make_app(args.origin), host="127.0.0.1", port=args.port, access_log=None, loop=loop)


if __name__ == "__main__":
    main()
