"""Which client-facing server layer? The same cache hit on each candidate, next to nginx, in one
run (issue 12, "Choose the client-facing server layer by numbers").

Every candidate serves the same stored responses (bench/_layers/entries.py): a 20 KiB and a
600 B body whose head is rendered once except Date, Age, Cache-Status and X-Cache, found in a
dict by the request target. Only the layer around that differs:

  a   aiohttp web.Application, one catch-all route            bench/_layers/aiohttp_layers.py
  b   aiohttp low-level web.Server, no router                 (what the gateway builds on)
  b+  gateway.listener.PublicServer: (b) plus the gateway's head timer and connection limit
  c   uvloop asyncio.Protocol + httptools (llhttp)            bench/_layers/protocols.py
  c'  the same on asyncio's own event loop instead of uvloop
  d   uvloop asyncio.Protocol + aiohttp's own C parser (llhttp vendored in aiohttp)
  e   socketify (uWebSockets, C), only with --socketify-python: a bound, not a candidate
  gw  the gateway itself at the working tree's code, the hit through its whole path
  gwn the same on its native client layer (`server: native`, gateway/client_protocol.py)
  and nginx, one worker, proxy_cache holding the same bytes (bench/_harness.py's config)

Method: each server is pinned to one core (`taskset -c 0`), wrk to the other (`taskset -c 1`,
-t1, 64 connections, keep-alive, --latency), each load bounded by --duration. A repetition
loads every server once per case, alternated (the order rotates between repetitions). The
machine is shared: a repetition starts once the others use under --max-busy of a core
(bounded wait), and one during which the 1-minute load average went above --max-load is run
again (at most --max-reruns times); each run also records the CPU the others took.

Reported per case: median (min-max) of req/s, p99 and the ratio to nginx *of the same
repetition*, and the server's CPU time per request (µs), which the neighbours' noise disturbs
less than req/s. A figure whose spread (max-min) is over 20 % of its median is marked `~`
(noisy). Before the load, the parser experiments (bench/_layers/probe.py) show what each
parser does with the framing and smuggling cases.

    .venv/bin/pip install httptools            # for (c); not a project dependency
    .venv/bin/python bench/layers.py [--repetitions 3] [--duration 5] [--only a,b,c,d]
    .venv/bin/python bench/layers.py --probe-only
"""

from __future__ import annotations

import argparse
import http.client
import json
import math
import os
import resource
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import _harness as h
import yaml
from _layers import entries, probe
from hit import Load, parse_wrk

SERVE = h.REPO / "bench" / "_layers" / "serve.py"
NOISY = 0.20  # spread over median above which a figure is marked noisy


@dataclass(frozen=True)
class Candidate:
    """One server under test: its short key, what it is, and its child argv (after the
    interpreter); `python` other than ours only for socketify's throwaway venv."""

    key: str
    label: str
    args: tuple[str, ...]
    python: str = sys.executable


CANDIDATES = [
    Candidate("a", "aiohttp web.Application", ("web-app",)),
    Candidate("b", "aiohttp web.Server (low-level)", ("low-level",)),
    Candidate("b+", "gateway PublicServer (b + limits)", ("gateway-listener",)),
    Candidate("c", "uvloop Protocol + httptools", ("httptools",)),
    Candidate("c'", "asyncio loop Protocol + httptools", ("httptools", "--loop", "asyncio")),
    Candidate("d", "uvloop Protocol + aiohttp C parser", ("aiohttp-parser",)),
]


@dataclass
class Sample:
    """One bounded load on one server: the server's, wrk's and everyone else's CPU over it."""

    load: Load
    cpu_s: float  # the server (nginx: master and worker)
    wrk_s: float  # the client
    others_s: float  # the rest: other sessions, softirq work charged to no process, ...
    duration: float

    @property
    def us_per_request(self) -> float:
        return self.cpu_s / self.load.requests * 1e6 if self.load.requests else math.nan

    @property
    def cpu_pct(self) -> float:
        return self.cpu_s / self.duration * 100

    @property
    def wrk_pct(self) -> float:
        return self.wrk_s / self.duration * 100

    @property
    def others_pct(self) -> float:
        return self.others_s / self.duration * 100


