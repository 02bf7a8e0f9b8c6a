"""Shared plumbing of the benchmarks: the stack under test, the client side, the printing.

Both scripts need the same things, done the same way so their figures compare: the demo
origin, the gateway and (when installed) nginx as child processes on free loopback ports,
ready within a bounded wait and always stopped again; a client that measures each request;
and the same table layout. Nothing here asserts a time: benchmarks print, readers judge.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import ctypes
import http.client
import json
import math
import os
import random
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Coroutine, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

import aiohttp
import yaml
from aiohttp import web

REPO = Path(__file__).resolve().parent.parent
HOST = "127.0.0.1"  # loopback only, always
BUNDLE_PATH = "/api/v1/loader/code/published"
PASS_HOST = "pass.bench"  # Host header that selects the pass-through route (gateway and nginx)
READY_PATH = "/__bench/ready"  # any HTTP answer on it means the listener serves
ADMIN_TOKEN = "bench-admin-token"
READY_TIMEOUT = 30.0  # seconds a child gets to start serving
STOP_TIMEOUT = 5.0  # seconds a child gets to exit on SIGTERM before SIGKILL
REDIS_READY_TIMEOUT = 5.0  # seconds a new redis-server gets to answer PING
CPUS = os.cpu_count() or 1
POOL_SIZE = 15  # the origin's DB pool, passed explicitly so the figures can name it
NGINX_PATHS = ("/usr/sbin/nginx", "/usr/local/sbin/nginx", "/usr/local/nginx/sbin/nginx")


class _HelpFormatter(argparse.RawDescriptionHelpFormatter, argparse.ArgumentDefaultsHelpFormatter):
    pass


def arg_parser(doc: str | None) -> argparse.ArgumentParser:
    """--help shows the script's docstring as written and every option's default."""
    return argparse.ArgumentParser(description=doc, formatter_class=_HelpFormatter)


def event_loop() -> asyncio.AbstractEventLoop:
    """uvloop's loop where it is installed (as the gateway runs), else asyncio's: for the
    benches' own helper servers."""
    try:
        import uvloop
    except ImportError:
        return asyncio.new_event_loop()
    return uvloop.new_event_loop()


def free_port() -> int:
    """A port the kernel just handed out, so concurrent runs and stray servers don't collide."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        port: int = sock.getsockname()[1]
        return port


def bundle_path(project: str, platform: str = "react") -> str:
    """The published bundle of a project: the origin's slow, shared-cacheable endpoint."""
    return f"{BUNDLE_PATH}?projectId={project}&platform={platform}"


def rss_mib(pid: int) -> float | None:
    """Resident memory of a process (VmRSS), None once it is gone."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


def cpu_seconds(pid: int) -> float:
    """CPU time (user + system) of a process and its direct children, e.g. nginx's worker:
    next to req/s it tells a saturated server from one the client could not keep busy."""
    pids = [pid]
    with contextlib.suppress(OSError):
        for task in Path(f"/proc/{pid}/task").iterdir():
            pids += [int(c) for c in (task / "children").read_text().split()]
    total = 0.0
    for p in pids:
        with contextlib.suppress(OSError, IndexError, ValueError):
            total += sum(cpu_times(p))
    return total


def cpu_times(pid: int) -> tuple[float, float]:
    """User and system CPU seconds of one process (/proc/PID/stat fields 14 and 15)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    ticks = os.sysconf("SC_CLK_TCK")
    return int(fields[11]) / ticks, int(fields[12]) / ticks


def listen_overflows() -> int:
    """The kernel's count of connections dropped because an accept queue was full (whole
    host; on this otherwise idle box, the bench's own listeners). -1 when unreadable."""
    try:
        lines = Path("/proc/net/netstat").read_text().splitlines()
    except OSError:
        return -1
    for names, values in zip(lines[::2], lines[1::2], strict=False):
        if names.startswith("TcpExt:"):
            table = dict(zip(names.split()[1:], values.split()[1:], strict=False))
            return int(table.get("ListenOverflows", -1))
    return -1


