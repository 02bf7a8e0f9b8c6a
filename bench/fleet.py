"""Fleet mode (`redis:` in the config): three gateway instances sharing one Redis, next to three
memory-only instances, in front of one slow origin, in one run.

Cases (each repetition runs them all, on a new Redis and a new fleet of three processes; the
memory-only instances live for the whole run):
  1 stampede   --clients concurrent GETs of ONE cold key (origin: 0.5 s), spread round-robin
               over three instances: (a) three memory-only instances, in-process coalescing
               only (expected: 3 origin fetches, one per instance); (b) the fleet, coalescing
               through Redis leases (expected: 1). Reported: origin fetches, and the waiters'
               delay beyond the origin time: each client's latency, counted from the burst's
               start (all leave at once), minus the origin's 0.5 s; p50/p99/max, and per
               instance in the progress output (in the fleet, the lease holder's instance
               answers first; the others wait for its notice and read the entry from Redis).
  2 purge      a key in every fleet instance's memory (filled through A, read through B and C:
               L2 hits promoted to L1), purged through A's admin API; propagation is the time
               from sending the purge until B's and C's /admin/stats count the event in
               `fleet.purge_stream.events` (polled: an upper bound), plus the instances' own
               `lag_seconds` (application time minus the stream entry's millisecond id), and a
               check that B and C then no longer serve the key: a GET with `Cache-Control:
               only-if-cached` must get a 504 (neither L1 nor L2 holds it), which refills
               nothing. --purges per run.
  3 hits       req/s of one instance for --hit-requests GETs over 32 keep-alive connections:
               (i) a hot key from L1 (fleet instance B); (ii) from L2 with L1 cold: that many
               distinct keys filled through A, each read once through B (every read an L1 miss
               and an L2 hit: B's `fleet.l2.hits` is checked); (iii) a hot key on a memory-only
               instance, the baseline; the ratios (i)/(iii) and (ii)/(iii). (i) and (iii)
               alternate for 3 rounds and keep their best (this VM's req/s jumps by up to 40%
               between two identical rounds); (ii) runs once, its keys are then in L1. Also per
               CPU-second of the instance, which does not depend on the client keeping up.
               Beside them (3b), the cost of a cold fill: --hit-requests distinct /fast/ keys
               through fleet instance A (the L2 pre-fill of (ii)) and through a memory-only one.
  4 redis kill --kill-seconds of mixed load on the fleet (32 loops, 80% hot keys, 20% cold ones
               on the slow path, each cold key asked on all three instances), redis-server
               SIGKILLed halfway; every non-200 answer and client error is counted (goal: 0).

Design:
- Every gateway is its own `python -m gateway --config FILE` process, as in production: three
  instances in one process would share one event loop (and one core), so a hit's req/s would be
  a third of a loop's, and a fleet's coordination would go through nothing but its own loop.
- The origin (bench/_fleet.py) is a process too: /slow/ answers after 0.5 s, /fast/ at once,
  both ~20 KiB with Cache-Control: max-age=60, and it counts requests per path. Keys that only
  need to exist (purge targets, the L2 pre-fill, warm-up) use /fast/, so that the run stays
  short; each case and repetition uses paths never asked before, so every cold key is cold.
- Hit throughput is measured with a minimal keep-alive HTTP/1.1 client on uvloop (one request
  per connection at a time, Content-Length or chunked framing), not aiohttp's client: on this
  2-core machine aiohttp's client tops out near the gateway's own hit rate, so the figures
  would be the client's. wrk would do too; it is not installed here.
- Clients send `Host: fleet.test` to every instance (the cache key includes the host); the one
  route matches only that host, so the harness's readiness probe is answered 404 by the gateway
  itself and never reaches the origin.
- Each figure is the median (min-max) of --repeat runs; with --quick, one run (not a median)
  and smaller counts. Nothing here asserts a time: benchmarks print, readers judge.

    .venv/bin/python bench/fleet.py [--repeat 3] [--quick]
"""

from __future__ import annotations

import argparse
import asyncio
import math
import os
import random
import shlex
import statistics
import sys
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import _harness as h
import aiohttp
import yaml

FLEET_HOST = "fleet.test"  # the one public host name every client sends, to every instance
TENANT = "fleet"
NAMES = ("A", "B", "C")
ORIGIN_DELAY = 0.5  # seconds the origin's /slow/ paths take
BODY_KIB = 20
HIT_CONNECTIONS = 32  # keep-alive connections of the hit-throughput client
FILL_CONNECTIONS = 64  # ... of the L2 pre-fill through A
WARM_REQUESTS = 1000  # untimed hits before each timed hot-key case
HOT_ROUNDS = 3  # alternating rounds of the hot-key cases, the best of each counts
REQUEST_TIMEOUT = 10.0  # seconds any one bench request may take
FLEET_READY_TIMEOUT = 10.0  # seconds for a new instance to follow the purge stream
PROPAGATION_TIMEOUT = 2.0  # seconds a purge gets to reach B and C before it counts as lost
POLL_INTERVAL = 0.0005  # seconds between two stats polls of one instance
HOT_KEYS = 20  # hot keys of the Redis-kill load
COLD_SHARE = 0.2
SETTLED = 1.0  # seconds: a cold key first asked this long before the kill was filled before it
KILL_LOOPS = 32
AUTH = {"Authorization": f"Bearer {h.ADMIN_TOKEN}"}


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = h.arg_parser(__doc__)
    parser.add_argument("--repeat", type=int, default=3, help="runs of every case")
    parser.add_argument("--quick", action="store_true", help="1 run, smaller counts (< 40 s)")
    parser.add_argument("--clients", type=int, default=500, help="stampede: concurrent GETs")
    parser.add_argument("--purges", type=int, default=50, help="purges per run")
    parser.add_argument("--hit-requests", type=int, default=5000, help="GETs per hit case")
    parser.add_argument("--kill-seconds", type=float, default=4.0, help="Redis-kill load time")
    args = parser.parse_args(argv)
    if args.quick:
        args.repeat = 1
        args.purges = min(args.purges, 20)
        args.hit_requests = min(args.hit_requests, 2000)
        args.kill_seconds = min(args.kill_seconds, 3.0)
    if min(args.repeat, args.clients, args.purges, args.hit_requests) < 1:
        parser.error("--repeat, --clients, --purges and --hit-requests must be at least 1")
    if args.kill_seconds <= 0:
        parser.error("--kill-seconds must be positive")
    return args


