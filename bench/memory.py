"""Memory and garbage collection of the in-process cache, filled as fills fill it (issue 12).

Why: the store's byte bound is only a bound if each entry is charged what it really costs, and
a cache of a million entries must not make the garbage collector stop every request for a
second. This drives `--objects` distinct small objects (200 B - 2 KiB bodies), then `--large`
objects of 1 MiB, through the memory tier of a real `Gateway` with `max_bytes: 256MiB`, and
prints what the process holds and how long collections take.

How an object is stored is what a fill does, minus the sockets: a request for a loader bundle
URL is parsed (`parse_target`), routed and located (`Gateway.router`, `Cache.locate`: tenant,
primary key), its Vary record read, the store asked (a miss); a loader origin's response head
is parsed by aiohttp's own HTTP parser (so header values are separate strings, as in a real
fill), analysed and turned into the entry by the gateway's `Filler`, its Vary record stored,
its body attached and the entry put. An HTTP round trip per object would take this to ~10 min
per million (1,700 fills/s, docs/benchmarks.md) and measure the client, not the store.

Each case runs in a process of its own, so that one case's heap does not inflate the next
one's peak RSS:

- `one-tenant`: every object in one project (tenant), no quota;
- `tenants`: the objects spread over `--tenants` projects, each with config/gateway.yaml's
  default quota (64 MiB), so each has its own admission space;
- `large`: only the large objects, in a process that has held nothing else (in the two cases
  above they come after the small ones, into a heap the small ones fragmented);
- `trace`: one tenant again under `tracemalloc`, filled past full, then emptied: what the
  store held by tracemalloc's count against what it charged (`--trace-objects` objects, then
  `--trace-large` large ones in a fresh store); tracemalloc's own bookkeeping would distort
  the RSS of the other cases.

The gateway is built as `serve` builds it, and what `serve` does once it listens is done too
(`gcwatch.after_start`: a full collection, then `gc.freeze()`; `--no-start-up` skips it, for
a tree that has no such step). In each case the collector is watched (`gc.callbacks`) while the
cache fills and during a steady phase with the cache full (`--steady` more fills and as many
lookups of recent objects); then each generation is collected by hand (`gc.collect(n)`, the
longest of 3) with the cache full. Large objects are asked for `LARGE_ASKED` times before their
fill: W-TinyLFU rightly refuses a 1 MiB object asked for once when that means evicting a
thousand small ones asked for as often.

    .venv/bin/python bench/memory.py [--objects 1000000] [--large 2000] [--tenants 1000]
        [--only one-tenant,tenants,large,trace] [--gc-threshold N0,N1,N2] [--json]

About 25 minutes on the machine of docs/benchmarks.md (a fill costs ~0.3 ms of Python).
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import random
import subprocess
import sys
import time
import tracemalloc
from dataclasses import dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from aiohttp.http_parser import HttpResponseParser
from multidict import CIMultiDict

from gateway import gcwatch, heap, policy
from gateway.canonical import client_fields, parse_target
from gateway.config import GatewayConfig
from gateway.exchange import Incoming
from gateway.key import vary_record_key
from gateway.server import Gateway

MIB = 1 << 20
LARGE_ASKED = 3  # misses before a large object's fill: enough to win its admission
MAX_BYTES = 256 * MIB
CASES = ("one-tenant", "tenants", "large", "trace")
HOST = "loader.bench"
CLIENT_FIELDS = (
    ("Host", HOST),
    ("User-Agent", "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 Chrome/126.0 Safari/537.36"),
    ("Accept", "*/*"),
    ("Accept-Encoding", "gzip, deflate, br"),
    ("Accept-Language", "en-GB,en;q=0.9"),
)


def config(tenant_quota: bool) -> GatewayConfig:
    """config/gateway.yaml's loader route and cache, 256 MiB; the origin is never contacted."""
    return GatewayConfig.model_validate({
        "access_log": "off",
        "cache": {
            "name": "edge",
            "memory": {"max_bytes": MAX_BYTES, "max_object_bytes": 16 * MIB},
            "cache_bust": "1",
        },
        "origins": {"loader": {"url": "http://127.0.0.1:9"}},
        "tenants": {"default": {"max_bytes": 64 * MIB}} if tenant_quota else {},
        "routes": [{
            "name": "loader-code",
            "match": {"host": "*", "path_prefix": "/api/v1/loader/"},
            "origin": "loader",
            "tenant": {"query": "projectId"},
            "cache": {"ignore_query": ["utm_*"], "stale_while_revalidate": 60,
                      "stale_if_error": 300, "stale_overrides_origin": True},
        }],
    })


