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

Then a large object (run by default, alone with --only-large, skipped with --no-large): a bench
origin (bench/_bigorigin.py) sends one cold 8 MiB object per URL, cacheable, paced over 2 s,
and 200 clients ask a fresh gateway for it at once; once with cache.memory.max_object_bytes
above the object's size (it is stored) and once below (it is streamed through, never stored).
What counts: origin fetches for the URL (1 is the goal in both cases), how long after the
leader's first body byte the waiters get theirs (the goal: at once, not when the whole body
has arrived), every body complete, and the gateway's peak RSS. Each case runs --repeat times,
each on a new gateway process; the table gives the median (min-max).

    .venv/bin/python bench/stampede.py [--clients 500] [--distinct 200] [--repeat 3]
    .venv/bin/python bench/stampede.py --only-large [--repeat 3] [--large-limits 16 4]
"""

from __future__ import annotations

import argparse
import asyncio
import math
import os
import shlex
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import _harness as h
import aiohttp
import yaml


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
    large = parser.add_argument_group("large object")
    large.add_argument("--only-large", action="store_true", help="run only the large-object case")
    large.add_argument("--no-large", action="store_true", help="skip the large-object case")
    large.add_argument("--repeat", type=int, default=3, help="runs per large-object case")
    large.add_argument("--large-clients", type=int, default=200, help="concurrent clients")
    large.add_argument("--large-mib", type=int, default=8, help="object size, MiB")
    large.add_argument("--large-seconds", type=float, default=2.0, help="origin send time")
    large.add_argument(
        "--large-limits",
        type=int,
        nargs="+",
        default=[16, 4],
        metavar="MIB",
        help="cache.memory.max_object_bytes of each case, MiB",
    )
    args = parser.parse_args(argv)
    if args.only_large and args.no_large:
        parser.error("--only-large and --no-large exclude each other")
    if args.repeat < 1 or args.large_clients < 1 or args.large_mib < 1:
        parser.error("--repeat, --large-clients and --large-mib must be at least 1")
    return args


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
    if not args.only_large:
        await bench_small(args, stack)
    if not args.no_large:
        await bench_large(args, stack)


async def bench_small(args: argparse.Namespace, stack: h.Stack) -> None:
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


# ---------------------------------------------------------------- large object

MIB = 1 << 20
FETCHES = "origin fetches for the URL"
WAITERS_P50 = "waiters' first byte after leader's, p50 ms"
BODY_MAX = "full body, max ms"
LEADER = "leader's first body byte ms"
RSS_INTERVAL = 0.02  # seconds between VmRSS samples
RSS_LIMIT = 600.0  # the sampler stops by itself after this, whatever happens
IDLE_WAIT = 10.0  # seconds the bench origin gets to finish its sends between runs


@dataclass(frozen=True)
class BigSample:
    """One client's GET of the large object; times are perf_counter seconds (nan: never)."""

    start: float
    first: float  # first body byte
    end: float
    status: int  # 0: no HTTP answer
    length: int  # body bytes received
    x_cache: str
    cache_status: str
    error: str = ""


