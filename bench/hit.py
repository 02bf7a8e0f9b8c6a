"""Cache-hit throughput: the gateway next to nginx proxy_cache (and a minimal dict cache) in
front of the same origin, in one run; plus the gateway's pass-through route, so the cost of
the cache path shows as a ratio.

Why side by side: this machine has 2 noisy cores, so absolute req/s move from run to run; the
gateway's req/s as a fraction of nginx's, measured seconds apart in the same run, is the figure
that counts. nginx runs one worker because the gateway is one process on one event loop. The
dict cache (bench/_dictcache.py) is what bare aiohttp reaches on the same loop: the ceiling for
any Python cache path.

Cases (each warmed first, then checked to answer X-Cache: HIT, then loaded for --duration):
  hot key     one published bundle (~30-60 KB), every request the same URL
  N keys      --keys published bundles, requested round-robin
  pass        the same bundle through a `cache: false` route (Host: pass.bench): every request
              goes to the origin, so this is origin-bound (a DB query per request)
  pass small  /healthz through the same route: a tiny body and almost no origin work, so it
              shows what one proxy hop costs the gateway itself

With --workers N the hit cases run again on the gateway with `workers: N` (its workers share
a redis-server, as a fleet) and on nginx with N worker processes, wrk with N threads: how the
hit rate scales with the cores.

`--server aiohttp|native` chooses the gateway's client-facing layer (the config's `server`).

    .venv/bin/python bench/hit.py [--duration 5] [--connections 50] [--keys 1000] [--workers 2]
                                  [--server native]
"""

from __future__ import annotations

import argparse
import asyncio
import re
import shutil
import subprocess
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import _harness as h
import aiohttp

WRK_SCRIPT = """\
local paths = {{}}
for line in io.lines("{paths}") do paths[#paths + 1] = line end
local i = 0
request = function()
  i = i % #paths + 1
  return wrk.format(nil, paths[i])
end
"""
_UNITS = {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60_000.0}
_DURATION = r"([\d.]+)(us|ms|s|m)\b"


@dataclass
class Load:
    """What one bounded load run measured."""

    rps: float
    p50_ms: float
    p99_ms: float
    max_ms: float
    requests: int
    errors: int


@dataclass
class Run:
    """One row of the report: a target under one case, with the origin's view of it."""

    case: str
    target: str
    load: Load
    origin_requests: int
    cpu_pct: float
    rss: str = "-"


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = h.arg_parser(__doc__)
    parser.add_argument("--duration", type=int, default=5, help="seconds per run")
    parser.add_argument("--connections", type=int, default=50, help="concurrent connections")
    parser.add_argument("--keys", type=int, default=1000, help="keys of the many-keys case")
    parser.add_argument(
        "--tool", choices=("auto", "wrk", "python"), default="auto", help="load generator"
    )
    parser.add_argument("--no-nginx", action="store_true", help="skip the nginx column")
    parser.add_argument(
        "--workers", type=int, default=1,
        help="also run the hit cases on the gateway with `workers: N` (and a redis-server) and"
        " on nginx with N worker processes, loaded by wrk with N threads",
    )
    parser.add_argument(
        "--server", choices=("aiohttp", "native"), default=None,
        help="the gateway's client-facing layer (default: the config's `server`)",
    )
    args = parser.parse_args(argv)
    if args.workers < 1:
        parser.error("--workers must be at least 1")
    return args


# ---------------------------------------------------------------- load generators


def wrk_load(
    url: str,
    paths: Sequence[str],
    args: argparse.Namespace,
    workdir: Path,
    host: str | None,
    threads: int = 1,
) -> Load:
    """wrk -t1 (one client core, leaving the other to the server), bounded by -d; more threads
    for servers of several processes."""
    paths_file = workdir / "wrk-paths.txt"
    paths_file.write_text("\n".join(paths) + "\n")
    script = workdir / "wrk-paths.lua"
    script.write_text(WRK_SCRIPT.format(paths=paths_file))
    argv = ["wrk", f"-t{threads}", f"-c{args.connections}", f"-d{args.duration}s", "--latency"]
    argv += ["--timeout", "10s", "-s", str(script)]
    if host is not None:
        argv += ["-H", f"Host: {host}"]
    out = subprocess.run(
        [*argv, url], capture_output=True, text=True, timeout=args.duration + 60, check=True
    ).stdout
    return parse_wrk(out)


def _ms(value: str, unit: str) -> float:
    return float(value) * _UNITS[unit]


def parse_wrk(out: str) -> Load:
    """The figures of `wrk --latency` output (latency units us/ms/s normalised to ms)."""

    def pct(p: str) -> float:
        m = re.search(rf"^\s+{p}%\s+{_DURATION}", out, re.M)
        return _ms(*m.groups()) if m else float("nan")

    rps = re.search(r"Requests/sec:\s+([\d.]+)", out)
    latency = re.search(rf"^\s+Latency\s+\S+\s+\S+\s+{_DURATION}", out, re.M)
    requests = re.search(r"(\d+) requests in", out)
    non_2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    sockets = re.search(
        r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out
    )
    if rps is None or requests is None:
        raise RuntimeError(f"unexpected wrk output:\n{out}")
    errors = int(non_2xx.group(1)) if non_2xx else 0
    errors += sum(int(n) for n in sockets.groups()) if sockets else 0
    return Load(
        rps=float(rps.group(1)),
        p50_ms=pct("50"),
        p99_ms=pct("99"),
        max_ms=_ms(*latency.groups()) if latency else float("nan"),
        requests=int(requests.group(1)),
        errors=errors,
    )