# ---------------------------------------------------------------- processes


def gateway_config(origin_url: str, port: int, admin_port: int, redis_url: str | None) -> dict[
    str, Any
]:
    """One route for Host: fleet.test to the bench origin, tenant `fleet`, room for every key;
    with `redis_url`, a fleet member with the brief's timeouts."""
    config: dict[str, Any] = {
        "listen": f"{h.HOST}:{port}",
        "admin": {
            "listen": f"{h.HOST}:{admin_port}",
            "tokens": [{"name": "bench", "token": h.ADMIN_TOKEN, "tenants": ["*"]}],
        },
        "cache": {"memory": {"max_bytes": "1GiB", "max_object_bytes": "16MiB"}},
        "tenants": {"default": {"max_bytes": "1GiB"}},
        "origins": {"slow": {"url": origin_url}},
        "routes": [
            {
                "name": "fleet",
                "match": {"host": FLEET_HOST, "path_prefix": "/"},
                "origin": "slow",
                "tenant": {"fixed": TENANT},
            }
        ],
    }
    if redis_url is not None:
        config["redis"] = {"url": redis_url, "timeout": "100ms", "block": "2s", "lease": "5s"}
    return config


def spawn_gateway(
    stack: h.Stack, origin: h.Service, name: str, redis: h.Service | None
) -> h.Service:
    port, admin_port = h.free_port(), h.free_port()
    redis_url = None if redis is None else f"redis://{h.HOST}:{redis.port}/0"
    path = stack.dir / f"{name}.yaml"
    config = gateway_config(origin.url, port, admin_port, redis_url)
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    argv = [sys.executable, "-m", "gateway", "--config", str(path), "--log-level", "WARNING"]
    service = stack.spawn(name, argv, port, h.READY_PATH)
    service.admin_port = admin_port
    return service


async def stats(session: aiohttp.ClientSession, svc: h.Service) -> dict[str, Any]:
    return await h.get_json(session, f"http://{h.HOST}:{svc.admin_port}/admin/stats", headers=AUTH)


def fleet_of(s: dict[str, Any]) -> dict[str, Any]:
    fleet = s.get("fleet", {})
    return fleet if isinstance(fleet, dict) else {}


async def wait_following(session: aiohttp.ClientSession, instances: Sequence[h.Service]) -> None:
    """Bounded: every member has read the purge stream's position (else a purge made right
    after start could be missed by the bench's count, not by the gateway)."""
    deadline = time.monotonic() + FLEET_READY_TIMEOUT
    while time.monotonic() < deadline:
        found = [await stats(session, svc) for svc in instances]
        if all(fleet_of(s).get("purge_stream", {}).get("ready") for s in found):
            return
        await asyncio.sleep(0.05)
    raise RuntimeError("fleet members not following the purge stream in time")


def session(connections: int = 0) -> aiohttp.ClientSession:
    """The harness's client session, every request under the fleet's public host name."""
    return aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=connections, limit_per_host=0),
        auto_decompress=False,
        timeout=aiohttp.ClientTimeout(total=REQUEST_TIMEOUT),
        cookie_jar=aiohttp.DummyCookieJar(),
        headers={"Host": FLEET_HOST},
    )


# ---------------------------------------------------------------- the lean client