@dataclass
class LargeRun:
    """One burst of clients at one cold large object, on a fresh gateway."""

    samples: list[BigSample]
    size: int
    fetches: int  # origin requests for the burst's URL
    origin_in_flight_max: int
    rss_before: float | None
    rss_peak: float | None
    rss_samples: int
    rss_max_gap_ms: float
    counters: dict[str, int]
    wall_s: float
    warm: list[BigSample] = field(default_factory=list)  # the burst again, answered from cache
    warm_rss_peak: float | None = None

    def is_complete(self, s: BigSample) -> bool:
        return s.status == 200 and not s.error and s.length == self.size

    def complete(self) -> list[BigSample]:
        return [s for s in self.samples if self.is_complete(s)]

    def leader(self) -> BigSample | None:
        """The client whose first body byte came first: the one the fill answered first."""
        started = [s for s in self.samples if not math.isnan(s.first)]
        return min(started, key=lambda s: s.first) if started else None

    def waiters_after_ms(self) -> list[float]:
        leader = self.leader()
        if leader is None:
            return []
        others = [s for s in self.samples if s is not leader and not math.isnan(s.first)]
        return [(s.first - leader.first) * 1000 for s in others]

    def figures(self) -> dict[str, float]:
        """The figures the table takes the median of, by row title."""
        leader = self.leader()
        after = self.waiters_after_ms()
        done = [(s.end - s.start) * 1000 for s in self.complete()]
        ttfb = [(s.first - s.start) * 1000 for s in self.samples if not math.isnan(s.first)]
        nan = float("nan")
        return {
            FETCHES: self.fetches,
            "origin in flight, max": self.origin_in_flight_max,
            LEADER: nan if leader is None else (leader.first - leader.start) * 1000,
            WAITERS_P50: h.percentile(after, 50),
            "waiters' first byte after leader's, p99 ms": h.percentile(after, 99),
            "waiters' first byte after leader's, max ms": h.percentile(after, 100),
            "every client's first body byte, p50 ms": h.percentile(ttfb, 50),
            "every client's first body byte, max ms": h.percentile(ttfb, 100),
            "full body, p50 ms": h.percentile(done, 50),
            BODY_MAX: h.percentile(done, 100),
            f"bodies not {self.size // MIB} MiB (short or failed)": len(self.samples)
            - len(self.complete()),
            "gateway RSS before, MiB": nan if self.rss_before is None else self.rss_before,
            "gateway RSS peak, MiB": nan if self.rss_peak is None else self.rss_peak,
            "burst wall time s": self.wall_s,
            "warm repeat (HIT): full body, max ms": h.percentile(
                [(s.end - s.start) * 1000 for s in self.warm if self.is_complete(s)], 100
            ),
            "warm repeat: gateway RSS peak, MiB": nan
            if self.warm_rss_peak is None
            else self.warm_rss_peak,
        }

    def detail(self) -> str:
        """What does not take a median: the answers' kinds and the gateway's counters."""
        x_cache = Counter(
            f"{s.x_cache}{' collapsed' * ('collapsed' in s.cache_status)}" for s in self.samples
        )
        bad = Counter(
            s.error or (f"status {s.status}" if s.status != 200 else f"{s.length} bytes")
            for s in self.samples
            if not self.is_complete(s)
        )
        counters = ", ".join(f"{k}={v}" for k, v in sorted(self.counters.items()) if v)
        warm = Counter(s.x_cache if self.is_complete(s) else "incomplete" for s in self.warm)
        return (
            "X-Cache "
            + " ".join(f"{k}:{n}" for k, n in x_cache.most_common())
            + (
                "; not complete: " + ", ".join(f"{k} x{n}" for k, n in bad.most_common())
                if bad
                else ""
            )
            + f"; RSS {self.rss_samples} samples, largest gap {self.rss_max_gap_ms:.0f} ms"
            + f"; gateway counters: {counters or '(admin API did not answer)'}"
            + ("; warm repeat " + " ".join(f"{k}:{n}" for k, n in warm.items()) if warm else "")
        )


class RssSampler:
    """Peak VmRSS of a process, read every RSS_INTERVAL on a thread: the client's event loop is
    saturated receiving the bodies, and a task on it would sample late exactly at the peak."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.peak: float | None = None
        self.samples = 0
        self.max_gap = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="rss-sampler", daemon=True)

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(RSS_LIMIT)

    def _run(self) -> None:
        deadline = time.monotonic() + RSS_LIMIT
        last = time.monotonic()
        while time.monotonic() < deadline:
            rss = h.rss_mib(self.pid)
            now = time.monotonic()
            if rss is not None:
                self.peak = rss if self.peak is None else max(self.peak, rss)
                self.samples += 1
            self.max_gap = max(self.max_gap, now - last)
            last = now
            if self._stop.wait(RSS_INTERVAL):
                return


async def fetch_big(session: aiohttp.ClientSession, url: str) -> BigSample:
    """GET `url`, counting the body's bytes as they come (never holding them)."""
    start = time.perf_counter()
    first = math.nan
    length, status, x_cache, cache_status = 0, 0, "-", ""
    try:
        async with session.get(url) as resp:
            status = resp.status
            x_cache = resp.headers.get("X-Cache", "-")
            cache_status = resp.headers.get("Cache-Status", "")
            while chunk := await resp.content.readany():
                if not length:
                    first = time.perf_counter()
                length += len(chunk)
    except (aiohttp.ClientError, TimeoutError) as exc:
        end = time.perf_counter()
        return BigSample(
            start, first, end, status, length, x_cache, cache_status, type(exc).__name__
        )
    return BigSample(start, first, time.perf_counter(), status, length, x_cache, cache_status)


