"""Stampede: N clients ask for the same cold published bundle at once, directly against the
origin, through the gateway and (when installed) through nginx with proxy_cache_lock, in one run;
then the same with many distinct cold keys at once.

Why: a cache bust makes every client miss together. The origin does not de-duplicate its 2 s
codegen and resolves versions through a 15-connection DB pool, so N direct requests mean N
codegen runs and an exhausted pool. The gateway must turn them into one origin request, and
answer the collapsed waiters as soon as the leader's fill lands (nginx's waiters poll every
500 ms). Each target gets projects no other target asked for, and the origin's counters are
reset before each phase, so every phase starts cold. A fourth column, a minimal aiohttp dict
cache with single flight (bench/_dictcache.py), shows how fast Python on one event loop can
answer N parked requests at all: the floor under the gateway's waiter figures.

    .venv/bin/python bench/stampede.py [--clients 500] [--distinct 200]
"""

from __future__ import annotations

import argparse
import asyncio
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import _harness as h
import aiohttp


@dataclass
class Target:
    """Where a phase sends its requests; the gateway's RSS and counters are read as well."""

    name: str
    service: h.Service
    is_gateway: bool = False


@dataclass
class Phase:
    """What one burst against one target did, from the client's and the origin's side."""

    samples: list[h.Sample]
    origin: dict[str, Any]
    listen_overflows: int
    warm: list[h.Sample] = field(default_factory=list)  # the same burst again, answered warm
    rss_before: float | None = None
    rss_after: float | None = None
    gateway: dict[str, int] = field(default_factory=dict)  # counter deltas, gateway only


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = h.arg_parser(__doc__)
    parser.add_argument("--clients", type=int, default=500, help="concurrent requests, one key")
    parser.add_argument("--distinct", type=int, default=200, help="distinct cold keys at once")
    parser.add_argument("--codegen-seconds", type=float, default=2.0, help="origin codegen time")
    parser.add_argument("--no-nginx", action="store_true", help="skip the nginx column")
    return parser.parse_args(argv)


async def run_phase(
    session: aiohttp.ClientSession,
    origin: h.Service,
    target: Target,
    paths: Sequence[str],
    *,
    repeat_warm: bool = False,
) -> Phase:
    """Reset the origin's counters, fire every path at once, read the counters back; with
    `repeat_warm`, fire the same burst again on the open connections: how long answering N
    requests from cache takes, the floor for the collapsed waiters' spread."""
    await h.origin_stats(session, origin, reset=True)
    svc = target.service
    before = await h.gateway_counters(session, svc) if target.is_gateway else {}
    rss_before = svc.rss_mib() if target.is_gateway else None
    overflows = h.listen_overflows()
    samples = await h.burst(session, [svc.url + p for p in paths])
    result = Phase(samples, await h.origin_stats(session, origin), h.listen_overflows() - overflows)
    if target.is_gateway:
        result.rss_before, result.rss_after = rss_before, svc.rss_mib()
        after = await h.gateway_counters(session, svc)
        result.gateway = {k: v - before.get(k, 0) for k, v in after.items() if v != before.get(k)}
    if repeat_warm:
        result.warm = await h.burst(session, [svc.url + p for p in paths])
    await asyncio.sleep(0.5)  # let the origin's worker threads go idle before the next phase
    return result


def _errors(samples: Sequence[h.Sample]) -> str:
    bad = Counter(s.error or str(s.status) for s in samples if not s.ok)
    if not bad:
        return "0"
    return f"{sum(bad.values())} (" + ", ".join(f"{k} x{n}" for k, n in bad.most_common()) + ")"


def _x_cache(samples: Sequence[h.Sample]) -> str:
    counts = Counter(s.x_cache for s in samples if s.ok)
    collapsed = sum("collapsed" in s.cache_status for s in samples)
    text = " ".join(f"{k}:{n}" for k, n in counts.most_common()).replace("-:", "none:")
    return text + (f" ({collapsed} collapsed)" if collapsed else "")


def _after_leader(samples: Sequence[h.Sample], pct: float) -> str:
    """How long after the first answer (the leader's) the others came: the waiters' delay."""
    ends = sorted(s.end for s in samples if s.ok)
    if len(ends) < 2:
        return "-"
    return h.fmt_ms(h.percentile([(e - ends[0]) * 1000 for e in ends[1:]], pct))


def _first_answer(samples: Sequence[h.Sample]) -> str:
    ends = [s.end for s in samples if s.ok]
    return h.fmt_ms((min(ends) - min(s.start for s in samples)) * 1000) if ends else "-"


