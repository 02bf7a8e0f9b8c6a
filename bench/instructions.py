"""Instructions per cache hit and per pass-through request, counted by valgrind's callgrind.

Why: on this machine's 2 noisy cores a 5-10% change in req/s is within the noise of a wrk run,
but an instruction count is the same on every run of the same code and inputs. The gateway runs
in process (its requests built with aiohttp's make_mocked_request, no sockets on the client
side) in front of the demo origin in a separate process. Each case builds the same --large
requests, answers --small or --large of them, and the difference of the two counts is divided
by the difference of the requests answered: start-up and building the requests cancel out.
PYTHONHASHSEED is fixed, so that dict layouts (and the counts) are the same on every run.

    .venv/bin/python bench/instructions.py [--small 100] [--large 600]

Needs valgrind (Debian: apt-get install valgrind). Each count runs Python under callgrind,
~50x slower than normal: the whole script takes 2-4 minutes.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

import _harness as h

CASES = ("hit", "pass")
CONFIG = """
listen: 127.0.0.1:0
origins:
  loader: {{url: "{origin}"}}
tenants:
  default: {{max_bytes: 64MiB}}
routes:
  - name: pass
    match: {{path_prefix: /healthz}}
    origin: loader
    cache: false
  - name: loader-code
    match: {{path_prefix: /}}
    origin: loader
    tenant: {{query: projectId}}
"""
HIT = h.BUNDLE_PATH + "?projectId=p1&platform=react"
HEADERS = {"Host": "127.0.0.1:8080", "User-Agent": "wrk", "Accept": "*/*"}


async def inner(case: str, count: int, total: int, origin: str) -> None:
    """Build `total` requests of `case`, answer `count` of them (what callgrind counts)."""
    sys.path.insert(0, str(h.REPO))
    from aiohttp.test_utils import make_mocked_request

    from gateway.config import load_config
    from gateway.server import Gateway

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "gateway.yaml"
        path.write_text(CONFIG.format(origin=origin))
        gateway = Gateway(load_config(path, env={}))
    await gateway.start()
    target = "/healthz" if case == "pass" else HIT
    first = await gateway.respond(make_mocked_request("GET", HIT, headers=HEADERS))
    assert first.status == 200, first.status
    requests = [make_mocked_request("GET", target, headers=HEADERS) for _ in range(total)]
    for request in requests[:count]:
        response = await gateway.respond(request)
        assert response.status == 200, response.status
    await gateway.stop()


def counted(case: str, count: int, total: int, origin: str) -> int:
    """Instructions callgrind counted for one run of `inner`."""
    command = [
        "valgrind", "--tool=callgrind", "--callgrind-out-file=/dev/null",
        sys.executable, __file__, "--inner", case, str(count), str(total), origin,
    ]
    env = {**os.environ, "PYTHONHASHSEED": "0"}
    done = subprocess.run(
        command, capture_output=True, text=True, timeout=1800, check=False, env=env
    )
    found = re.search(r"Collected : (\d+)", done.stderr)
    if done.returncode != 0 or found is None:
        raise RuntimeError(f"callgrind run failed: {done.stderr[-2000:]}")
    return int(found.group(1))


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = h.arg_parser(__doc__)
    parser.add_argument("--small", type=int, default=100, help="requests in the short run")
    parser.add_argument("--large", type=int, default=600, help="requests in the long run")
    parser.add_argument("--inner", nargs=4, help=argparse.SUPPRESS)
    return parser.parse_args(argv)


async def bench(args: argparse.Namespace, stack: h.Stack) -> None:
    origin = stack.origin(codegen_seconds=0.0, projects=2, s_maxage=3600)
    per: dict[str, float] = {}
    for case in CASES:
        with h.phase(f"{case}: {args.small} and {args.large} requests under callgrind"):
            small = await asyncio.to_thread(counted, case, args.small, args.large, origin.url)
            large = await asyncio.to_thread(counted, case, args.large, args.large, origin.url)
        per[case] = (large - small) / (args.large - args.small)
    print("\n" + h.machine_note())
    h.print_table(
        "instructions per request answered (the gateway's own work, in process)",
        ["instructions"],
        [
            ["cache hit (Gateway.respond)", f"{per['hit']:,.0f}"],
            ["pass-through, tiny body (with aiohttp's client)", f"{per['pass']:,.0f}"],
        ],
    )


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    if args.inner:
        case, count, total, origin = args.inner
        asyncio.run(inner(case, int(count), int(total), origin))
        return
    h.run_bench(lambda stack: bench(args, stack))


if __name__ == "__main__":
    main()