@dataclass
class _Timing:
    """What `Filler` reads of an origin response to build an entry."""

    request_time: float
    response_time: float


class Driver:
    """Stores objects into a gateway's memory tier the way a fill does (see the docstring)."""

    def __init__(self, gateway: Gateway, seed: int) -> None:
        self.gateway = gateway
        self.store = gateway.store
        self.rnd = random.Random(seed)
        self.noise = self.rnd.randbytes(4 * MIB + 4096)
        self.parser_protocol = object()
        self.loop = asyncio.get_running_loop()

    def _head(self, i: int, project: str, length: int, coded: bool) -> bytes:
        """A loader origin's answer (origin/app.py `_bundle_response`, behind aiohttp)."""
        now = time.time()
        date = time.strftime("%a, %d %b %Y %H:%M:%S GMT", time.gmtime(now))
        published = time.strftime("%a, %d %b %Y %H:%M:%S GMT", time.gmtime(now - 3600 - i % 997))
        lines = [
            "HTTP/1.1 200 OK",
            "Content-Type: application/javascript; charset=utf-8",
            f"Content-Length: {length}",
            "Cache-Control: public, s-maxage=30, stale-while-revalidate=60",
            f'ETag: "{i:08x}-{self.rnd.getrandbits(64):016x}"',
            f"Last-Modified: {published}",
            f"Surrogate-Key: project:{project} project:{project}:v{i % 7}",
            f"Date: {date}",
            "Server: Python/3.11 aiohttp/3.14",
        ]
        if coded:
            lines.append("Content-Encoding: gzip")
        return ("\r\n".join(lines) + "\r\n\r\n").encode()

    def _body(self, length: int) -> bytes:
        start = self.rnd.randrange(0, len(self.noise) - length)
        return self.noise[start : start + length]  # a copy of its own, as a fill's body is

    async def fill(self, i: int, project: str, length: int, asked: int = 1) -> bool:
        """A cold object asked for `asked` times (misses: its popularity), then its fill;
        True when stored."""
        store, cache = self.store, self.gateway.cache
        path = f"/api/v1/loader/code/published?projectId={project}&platform=react&build={i}"
        fields = client_fields(CIMultiDict(CLIENT_FIELDS))
        req = Incoming("GET", parse_target(path, HOST, "http"), fields, "10.0.0.7")
        route = self.gateway.router.match(req.target.hostname, req.target.path, "GET")
        assert route is not None
        look = cache.locate(req, route)
        look.vary_on(await store.get_vary(vary_record_key(look.tenant, look.url)) or ())
        for _ in range(asked):
            assert await store.get(look.key) is None
        coded = i % 4 == 0  # a quarter gzip-coded: Vary: Accept-Encoding, a secondary key
        parser = HttpResponseParser(self.parser_protocol, self.loop, 2**16,
                                    response_with_body=False)
        message = parser.feed_data(self._head(i, project, length, coded))[0][0][0]
        rh = CIMultiDict(message.headers)  # OriginResponse's own copy
        timing = _Timing(time.time(), time.time())
        if policy.coded_without_vary(rh):
            rh.add("Vary", "Accept-Encoding")
        filler = cache.filler
        analysis = filler._analyse(look, 200, rh, timing)  # type: ignore[arg-type]
        entry = filler._entry(look, 200, rh, timing, 0, analysis=analysis)  # type: ignore[arg-type]
        await store.set_vary(vary_record_key(look.tenant, look.url), entry.vary)
        entry.body = self._body(length)
        return await store.put(entry)

    async def hit(self, i: int, project: str) -> bool:
        """One request for an object stored before: the lookups of a hit."""
        path = f"/api/v1/loader/code/published?projectId={project}&platform=react&build={i}"
        fields = client_fields(CIMultiDict(CLIENT_FIELDS))
        req = Incoming("GET", parse_target(path, HOST, "http"), fields, "10.0.0.7")
        route = self.gateway.router.match(req.target.hostname, req.target.path, "GET")
        assert route is not None
        look = self.gateway.cache.locate(req, route)
        look.vary_on(await self.store.get_vary(vary_record_key(look.tenant, look.url)) or ())
        return await self.store.get(look.key) is not None


def rss() -> dict[str, float]:
    """Current and peak resident set (MiB), from /proc/self/status."""
    out = {}
    for line in Path("/proc/self/status").read_text().splitlines():
        name, _, value = line.partition(":")
        if name in ("VmRSS", "VmHWM"):
            out["rss" if name == "VmRSS" else "peak"] = int(value.split()[0]) / 1024
    return out