class _Conn(asyncio.Protocol):
    """One keep-alive HTTP/1.1 connection, one request at a time; reads status, X-Cache and
    the body's framing (Content-Length or chunked), drops the body."""

    def __init__(self) -> None:
        self.transport: Any = None  # uvloop's transports are not asyncio.Transport subclasses
        self.buf = bytearray()
        self.waiter: asyncio.Future[tuple[int, str]] | None = None
        self.head: tuple[int, str, int] | None = None  # status, X-Cache, length (-1: chunked)
        self.closed = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_exception(ConnectionResetError("closed before the answer"))

    def data_received(self, data: bytes) -> None:
        self.buf += data
        if self.waiter is None or self.waiter.done():
            return
        if self.head is None:
            end = self.buf.find(b"\r\n\r\n")
            if end < 0:
                return
            lines = bytes(self.buf[:end]).decode("latin-1").split("\r\n")
            del self.buf[: end + 4]
            fields = {}
            for line in lines[1:]:
                name, _, value = line.partition(":")
                fields[name.strip().lower()] = value.strip()
            if "content-length" in fields:
                length = int(fields["content-length"])
            else:
                length = -1 if "chunked" in fields.get("transfer-encoding", "").lower() else 0
            self.head = (int(lines[0].split(" ", 2)[1]), fields.get("x-cache", "-"), length)
        status, x_cache, length = self.head
        if length < 0:
            length = self._chunked_end()
            if length < 0:
                return
        if len(self.buf) < length:
            return
        del self.buf[:length]
        self.head = None
        self.waiter.set_result((status, x_cache))

    def _chunked_end(self) -> int:
        """Where a complete chunked body ends in the buffer, -1 while incomplete."""
        pos = 0
        while True:
            eol = self.buf.find(b"\r\n", pos)
            if eol < 0:
                return -1
            size = int(bytes(self.buf[pos:eol]).split(b";")[0], 16)
            if size == 0:
                end = self.buf.find(b"\r\n\r\n", eol)
                return -1 if end < 0 else end + 4
            pos = eol + 2 + size + 2
            if pos > len(self.buf):
                return -1

    async def request(self, raw: bytes) -> tuple[int, str]:
        if self.closed or self.transport is None:
            raise ConnectionResetError("connection closed")
        self.waiter = asyncio.get_running_loop().create_future()
        self.transport.write(raw)
        try:
            return await self.waiter
        finally:
            self.waiter = None

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()


@dataclass
class Load:
    """One bounded run of the lean client against one instance."""

    seconds: float
    latencies_ms: list[float]
    answers: Counter[str]  # "200 HIT", ...
    errors: Counter[str]
    cpu_pct: float  # the instance's CPU time over the run's wall time
    client_pct: float  # this process's (the client's) CPU time over the run's wall time

    @property
    def rps(self) -> float:
        return len(self.latencies_ms) / self.seconds if self.seconds > 0 else float("nan")

    @property
    def per_cpu_second(self) -> float:
        """Answers per second of the instance's CPU: its capacity on one core, whether or not
        the client kept it busy."""
        busy = self.cpu_pct / 100 * self.seconds
        return len(self.latencies_ms) / busy if busy > 0 else float("nan")

    def describe(self) -> str:
        answers = " ".join(f"{k}:{n}" for k, n in self.answers.most_common())
        errors = ", ".join(f"{k} x{n}" for k, n in self.errors.most_common()) or "none"
        return f"answers {answers}; client errors {errors}"


async def load(svc: h.Service, paths: Sequence[str], connections: int) -> Load:
    """GET every path once (in order, `connections` at a time) on already open connections;
    a connection that fails is counted and opened again, each request at most
    REQUEST_TIMEOUT."""
    loop = asyncio.get_running_loop()
    raws = {p: f"GET {p} HTTP/1.1\r\nHost: {FLEET_HOST}\r\n\r\n".encode() for p in set(paths)}
    latencies: list[float] = []
    answers: Counter[str] = Counter()
    errors: Counter[str] = Counter()

    async def connect() -> _Conn | None:
        try:
            async with asyncio.timeout(REQUEST_TIMEOUT):
                _, conn = await loop.create_connection(_Conn, h.HOST, svc.port)
        except (OSError, TimeoutError) as exc:
            errors[f"connect {type(exc).__name__}"] += 1
            return None
        return conn

    conns = await asyncio.gather(*(connect() for _ in range(min(connections, len(paths)))))
    order = iter(paths)  # shared: each path is taken by exactly one worker

    async def worker(conn: _Conn | None) -> None:
        for path in order:
            if conn is None or conn.closed:
                conn = await connect()
                if conn is None:
                    continue
            start = time.perf_counter()
            try:
                async with asyncio.timeout(REQUEST_TIMEOUT):
                    status, x_cache = await conn.request(raws[path])
            except (OSError, TimeoutError) as exc:
                errors[type(exc).__name__] += 1
                conn.close()
                conn = None
                continue
            latencies.append((time.perf_counter() - start) * 1000)
            answers[f"{status} {x_cache}"] += 1
        if conn is not None:
            conn.close()

    cpu, own = svc.cpu_seconds(), time.process_time()
    start = time.perf_counter()
    await asyncio.gather(*(worker(c) for c in conns))
    wall = time.perf_counter() - start
    cpu, own = svc.cpu_seconds() - cpu, time.process_time() - own
    return Load(wall, latencies, answers, errors, 100 * cpu / wall, 100 * own / wall)


# ---------------------------------------------------------------- figures


class Figures:
    """figure -> column -> one value per run, in the order first added."""

    def __init__(self) -> None:
        self.tables: dict[str, dict[str, dict[str, list[float]]]] = {}
        self.columns: dict[str, list[str]] = {}

    def add(self, table: str, column: str, row: str, value: float) -> None:
        rows = self.tables.setdefault(table, {})
        rows.setdefault(row, {}).setdefault(column, []).append(float(value))
        columns = self.columns.setdefault(table, [])
        if column not in columns:
            columns.append(column)


