"""Where a cache hit's CPU goes: user and system time per hit, and (with py-spy) the top lines.

Why: bench/hit.py says how fast a hit is next to nginx; this says what the gateway's process
spends on one, split into its own code (user) and the kernel's (system: the socket writes),
and, given a py-spy binary, which lines take the samples. The gateway runs as `python -m
gateway` on config/gateway.yaml (bench/_harness.py), in front of the demo origin; one
published bundle is warmed, then `wrk -t1 -c50` asks for it for --duration seconds.

py-spy is not a project dependency: install it in a throwaway venv
(`python3 -m venv /tmp/pyspy && /tmp/pyspy/bin/pip install py-spy`) and pass
`--py-spy /tmp/pyspy/bin/py-spy`.

    .venv/bin/python bench/hitcpu.py [--server native|aiohttp] [--access-log json|off]
                                     [--duration 10] [--py-spy PATH] [--top 25]
"""

from __future__ import annotations

import collections
import re
import subprocess
import tempfile
import time
import urllib.request
from pathlib import Path

import _harness as h


def top_lines(raw: Path, top: int) -> list[str]:
    """The leaf frames with the most samples in py-spy's raw (collapsed) output."""
    counts: collections.Counter[str] = collections.Counter()
    total = 0
    for line in raw.read_text().splitlines():
        stack, _, n = line.rpartition(" ")
        counts[stack.split(";")[-1]] += int(n)
        total += int(n)
    return [f"{100 * n / total:5.1f}% {frame}" for frame, n in counts.most_common(top)]


def main() -> None:
    parser = h.arg_parser(__doc__)
    parser.add_argument("--server", choices=("native", "aiohttp"), default="native")
    parser.add_argument("--access-log", choices=("json", "combined", "off"), default="json")
    parser.add_argument("--duration", type=int, default=10, help="seconds of load")
    parser.add_argument("--py-spy", help="a py-spy binary: also sample the gateway")
    parser.add_argument("--top", type=int, default=25, help="lines of the py-spy summary")
    args = parser.parse_args()
    with_log = h.gateway_config

    def config(*a: object, **k: object) -> dict[str, object]:
        c = with_log(*a, **k)  # type: ignore[arg-type]
        c["access_log"] = args.access_log
        return c

    h.gateway_config = config  # type: ignore[assignment]
    print(f"load average before: {' '.join(Path('/proc/loadavg').read_text().split()[:3])}")
    with h.Stack() as stack:
        origin = stack.origin()
        gateway = stack.gateway(origin, server=args.server)
        url = gateway.url + h.bundle_path("p1")
        for _ in range(2):
            with urllib.request.urlopen(url, timeout=30) as resp:
                size = len(resp.read())
        pid = gateway.proc.pid
        user0, system0 = h.cpu_times(pid)
        wrk = subprocess.Popen(
            ["wrk", "-t1", "-c50", f"-d{args.duration}s", url], stdout=subprocess.PIPE, text=True
        )
        raw = Path(tempfile.mkdtemp()) / "py-spy.raw"
        if args.py_spy:
            time.sleep(1)
            subprocess.run(
                [args.py_spy, "record", "-p", str(pid), "-d", str(max(1, args.duration - 2)),
                 "-r", "250", "-f", "raw", "-o", str(raw), "--nonblocking"],
                capture_output=True, check=False, timeout=args.duration + 30,
            )
        out = wrk.communicate(timeout=args.duration + 60)[0]
        user1, system1 = h.cpu_times(pid)
    found = re.search(r"Requests/sec:\s+([\d.]+)", out)
    if found is None:
        raise SystemExit(f"wrk said:\n{out}")
    rps = float(found.group(1))
    hits = rps * args.duration
    print(f"server: {args.server}, access_log: {args.access_log}, body {size} bytes")
    print(f"{rps:.0f} hits/s; per hit: user {(user1 - user0) / hits * 1e6:.1f} us,"
          f" system {(system1 - system0) / hits * 1e6:.1f} us")
    if args.py_spy and raw.exists():
        print("py-spy, samples by leaf frame (threads that were busy):")
        print("\n".join(top_lines(raw, args.top)))
    print(f"load average after: {' '.join(Path('/proc/loadavg').read_text().split()[:3])}")


if __name__ == "__main__":
    main()