@dataclass
class Repetition:
    """Every server once per case; the load averages around it."""

    number: int
    load_before: str
    busy_before: float  # % of one core the machine used while this bench was idle, just before
    load_after: str = ""
    samples: dict[tuple[str, str], Sample] = field(default_factory=dict)  # (case, server)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = h.arg_parser(__doc__)
    parser.add_argument("--duration", type=int, default=5, help="seconds of each wrk run")
    parser.add_argument("--connections", type=int, default=64, help="wrk connections")
    parser.add_argument("--repetitions", type=int, default=3, help="repetitions kept")
    parser.add_argument(
        "--only", default="", help="comma-separated candidate keys (a,b,b+,c,c',d,e,gw,gwn)"
    )
    parser.add_argument("--cases", default=",".join(entries.CASES), help="body sizes to load")
    parser.add_argument(
        "--socketify-python",
        default="",
        help="interpreter of a throwaway venv with socketify installed: adds candidate (e)",
    )
    parser.add_argument("--no-gateway", action="store_true", help="leave out the gateway row")
    parser.add_argument("--max-load", type=float, default=2.5, help="1-min load avg limit")
    parser.add_argument("--max-reruns", type=int, default=3, help="repetitions run again, at most")
    parser.add_argument(
        "--max-busy", type=float, default=30.0,
        help="wait before a repetition while others use more than this %% of one core",
    )
    parser.add_argument("--quiet-wait", type=int, default=300, help="seconds to wait for that")
    parser.add_argument("--server-cpu", default="0", help="core of the servers (taskset)")
    parser.add_argument("--client-cpu", default="1", help="core of wrk (taskset)")
    parser.add_argument("--json", default="", help="also write every sample to this file")
    parser.add_argument("--probe-only", action="store_true", help="the parser table only")
    parser.add_argument("--no-probe", action="store_true", help="skip the parser table")
    return parser.parse_args(argv)


# ---------------------------------------------------------------- the parser experiments


def print_probe() -> None:
    columns, rows = probe.probe()
    h.print_table(f"parser experiments ({probe.versions()}), one feed_data each", columns, rows)
    print(
        "  ERR = the parser refused the bytes (the layer answers 400/431 and closes);"
        " +incomplete = waits for more bytes;\n  requests listed before an ERR were delivered"
        " first. `strict edge` = what an edge in front of other servers should do."
    )


# ---------------------------------------------------------------- the servers


GATEWAY_ROWS = {"gw": "aiohttp", "gwn": "native"}  # row key -> the gateway's `server`


def start_servers(
    stack: h.Stack, candidates: list[Candidate], args: argparse.Namespace
) -> dict[str, h.Service]:
    """The origin (unpinned, idle once nginx and the gateway are warm), nginx and every
    candidate pinned to the server core; returns them by key, nginx first."""
    pin = ["taskset", "-c", args.server_cpu]
    origin_port = h.free_port()
    origin = stack.spawn(
        "origin",
        [sys.executable, str(SERVE), "origin", "--port", str(origin_port)],
        origin_port,
        entries.READY_PATH,
    )
    servers: dict[str, h.Service] = {}
    nginx_bin = shutil.which("nginx") or next(
        (p for p in h.NGINX_PATHS if Path(p).exists()), None
    )
    if nginx_bin is None:
        raise SystemExit("nginx is not installed (apt-get install -y nginx): it is the reference")
    port = h.free_port()
    conf = stack.dir / "nginx.conf"
    conf.write_text(h.nginx_config(stack.dir, port, origin.port))
    argv = [*pin, nginx_bin, "-p", str(stack.dir), "-c", str(conf), "-e", str(stack.dir / "ng.err")]
    servers["nginx"] = stack.spawn("nginx", argv, port, h.READY_PATH)
    for cand in candidates:
        port = h.free_port()
        argv = [*pin, cand.python, str(SERVE), *cand.args, "--port", str(port)]
        servers[cand.key] = stack.spawn(cand.key, argv, port, entries.READY_PATH)
    for key, layer in GATEWAY_ROWS.items():
        if args.no_gateway or not wanted(key, args):
            continue
        port, admin_port = h.free_port(), h.free_port()
        config = h.gateway_config(origin.url, port, admin_port) | {"server": layer}
        path = stack.dir / f"{key}.yaml"
        path.write_text(yaml.safe_dump(config, sort_keys=False))
        argv = [*pin, sys.executable, "-m", "gateway", "--config", str(path)]
        servers[key] = stack.spawn(key, [*argv, "--log-level", "WARNING"], port, h.READY_PATH)
    return servers