def _fmt(row: str) -> Callable[[float], str]:
    if "ratio" in row or row.endswith(" s"):
        return lambda v: f"{v:.2f}"
    if row.endswith(" ms"):
        return h.fmt_ms
    if "/s" in row or "CPU-second" in row:
        return lambda v: f"{v:.0f}"
    if row.endswith("%"):
        return lambda v: f"{v:.0f}"
    if "per " in row:
        return lambda v: f"{v:.2f}"
    return lambda v: f"{v:g}"


def _pct(values: Sequence[float], pct: float) -> float:
    return h.percentile(values, pct) if values else float("nan")


def _load_avg() -> str:
    return " ".join(f"{v:.2f}" for v in os.getloadavg()) if hasattr(os, "getloadavg") else "?"


def _errors(samples: Sequence[h.Sample]) -> Counter[str]:
    return Counter(s.error or f"status {s.status}" for s in samples if not s.ok)


def _describe(counter: Counter[str]) -> str:
    return ", ".join(f"{k} x{n}" for k, n in counter.most_common()) or "none"


# ---------------------------------------------------------------- 1. stampede

STAMPEDE = "1. cold key stampede"


async def origin_reset(http: aiohttp.ClientSession, origin: h.Service) -> None:
    await h.get_json(http, origin.url + "/__stats/reset", method="POST")


async def origin_count(http: aiohttp.ClientSession, origin: h.Service, path: str) -> int:
    found = await h.get_json(http, origin.url + "/__stats")
    return int(found["paths"].get(path, 0))


def _lease_totals(found: Sequence[dict[str, Any]]) -> Counter[str]:
    total: Counter[str] = Counter()
    for s in found:
        total.update({k: int(v) for k, v in fleet_of(s).get("leases", {}).items()})
    return total


async def stampede(
    figures: Figures,
    column: str,
    origin: h.Service,
    instances: Sequence[h.Service],
    clients: int,
    tag: str,
) -> None:
    """`clients` GETs of one cold /slow/ key at once, round-robin over the instances, on
    connections opened (and the instances warmed) by an untimed burst on a /fast/ key."""
    path = f"/slow/stampede-{tag}"
    n = len(instances)
    async with session() as http:
        warm = f"/fast/warm-{tag}"
        await h.burst(http, [instances[i % n].url + warm for i in range(clients)])
        await origin_reset(http, origin)
        before = [await stats(http, svc) for svc in instances]
        samples = await h.burst(http, [instances[i % n].url + path for i in range(clients)])
        fetches = await origin_count(http, origin, path)
        after = [await stats(http, svc) for svc in instances]
    # From the burst's start, not each request's: the client stamps 500 starts one after the
    # other on its loop (tens of ms), and a late stamp would hide part of the wait.
    t0 = min(s.start for s in samples)

    def beyond(picked: Sequence[h.Sample]) -> list[float]:
        return [(s.end - t0 - ORIGIN_DELAY) * 1000 for s in picked if s.ok]

    delays = beyond(samples)
    errors = _errors(samples)
    for row, value in (
        ("origin fetches", fetches),
        ("first answer beyond origin ms", _pct(delays, 0)),
        ("delay beyond origin, p50 ms", _pct(delays, 50)),
        ("delay beyond origin, p99 ms", _pct(delays, 99)),
        ("delay beyond origin, max ms", _pct(delays, 100)),
        ("non-200 answers + client errors", errors.total()),
    ):
        figures.add(STAMPEDE, column, row, value)
    x_cache = Counter(s.x_cache for s in samples if s.ok)
    leases = _lease_totals(after)
    leases.subtract(_lease_totals(before))
    lease_text = ", ".join(f"{k} {v}" for k, v in sorted(leases.items()) if v)
    each = ", ".join(
        f"{NAMES[i]} {h.fmt_ms(_pct(beyond(samples[i::n]), 50))}/"
        f"{h.fmt_ms(_pct(beyond(samples[i::n]), 99))}"
        for i in range(n)
    )
    print(
        f"    origin fetches {fetches}; delay beyond origin p50 {h.fmt_ms(_pct(delays, 50))}"
        f" p99 {h.fmt_ms(_pct(delays, 99))} ms (per instance p50/p99: {each}); X-Cache "
        + " ".join(f"{k}:{n}" for k, n in x_cache.most_common())
        + f"; errors {_describe(errors)}"
        + (f"; leases: {lease_text}" if lease_text else ""),
        flush=True,
    )


# ---------------------------------------------------------------- 2. purge propagation

PURGE = "2. purge propagation"


async def _applied(
    http: aiohttp.ClientSession, svc: h.Service, expected: int, t0: float, calls: list[float]
) -> tuple[float, float]:
    """Poll until `svc` counts `expected` stream events: (ms since t0, its own lag ms); the
    duration of each stats call goes to `calls` (the poll's resolution)."""
    deadline = t0 + PROPAGATION_TIMEOUT
    while time.perf_counter() < deadline:
        start = time.perf_counter()
        stream = fleet_of(await stats(http, svc)).get("purge_stream", {})
        now = time.perf_counter()
        calls.append((now - start) * 1000)
        if int(stream.get("events", 0)) >= expected:
            return (now - t0) * 1000, float(stream.get("lag_seconds", 0)) * 1000
        await asyncio.sleep(POLL_INTERVAL)
    return float("nan"), float("nan")


