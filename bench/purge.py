"""Prefix purges under hit load: what a stream of purges does to the latency of cache hits.

Why: a purge by prefix that walks the tenant's entries on the event loop stalls every request
behind it; with a few thousand entries and a few hundred purges a second, hits wait tens of
milliseconds. The gateway keeps each tenant's URLs sorted (a prefix is a range) and removes
entries in slices. One tenant holds --keys bundles; --clients loops request random ones back to
back, first alone for --seconds, then while --purgers loops send purges by prefix (each
matching one key, which the next hit refills) as fast as the admin API answers them.

    .venv/bin/python bench/purge.py [--keys 5000] [--clients 32] [--purgers 4] [--seconds 5]
"""

from __future__ import annotations

import argparse
import asyncio
import random
import time
from collections.abc import Sequence

import _harness as h
import aiohttp

PROJECT = "p1"
WARM_CONCURRENCY = 64


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = h.arg_parser(__doc__)
    parser.add_argument("--keys", type=int, default=5000, help="bundles held by one tenant")
    parser.add_argument("--clients", type=int, default=32, help="concurrent client loops")
    parser.add_argument("--purgers", type=int, default=4, help="concurrent purge loops")
    parser.add_argument("--seconds", type=float, default=5.0, help="seconds per window")
    return parser.parse_args(argv)


async def purges(
    session: aiohttp.ClientSession, admin: str, paths: Sequence[str], loops: int, seconds: float
) -> int:
    """Purges by prefix, each the full path of one random key; how many were answered 200."""
    deadline = time.perf_counter() + seconds
    rng = random.Random(11)
    done = 0
    auth = {"Authorization": f"Bearer {h.ADMIN_TOKEN}"}

    async def loop() -> None:
        nonlocal done
        while time.perf_counter() < deadline:
            body = {"tenant": PROJECT, "prefix": rng.choice(paths)}
            async with session.post(f"{admin}/admin/purge", json=body, headers=auth) as resp:
                await resp.read()
                done += resp.status == 200

    await asyncio.gather(*(loop() for _ in range(loops)))
    return done


async def bench(args: argparse.Namespace, stack: h.Stack) -> None:
    paths = [h.bundle_path(PROJECT, f"web{k}") for k in range(args.keys)]
    with h.phase("starting origin and gateway"):
        origin = stack.origin(codegen_seconds=0.0, projects=2, s_maxage=3600)
        gateway = stack.gateway(origin)
    admin = f"http://{h.HOST}:{gateway.admin_port}"
    async with h.client_session() as session:
        with h.phase(f"warming {len(paths)} keys of one tenant"):
            gate = asyncio.Semaphore(WARM_CONCURRENCY)

            async def warm(path: str) -> None:
                async with gate:
                    await h.fetch(session, gateway.url + path)

            await asyncio.gather(*(warm(p) for p in paths))
        with h.phase(f"hits alone, {args.seconds:g}s"):
            alone = await h.random_load(session, gateway.url, paths, args.clients, args.seconds)
        with h.phase(f"hits with {args.purgers} purge loops, {args.seconds:g}s"):
            during, purged = await asyncio.gather(
                h.random_load(session, gateway.url, paths, args.clients, args.seconds),
                purges(session, admin, paths, args.purgers, args.seconds),
            )
    print("\n" + h.machine_note())
    print(f"{args.keys} bundles in tenant {PROJECT}; {args.clients} client loops on random keys")

    def row(name: str, pick: object) -> list[str]:
        return [name, *[str(pick(s)) for s in (alone, during)]]  # type: ignore[operator]

    def latency(pct: float) -> object:
        return lambda samples: h.fmt_ms(h.percentile([s.latency_ms for s in samples], pct))

    h.print_table(
        "cache hits, alone and during prefix purges",
        ["alone", "with purges"],
        [
            row("client requests", len),
            row("client p50 ms", latency(50)),
            row("client p99 ms", latency(99)),
            row("client max ms", latency(100)),
            row("errors", lambda samples: sum(not s.ok for s in samples)),
            ["purges answered", "-", str(purged)],
            ["purges per second", "-", f"{purged / args.seconds:.0f}"],
        ],
    )


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    h.run_bench(lambda stack: bench(args, stack))


if __name__ == "__main__":
    main()