async def python_load(
    url: str, paths: Sequence[str], args: argparse.Namespace, host: str | None
) -> Load:
    """Fallback without wrk: `connections` workers until the deadline. The Python client shares
    the cores and tops out early, so its req/s are a floor, good only for ratios."""
    headers = {"Host": host} if host else None
    latencies: list[float] = []
    errors = 0
    counter = 0
    deadline = time.perf_counter() + args.duration

    async def worker(session: aiohttp.ClientSession) -> None:
        nonlocal errors, counter
        while time.perf_counter() < deadline:
            counter += 1
            sample = await h.fetch(session, url + paths[counter % len(paths)], headers)
            latencies.append(sample.latency_ms)
            errors += not sample.ok

    start = time.perf_counter()
    async with h.client_session(args.connections) as session:
        await asyncio.gather(*(worker(session) for _ in range(args.connections)))
    elapsed = time.perf_counter() - start
    return Load(
        rps=len(latencies) / elapsed,
        p50_ms=h.percentile(latencies, 50),
        p99_ms=h.percentile(latencies, 99),
        max_ms=max(latencies, default=float("nan")),
        requests=len(latencies),
        errors=errors,
    )


# ---------------------------------------------------------------- the run


@dataclass(frozen=True)
class Case:
    """A set of paths loaded round-robin; `pass_through` sends Host: pass.bench, which selects
    the `cache: false` route on the gateway and the plain proxy server on nginx."""

    name: str
    paths: list[str]
    pass_through: bool = False
    threads: int = 1  # wrk threads: one per server process in the --workers cases


async def warm(
    session: aiohttp.ClientSession, service: h.Service, paths: Sequence[str]
) -> tuple[int, int]:
    """Fill the cache for every path, then count how many answer X-Cache: HIT (of how many)."""
    limit = asyncio.Semaphore(20)

    async def get(path: str) -> h.Sample:
        async with limit:
            return await h.fetch(session, service.url + path)

    await asyncio.gather(*(get(p) for p in paths))
    checks = await asyncio.gather(*(get(p) for p in paths))
    return sum(s.x_cache == "HIT" for s in checks), len(checks)


@dataclass
class Bench:
    """The stack of one run and how to load it; collects one Run per (case, target)."""

    args: argparse.Namespace
    tool: str
    stack: h.Stack
    origin: h.Service
    runs: list[Run] = field(default_factory=list)

    async def measure(self, case: Case, name: str, svc: h.Service) -> None:
        """One bounded load run, with the origin's request count and the server's CPU."""
        host = h.PASS_HOST if case.pass_through and svc is not self.origin else None
        async with h.client_session() as session:
            await h.origin_stats(session, self.origin, reset=True)
        rss_before, cpu_before = svc.rss_mib(), svc.cpu_seconds()
        with h.phase(f"{case.name}: {name} for {self.args.duration}s"):
            if self.tool == "wrk":
                load = await asyncio.to_thread(
                    wrk_load, svc.url, case.paths, self.args, self.stack.dir, host, case.threads
                )
            else:
                load = await python_load(svc.url, case.paths, self.args, host)
        cpu = (svc.cpu_seconds() - cpu_before) / self.args.duration * 100
        async with h.client_session() as session:
            origin_requests = (await h.origin_stats(session, self.origin))["requests_total"]
        rss = "-"
        if svc.name.startswith("gateway"):
            rss = f"{h.fmt_mib(rss_before)} -> {h.fmt_mib(svc.rss_mib())}"
        self.runs.append(Run(case.name, name, load, origin_requests, cpu, rss))

    async def hits(self, cases: Sequence[Case], caches: dict[str, h.Service | None]) -> None:
        """Each case on each cache: warmed (and checked to answer HIT), then loaded."""
        for case in cases:
            async with h.client_session() as session:
                for name, svc in caches.items():
                    if svc is not None:
                        with h.phase(f"warming {len(case.paths)} key(s) on {name}"):
                            hits, total = await warm(session, svc, case.paths)
                        print(f"    X-Cache: HIT on {hits}/{total} before measuring")
            for name, svc in caches.items():
                if svc is not None:
                    await self.measure(case, name, svc)