async def purges(figures: Figures, fleet: Sequence[h.Service], count: int, tag: str) -> None:
    """A /fast/ key into every instance's memory, purged through A; B's and C's stats polled
    until they have applied the event; then `only-if-cached` GETs on B and C must find nothing
    (a 504: neither their L1 nor L2 holds it), without refilling it."""
    a, others = fleet[0], fleet[1:]
    cached_only = {"Cache-Control": "only-if-cached"}
    answered: list[float] = []
    both: list[float] = []
    each: list[float] = []
    lags: list[float] = []
    calls: list[float] = []
    lost = still_cached = not_in_memory = 0
    async with session() as http:
        base = [
            int(fleet_of(await stats(http, svc)).get("purge_stream", {}).get("events", 0))
            for svc in others
        ]
        for i in range(count):
            path = f"/fast/purge-{tag}-{i}"
            await h.fetch(http, a.url + path)  # fill: A's L1 and L2
            for svc in others:  # an L2 hit, promoted into their L1
                await h.fetch(http, svc.url + path)
            for svc in fleet:
                found = await h.fetch(http, svc.url + path, cached_only)
                not_in_memory += (found.status, found.x_cache) != (200, "HIT")
            t0 = time.perf_counter()
            async with http.post(
                f"http://{h.HOST}:{a.admin_port}/admin/purge",
                json={"tenant": TENANT, "urls": [path]},
                headers=AUTH,
            ) as resp:
                await resp.read()
                if resp.status != 200:
                    raise RuntimeError(f"purge through A answered {resp.status}")
            answered.append((time.perf_counter() - t0) * 1000)
            applied = await asyncio.gather(
                *(
                    _applied(http, svc, n + i + 1, t0, calls)
                    for svc, n in zip(others, base, strict=True)
                )
            )
            lost += sum(math.isnan(ms) for ms, _ in applied)
            both.append(max(ms for ms, _ in applied))
            each += [ms for ms, _ in applied]
            lags += [lag for _, lag in applied]
            for svc in others:
                still_cached += (await h.fetch(http, svc.url + path, cached_only)).status == 200
    for row, value in (
        ("purge answered by A, p50 ms", _pct(answered, 50)),
        ("purge answered by A, p99 ms", _pct(answered, 99)),
        ("applied on B and C (polled), p50 ms", _pct(both, 50)),
        ("applied on B and C (polled), p99 ms", _pct(both, 99)),
        ("instances' own lag_seconds, p50 ms", _pct(lags, 50)),
        ("instances' own lag_seconds, p99 ms", _pct(lags, 99)),
        ("stats call (poll resolution), p50 ms", _pct(calls, 50)),
        ("not applied within 2 seconds", lost),
        ("B/C still serve it after applied", still_cached),
    ):
        figures.add(PURGE, f"{count} purges", row, value)
    print(
        f"    {count} purges: answered p50 {h.fmt_ms(_pct(answered, 50))} ms; applied on"
        f" B and C p50 {h.fmt_ms(_pct(both, 50))} p99 {h.fmt_ms(_pct(both, 99))} ms"
        f" (each instance p50 {h.fmt_ms(_pct(each, 50))}); own lag p50"
        f" {h.fmt_ms(_pct(lags, 50))} p99 {h.fmt_ms(_pct(lags, 99))} ms; stats call p50"
        f" {h.fmt_ms(_pct(calls, 50))} ms; lost {lost}; still served after {still_cached};"
        f" key not an only-if-cached HIT before the purge {not_in_memory}x",
        flush=True,
    )


# ---------------------------------------------------------------- 3. hit throughput

HITS = "3. hit throughput, one instance"
L1, L2, BASE = "(i) fleet L1", "(ii) fleet L2, L1 cold", "(iii) memory-only"
FILLS = "3b. cold fills through one instance (origin /fast/: at once)"


def _hit_figures(figures: Figures, column: str, result: Load) -> None:
    not_hit = sum(n for k, n in result.answers.items() if k != "200 HIT")
    for row, value in (
        ("req/s", result.rps),
        ("req/s per instance CPU-second", result.per_cpu_second),
        ("client p50 ms", _pct(result.latencies_ms, 50)),
        ("client p99 ms", _pct(result.latencies_ms, 99)),
        ("instance CPU %", result.cpu_pct),
        ("client CPU %", result.client_pct),
        ("non-HIT answers + errors", result.errors.total() + not_hit),
    ):
        figures.add(HITS, column, row, value)


async def hot_keys(
    cases: Sequence[tuple[str, h.Service, h.Service]], path: str, requests: int
) -> tuple[dict[str, Load], dict[str, list[float]]]:
    """Each case (column, instance, instance that fills the key) serves one hot key; the
    cases alternate for HOT_ROUNDS rounds and each keeps its best round: on this VM the same
    run's req/s moves by up to 40% from one second to the next, and noise only ever slows."""
    async with session() as http:
        for _, svc, fill in cases:
            await h.fetch(http, fill.url + path)
            await h.fetch(http, svc.url + path)
    for _, svc, _ in cases:
        await load(svc, [path] * WARM_REQUESTS, HIT_CONNECTIONS)  # untimed warm-up
    best: dict[str, Load] = {}
    rounds: dict[str, list[float]] = {}
    for _ in range(HOT_ROUNDS):
        for column, svc, _ in cases:
            result = await load(svc, [path] * requests, HIT_CONNECTIONS)
            rounds.setdefault(column, []).append(result.rps)
            if column not in best or result.rps > best[column].rps:
                best[column] = result
    return best, rounds


