"""Cache-bust: 50 tenants x 40 hot keys warm in the gateway under steady client load, then a soft
bust of everything and, separately, a hard bust, in one run.

Why: the loader platform's worst day is a global cache-bust that makes every project miss at
once. Before each bust every project publishes a new version (the origin's prefill cache is
cold for it, as after a deploy), so each refresh costs the origin a real codegen. A soft bust
must keep clients at hit speed while the background budget (config/gateway.yaml:
background_concurrency 8) refreshes the keys; a hard bust shows the stampede it avoids, held
by the foreground budget. Figures for the steady state and for the 10 s after each bust:
the origin's peak concurrency, requests, codegen runs, DB pool, and the clients' latency,
errors and X-Cache mix.

    .venv/bin/python bench/bust.py [--tenants 50] [--keys 40] [--clients 32] [--after 10]
"""

from __future__ import annotations

import argparse
import asyncio
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import _harness as h
import aiohttp

WARM_CONCURRENCY = 64  # the demo config's max_concurrency


@dataclass
class Window:
    """What clients and the origin saw during one measured stretch of steady load."""

    name: str
    samples: list[h.Sample]
    origin: dict[str, Any]


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = h.arg_parser(__doc__)
    parser.add_argument("--tenants", type=int, default=50, help="projects, one tenant each")
    parser.add_argument("--keys", type=int, default=40, help="hot keys (platforms) per tenant")
    parser.add_argument("--clients", type=int, default=32, help="concurrent client loops")
    parser.add_argument("--steady", type=float, default=5.0, help="seconds of steady state")
    parser.add_argument("--after", type=float, default=10.0, help="seconds measured per bust")
    parser.add_argument("--codegen-seconds", type=float, default=0.5, help="origin codegen time")
    return parser.parse_args(argv)


def hot_paths(tenants: int, keys: int) -> list[str]:
    """Each project's published bundle for `keys` platforms: distinct bundles, one tenant."""
    return [
        h.bundle_path(f"p{t}", f"web{k}") for t in range(1, tenants + 1) for k in range(keys)
    ]


async def warm_up(
    session: aiohttp.ClientSession, base: str, paths: Sequence[str], concurrency: int
) -> int:
    """Fill every key, `concurrency` at a time (a burst would overflow the gateway's queue and
    get 503s by design); the number that failed."""
    gate = asyncio.Semaphore(concurrency)

    async def one(path: str) -> bool:
        async with gate:
            return (await h.fetch(session, base + path)).ok

    return sum(not ok for ok in await asyncio.gather(*(one(p) for p in paths)))


async def measure(
    session: aiohttp.ClientSession,
    origin: h.Service,
    gateway: h.Service,
    paths: Sequence[str],
    args: argparse.Namespace,
    name: str,
    seconds: float,
    bust: dict[str, Any] | None = None,
) -> Window:
    """Reset the origin's counters, optionally bust, and run the steady load for `seconds`."""
    await h.origin_stats(session, origin, reset=True)
    if bust is not None:
        url = f"http://{h.HOST}:{gateway.admin_port}/admin/bust"
        async with session.post(url, json=bust, headers=_admin_auth()) as resp:
            resp.raise_for_status()
    samples = await h.random_load(session, gateway.url, paths, args.clients, seconds)
    return Window(name, samples, await h.origin_stats(session, origin))


async def publish_all(session: aiohttp.ClientSession, origin: h.Service, tenants: int) -> None:
    """A new version of every project, so refreshing any of its keys costs a real codegen."""
    for t in range(1, tenants + 1):
        await h.get_json(session, f"{origin.url}/api/v1/projects/p{t}/publish", method="POST")


async def settle(session: aiohttp.ClientSession, gateway: h.Service, limit: float) -> float:
    """Wait (bounded) until the gateway has no fill in flight; seconds waited."""
    start = time.perf_counter()
    url = f"http://{h.HOST}:{gateway.admin_port}/admin/stats"
    while time.perf_counter() - start < limit:
        stats = await h.get_json(session, url, headers=_admin_auth())
        if stats.get("in_flight_fills") == 0:
            break
        await asyncio.sleep(0.5)
    return time.perf_counter() - start


