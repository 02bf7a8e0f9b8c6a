"""`python -m gateway --config FILE [--check]`."""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys

from aiohttp import web

from gateway.config import ConfigError, load_config


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="gateway", description="Edge cache gateway")
    parser.add_argument("--config", required=True, help="YAML routing file")
    parser.add_argument("--check", action="store_true", help="validate the config and exit")
    parser.add_argument("--log-level", default="INFO")
    return parser.parse_args(argv)


async def serve(config_path: str) -> None:
    from gateway.admin import admin_app
    from gateway.server import Gateway, public_app

    config = load_config(config_path)
    gateway = Gateway(config)
    runners = [web.AppRunner(public_app(gateway), access_log=None, handler_cancellation=True)]
    sites = [(runners[0], config.listen.host, config.listen.port)]
    if config.admin.listen is not None:
        admin = web.AppRunner(admin_app(gateway), access_log=None)
        runners.append(admin)
        sites.append((admin, config.admin.listen.host, config.admin.listen.port))
    for runner in runners:
        await runner.setup()
    for runner, host, port in sites:
        await web.TCPSite(runner, host, port, reuse_address=True).start()
        logging.getLogger("gateway").info("listening on http://%s:%d", host, port)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        await stop.wait()
    finally:
        for runner in reversed(runners):
            await runner.cleanup()


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(name)s %(message)s")
    try:
        load_config(args.config)
    except ConfigError as exc:
        print(exc, file=sys.stderr)
        return 2
    if args.check:
        print(f"{args.config}: ok")
        return 0
    try:
        import uvloop
    except ImportError:
        asyncio.run(serve(args.config))
    else:
        uvloop.run(serve(args.config))
    return 0


if __name__ == "__main__":
    sys.exit(main())