def wanted(key: str, args: argparse.Namespace) -> bool:
    only = {k.strip() for k in args.only.split(",") if k.strip()}
    return not only or key in only


def warm_and_check(servers: dict[str, h.Service], cases: list[str]) -> dict[tuple[str, str], int]:
    """Ask every server for every case twice (nginx and the gateway fill on the first), then
    check the second answer: 200, the whole body, X-Cache: HIT. Returns each answer's head
    size, printed so that differences in bytes on the wire are visible."""
    head_bytes: dict[tuple[str, str], int] = {}
    for key, svc in servers.items():
        for case in cases:
            target, size = entries.CASES[case]
            for attempt in (1, 2):
                conn = http.client.HTTPConnection(h.HOST, svc.port, timeout=10)
                try:
                    conn.request("GET", target)
                    resp = conn.getresponse()
                    body = resp.read()
                finally:
                    conn.close()
                if attempt == 2 and (
                    resp.status != 200 or len(body) != size or resp.getheader("X-Cache") != "HIT"
                ):
                    raise RuntimeError(
                        f"{key} {case}: {resp.status}, {len(body)} bytes,"
                        f" X-Cache {resp.getheader('X-Cache')}: not a hit of the stored entry"
                    )
            status_line = len(f"HTTP/1.1 {resp.status} {resp.reason}\r\n")
            fields = sum(len(k) + len(v) + 4 for k, v in resp.getheaders())
            head_bytes[(case, key)] = status_line + fields + 2
    return head_bytes


# ---------------------------------------------------------------- load


def load_avg() -> str:
    try:
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return "?"


def busy_seconds() -> float:
    """CPU seconds the whole machine has spent busy (all cores; /proc/stat's user, nice,
    system, irq, softirq and steal): less the server's and wrk's own, it is what the rest
    took during a run (other sessions, and kernel work charged to no process)."""
    try:
        fields = Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]
    except OSError:
        return math.nan
    user, nice, system, _idle, _iowait, irq, softirq, steal = (int(f) for f in fields[:8])
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")


def children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def busy_now(seconds: float = 2.0) -> float:
    """% of one core the machine is busy over `seconds` (call it while this bench is idle:
    then it is everyone else)."""
    before = busy_seconds()
    time.sleep(seconds)
    return (busy_seconds() - before) / seconds * 100


def wait_for_quiet(args: argparse.Namespace) -> float:
    """Wait (bounded by --quiet-wait) until the others use under --max-busy of a core: the
    load average lags by a minute and counts this bench's own two busy cores, so it cannot
    say whether a repetition is about to start on a quiet machine; this can. Returns the
    last reading, which the report prints whether or not the machine got quiet."""
    deadline = time.monotonic() + args.quiet_wait
    busy = busy_now()
    while busy > args.max_busy and time.monotonic() < deadline:
        print(f"    others use {busy:.0f} % of a core; waiting", flush=True)
        time.sleep(8)
        busy = busy_now()
    return busy


def wrk(svc: h.Service, target: str, args: argparse.Namespace) -> Sample:
    """One bounded wrk run on the client core, and the CPU seconds of the server, of wrk
    (this process's waited-for children: taskset execs wrk) and of the rest across it."""
    argv = ["taskset", "-c", args.client_cpu, "wrk", "-t1", f"-c{args.connections}"]
    argv += [f"-d{args.duration}s", "--latency", "--timeout", "10s", svc.url + target]
    cpu_before, wrk_before, busy_before = svc.cpu_seconds(), children_cpu(), busy_seconds()
    start = time.perf_counter()
    out = subprocess.run(
        argv, capture_output=True, text=True, timeout=args.duration + 60, check=True
    ).stdout
    elapsed = time.perf_counter() - start
    cpu, wrk_s = svc.cpu_seconds() - cpu_before, children_cpu() - wrk_before
    others = busy_seconds() - busy_before - cpu - wrk_s
    return Sample(parse_wrk(out), cpu, wrk_s, max(others, 0.0), elapsed)