def _link(s: dict[str, Any]) -> tuple[int, int, float]:
    """The redis link's commands, errors (failed, or not sent for want of a free connection:
    `busy`), and seconds spent in commands (from its mean)."""
    link = fleet_of(s).get("redis", {})
    calls = int(link.get("calls", 0))
    errors = int(link.get("errors", 0)) + int(link.get("busy", 0))
    return calls, errors, calls * float(link.get("mean_ms", 0.0)) / 1000


async def hits(
    figures: Figures,
    fleet: Sequence[h.Service],
    redis: h.Service,
    baseline: h.Service,
    requests: int,
    tag: str,
) -> None:
    a, b = fleet[0], fleet[1]
    async with session() as http:
        l1_before = _link(await stats(http, b))
        results, rounds = await hot_keys(
            [(BASE, baseline, baseline), (L1, b, a)], f"/slow/hot-{tag}", requests
        )
        l1_after = _link(await stats(http, b))
        memory_fill = await load(
            baseline, [f"/fast/fill-{tag}-{k}" for k in range(requests)], FILL_CONNECTIONS
        )
        paths = [f"/fast/l2-{tag}-{k}" for k in range(requests)]
        a_before = _link(await stats(http, a))
        stored = (await stats(http, a))["cache"].get("stored", 0)
        fill = await load(a, paths, FILL_CONNECTIONS)
        a_after = _link(await stats(http, a))
        for _ in range(100):  # a client has its body a moment before the fill writes Redis
            if (await stats(http, a))["cache"].get("stored", 0) >= stored + requests:
                break
            await asyncio.sleep(0.02)
        before = await stats(http, b)
        redis_cpu = redis.cpu_seconds()
        results[L2] = await load(b, paths, HIT_CONNECTIONS)
        redis_pct = 100 * (redis.cpu_seconds() - redis_cpu) / results[L2].seconds
        after = await stats(http, b)
    l2_hits = fleet_of(after).get("l2", {}).get("hits", 0) - fleet_of(before).get(
        "l2", {}
    ).get("hits", 0)
    (c0, e0, s0), (c1, e1, s1) = _link(before), _link(after)
    for column in (L1, L2, BASE):
        _hit_figures(figures, column, results[column])
    for column in (L1, L2):
        figures.add(HITS, column, "ratio to (iii), req/s", results[column].rps / results[BASE].rps)
        figures.add(
            HITS,
            column,
            "ratio to (iii), per CPU-second",
            results[column].per_cpu_second / results[BASE].per_cpu_second,
        )
    figures.add(HITS, L2, "B's l2.hits during the run", l2_hits)
    l1_calls = (l1_after[0] - l1_before[0]) / (HOT_ROUNDS * requests + WARM_REQUESTS)
    figures.add(HITS, L1, "B's redis commands per read", l1_calls)
    figures.add(HITS, L2, "B's redis commands per read", (c1 - c0) / requests)
    figures.add(HITS, L2, "B's redis command mean ms", 1000 * (s1 - s0) / max(1, c1 - c0))
    figures.add(HITS, L2, "B's redis errors (100ms timeout)", e1 - e0)
    figures.add(HITS, L2, "redis-server CPU %", redis_pct)
    for column, result in (("fleet A (L1 + L2, lease)", fill), ("memory-only", memory_fill)):
        figures.add(FILLS, column, "fills/s", result.rps)
        figures.add(FILLS, column, "fills per instance CPU-second", result.per_cpu_second)
        figures.add(FILLS, column, "client p50 ms", _pct(result.latencies_ms, 50))
        figures.add(FILLS, column, "client p99 ms", _pct(result.latencies_ms, 99))
        figures.add(FILLS, column, "instance CPU %", result.cpu_pct)
        not_miss = sum(n for k, n in result.answers.items() if k != "200 MISS")
        figures.add(FILLS, column, "non-MISS answers + errors", result.errors.total() + not_miss)
    figures.add(FILLS, "fleet A (L1 + L2, lease)", "redis commands per fill",
                (a_after[0] - a_before[0]) / requests)
    for column in (L1, L2, BASE):
        result = results[column]
        print(
            f"    {column}: {result.rps:.0f} req/s, {result.per_cpu_second:.0f} per instance"
            f" CPU-second; instance CPU {result.cpu_pct:.0f}%, client CPU"
            f" {result.client_pct:.0f}%; {result.describe()}"
            + (
                "; rounds " + ", ".join(f"{v:.0f}" for v in rounds[column]) + " req/s"
                if column in rounds
                else ""
            ),
            flush=True,
        )
    print(
        f"    fills through memory-only: {memory_fill.rps:.0f} req/s,"
        f" {memory_fill.per_cpu_second:.0f} per CPU-second ({memory_fill.describe()})\n"
        f"    L2 pre-fill through A: {fill.rps:.0f} req/s, {fill.per_cpu_second:.0f} per A"
        f" CPU-second, {(a_after[0] - a_before[0]) / requests:.1f} redis commands per fill,"
        f" A's redis errors or busy +{a_after[1] - a_before[1]} ({fill.describe()});"
        f" B's l2.hits +{l2_hits} for {requests} reads, redis errors +{e1 - e0}",
        flush=True,
    )


