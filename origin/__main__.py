"""CLI entry point: ``python -m origin`` / ``edge-origin``."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys
from collections.abc import Sequence

from aiohttp import web

from origin.app import create_app
from origin.settings import OriginSettings


def build_parser() -> argparse.ArgumentParser:
    """Argument parser; flag names are part of the demo/bench scripts' contract."""
    defaults = OriginSettings()
    parser = argparse.ArgumentParser(
        prog="edge-origin", description="Demo loader origin for the edge cache gateway."
    )
    parser.add_argument("--host", default=defaults.host)
    parser.add_argument("--port", type=int, default=defaults.port)
    parser.add_argument("--db", default=None, help="SQLite path (default: private temp file)")
    parser.add_argument("--projects", type=int, default=defaults.projects)
    parser.add_argument("--codegen-seconds", type=float, default=defaults.codegen_seconds)
    parser.add_argument("--s-maxage", type=int, default=defaults.s_maxage)
    parser.add_argument("--swr", type=int, default=defaults.swr, help="0 omits the directive")
    parser.add_argument("--pool-size", type=int, default=defaults.pool_size)
    parser.add_argument(
        "--gateway-admin",
        default=os.environ.get("GATEWAY_ADMIN_URL") or None,
        help="gateway admin base URL to soft-bust after publish (env GATEWAY_ADMIN_URL)",
    )
    parser.add_argument(
        "--gateway-token",
        default=os.environ.get("GATEWAY_ADMIN_TOKEN") or None,
        help="bearer token for the gateway admin API (env GATEWAY_ADMIN_TOKEN)",
    )
    parser.add_argument("--access-log", action="store_true", help="log every request")
    parser.add_argument("--log-level", default="INFO")
    return parser


def settings_from_args(args: argparse.Namespace) -> OriginSettings:
    """Map parsed flags onto the settings dataclass."""
    return OriginSettings(
        host=args.host,
        port=args.port,
        db=args.db,
        projects=args.projects,
        codegen_seconds=args.codegen_seconds,
        s_maxage=args.s_maxage,
        swr=args.swr,
        pool_size=args.pool_size,
        gateway_admin=args.gateway_admin,
        gateway_token=args.gateway_token,
    )


def _new_loop() -> asyncio.AbstractEventLoop:
    """uvloop when available: the origin is a benchmark target and should not bottleneck."""
    try:
        import uvloop
    except ImportError:
        return asyncio.new_event_loop()
    loop: asyncio.AbstractEventLoop = uvloop.new_event_loop()
    return loop


def main(argv: Sequence[str] | None = None) -> None:
    """Parse flags and serve until interrupted."""
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    try:
        settings = settings_from_args(args)
    except ValueError as exc:
        parser.error(str(exc))
    try:
        web.run_app(
            create_app(settings),
            host=settings.host,
            port=settings.port,
            access_log=logging.getLogger("aiohttp.access") if args.access_log else None,
            loop=_new_loop(),
        )
    except OSError as exc:  # the port is taken (or not ours): one line, not a traceback
        where = f"{settings.host}:{settings.port}"
        reason = os.strerror(exc.errno) if exc.errno else str(exc)  # uvloop's text is long
        print(f"origin: cannot listen on {where}: {reason}", file=sys.stderr)
        raise SystemExit(1) from None


if __name__ == "__main__":
    main()