def reset_peak() -> None:
    """Start VmHWM again from the current RSS (Linux: clear_refs 5)."""
    Path("/proc/self/clear_refs").write_text("5")


def pauses(recorder: gcwatch.PauseRecorder) -> dict[str, Any]:
    return {
        "count": recorder.count[:],
        "p50_ms": recorder.percentile(0.5) * 1e3,
        "p99_ms": recorder.percentile(0.99) * 1e3,
        "max_ms": max(recorder.longest) * 1e3,
        "max_by_gen_ms": [x * 1e3 for x in recorder.longest],
        "total_s": sum(recorder.total),
    }


def held(gateway: Gateway) -> dict[str, Any]:
    stats = gateway.store.stats()
    return {
        "entries": stats["entries"],
        "accounted_mib": (stats["bytes"] + stats["vary_bytes"]
                          + stats.get("overhead_bytes", 0)) / MIB,
        "entry_bytes_mib": stats["bytes"] / MIB,
        "vary_mib": stats["vary_bytes"] / MIB,
        "vary_entries": stats["vary_entries"],
        "evictions": stats["evictions"],
        "tracked_objects": len(gc.get_objects()),
        "heap_trims": gateway.trimmer.trims,
    }


def forced() -> dict[str, float]:
    """The longest of 3 timed `gc.collect(n)` per generation (ms), with the cache as it is."""
    out = {}
    for generation in range(3):
        times = []
        for _ in range(3):
            started = time.perf_counter()
            gc.collect(generation)
            times.append((time.perf_counter() - started) * 1e3)
        out[f"gen{generation}_ms"] = max(times)
    return out


async def upkeep(gateway: Gateway) -> None:
    """What the gateway's once-a-second task does (a heap trim when due), after each object
    stored: the fills here do not yield to the event loop that would run it. (A real gateway
    looks a second late at most: ~1,700 small fills, or about one trim's threshold.)"""
    await gateway.trimmer.check()


def small_length(rnd: random.Random) -> int:
    return rnd.randint(200, 2048)


async def run_case(args: argparse.Namespace, case: str) -> dict[str, Any]:
    if not args.no_start_up:
        heap.tune()  # what `serve` does first
    gateway = Gateway(config(tenant_quota=case == "tenants"))
    if not args.no_start_up:
        gcwatch.after_start()  # what `serve` does once it listens
    if args.gc_threshold:
        gc.set_threshold(*(int(n) for n in args.gc_threshold.split(",")))
    driver = Driver(gateway, args.seed)
    recorder = gcwatch.PauseRecorder().install()
    projects = args.tenants if case == "tenants" else 1
    result: dict[str, Any] = {"case": case, "start": rss()}

    def project(i: int) -> str:
        return f"p{i % projects:05d}"

    reset_peak()
    began = time.perf_counter()
    small = 0 if case == "large" else args.objects  # `large`: 1 MiB objects in a new process
    for i in range(small):
        await driver.fill(i, project(i), small_length(driver.rnd))
        await upkeep(gateway)
    result["fill_seconds"] = time.perf_counter() - began
    if small:
        result["small"] = {**held(gateway), **rss(), "gc_fill": pauses(recorder)}
        recorder.reset()
        for j in range(args.steady):  # the cache full: new objects and hits on recent ones
            i = args.objects + j
            await driver.fill(i, project(i), small_length(driver.rnd))
            await driver.hit(i - driver.rnd.randrange(1, 2000), project(i))
            await upkeep(gateway)
        result["small"]["gc_steady"] = pauses(recorder)
        recorder.uninstall()
        result["small"]["gc_forced"] = forced()
        recorder.reset()
        recorder.install()
        reset_peak()
    for k in range(args.large):  # popular ones: W-TinyLFU refuses a one-off 1 MiB object
        i = args.objects + args.steady + k
        await driver.fill(i, project(i), MIB, asked=LARGE_ASKED)
        await upkeep(gateway)
    result["large"] = {**held(gateway), **rss(), "gc_fill": pauses(recorder)}
    recorder.uninstall()
    result["large"]["gc_forced"] = forced()
    return result