def _die_with_parent() -> None:
    """Children must not outlive a bench that is SIGKILLed (Linux PR_SET_PDEATHSIG = 1)."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)


@dataclass
class Service:
    """One child process serving HTTP on a loopback port."""

    name: str
    proc: subprocess.Popen[bytes]
    port: int
    log_path: Path
    admin_port: int | None = None

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self.port}"

    def rss_mib(self) -> float | None:
        return rss_mib(self.proc.pid)

    def cpu_seconds(self) -> float:
        return cpu_seconds(self.proc.pid)

    def log_tail(self, lines: int = 20) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"


class Stack:
    """The processes of one benchmark run, in a private temp dir; closing stops them all.

    Use as a context manager from the main thread: the children are tied to the thread that
    forks them (PR_SET_PDEATHSIG), and SIGTERM to the bench becomes SystemExit so `with` still
    cleans up.
    """

    def __init__(self) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="edge-bench-"))
        self.services: list[Service] = []

    def __enter__(self) -> Stack:
        signal.signal(signal.SIGTERM, _exit_on_sigterm)
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if exc is not None and not isinstance(exc, KeyboardInterrupt):  # show dead children
            for service in self.services:
                if service.proc.poll() is not None:
                    print(f"{service.name} exited ({service.proc.returncode}):", file=sys.stderr)
                    print(service.log_tail(), file=sys.stderr)
        self.close()

    def stop(self, service: Service) -> float:
        """Stop one child now (SIGTERM, SIGKILL after STOP_TIMEOUT); seconds it took to exit."""
        start = time.perf_counter()
        if service.proc.poll() is None:
            service.proc.terminate()
            try:
                service.proc.wait(STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                service.proc.kill()
                service.proc.wait(STOP_TIMEOUT)
        if service in self.services:
            self.services.remove(service)
        return time.perf_counter() - start

    def close(self) -> None:
        """Stop every child (newest first, so the gateway goes before its origin)."""
        for service in reversed(self.services):
            _stop(service.proc)
        self.services.clear()
        shutil.rmtree(self.dir, ignore_errors=True)

    def spawn(self, name: str, argv: Sequence[str], port: int, ready_path: str) -> Service:
        """Start a child, wait (bounded) until it answers HTTP on `ready_path`."""
        log_path = self.dir / f"{name}.log"
        with log_path.open("wb") as log:
            proc = subprocess.Popen(
                list(argv),
                cwd=REPO,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # Ctrl-C reaches the bench only; it stops them in order
                preexec_fn=_die_with_parent if sys.platform == "linux" else None,
            )
        service = Service(name, proc, port, log_path)
        self.services.append(service)
        _wait_ready(service, ready_path)
        return service

    def origin(
        self,
        *,
        codegen_seconds: float = 2.0,
        projects: int = 100,
        s_maxage: int = 30,
    ) -> Service:
        """The demo loader origin (SQLite behind its 15-connection pool, slow codegen)."""
        port = free_port()
        argv = [sys.executable, "-m", "origin", "--host", HOST, "--port", str(port)]
        argv += ["--codegen-seconds", str(codegen_seconds), "--projects", str(projects)]
        argv += ["--s-maxage", str(s_maxage), "--pool-size", str(POOL_SIZE)]
        argv += ["--log-level", "WARNING"]
        return self.spawn("origin", argv, port, "/healthz")

    def gateway(self, origin: Service, workers: int = 1, server: str | None = None) -> Service:
        """The gateway on the demo routing file, ports swapped, plus a pass-through route.
        With `workers` above 1, a supervisor and its workers sharing a redis-server of their
        own (the fleet is what lets workers share one cache). `server` chooses the client-facing
        layer (`aiohttp` or `native`; None: the config's default)."""
        port, admin_port = free_port(), free_port()
        name = "gateway" if workers == 1 else f"gateway-{workers}w"
        path = self.dir / f"{name}.yaml"
        config = gateway_config(origin.url, port, admin_port)
        if server is not None:
            config["server"] = server
        if workers > 1:
            redis = self.redis(name)
            config["workers"] = workers
            config["redis"] = {"url": f"redis://{HOST}:{redis.port}/0", "timeout": "100ms"}
        path.write_text(yaml.safe_dump(config, sort_keys=False))
        argv = [sys.executable, "-m", "gateway", "--config", str(path), "--log-level", "WARNING"]
        service = self.spawn(name, argv, port, READY_PATH)
        service.admin_port = admin_port
        return service

    def redis(self, tag: str) -> Service:
        """redis-server on a free loopback port, no persistence, stopped with the stack."""
        return _start_redis(self, tag)

    def nginx(self, origin: Service, workers: int = 1) -> Service | None:
        """nginx with proxy_cache (+ proxy_cache_lock) on `workers` workers, or None if not
        installed."""
        binary = shutil.which("nginx") or next((p for p in NGINX_PATHS if Path(p).exists()), None)
        if binary is None:
            return None
        port = free_port()
        name = "nginx" if workers == 1 else f"nginx-{workers}w"
        directory = self.dir / name
        directory.mkdir(exist_ok=True)
        conf = directory / "nginx.conf"
        conf.write_text(nginx_config(directory, port, origin.port, workers))
        argv = [binary, "-p", str(directory), "-c", str(conf), "-e", str(directory / "nginx.err")]
        return self.spawn(name, argv, port, READY_PATH)

    def dict_cache(self, origin: Service) -> Service:
        """The reference: a minimal aiohttp dict cache with single flight (bench/_dictcache.py)."""
        port = free_port()
        script = REPO / "bench" / "_dictcache.py"
        argv = [sys.executable, str(script), "--port", str(port), "--origin", origin.url]
        return self.spawn("dict-cache", argv, port, READY_PATH)


def _exit_on_sigterm(signum: int, frame: object) -> None:
    raise SystemExit(128 + signum)


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(STOP_TIMEOUT)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(STOP_TIMEOUT)


def _wait_ready(service: Service, path: str) -> None:
    """Poll until any HTTP answer comes back; fail early (with the log) if the child dies."""
    deadline = time.monotonic() + READY_TIMEOUT
    while time.monotonic() < deadline:
        if service.proc.poll() is not None:
            raise RuntimeError(
                f"{service.name} exited with {service.proc.returncode}:\n{service.log_tail()}"
            )
        conn = http.client.HTTPConnection(HOST, service.port, timeout=1.0)
        try:
            conn.request("GET", path)
            conn.getresponse().read()
            return
        except OSError:
            time.sleep(0.05)
        finally:
            conn.close()
    raise RuntimeError(f"{service.name} not ready after {READY_TIMEOUT}s:\n{service.log_tail()}")


def _redis_ping(port: int) -> bool:
    try:
        with socket.create_connection((HOST, port), timeout=0.5) as sock:
            sock.sendall(b"PING\r\n")
            return sock.recv(64).startswith(b"+PONG")
    except OSError:
        return False


def _start_redis(stack: Stack, tag: str) -> Service:
    """redis-server on a free loopback port, no persistence, stopped with the stack."""
    binary = shutil.which("redis-server")
    if binary is None:
        raise SystemExit("redis-server not found (apt-get install -y redis-server)")
    port = free_port()
    log_path = stack.dir / f"redis-{tag}.log"
    argv = [binary, "--port", str(port), "--bind", HOST, "--save", "", "--appendonly", "no"]
    argv += ["--protected-mode", "no", "--dir", str(stack.dir)]
    with log_path.open("wb") as log:
        proc = subprocess.Popen(
            argv,
            cwd=stack.dir,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            preexec_fn=_die_with_parent if sys.platform == "linux" else None,
        )
    service = Service(f"redis-{tag}", proc, port, log_path)
    stack.services.append(service)
    deadline = time.monotonic() + REDIS_READY_TIMEOUT
    while not _redis_ping(port):
        if proc.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"redis-server did not answer PING:\n{service.log_tail()}")
        time.sleep(0.01)
    return service