def rows(phases: Sequence[Phase]) -> list[list[str]]:
    """The figures the issue asks for, one row each, one column per target."""

    def stat(key: str) -> list[str]:
        return [str(p.origin[key]) for p in phases]

    def latency(pct: float) -> list[str]:
        return [h.fmt_ms(h.percentile([s.latency_ms for s in p.samples], pct)) for p in phases]

    def rss(p: Phase) -> str:
        if p.rss_before is None:
            return "-"
        return f"{h.fmt_mib(p.rss_before)} -> {h.fmt_mib(p.rss_after)}"

    table = [
        ["origin requests", *stat("requests_total")],
        ["codegen runs", *stat("codegen_runs")],
        [f"db_pool_in_use_max (pool: {h.POOL_SIZE})", *stat("db_pool_in_use_max")],
        ["db_pool_waits", *stat("db_pool_waits")],
        ["origin in_flight_max", *stat("in_flight_max")],
        ["client p50 ms", *latency(50)],
        ["client p99 ms", *latency(99)],
        ["client max ms", *latency(100)],
        ["errors", *[_errors(p.samples) for p in phases]],
        ["first answer (leader) after ms", *[_first_answer(p.samples) for p in phases]],
        ["others after leader, p50 ms", *[_after_leader(p.samples, 50) for p in phases]],
        ["others after leader, max ms", *[_after_leader(p.samples, 100) for p in phases]],
        ["X-Cache", *[_x_cache(p.samples) for p in phases]],
        ["listen queue overflows (kernel)", *[str(p.listen_overflows) for p in phases]],
        ["gateway RSS MiB before -> after", *[rss(p) for p in phases]],
    ]
    if any(p.warm for p in phases):
        warm = [_after_leader(p.warm, 100) for p in phases]
        table.append(["warm repeat: others after first, max ms", *warm])
    return table


async def bench(args: argparse.Namespace, stack: h.Stack) -> None:
    n_targets = 4
    projects = n_targets * (1 + args.distinct)
    with h.phase(f"starting origin ({projects} projects), gateway, nginx, dict-cache"):
        origin = stack.origin(codegen_seconds=args.codegen_seconds, projects=projects)
        targets = [Target("direct", origin), Target("gateway", stack.gateway(origin), True)]
        nginx = None if args.no_nginx else stack.nginx(origin)
        if nginx is not None:
            targets.append(Target("nginx", nginx))
        targets.append(Target("dict-cache", stack.dict_cache(origin)))

    # Projects: p1..p4 for the one-key phases, then a block of `distinct` per target.
    async with h.client_session() as session:
        single: list[Phase] = []
        for i, target in enumerate(targets):
            paths = [h.bundle_path(f"p{i + 1}")] * args.clients
            with h.phase(f"{target.name}: {args.clients} concurrent GETs of one cold key"):
                single.append(await run_phase(session, origin, target, paths, repeat_warm=True))
        many: list[Phase] = []
        for i, target in enumerate(targets):
            first = n_targets + 1 + i * args.distinct
            paths = [h.bundle_path(f"p{first + k}") for k in range(args.distinct)]
            with h.phase(f"{target.name}: {args.distinct} distinct cold keys at once"):
                many.append(await run_phase(session, origin, target, paths))
    report(args, targets, single, many, nginx is not None)


def report(
    args: argparse.Namespace,
    targets: Sequence[Target],
    single: Sequence[Phase],
    many: Sequence[Phase],
    with_nginx: bool,
) -> None:
    print("\n" + h.machine_note())
    print(
        f"origin: --codegen-seconds {args.codegen_seconds:g} (not de-duplicated),"
        f" DB pool {h.POOL_SIZE};"
        " gateway: config/gateway.yaml with free ports"
    )
    if with_nginx:
        print("nginx: proxy_cache + proxy_cache_lock on (waiters poll every 500 ms), 1 worker")
    else:
        print("nginx: not installed (apt-get install -y nginx) or --no-nginx: column skipped")
    print(
        "dict-cache: reference, a minimal aiohttp dict cache with single flight"
        " (bench/_dictcache.py): the floor for answering N parked requests in Python"
    )
    names = [t.name for t in targets]
    h.print_table(f"{args.clients} concurrent GETs, one cold published bundle", names, rows(single))
    h.print_table(f"{args.distinct} distinct cold keys at once", names, rows(many))
    gateway = next(i for i, t in enumerate(targets) if t.is_gateway)
    for title, phases in (("one key", single), ("distinct keys", many)):
        counters = ", ".join(f"{k}={v}" for k, v in sorted(phases[gateway].gateway.items()))
        print(f"gateway counters, {title}: {counters or '(admin API did not answer)'}")
    gw, direct = single[gateway].origin, single[0].origin
    print(
        f"\none cold key, {args.clients} clients: through the gateway {gw['requests_total']}"
        f" origin request(s) and {gw['codegen_runs']} codegen run(s) (the issue asks for exactly"
        f" 1); direct: {direct['codegen_runs']} codegen runs, DB pool"
        f" {direct['db_pool_in_use_max']}/{h.POOL_SIZE} in use with {direct['db_pool_waits']} waits"
    )


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    h.run_bench(lambda stack: bench(args, stack))


if __name__ == "__main__":
    main()