async def traced_case(args: argparse.Namespace) -> dict[str, Any]:
    """Accounted against traced bytes: small objects past full, then large ones."""
    out: dict[str, Any] = {"case": "trace"}
    for label, count, length in (
        ("small", args.trace_objects, small_length),
        ("large", args.trace_large, lambda rnd: MIB),
    ):
        gc.collect()
        tracemalloc.start()
        base = tracemalloc.get_traced_memory()[0]
        gateway = Gateway(config(tenant_quota=False))
        driver = Driver(gateway, args.seed)
        empty = tracemalloc.get_traced_memory()[0]  # the gateway, before it holds anything
        for i in range(count):
            await driver.fill(i, "p00000", length(driver.rnd), asked=LARGE_ASKED)
        gateway.cache.locator.forget()  # the memo of recent URLs is not the store's
        gc.collect()
        full = tracemalloc.get_traced_memory()[0]
        figures = held(gateway)
        del gateway, driver
        gc.collect()
        gone = tracemalloc.get_traced_memory()[0]
        tracemalloc.stop()
        # What the gateway freed beyond its empty self: the entries, indexes, Vary records,
        # and the admission sketch as it grew.
        traced = (full - gone - (empty - base)) / MIB
        figures |= {"traced_mib": traced,
                    "accounted_over_traced": figures["accounted_mib"] / traced}
        out[label] = figures
    return out


def show(result: dict[str, Any]) -> None:
    case = result["case"]
    if case == "trace":
        for label in ("small", "large"):
            r = result[label]
            print(f"trace {label:5}: entries {r['entries']:>9,}"
                  f"  accounted {r['accounted_mib']:8.1f} MiB"
                  f"  traced {r['traced_mib']:8.1f} MiB  accounted/traced"
                  f" {r['accounted_over_traced']:.3f}")
        return
    print(f"{case}: start RSS {result['start']['rss']:.1f} MiB; {result['fill_seconds']:.1f} s"
          " to store the small objects")
    for label in ("small", "large"):
        if label not in result:
            continue
        r = result[label]
        print(f"  {label:5}: entries {r['entries']:>9,}  accounted {r['accounted_mib']:7.1f} MiB"
              f" (vary {r['vary_mib']:.1f})  RSS {r['rss']:7.1f} MiB  peak {r['peak']:7.1f} MiB"
              f"  tracked objects {r['tracked_objects']:,}  heap trims {r['heap_trims']}")
        for phase in ("gc_fill", "gc_steady"):
            if phase in r:
                p = r[phase]
                print(f"    GC pauses {phase[3:]:6}: count {p['count']}  p50 {p['p50_ms']:.3f} ms"
                      f"  p99 {p['p99_ms']:.3f} ms  max {p['max_ms']:.1f} ms"
                      f"  (by generation {', '.join(f'{x:.1f}' for x in p['max_by_gen_ms'])})"
                      f"  total {p['total_s']:.2f} s")
        f = r["gc_forced"]
        print(f"    gc.collect(n) with the cache full, ms: {f['gen0_ms']:.2f} / {f['gen1_ms']:.2f}"
              f" / {f['gen2_ms']:.1f}")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--objects", type=int, default=1_000_000)
    parser.add_argument("--large", type=int, default=2_000)
    parser.add_argument("--tenants", type=int, default=1_000)
    parser.add_argument("--steady", type=int, default=50_000)
    parser.add_argument("--trace-objects", type=int, default=300_000)
    parser.add_argument("--trace-large", type=int, default=400)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--only", default=",".join(CASES))
    parser.add_argument("--json", action="store_true", help="print the figures as JSON too")
    parser.add_argument("--no-start-up", action="store_true",
                        help="skip what `serve` does at start (malloc tuning, gc freeze)")
    parser.add_argument("--gc-threshold", metavar="N0,N1,N2",
                        help="gc.set_threshold for the cases (to compare settings)")
    parser.add_argument("--case", help=argparse.SUPPRESS)  # one case, in this process
    return parser.parse_args(argv)


def run_child(argv: list[str], case: str) -> dict[str, Any]:
    done = subprocess.run(
        [sys.executable, __file__, *argv, "--case", case],
        capture_output=True, text=True, check=False, timeout=1800,
    )
    if done.returncode != 0:
        raise SystemExit(f"case {case} failed:\n{done.stderr}")
    figures: dict[str, Any] = json.loads(done.stdout)
    return figures


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    if args.case is not None:
        case = traced_case(args) if args.case == "trace" else run_case(args, args.case)
        print(json.dumps(asyncio.run(case)))
        return 0
    load = Path("/proc/loadavg").read_text().split()[:3]
    print(f"load average before: {' '.join(load)}; max_bytes 256 MiB; objects {args.objects:,},"
          f" large {args.large:,}")
    results = []
    for case in args.only.split(","):
        result = run_child(argv, case)
        results.append(result)
        show(result)
    load = Path("/proc/loadavg").read_text().split()[:3]
    print(f"load average after: {' '.join(load)}")
    if args.json:
        print(json.dumps(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