def gateway_config(origin_url: str, port: int, admin_port: int) -> dict[str, Any]:
    """config/gateway.yaml (what the demo runs) with free ports, a bench admin token and a
    `cache: false` route selected by Host: pass.bench to the same origin, same paths."""
    config: dict[str, Any] = yaml.safe_load((REPO / "config" / "gateway.yaml").read_text())
    config["listen"] = f"{HOST}:{port}"
    config["admin"] = {
        "listen": f"{HOST}:{admin_port}",
        "tokens": [{"name": "bench", "token": ADMIN_TOKEN, "tenants": ["*"]}],
    }
    config["origins"]["loader"]["url"] = origin_url
    passthrough = {
        "name": "bench-pass",
        "match": {"host": PASS_HOST, "path_prefix": "/"},
        "origin": "loader",
        "cache": False,
    }
    config["routes"].insert(0, passthrough)
    return config


NGINX_CONF = """\
worker_processes {workers};
daemon off;
pid {dir}/nginx.pid;
error_log {dir}/nginx.err warn;
{user}
events {{ worker_connections 8192; }}
http {{
    access_log off;
    sendfile on;
    tcp_nopush on;
    keepalive_requests 1000000;
    client_body_temp_path {dir}/nginx-body;
    proxy_temp_path {dir}/nginx-proxy;
    fastcgi_temp_path {dir}/nginx-fastcgi;
    uwsgi_temp_path {dir}/nginx-uwsgi;
    scgi_temp_path {dir}/nginx-scgi;
    proxy_cache_path {dir}/nginx-cache levels=1:2 keys_zone=edge:32m max_size=1g
                     inactive=1h use_temp_path=off;
    upstream origin {{ server {host}:{origin_port}; keepalive 64; }}
    server {{
        listen {host}:{port} default_server;
        location = {ready} {{ return 204; }}
        location / {{
            proxy_pass http://origin;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_cache edge;
            proxy_cache_lock on;
            proxy_cache_lock_timeout 30s;
            proxy_cache_lock_age 30s;
            add_header X-Cache $upstream_cache_status always;
        }}
    }}
    server {{
        listen {host}:{port};
        server_name {pass_host};
        location / {{
            proxy_pass http://origin;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
        }}
    }}
}}
"""