def repetition(
    number: int, servers: dict[str, h.Service], cases: list[str], args: argparse.Namespace
) -> Repetition:
    """Every server once per case, alternated; the order rotates with the repetition so no
    server always follows the same neighbour (or always runs first, on a cool machine)."""
    keys = list(servers)
    shift = number % len(keys)
    order = keys[shift:] + keys[:shift]
    busy = wait_for_quiet(args)
    rep = Repetition(number, load_avg(), busy)
    for case in cases:
        target = entries.CASES[case][0]
        for key in order:
            with h.phase(f"rep {number + 1}, {case}: {key}"):
                rep.samples[(case, key)] = wrk(servers[key], target, args)
            time.sleep(0.5)  # let the sockets of the last run close
    rep.load_after = load_avg()
    return rep


def run_repetitions(
    servers: dict[str, h.Service], cases: list[str], args: argparse.Namespace
) -> tuple[list[Repetition], list[Repetition]]:
    """Kept and discarded repetitions. One is discarded (and run again, at most --max-reruns
    times) if the 1-minute load average went above --max-load: wrk and one server keep the
    two cores busy, so about 2 is this bench's own load and more is someone else's."""
    kept: list[Repetition] = []
    dropped: list[Repetition] = []
    number = 0
    while len(kept) < args.repetitions:
        rep = repetition(number, servers, cases, args)
        number += 1
        peak = max(float(rep.load_before.split()[0]), float(rep.load_after.split()[0]))
        if peak > args.max_load and len(dropped) < args.max_reruns:
            print(f"    load average {rep.load_before} -> {rep.load_after}: run again")
            dropped.append(rep)
            continue
        kept.append(rep)
    return kept, dropped


# ---------------------------------------------------------------- report


def spread(values: list[float], fmt: str) -> str:
    """Median (min-max), `~` when the spread is over NOISY of the median."""
    values = [v for v in values if not math.isnan(v)]
    if not values:
        return "-"
    med, low, high = statistics.median(values), min(values), max(values)
    noisy = "~" if med and (high - low) / med > NOISY else ""
    if len(values) == 1:
        return format(med, fmt)
    return f"{noisy}{format(med, fmt)} ({format(low, fmt)}-{format(high, fmt)})"


def report(
    kept: list[Repetition],
    dropped: list[Repetition],
    servers: dict[str, h.Service],
    cases: list[str],
    head_bytes: dict[tuple[str, str], int],
    args: argparse.Namespace,
    labels: dict[str, str],
) -> None:
    def loads(reps: list[Repetition]) -> str:
        return "; ".join(
            f"{r.load_before} -> {r.load_after} (others {r.busy_before:.0f} % before)"
            for r in reps
        )

    print(f"\nload average (1, 5, 15 min) per kept repetition: {loads(kept)}")
    if dropped:
        print(f"discarded (load above --max-load): {loads(dropped)}")
    columns = ["req/s", "x nginx", "p50 ms", "p99 ms", "p99 x nginx", "us/req", "CPU %",
               "wrk %", "rest %", "head B", "errors"]
    markdown: list[str] = []
    for case in cases:
        rows = []
        for key in servers:
            samples = [r.samples[(case, key)] for r in kept]
            nginx = [r.samples[(case, "nginx")] for r in kept]
            rps = [s.load.rps for s in samples]
            ratio = [s.load.rps / n.load.rps for s, n in zip(samples, nginx, strict=True)]
            p99 = [s.load.p99_ms for s in samples]
            p99_ratio = [s.load.p99_ms / n.load.p99_ms for s, n in zip(samples, nginx,
                                                                         strict=True)]
            row = [
                f"{key}  {labels[key]}",
                spread(rps, ".0f"),
                spread(ratio, ".2f"),
                spread([s.load.p50_ms for s in samples], ".2f"),
                spread(p99, ".2f"),
                spread(p99_ratio, ".2f"),
                spread([s.us_per_request for s in samples], ".1f"),
                f"{statistics.median(s.cpu_pct for s in samples):.0f}",
                f"{statistics.median(s.wrk_pct for s in samples):.0f}",
                f"{statistics.median(s.others_pct for s in samples):.0f}",
                str(head_bytes.get((case, key), "-")),
                str(sum(s.load.errors for s in samples)),
            ]
            rows.append(row)
        title = (f"{case} hit, wrk -t1 -c{args.connections} -d{args.duration}s,"
                 f" median (min-max) of {len(kept)}; ~ = noisy (spread > 20 % of the median)")
        h.print_table(title, columns, rows)
        per_rep = [
            [key, *(
                f"{r.samples[(case, key)].load.rps / r.samples[(case, 'nginx')].load.rps:.2f}"
                f" / {r.samples[(case, key)].us_per_request:.0f}"
                for r in kept
            )]
            for key in servers
        ]
        reps = [f"rep {r.number + 1} ({r.busy_before:.0f} %)" for r in kept]
        h.print_table(f"{case}, each repetition: x nginx / us per request (others' CPU before"
                      " it, % of a core)", reps, per_rep)
        markdown += [f"\n{case}:\n", "| server | " + " | ".join(columns) + " |",
                     "|---" * (len(columns) + 1) + "|"]
        markdown += ["| " + " | ".join(row) + " |" for row in rows]
    print("\n  x nginx: the ratio to nginx in the same repetition; us/req: the server's CPU"
          " seconds (user+system, nginx's worker included) over wrk's requests; CPU %, wrk %:"
          " of one core, the server's and the client's\n  (a server under ~90 % with wrk near"
          " 100 % was held back by the client: read us/req); rest %: the machine's busy time"
          " charged to neither\n  (other sessions, and kernel work such as loopback softirq);"
          " head B: bytes of the response head")
    print("\nthe same tables as markdown:")
    print("\n".join(markdown))