# ---------------------------------------------------------------- 4. Redis killed

KILL = "4. redis SIGKILLed mid-load"


def _log_size(svc: h.Service) -> int:
    try:
        return svc.log_path.stat().st_size
    except OSError:
        return 0


def _log_since(svc: h.Service, offset: int) -> list[str]:
    """What the instance logged (WARNING and up) since `offset`: one line per record, the
    timestamp cut off (a traceback's lines are left out)."""
    try:
        with svc.log_path.open("rb") as log:
            log.seek(offset)
            text = log.read().decode(errors="replace")
    except OSError:
        return []
    return [line[24:] for line in text.splitlines() if line[:2].isdigit()]


def _per_key(per_path: dict[str, int], paths: Sequence[str]) -> float:
    """Mean origin fetches of the keys in `paths` (a key's third asker may still be pending
    when the load ends: then it was asked fewer than three times)."""
    return statistics.mean(per_path.get(p, 0) for p in paths) if paths else float("nan")


async def redis_kill(
    figures: Figures,
    origin: h.Service,
    fleet: Sequence[h.Service],
    redis: h.Service,
    seconds: float,
    tag: str,
) -> None:
    """Closed-loop mixed load; redis-server SIGKILLed halfway; every answer counted."""
    hot = [f"/fast/kill-hot-{tag}-{k}" for k in range(HOT_KEYS)]
    rng = random.Random(13)
    drawn = cold = 0
    samples: list[tuple[h.Sample, bool]] = []  # sample, cold
    first_asked: dict[str, float] = {}  # cold path: when its first request left
    async with session() as http:
        for path in hot:
            for svc in fleet:
                await h.fetch(http, svc.url + path)
        await origin_reset(http, origin)
        logs = [_log_size(svc) for svc in fleet]
        deadline = time.perf_counter() + seconds

        async def loop() -> None:
            nonlocal drawn, cold
            while time.perf_counter() < deadline:
                if rng.random() < COLD_SHARE:  # each cold key: asked once on each instance
                    svc = fleet[cold % len(fleet)]
                    path, is_cold = f"/slow/kill-cold-{tag}-{cold // len(fleet)}", True
                    cold += 1
                    first_asked.setdefault(path, time.perf_counter())
                else:
                    svc = fleet[drawn % len(fleet)]
                    drawn += 1
                    path, is_cold = rng.choice(hot), False
                samples.append((await h.fetch(http, svc.url + path), is_cold))

        async def kill() -> float:
            await asyncio.sleep(seconds / 2)
            at = time.perf_counter()
            redis.proc.kill()  # SIGKILL: connections reset, as in a crash
            redis.proc.wait(h.STOP_TIMEOUT)
            return at

        killing = asyncio.create_task(kill())
        await asyncio.gather(*(loop() for _ in range(KILL_LOOPS)))
        killed_at = await killing
        found = await h.get_json(http, origin.url + "/__stats")
        origin_total, per_path = int(found["requests_total"]), found["paths"]
        after_stats = [await stats(http, svc) for svc in fleet]
    after = [(s, c) for s, c in samples if s.end > killed_at]
    bad_status = sum(1 for s, _ in samples if s.status not in (0, 200))
    client_errors = sum(1 for s, _ in samples if s.status == 0)

    settled = [p for p, at in first_asked.items() if at < killed_at - SETTLED]
    after_kill = [p for p, at in first_asked.items() if at >= killed_at]

    def latencies(cold: bool) -> list[float]:
        return [s.latency_ms for s, c in after if c == cold and s.ok]

    column = f"{seconds:g} s, {KILL_LOOPS} loops"
    for row, value in (
        ("requests", len(samples)),
        ("non-200 answers", bad_status),
        ("client errors", client_errors),
        ("requests answered after the kill", len(after)),
        ("after the kill: hot key p99 ms", _pct(latencies(False), 99)),
        ("after the kill: hot key max ms", _pct(latencies(False), 100)),
        ("after the kill: cold key p50 ms", _pct(latencies(True), 50)),
        ("after the kill: cold key max ms", _pct(latencies(True), 100)),
        ("cold keys asked (3 times each)", math.ceil(cold / len(fleet))),
        ("origin fetches per cold key, asked >1 s before", _per_key(per_path, settled)),
        ("origin fetches per cold key, asked after", _per_key(per_path, after_kill)),
        ("origin requests during the load", origin_total),
    ):
        figures.add(KILL, column, row, value)
    redis_state = "; ".join(
        f"{name}: available {fleet_of(s).get('redis', {}).get('available')},"
        f" errors {fleet_of(s).get('redis', {}).get('errors')}"
        for name, s in zip(NAMES, after_stats, strict=True)
    )
    x_cache = Counter(s.x_cache for s, _ in after if s.ok)
    slow = sum(1 for s, _ in after if s.latency_ms > 1000)
    print(
        f"    {len(samples)} requests, {len(after)} after the kill; non-200 {bad_status},"
        f" client errors {client_errors} ({_describe(_errors([s for s, _ in samples]))});"
        f" after the kill: X-Cache "
        + " ".join(f"{k}:{n}" for k, n in x_cache.most_common())
        + f", {slow} over 1 s; redis link: {redis_state}",
        flush=True,
    )
    for name, svc, offset in zip(NAMES, fleet, logs, strict=True):
        lines = _log_since(svc, offset)
        kinds = Counter(line[:110] for line in lines)
        shown = "; ".join(f"{k!r} x{n}" for k, n in kinds.most_common(4))
        print(f"    {name} logged {len(lines)} line(s): {shown or '-'}", flush=True)