def nginx_config(directory: Path, port: int, origin_port: int, workers: int = 1) -> str:
    """One worker by default (the gateway is one process on one loop); the lock so waiters
    collapse."""
    user = "user root;" if os.geteuid() == 0 else ""  # as root, workers would be `nobody`
    return NGINX_CONF.format(
        workers=workers,
        dir=directory,
        user=user,
        host=HOST,
        port=port,
        origin_port=origin_port,
        ready=READY_PATH,
        pass_host=PASS_HOST,
    )


# ---------------------------------------------------------------- client side


def run_bench(bench: Callable[[Stack], Coroutine[Any, Any, None]]) -> None:
    """Run a benchmark coroutine with its own Stack; Ctrl-C stops it cleanly (exit 130).

    The client runs on uvloop when available: it shares the 2 cores with the servers, and a
    cheaper client disturbs them less."""
    try:
        with Stack() as stack:
            try:
                import uvloop
            except ImportError:
                asyncio.run(bench(stack))
            else:
                uvloop.run(bench(stack))
    except KeyboardInterrupt:
        print("interrupted; every child process was stopped", file=sys.stderr)
        raise SystemExit(130) from None


def client_session(connections: int = 0) -> aiohttp.ClientSession:
    """Unbounded (limit=0) by default so N concurrent requests really are N connections."""
    return aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=connections, limit_per_host=0, force_close=False),
        auto_decompress=False,
        timeout=aiohttp.ClientTimeout(total=60),
        cookie_jar=aiohttp.DummyCookieJar(),
    )


@dataclass(frozen=True)
class Sample:
    """One request as the client saw it; times are perf_counter seconds."""

    start: float
    end: float
    status: int  # 0: no HTTP answer
    x_cache: str
    cache_status: str
    error: str = ""

    @property
    def latency_ms(self) -> float:
        return (self.end - self.start) * 1000

    @property
    def ok(self) -> bool:
        return self.status == 200 and not self.error


async def fetch(
    session: aiohttp.ClientSession, url: str, headers: dict[str, str] | None = None
) -> Sample:
    """GET `url` and read the whole body; failures become a Sample with `error` set."""
    start = time.perf_counter()
    try:
        async with session.get(url, headers=headers) as resp:
            await resp.read()
            return Sample(
                start,
                time.perf_counter(),
                resp.status,
                resp.headers.get("X-Cache", "-"),
                resp.headers.get("Cache-Status", ""),
            )
    except (aiohttp.ClientError, TimeoutError) as exc:
        return Sample(start, time.perf_counter(), 0, "-", "", type(exc).__name__)


async def random_load(
    session: aiohttp.ClientSession, base: str, paths: Sequence[str], clients: int, seconds: float
) -> list[Sample]:
    """`clients` loops each requesting a random one of `paths`, back to back, for `seconds`
    (the same seeded choices in every run)."""
    deadline = time.perf_counter() + seconds
    rng = random.Random(7)
    samples: list[Sample] = []

    async def loop() -> None:
        while time.perf_counter() < deadline:
            samples.append(await fetch(session, base + rng.choice(paths)))

    await asyncio.gather(*(loop() for _ in range(clients)))
    return samples


async def burst(session: aiohttp.ClientSession, urls: Sequence[str]) -> list[Sample]:
    """All requests at once: every task parks on one event, so they leave together."""
    go = asyncio.Event()

    async def one(url: str) -> Sample:
        await go.wait()
        return await fetch(session, url)

    tasks = [asyncio.create_task(one(url)) for url in urls]
    await asyncio.sleep(0)  # let every task reach the event
    go.set()
    return await asyncio.gather(*tasks)


async def get_json(
    session: aiohttp.ClientSession,
    url: str,
    *,
    method: str = "GET",
    headers: dict[str, str] | None = None,
) -> dict[str, Any]:
    async with session.request(method, url, headers=headers) as resp:
        resp.raise_for_status()
        data: dict[str, Any] = json.loads(await resp.read())
        return data