def dump(path: str, kept: list[Repetition], dropped: list[Repetition], commit: str) -> None:
    """Every sample, for a reader who wants more than the medians."""

    def rep(r: Repetition, kept: bool) -> dict[str, object]:
        samples = {
            f"{case}/{key}": {**asdict(s.load), "cpu_s": s.cpu_s, "wrk_s": s.wrk_s,
                              "rest_s": s.others_s, "seconds": s.duration}
            for (case, key), s in r.samples.items()
        }
        return {"number": r.number + 1, "kept": kept, "load_before": r.load_before,
                "load_after": r.load_after, "others_before_pct": r.busy_before,
                "samples": samples}

    reps = [rep(r, True) for r in kept] + [rep(r, False) for r in dropped]
    Path(path).write_text(json.dumps({"commit": commit, "repetitions": reps}, indent=1))


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    print(h.machine_note())
    commit = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], cwd=h.REPO, capture_output=True, text=True
    ).stdout.strip()
    print(f"commit {commit or '?'}; load average {load_avg()}; {probe.versions()}")
    if not args.no_probe:
        print_probe()
    if args.probe_only:
        return
    for tool in ("wrk", "taskset"):
        if shutil.which(tool) is None:
            raise SystemExit(f"{tool} is not installed (apt-get install -y {tool})")
    candidates = [c for c in CANDIDATES if wanted(c.key, args)]
    if args.socketify_python and wanted("e", args):
        candidates.append(
            Candidate("e", "socketify (uWS, C)", ("socketify",), args.socketify_python)
        )
    labels = {
        "nginx": "nginx proxy_cache, 1 worker",
        "gw": "the gateway (whole hit path), server: aiohttp",
        "gwn": "the gateway (whole hit path), server: native",
    }
    labels |= {c.key: c.label for c in candidates}
    cases = [c.strip() for c in args.cases.split(",") if c.strip()]
    with h.Stack() as stack:
        with h.phase("starting the origin, nginx and the candidates (pinned to core "
                     f"{args.server_cpu}; wrk on core {args.client_cpu})"):
            servers = start_servers(stack, candidates, args)
        with h.phase("warming nginx and the gateway, checking every answer is a hit"):
            head_bytes = warm_and_check(servers, cases)
        kept, dropped = run_repetitions(servers, cases, args)
        report(kept, dropped, servers, cases, head_bytes, args, labels)
        if args.json:
            dump(args.json, kept, dropped, commit)
    print(f"\nload average at the end {load_avg()}")


if __name__ == "__main__":
    try:
        main()
    except KeyboardInterrupt:
        print("interrupted; every child process was stopped", file=sys.stderr)
        raise SystemExit(130) from None