async def big_burst(session: aiohttp.ClientSession, url: str, clients: int) -> list[BigSample]:
    """Every client at once on one URL: the tasks park on one event, so they leave together."""
    go = asyncio.Event()

    async def one() -> BigSample:
        await go.wait()
        return await fetch_big(session, url)

    tasks = [asyncio.create_task(one()) for _ in range(clients)]
    await asyncio.sleep(0)
    go.set()
    return await asyncio.gather(*tasks)


def spawn_gateway(stack: h.Stack, origin: h.Service, max_object_mib: int, tag: str) -> h.Service:
    """A new gateway process on the demo routing file (its `/` route caches the bench origin's
    paths) with the given cache.memory.max_object_bytes."""
    port, admin_port = h.free_port(), h.free_port()
    config = h.gateway_config(origin.url, port, admin_port)
    max_bytes = max(256, 4 * max_object_mib)
    config["cache"]["memory"] = {
        "max_bytes": f"{max_bytes}MiB",
        "max_object_bytes": f"{max_object_mib}MiB",
    }
    path = stack.dir / f"gateway-{tag}.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    argv = [sys.executable, "-m", "gateway", "--config", str(path), "--log-level", "WARNING"]
    service = stack.spawn(f"gateway-{tag}", argv, port, h.READY_PATH)
    service.admin_port = admin_port
    return service


async def wait_origin_idle(session: aiohttp.ClientSession, origin: h.Service) -> None:
    """Bounded: the next run must not share the origin's loop with the last one's sends."""
    deadline = time.monotonic() + IDLE_WAIT
    while time.monotonic() < deadline:
        if (await h.get_json(session, origin.url + "/__stats"))["in_flight"] == 0:
            return
        await asyncio.sleep(0.1)


async def run_large(
    args: argparse.Namespace, stack: h.Stack, origin: h.Service, limit_mib: int, run: int
) -> LargeRun:
    tag = f"{limit_mib}mib-{run}"
    url_path = f"/big/{tag}"  # a path never asked before: a cold key, whatever ran earlier
    gateway = spawn_gateway(stack, origin, limit_mib, tag)
    try:
        async with h.client_session(args.large_clients) as session:
            await wait_origin_idle(session, origin)
            await h.get_json(session, origin.url + "/__stats/reset", method="POST")
            rss_before = gateway.rss_mib()
            start = time.perf_counter()
            with RssSampler(gateway.proc.pid) as rss:
                samples = await big_burst(session, gateway.url + url_path, args.large_clients)
            wall = time.perf_counter() - start
            stats = await h.get_json(session, origin.url + "/__stats")
            counters = await h.gateway_counters(session, gateway)
            warm: list[BigSample] = []
            warm_peak: float | None = None
            if limit_mib >= args.large_mib:  # stored: how fast the same fan-out goes from cache
                with RssSampler(gateway.proc.pid) as warm_rss:
                    warm = await big_burst(session, gateway.url + url_path, args.large_clients)
                warm_peak = warm_rss.peak
    finally:
        stack.stop(gateway)
    return LargeRun(
        samples=samples,
        size=args.large_mib * MIB,
        fetches=int(stats["paths"].get(url_path, 0)),
        origin_in_flight_max=int(stats["in_flight_max"]),
        rss_before=rss_before,
        rss_peak=rss.peak,
        rss_samples=rss.samples,
        rss_max_gap_ms=rss.max_gap * 1000,
        counters=counters,
        wall_s=wall,
        warm=warm,
        warm_rss_peak=warm_peak,
    )


def _fmt_figure(title: str) -> Callable[[float], str]:
    if title.endswith(" ms"):
        return h.fmt_ms
    if "MiB" in title and "RSS" in title:
        return lambda v: f"{v:.0f}"
    if title.endswith(" s"):
        return lambda v: f"{v:.1f}"
    return lambda v: f"{v:g}"


