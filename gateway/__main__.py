"""`python -m gateway --config FILE [--check] [--demo]`, or an admin command (`purge`, ...).

With `workers: 1` (the default) this process serves (`serve`). With `workers: N` it is the
supervisor of N worker processes and serves nothing itself (`gateway.supervisor`); each worker
is this same entry point again, given its `Role` by the hidden `--worker-*` flags, and serves.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.metadata
import logging
import os
import resource
import signal
import sys
from collections.abc import Awaitable, Callable

from aiohttp import web

from gateway import cli, gcwatch, heap
from gateway.admin import admin_app
from gateway.client_protocol import NativeServer
from gateway.config import (
    DEMO_ADMIN_TOKEN,
    ConfigError,
    GatewayConfig,
    demo_token_refusal,
    load_config,
)
from gateway.server import Gateway, native_server, public_server
from gateway.supervisor import DRAIN_TIMEOUT, Role, Supervisor, watch_supervisor

log = logging.getLogger("gateway")

LOG_FORMAT = "%(asctime)s %(name)s {tag}%(message)s"
CUT_GRACE = 1.0  # seconds for the handlers cut at the end of a drain to finish (see `drain`)


class CannotListen(Exception):
    """A listen address is taken or not ours: one line for the operator, not a traceback."""


def version() -> str:
    try:
        return importlib.metadata.version("edge-gateway")
    except importlib.metadata.PackageNotFoundError:  # run from a checkout, not installed
        return "unknown (not installed)"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="gateway",
        description="Edge cache gateway",
        epilog="admin commands, against a running gateway's admin listener: "
        + ", ".join(cli.COMMANDS)
        + " (python -m gateway COMMAND --help)",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {version()}")
    parser.add_argument("--config", required=True, help="YAML routing file")
    parser.add_argument("--check", action="store_true", help="validate the config and exit")
    parser.add_argument("--log-level", default="INFO")
    parser.add_argument(
        "--demo", action="store_true",
        help=f"this is the local demo (scripts/demo.sh): accept the published demo admin token"
        f" {DEMO_ADMIN_TOKEN!r}, which any other start refuses",
    )
    # Set by the supervisor on the worker processes it starts (`workers: N`, see
    # `gateway.supervisor`), not by hand.
    parser.add_argument("--worker-of", metavar="MACHINE", help=argparse.SUPPRESS)
    parser.add_argument("--worker-index", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--ready-fd", type=int, help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def raise_file_limit(connections: int) -> None:
    """Each client and origin connection is a file descriptor: lift the soft limit to the hard
    one (as nginx's worker_rlimit_nofile does) and say so when even that is short."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = 2 * connections + 256  # clients, their origin connections, and the rest
    if soft < wanted and soft != hard:
        soft = hard if hard == resource.RLIM_INFINITY else min(hard, max(wanted, soft))
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    if soft != resource.RLIM_INFINITY and soft < wanted:
        log.warning(
            "open file limit %d is below the %d that max_connections %d may need",
            soft, wanted, connections,
        )


async def serve(config: GatewayConfig, role: Role | None = None, *, demo: bool = False) -> None:
    """Serve until SIGINT/SIGTERM (SIGHUP reloads): the only process, or one worker."""
    role = role or Role.alone()
    raise_file_limit(config.max_connections)
    heap.tune()  # before the cache holds anything: large bodies in mappings of their own
    gateway = Gateway(config, machine=role.machine, worker=role.index, demo=demo)
    if role.supervisor is not None:
        supervisor = role.supervisor
        gateway.reload_all = lambda: os.kill(supervisor, signal.SIGHUP)
    await gateway.start()
    runners: list[web.BaseRunner] = []
    stop = asyncio.Event()
    watch: asyncio.Task[None] | None = None
    native = native_server(gateway) if config.server == "native" else None
    try:
        sites: list[tuple[web.BaseRunner, str, int]] = []
        if native is None:
            public = web.ServerRunner(public_server(gateway), shutdown_timeout=DRAIN_TIMEOUT)
            runners.append(public)
            sites.append((public, config.listen.host, config.listen.port))
        if config.admin.listen is not None:
            admin = web.AppRunner(
                admin_app(gateway), access_log=None, shutdown_timeout=DRAIN_TIMEOUT
            )
            runners.append(admin)
            sites.append((admin, config.admin.listen.host, config.admin.listen.port))
        for runner in runners:
            await runner.setup()
        reuse_port, backlog = role.worker or None, config.listen_backlog
        if native is not None:
            host, port = config.listen.host, config.listen.port
            await listen(host, port, lambda: native.listen(
                host, port, reuse_port=reuse_port, backlog=backlog))
        for runner, host, port in sites:
            site = web.TCPSite(
                runner, host, port, reuse_address=True, reuse_port=reuse_port, backlog=backlog
            )
            await listen(host, port, site.start)
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        loop.add_signal_handler(signal.SIGHUP, reload_on_signal, gateway)
        if role.supervisor is not None:
            watch = loop.create_task(watch_supervisor(role.supervisor, stop))
        # What start-up built lives as long as the process: no collection need walk it again.
        log.debug("gc: %d objects frozen after start-up", gcwatch.after_start())
        role.ready()
        await stop.wait()
        log.info("stopping: new connections refused, requests in flight have up to %.0f s",
                 DRAIN_TIMEOUT)
    finally:
        if watch is not None:
            watch.cancel()
        await drain(runners, native)
        await gateway.stop()


async def listen(host: str, port: int, start: Callable[[], Awaitable[object]]) -> None:
    """Start a listener; CannotListen (one line) if its address is taken or not ours."""
    try:
        await start()
    except OSError as exc:
        reason = os.strerror(exc.errno) if exc.errno else str(exc)  # uvloop's is long
        raise CannotListen(f"cannot listen on {host}:{port}: {reason}") from None
    log.info("listening on http://%s:%d", host, port)


async def drain(runners: list[web.BaseRunner], native: NativeServer | None = None) -> None:
    """Stop serving gracefully (SIGTERM: `docker stop`, a service manager, the supervisor).

    First every listening socket is closed, on both listeners at once: a new connection is
    refused from then on (a load balancer moves on, the health check fails). Then the requests
    in flight on either listener are answered, both listeners together, while idle keep-alive
    connections close at once. What is still being answered after DRAIN_TIMEOUT is cut: its
    connection is closed (the client sees it end early, the access log a 499).

    aiohttp's `cleanup` drains too, but not within a bound one can give `docker stop`: it waits
    `shutdown_timeout` for a handler, then as long again for the handler it could not stop, and
    it closes a runner's sockets only once the runner before it has drained. The native public
    listener (`server: native`) drains itself alongside, within the same bound."""
    if native is not None:
        native.stop_listening()
    for runner in runners:
        for site in list(runner.sites):
            await site.stop()
    cleanups: list[Awaitable[object]] = [runner.cleanup() for runner in runners]
    if native is not None:
        cleanups.append(native.drain(DRAIN_TIMEOUT))
    cleanup = asyncio.gather(*cleanups)
    done, _ = await asyncio.wait([cleanup], timeout=DRAIN_TIMEOUT)
    if done:
        cleanup.result()  # a failure of the cleanup itself is not hidden
        return
    busy = [conn for r in runners if r.server is not None for conn in r.server.connections]
    log.warning("stopping: %d connection(s) still answering after %.0f s, closed",
                len(busy), DRAIN_TIMEOUT)
    for conn in busy:
        conn.force_close()  # and a public handler is cancelled (handler_cancellation)
    done, _ = await asyncio.wait([cleanup], timeout=CUT_GRACE)
    if not done:
        cleanup.cancel()  # an admin handler still running: asyncio.run cancels it on exit


def is_admin_command(argv: list[str]) -> bool:
    """`purge|bust|stats|reload` anywhere (after global flags), and not a server invocation."""
    serving = any(a == "--config" or a.startswith("--config=") for a in argv)
    return not serving and any(a in cli.COMMANDS for a in argv)


def reload_on_signal(gateway: Gateway) -> None:
    """SIGHUP: re-read the routing file; a broken file is logged and the running config kept."""
    try:
        gateway.reload()
    except ConfigError as exc:
        log.error("SIGHUP: config not reloaded, the running config is kept:\n%s", exc)


def configure_logging(level: str, tag: str) -> None:
    """Log lines name the process: `[supervisor] `, `[worker N] `, or nothing (workers: 1)."""
    logging.basicConfig(level=level.upper(), format=LOG_FORMAT.format(tag=tag), force=True)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if is_admin_command(argv):
        return cli.main(argv)
    args = parse_args(argv)
    if args.worker_of is not None:
        # The supervisor's pid is the machine id's last part (`machine_id`). Taken from there,
        # not from getppid(): a worker whose supervisor died before it got here has been
        # reparented, and must not signal (or wait for) whatever process adopted it.
        supervisor = int(args.worker_of.rpartition(":")[2] or 0)
        if os.getppid() != supervisor:
            print(f"worker {args.worker_index}: supervisor {supervisor} is gone", file=sys.stderr)
            return 1
        role = Role(args.worker_of, args.worker_index, supervisor, args.ready_fd)
        tag = f"[worker {args.worker_index}] "
    else:
        role, tag = Role.alone(), ""
    configure_logging(args.log_level, tag)
    try:
        config = load_config(args.config)
    except ConfigError as exc:
        print(exc, file=sys.stderr)
        return 2
    if args.check:
        print(f"{args.config}: ok")
        return 0
    # Before any listener binds, and before a supervisor starts workers that would each fail
    # with it: one line, as for a busy port. Workers check again (given --demo by the
    # supervisor): one restarted after the file changed reads the file anew.
    refusal = demo_token_refusal(config, demo=args.demo)
    if refusal is not None:
        if role.worker:
            log.error("%s", refusal)  # in the machine's log, tagged
        else:
            print(f"{args.config}: {refusal}", file=sys.stderr)
        return 1
    if config.workers > 1 and not role.worker:
        configure_logging(args.log_level, "[supervisor] ")
        return Supervisor(args.config, config, args.log_level, demo=args.demo).run()
    try:
        import uvloop
    except ImportError:
        run = asyncio.run
    else:
        run = uvloop.run
    try:
        run(serve(config, role, demo=args.demo))
    except CannotListen as exc:
        if role.worker:
            log.error("%s", exc)  # in the machine's log, tagged
        else:
            print(f"{args.config}: {exc}", file=sys.stderr)
        return 1
    except Exception:
        if not role.worker:
            raise
        log.exception("worker %d failed", role.index)  # in the machine's log, tagged
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