def _admin_auth() -> dict[str, str]:
    return {"Authorization": f"Bearer {h.ADMIN_TOKEN}"}


def rows(windows: Sequence[Window]) -> list[list[str]]:
    def stat(key: str) -> list[str]:
        return [str(w.origin[key]) for w in windows]

    def latency(pct: float) -> list[str]:
        return [h.fmt_ms(h.percentile([s.latency_ms for s in w.samples], pct)) for w in windows]

    def errors(w: Window) -> str:
        bad = Counter(s.error or str(s.status) for s in w.samples if not s.ok)
        return str(sum(bad.values())) + (f" ({dict(bad)})" if bad else "")

    def x_cache(w: Window) -> str:
        counts = Counter(s.x_cache for s in w.samples if s.ok)
        return " ".join(f"{k}:{n}" for k, n in counts.most_common(3))

    return [
        ["origin in_flight_max", *stat("in_flight_max")],
        ["origin requests", *stat("requests_total")],
        ["codegen runs", *stat("codegen_runs")],
        [f"db_pool_in_use_max (pool: {h.POOL_SIZE})", *stat("db_pool_in_use_max")],
        ["db_pool_waits", *stat("db_pool_waits")],
        ["client requests", *[str(len(w.samples)) for w in windows]],
        ["client p50 ms", *latency(50)],
        ["client p99 ms", *latency(99)],
        ["client max ms", *latency(100)],
        ["errors", *[errors(w) for w in windows]],
        ["X-Cache (top 3)", *[x_cache(w) for w in windows]],
    ]


async def bench(args: argparse.Namespace, stack: h.Stack) -> None:
    paths = hot_paths(args.tenants, args.keys)
    with h.phase("starting origin and gateway"):
        origin = stack.origin(
            codegen_seconds=args.codegen_seconds, projects=args.tenants, s_maxage=3600
        )
        gateway = stack.gateway(origin)
    async with h.client_session() as session:
        with h.phase(f"warming {len(paths)} keys ({args.tenants} tenants x {args.keys})"):
            missing = await warm_up(session, gateway.url, paths, WARM_CONCURRENCY)
        with h.phase(f"steady state, {args.steady:g}s"):
            steady = await measure(session, origin, gateway, paths, args, "steady", args.steady)
        with h.phase("publish every project, soft bust of everything"):
            await publish_all(session, origin, args.tenants)
            soft = await measure(
                session, origin, gateway, paths, args, "soft bust", args.after,
                {"tenant": "*", "soft": True},
            )
        with h.phase("let the background refreshes finish (bounded)"):
            waited = await settle(session, gateway, 300.0)
        with h.phase("publish every project, hard bust of everything"):
            await publish_all(session, origin, args.tenants)
            hard = await measure(
                session, origin, gateway, paths, args, "hard bust", args.after, {"tenant": "*"}
            )
    print("\n" + h.machine_note())
    print(
        f"origin: --codegen-seconds {args.codegen_seconds:g}, --s-maxage 3600, DB pool"
        f" {h.POOL_SIZE}; gateway: config/gateway.yaml (max_concurrency 64,"
        f" background_concurrency 8, bust_grace 5m); {len(paths)} hot keys"
        f" ({missing} failed to warm); {args.clients} client loops on random hot keys"
    )
    print(f"after the soft bust, the background refreshes took {waited:.0f}s more to finish")
    windows = [steady, soft, hard]
    after = f"{args.after:g}s after"
    names = [f"steady {args.steady:g}s", f"{after} soft", f"{after} hard"]
    h.print_table("steady load, then a bust of every tenant", names, rows(windows))


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    h.run_bench(lambda stack: bench(args, stack))


if __name__ == "__main__":
    main()