def _code_note() -> str:
    """Which gateway code ran: the commit, and whether gateway/ differs from it."""
    git = ["git", "-C", str(h.REPO)]
    try:
        head = subprocess.run(
            [*git, "rev-parse", "--short", "HEAD"], capture_output=True, text=True, timeout=5
        )
        dirty = subprocess.run(
            [*git, "status", "--porcelain", "--", "gateway"],
            capture_output=True,
            text=True,
            timeout=5,
        )
    except (OSError, subprocess.TimeoutExpired):
        return "gateway code: (git not available)"
    if head.returncode != 0:
        return f"gateway code: {h.REPO} (not a git checkout)"
    state = "with uncommitted changes in gateway/" if dirty.stdout.strip() else "gateway/ clean"
    return f"gateway code: {h.REPO} at {head.stdout.strip()}, {state}"


def _load() -> str:
    return " ".join(f"{v:.2f}" for v in os.getloadavg()) if hasattr(os, "getloadavg") else "?"


async def bench_large(args: argparse.Namespace, stack: h.Stack) -> None:
    load_before = _load()
    with h.phase(
        f"starting the large-object origin ({args.large_mib} MiB over {args.large_seconds:g} s)"
    ):
        script = h.REPO / "bench" / "_bigorigin.py"
        port = h.free_port()
        argv = [sys.executable, str(script), "--port", str(port), "--mib", str(args.large_mib)]
        argv += ["--seconds", str(args.large_seconds)]
        origin = stack.spawn("big-origin", argv, port, "/healthz")
    results: dict[int, list[LargeRun]] = {limit: [] for limit in args.large_limits}
    for run in range(1, args.repeat + 1):  # cases alternate, so a noisy minute hits both
        for limit in results:
            title = f"large object, max_object_bytes {limit} MiB, run {run}/{args.repeat}"
            with h.phase(f"{title}: {args.large_clients} concurrent GETs, fresh gateway"):
                result = await run_large(args, stack, origin, limit, run)
            results[limit].append(result)
            figures = result.figures()
            print(
                f"    fetches {figures[FETCHES]:g},"
                f" leader first byte {h.fmt_ms(figures[LEADER])} ms,"
                f" waiters after leader p50 {h.fmt_ms(figures[WAITERS_P50])} ms,"
                f" full body max {h.fmt_ms(figures[BODY_MAX])} ms,"
                f" RSS peak {h.fmt_mib(result.rss_peak)} MiB; {result.detail()}",
                flush=True,
            )
    report_large(args, results, load_before)


def report_large(
    args: argparse.Namespace, results: dict[int, list[LargeRun]], load_before: str
) -> None:
    print("\ncommand: " + shlex.join([sys.executable, *sys.argv]))
    print(h.machine_note())
    print(
        f"load average (1, 5, 15 min): {load_before} before the large-object case, {_load()} after"
    )
    print(_code_note())
    print(
        f"origin: bench/_bigorigin.py, {args.large_mib} MiB per URL, Cache-Control: public,"
        f" s-maxage=60, Content-Length, 64 KiB writes paced over {args.large_seconds:g} s;"
        " gateway: config/gateway.yaml with free ports and the max_object_bytes of the column,"
        f" a new process per run; {args.large_clients} aiohttp clients at once on one cold URL"
    )
    names = [
        f"max_object_bytes {limit} MiB ({'above' if limit >= args.large_mib else 'below'})"
        for limit in results
    ]
    titles = list(next(iter(results.values()))[0].figures())
    rows = [
        [
            title,
            *[
                h.spread([r.figures()[title] for r in runs], _fmt_figure(title))
                for runs in results.values()
            ],
        ]
        for title in titles
    ]
    h.print_table(
        f"large object: {args.large_clients} clients, one cold {args.large_mib} MiB URL;"
        f" median (min-max) of {args.repeat} run(s)",
        names,
        rows,
    )
    print(
        "leader: the client whose first body byte came first; waiters: every other client, their"
        " first body byte measured from the leader's. Every client's first body byte and full"
        " body: from that client's own request start (the origin sends its first bytes at once,"
        " so a first byte near the send time means the body was held back until complete)."
        " Goal of streaming fills: 1 origin fetch in both columns and waiters' p50 under 50 ms."
        " The gateway's origin_fetches counter also counts its readiness probe (one pass)."
        " Warm repeat (stored case only): the same burst once the object is cached, on the same"
        " connections: the floor for fanning the body out to every client on this machine."
    )


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    h.run_bench(lambda stack: bench(args, stack))


if __name__ == "__main__":
    main()
