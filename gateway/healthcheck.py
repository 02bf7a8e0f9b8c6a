"""`python -m gateway.healthcheck [URL]`: the container image's HEALTHCHECK (see Dockerfile).

Exit status 0 when the admin listener answers `GET /healthz` with 200, 1 otherwise (Docker
reads 0 as healthy and 1 as unhealthy; 2 is reserved), with one line saying what failed.
`/healthz` is the gateway's only unauthenticated endpoint: the process is up, its listeners are
bound (it exits when one cannot be), and its event loop answers. It stops answering as soon as
a SIGTERM closes the listeners, so a draining gateway reads as unhealthy.

Without URL the address is `GATEWAY_ADMIN_LISTEN`, the variable config/docker.yaml takes
`admin.listen` from, with the same default: one variable moves both. A wildcard host
(0.0.0.0, ::) is asked on loopback. Standard library only, and no config file read: it runs
every few seconds, and a routing file broken on disk (pending a reload) must not make a running
gateway unhealthy.
"""

from __future__ import annotations

import os
import sys
import urllib.error
import urllib.request

ENV = "GATEWAY_ADMIN_LISTEN"
DEFAULT_LISTEN = "0.0.0.0:8081"  # as in config/docker.yaml
TIMEOUT = 2.0  # seconds; below the Dockerfile's --timeout, so that the line here is the one shown

_WILDCARDS = {"": "127.0.0.1", "0.0.0.0": "127.0.0.1", "::": "::1"}


def health_url(listen: str) -> str:
    """The /healthz URL for an `admin.listen` value (`host:port`, `[v6]:port`, `:port`)."""
    host, _, port = listen.strip().rpartition(":")
    host = host.removeprefix("[").removesuffix("]")
    if not port.isdigit():
        raise ValueError(f"expected host:port, got {listen!r}")
    host = _WILDCARDS.get(host, host)
    return f"http://[{host}]:{port}/healthz" if ":" in host else f"http://{host}:{port}/healthz"


def check(url: str) -> str | None:
    """None when `url` answers 200, else what went wrong (one line)."""
    try:
        with urllib.request.urlopen(url, timeout=TIMEOUT) as response:
            if response.status == 200:
                return None
            return f"{url}: HTTP {response.status}"
    except urllib.error.HTTPError as exc:
        return f"{url}: HTTP {exc.code}"
    except (OSError, ValueError) as exc:  # refused, timed out, no such host, a bad URL
        reason = getattr(exc, "reason", None) or exc
        return f"{url}: {reason}"


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    try:
        url = args[0] if args else health_url(os.environ.get(ENV) or DEFAULT_LISTEN)
    except ValueError as exc:
        print(f"healthcheck: {ENV}: {exc}", file=sys.stderr)
        return 1
    problem = check(url)
    if problem is not None:
        print(f"unhealthy: {problem}", file=sys.stderr)
        return 1
    print(f"healthy: {url}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