async def bench(args: argparse.Namespace, stack: h.Stack) -> None:
    tool = args.tool
    if tool == "auto":
        tool = "wrk" if shutil.which("wrk") else "python"
    if tool == "wrk" and not shutil.which("wrk"):
        raise SystemExit("wrk is not installed (apt-get install -y wrk); try --tool python")

    with h.phase("starting origin, gateway, nginx and the reference dict cache"):
        origin = stack.origin(codegen_seconds=0, projects=args.keys, s_maxage=3600)
        gateway = stack.gateway(origin, server=args.server)
        nginx = None if args.no_nginx else stack.nginx(origin)
        dict_cache = stack.dict_cache(origin)
    run = Bench(args, tool, stack, origin)
    caches = {"gateway": gateway, "nginx": nginx, "dict-cache": dict_cache}
    proxies = {"gateway": gateway, "nginx": nginx, "origin": origin}

    hot = Case("hot key", [h.bundle_path("p1")])
    many = Case(f"{args.keys} keys", [h.bundle_path(f"p{i}") for i in range(1, args.keys + 1)])
    await run.hits((hot, many), caches)
    for case in (Case("pass bundle", hot.paths, True), Case("pass small", ["/healthz"], True)):
        for name, svc in proxies.items():
            if svc is not None:
                await run.measure(case, name, svc)
    if args.workers > 1:
        n = args.workers
        with h.phase(f"starting the gateway and nginx with {n} workers"):
            several = {f"gateway x{n}": stack.gateway(origin, n, args.server)}
            nginx_n = None if args.no_nginx else stack.nginx(origin, n)
            if nginx_n is not None:
                several[f"nginx x{n}"] = nginx_n
        cases = [Case(f"{c.name} x{n}", c.paths, threads=n) for c in (hot, many)]
        await run.hits(cases, several)
    report(args, tool, run.runs, nginx is not None)


def report(args: argparse.Namespace, tool: str, runs: list[Run], with_nginx: bool) -> None:
    print("\n" + h.machine_note())
    if tool == "wrk":
        print(f"load: wrk -t1 -c{args.connections} -d{args.duration}s --latency, paths round-robin")
    else:
        print(f"load: Python client, {args.connections} connections, {args.duration}s (no wrk)")
    if with_nginx:
        print("nginx: proxy_cache, worker_processes 1 (one core each: the gateway is one process)")
    else:
        print("nginx: not installed (apt-get install -y nginx) or --no-nginx: column skipped")
    print(f"gateway: server: {args.server or 'as configured'} (the client-facing layer)")
    rows = [
        [
            f"{r.case} / {r.target}",
            f"{r.load.rps:.0f}",
            h.fmt_ms(r.load.p50_ms),
            h.fmt_ms(r.load.p99_ms),
            h.fmt_ms(r.load.max_ms),
            str(r.load.errors),
            f"{r.cpu_pct:.0f}",
            str(r.origin_requests),
            r.rss,
        ]
        for r in runs
    ]
    columns = ["req/s", "p50 ms", "p99 ms", "max ms", "errors", "CPU %", "origin reqs", "RSS MiB"]
    h.print_table("throughput", columns, rows)
    print(
        "  CPU %: the target's own CPU (100 = one core busy); origin reqs: requests that reached"
        " the origin during the run (it does not count /healthz); RSS: gateway, before -> after"
    )

    rps = {(r.case, r.target): r.load.rps for r in runs}
    keys = f"{args.keys} keys"
    pairs = [
        ("gateway hit / nginx hit, hot key", "hot key", "gateway", "hot key", "nginx"),
        (f"gateway hit / nginx hit, {keys}", keys, "gateway", keys, "nginx"),
        ("dict-cache hit / nginx hit, hot key", "hot key", "dict-cache", "hot key", "nginx"),
        ("gateway hit / dict-cache hit, hot key", "hot key", "gateway", "hot key", "dict-cache"),
        ("gateway hit / gateway pass, bundle", "hot key", "gateway", "pass bundle", "gateway"),
        ("gateway hit / gateway pass, small", "hot key", "gateway", "pass small", "gateway"),
        ("gateway pass / nginx pass, small", "pass small", "gateway", "pass small", "nginx"),
    ]
    n = args.workers
    if n > 1:
        pairs += [
            (f"gateway x{n} / gateway x1, hot key", f"hot key x{n}", f"gateway x{n}", "hot key",
             "gateway"),
            (f"nginx x{n} / nginx x1, hot key", f"hot key x{n}", f"nginx x{n}", "hot key", "nginx"),
            (f"gateway x{n} / nginx x{n}, hot key", f"hot key x{n}", f"gateway x{n}",
             f"hot key x{n}", f"nginx x{n}"),
            (f"gateway x{n} / nginx x{n}, {keys}", f"{keys} x{n}", f"gateway x{n}", f"{keys} x{n}",
             f"nginx x{n}"),
        ]
    ratios = []
    for label, case_a, a, case_b, b in pairs:
        num, den = rps.get((case_a, a)), rps.get((case_b, b))
        ratios.append([label, f"{num / den:.2f}x" if num and den else "-"])
    title = "ratios of req/s (same run; the first two are the figures that count)"
    h.print_table(title, ["ratio"], ratios)


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    h.run_bench(lambda stack: bench(args, stack))


if __name__ == "__main__":
    main()
