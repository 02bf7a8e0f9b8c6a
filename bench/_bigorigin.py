"""Bench origin for the large-object stampede (bench/stampede.py): one big cacheable object per
URL, sent slowly, and a count of the requests for each path.

GET /big/<anything> answers `--mib` MiB with `Cache-Control: public, s-maxage=60` and a
Content-Length, written in `--chunk-kib` KiB chunks paced evenly over `--seconds` (the first
chunk leaves with the headers), so a cache in front of it has a body that is still arriving
while its clients wait. Every URL is its own object, so a new path is always a cold key.

GET /__stats answers JSON: requests per path, in flight now and at most, bytes sent;
POST /__stats/reset zeroes it. GET /healthz answers 204.

    python bench/_bigorigin.py --port P [--mib 8] [--seconds 2] [--chunk-kib 64]
"""

from __future__ import annotations

import argparse
import asyncio

from _harness import OriginCounts, event_loop
from aiohttp import web

HOST = "127.0.0.1"  # loopback only


def make_app(size: int, seconds: float, chunk: int) -> web.Application:
    pattern = bytes(range(256))
    body = memoryview((pattern * (size // len(pattern) + 1))[:size])
    offsets = range(0, size, chunk)
    interval = seconds / max(1, len(offsets))
    counts = OriginCounts(bytes_sent=0)

    async def big(request: web.Request) -> web.StreamResponse:
        with counts.request(request.path_qs):
            resp = web.StreamResponse(
                headers={
                    "Cache-Control": "public, s-maxage=60",
                    "Content-Type": "application/octet-stream",
                }
            )
            resp.content_length = size
            await resp.prepare(request)
            loop = asyncio.get_running_loop()
            start = loop.time()
            for i, offset in enumerate(offsets):
                await resp.write(body[offset : offset + chunk])
                counts.stats["bytes_sent"] += min(chunk, size - offset)
                delay = start + (i + 1) * interval - loop.time()  # on schedule, not drifting
                if delay > 0 and i + 1 < len(offsets):
                    await asyncio.sleep(delay)
            await resp.write_eof()
            return resp

    app = web.Application()
    app.router.add_route("GET", "/big/{name}", big)
    counts.add_routes(app)
    return app


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--mib", type=float, default=8.0, help="object size in MiB")
    parser.add_argument("--seconds", type=float, default=2.0, help="time to send one object")
    parser.add_argument("--chunk-kib", type=int, default=64, help="write size in KiB")
    args = parser.parse_args()
    loop = event_loop()
    app = make_app(int(args.mib * (1 << 20)), args.seconds, args.chunk_kib << 10)
    web.run_app(app, host=HOST, port=args.port, access_log=None, loop=loop, print=None)


if __name__ == "__main__":
    main()