async def origin_stats(
    session: aiohttp.ClientSession, origin: Service, *, reset: bool = False
) -> dict[str, Any]:
    """The origin's own counters (requests, codegen runs, DB pool); reset zeroes them."""
    if reset:
        return await get_json(session, origin.url + "/__stats/reset", method="POST")
    return await get_json(session, origin.url + "/__stats")


async def gateway_counters(session: aiohttp.ClientSession, gateway: Service) -> dict[str, int]:
    """The gateway's cache counters from its admin API ({} if it does not answer)."""
    if gateway.admin_port is None:
        return {}
    url = f"http://{HOST}:{gateway.admin_port}/admin/stats"
    try:
        stats = await get_json(session, url, headers={"Authorization": f"Bearer {ADMIN_TOKEN}"})
    except (aiohttp.ClientError, ValueError):
        return {}
    cache = stats.get("cache", {})
    return {str(k): int(v) for k, v in cache.items()} if isinstance(cache, dict) else {}


# ---------------------------------------------------------------- figures


def percentile(values: Sequence[float], pct: float) -> float:
    """Nearest-rank percentile (no interpolation: every figure is a latency that happened)."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    rank = max(1, min(len(ordered), round(pct / 100 * len(ordered) + 0.5)))
    return ordered[rank - 1]


def fmt_ms(value: float) -> str:
    return f"{value:.1f}" if value < 100 else f"{value:.0f}"


def fmt_mib(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}"


def print_table(title: str, columns: Sequence[str], rows: Sequence[Sequence[str]]) -> None:
    """A plain fixed-width table: first column the figure, then one column per target."""
    lines = [["", *columns], *[list(row) for row in rows]]
    widths = [max(len(line[i]) for line in lines) for i in range(len(lines[0]))]
    print(f"\n{title}")
    for line in lines:
        first, *rest = zip(line, widths, strict=True)
        print("  " + "  ".join([first[0].ljust(first[1])] + [c.rjust(w) for c, w in rest]))


def machine_note() -> str:
    """Printed first: the figures only mean something next to the machine they ran on."""
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    return (
        f"machine: {CPUS} CPUs, load avg {load:.2f}, Python {sys.version.split()[0]};"
        " loopback only; one run's figures, not assertions (noisy machine: read the ratios)"
    )


@contextlib.contextmanager
def phase(name: str) -> Iterator[None]:
    """Say what runs now, so a slow step is visible while it runs."""
    print(f"... {name}", flush=True)
    start = time.perf_counter()
    yield
    print(f"    done in {time.perf_counter() - start:.1f}s", flush=True)


def spread(values: Sequence[float], fmt: Callable[[float], str]) -> str:
    """Median (min-max) of the runs, or the one value."""
    values = [v for v in values if not math.isnan(v)]
    if not values:
        return "-"
    med, low, high = statistics.median(values), min(values), max(values)
    if len(values) == 1 or low == high:
        return fmt(med)
    return f"{fmt(med)} ({fmt(low)}-{fmt(high)})"


class OriginCounts:
    """What a bench origin counts (requests per path, in flight now and at most, and any
    `extra` counters), with the control routes every bench origin has: GET /__stats (JSON),
    POST /__stats/reset, GET /healthz (204)."""

    def __init__(self, **extra: int) -> None:
        self.paths: collections.Counter[str] = collections.Counter()
        self.extra = dict(extra)
        self.stats = {"in_flight": 0, "in_flight_max": 0, **extra}

    @contextlib.contextmanager
    def request(self, path_qs: str) -> Iterator[None]:
        """Count one request for its whole time in flight."""
        self.paths[path_qs] += 1
        self.stats["in_flight"] += 1
        self.stats["in_flight_max"] = max(self.stats["in_flight_max"], self.stats["in_flight"])
        try:
            yield
        finally:
            self.stats["in_flight"] -= 1

    def add_routes(self, app: web.Application) -> None:
        async def get_stats(request: web.Request) -> web.Response:
            total = self.paths.total()
            return web.json_response({"requests_total": total, "paths": dict(self.paths),
                                      **self.stats})

        async def reset(request: web.Request) -> web.Response:
            self.paths.clear()
            self.stats.update(self.extra, in_flight_max=self.stats["in_flight"])
            return await get_stats(request)

        async def healthz(request: web.Request) -> web.Response:
            return web.Response(status=204)

        app.router.add_route("GET", "/__stats", get_stats)
        app.router.add_route("POST", "/__stats/reset", reset)
        app.router.add_route("GET", "/healthz", healthz)
