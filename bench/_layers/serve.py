"""One candidate server of bench/layers.py, as a child process on a loopback port.

    python bench/_layers/serve.py LAYER --port P [--loop uvloop|asyncio]

LAYER is one of LAYERS below. Each child serves the same entries (entries.py) and runs until
it is terminated; bench/layers.py pins it to one core with `taskset`, so one process is one
event loop on one core, as the gateway is and as nginx with one worker is.
"""

from __future__ import annotations

import argparse
import asyncio
import socket
import sys
from collections.abc import Callable, Coroutine
from typing import Any

HOST = "127.0.0.1"  # loopback only
BACKLOG = 1024  # as the gateway's listen_backlog: 64 connections at once must not overflow
LAYERS = (
    "web-app",
    "low-level",
    "gateway-listener",
    "httptools",
    "aiohttp-parser",
    "socketify",
    "origin",
)


def listen(port: int) -> socket.socket:
    """A bound, listening, non-blocking loopback socket: the same for every asyncio layer."""
    sock = socket.create_server((HOST, port), backlog=BACKLOG)
    sock.setblocking(False)
    return sock


def coroutine_for(layer: str, sock: socket.socket) -> Coroutine[Any, Any, None]:
    """The serving coroutine of an asyncio layer (imports only what that layer needs)."""
    if layer in ("httptools", "aiohttp-parser"):
        import protocols

        return protocols.serve(layer, sock)
    import aiohttp_layers as a

    runners: dict[str, Callable[[], Coroutine[Any, Any, None]]] = {
        "web-app": lambda: a.serve_web_app(sock),
        "low-level": lambda: a.serve_low_level(sock),
        "gateway-listener": lambda: a.serve_gateway_listener(sock),
        "origin": lambda: a.serve_low_level(sock, origin=True),
    }
    return runners[layer]()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("layer", choices=LAYERS)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--loop", choices=("uvloop", "asyncio"), default="uvloop")
    args = parser.parse_args()
    if args.layer == "socketify":
        import socketify_layer

        socketify_layer.serve(args.port)
        return
    sock = listen(args.port)
    if args.loop == "uvloop":
        import uvloop

        loop = uvloop.new_event_loop()
    else:
        loop = asyncio.new_event_loop()
    try:
        loop.run_until_complete(coroutine_for(args.layer, sock))
    except KeyboardInterrupt:
        pass
    finally:
        loop.close()


if __name__ == "__main__":
    sys.exit(main())
