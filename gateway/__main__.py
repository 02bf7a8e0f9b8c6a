"""`python -m gateway --config FILE [--check]`, or an admin command (`purge`, `bust`, ...)."""

from __future__ import annotations

import argparse
import asyncio
import logging
import resource
import signal
import sys

from aiohttp import web

from gateway import cli
from gateway.admin import admin_app
from gateway.config import ConfigError, GatewayConfig, load_config
from gateway.server import Gateway, public_server

log = logging.getLogger("gateway")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="gateway", description="Edge cache gateway")
    parser.add_argument("--config", required=True, help="YAML routing file")
    parser.add_argument("--check", action="store_true", help="validate the config and exit")
    parser.add_argument("--log-level", default="INFO")
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


async def serve(config: GatewayConfig) -> None:
    raise_file_limit(config.max_connections)
    gateway = Gateway(config)
    await gateway.start()
    runners: list[web.BaseRunner] = [web.ServerRunner(public_server(gateway))]
    sites = [(runners[0], config.listen.host, config.listen.port)]
    if config.admin.listen is not None:
        admin = web.AppRunner(admin_app(gateway), access_log=None)
        runners.append(admin)
        sites.append((admin, config.admin.listen.host, config.admin.listen.port))
    for runner in runners:
        await runner.setup()
    for runner, host, port in sites:
        site = web.TCPSite(runner, host, port, reuse_address=True, backlog=config.listen_backlog)
        await site.start()
        log.info("listening on http://%s:%d", host, port)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    loop.add_signal_handler(signal.SIGHUP, reload_on_signal, gateway)
    try:
        await stop.wait()
    finally:
        for runner in reversed(runners):
            await runner.cleanup()
        await gateway.stop()


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


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if is_admin_command(argv):
        return cli.main(argv)
    args = parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(name)s %(message)s")
    try:
        config = load_config(args.config)
    except ConfigError as exc:
        print(exc, file=sys.stderr)
        return 2
    if args.check:
        print(f"{args.config}: ok")
        return 0
    try:
        import uvloop
    except ImportError:
        asyncio.run(serve(config))
    else:
        uvloop.run(serve(config))
    return 0


if __name__ == "__main__":
    sys.exit(main())