# ---------------------------------------------------------------- the run


async def run_once(
    args: argparse.Namespace,
    stack: h.Stack,
    figures: Figures,
    origin: h.Service,
    memory_only: Sequence[h.Service],
    run: int,
) -> None:
    label = f"run {run}/{args.repeat}"
    tag = f"r{run}-{os.getpid()}"
    with h.phase(f"{label}: new redis-server and fleet of {len(NAMES)} gateway processes"):
        redis = stack.redis(f"r{run}")
        fleet = [spawn_gateway(stack, origin, f"fleet-{n}-r{run}", redis) for n in NAMES]
        async with session() as http:
            await wait_following(http, fleet)
    try:
        with h.phase(f"{label}: stampede, {args.clients} clients, 3 memory-only instances"):
            await stampede(figures, "(a) in-process only", origin, memory_only, args.clients,
                           f"mem-{tag}")
        with h.phase(f"{label}: stampede, {args.clients} clients, fleet"):
            await stampede(figures, "(b) fleet (redis)", origin, fleet, args.clients,
                           f"fleet-{tag}")
        with h.phase(f"{label}: {args.purges} purges through A"):
            await purges(figures, fleet, args.purges, tag)
        with h.phase(f"{label}: hit throughput, {args.hit_requests} GETs per case"):
            await hits(figures, fleet, redis, memory_only[0], args.hit_requests, tag)
        with h.phase(f"{label}: mixed load {args.kill_seconds:g} s, redis SIGKILLed halfway"):
            await redis_kill(figures, origin, fleet, redis, args.kill_seconds, tag)
    finally:
        stops = [stack.stop(svc) for svc in fleet]
        stack.stop(redis)
    figures.add(KILL, f"{args.kill_seconds:g} s, {KILL_LOOPS} loops",
                "fleet instance stop (SIGTERM) after, max s", max(stops))


async def bench(args: argparse.Namespace, stack: h.Stack, command: str) -> None:
    load_before = _load_avg()
    figures = Figures()
    with h.phase("starting the origin and 3 memory-only gateway processes"):
        script = h.REPO / "bench" / "_fleet.py"
        port = h.free_port()
        argv = [sys.executable, str(script), "--port", str(port), "--delay", str(ORIGIN_DELAY)]
        argv += ["--kib", str(BODY_KIB)]
        origin = stack.spawn("origin", argv, port, "/healthz")
        memory_only = [spawn_gateway(stack, origin, f"memory-{n}", None) for n in NAMES]
    started = time.perf_counter()
    for run in range(1, args.repeat + 1):
        await run_once(args, stack, figures, origin, memory_only, run)
    report(args, figures, command, load_before, time.perf_counter() - started)


def report(
    args: argparse.Namespace, figures: Figures, command: str, load_before: str, wall: float
) -> None:
    print("\ncommand: " + command)
    print(h.machine_note())
    print(f"load average (1, 5, 15 min): {load_before} before, {_load_avg()} after;"
          f" cases took {wall:.0f} s")
    print(
        f"origin: bench/_fleet.py, /slow/ after {ORIGIN_DELAY:g} s, {BODY_KIB} KiB,"
        " Cache-Control: max-age=60; gateways: one `python -m gateway` process each, Host:"
        f" {FLEET_HOST}; fleet: redis-server (no persistence), redis timeout 100ms, block 2s,"
        " lease 5s; a new redis-server and fleet per run"
    )
    what = (
        f"median (min-max) of {args.repeat} runs"
        if args.repeat > 1
        else "ONE run, not a median" + (" (--quick)" if args.quick else "")
    )
    for title, rows in figures.tables.items():
        columns = figures.columns[title]
        table = [
            [row, *[h.spread(values.get(c, []), _fmt(row)) for c in columns]]
            for row, values in rows.items()
        ]
        h.print_table(f"{title}; {what}", columns, table)
    print(
        "\nstampede: delay beyond origin = from the burst's start (every client leaves at once)"
        " to each answer, minus the origin's 0.5 s; it includes the client's own cost of sending"
        f" {args.clients} requests and reading {args.clients} answers on one loop. purge:"
        " 'applied' is polled through /admin/stats, an upper bound (resolution: one stats call);"
        " lag_seconds is each instance's own time of application minus the stream entry's id"
        " (millisecond resolution). hits: one instance at a time, a lean keep-alive client,"
        f" {HIT_CONNECTIONS} connections; with instance CPU near 100% the instance was the limit;"
        " req/s per instance CPU-second is its capacity on one core whatever the client did."
        " redis kill: a closed loop, so slow answers lower the request count; the breaker and"
        " the log lines are in the progress output above."
    )
    print("command: " + command)


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    command = shlex.join([sys.executable, *sys.argv])
    print("command: " + command)
    print(h.machine_note() + f"; load average (1, 5, 15 min): {_load_avg()}", flush=True)
    h.run_bench(lambda stack: bench(args, stack, command))


if __name__ == "__main__":
    main()
