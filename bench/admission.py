"""Admission policy on a trace: the hit ratio of plain LRU and of the store's W-TinyLFU, side by
side, on the same requests.

Why: with LRU, every one-off key pushes out whatever was used least recently, so a scan (a
crawler, junk query strings, a burst of cache-busting URLs) empties a tenant of its hot entries.
The trace is a Zipf workload over `--keys` keys of one tenant (the popular ones asked for far
more often), with a scan of `--scan` one-off keys mixed in every `--every` requests. Sizes vary
per key (1-30 KiB), as bundles do. Both policies see the same trace, with the same byte bound
(`--size` of the key universe's bytes), and a hit is a lookup that finds the key; a miss fills.

The LRU side is a byte-bounded OrderedDict (the store's policy before W-TinyLFU); the W-TinyLFU
side is gateway.store.memory.MemoryStore itself, with the tenant's quota as its bound.

    .venv/bin/python bench/admission.py [--requests 200000] [--keys 5000] [--alpha 0.9]
        [--size 0.1] [--scan 2000] [--every 20000] [--seed 1]
"""

from __future__ import annotations

import argparse
import asyncio
import bisect
import itertools
import random
import sys
import time
import zlib
from collections import OrderedDict
from collections.abc import Iterator
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from gateway.policy import Freshness
from gateway.store import Entry
from gateway.store.memory import MemoryStore

TENANT = "acme"


def zipf_sampler(keys: int, alpha: float, rnd: random.Random) -> Iterator[int]:
    """Key ranks drawn with probability proportional to 1 / rank**alpha."""
    weights = [1.0 / (rank**alpha) for rank in range(1, keys + 1)]
    cumulative = list(itertools.accumulate(weights))
    total = cumulative[-1]
    while True:
        yield bisect.bisect_left(cumulative, rnd.random() * total)


def trace(args: argparse.Namespace) -> list[str]:
    """The request keys, scans included, in gateway key form (tenant first)."""
    rnd = random.Random(args.seed)
    ranks = zipf_sampler(args.keys, args.alpha, rnd)
    out: list[str] = []
    scans = 0
    for i in range(args.requests):
        if args.every and i % args.every == args.every // 2:
            out.extend(f"{TENANT}|0|GET|http://h/junk/{scans}/{j}" for j in range(args.scan))
            scans += 1
        out.append(f"{TENANT}|0|GET|http://h/bundle/{next(ranks)}")
    return out


def size_of(key: str) -> int:
    """1-30 KiB, fixed per key (crc32, not hash(): the same in every run)."""
    return 1024 + (zlib.crc32(key.encode()) % 30) * 1024


def entry(key: str) -> Entry:
    return Entry(
        key=key,
        tenant=TENANT,
        url=key.rsplit("|", 1)[1],
        status=200,
        headers=(),
        body=b"",
        response_time=0.0,
        initial_age=0.0,
        freshness=Freshness(lifetime=3600.0),
    )


def run_lru(keys: list[str], capacity: int) -> int:
    held: OrderedDict[str, int] = OrderedDict()
    used = hits = 0
    for key in keys:
        if key in held:
            held.move_to_end(key)
            hits += 1
            continue
        size = size_of(key)
        held[key] = size
        used += size
        while used > capacity:
            _, old = held.popitem(last=False)
            used -= old
    return hits


async def run_tinylfu(keys: list[str], capacity: int) -> tuple[int, MemoryStore]:
    store = MemoryStore(capacity * 4, 10**6, tenant_quota=lambda tenant: capacity)
    hits = 0
    for key in keys:
        if await store.get(key) is not None:
            hits += 1
            continue
        fresh = entry(key)
        fresh.body = b"x" * max(0, size_of(key) - fresh.size())
        await store.put(fresh)
    return hits, store


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--requests", type=int, default=200_000)
    parser.add_argument("--keys", type=int, default=5000)
    parser.add_argument("--alpha", type=float, default=0.9)
    parser.add_argument("--size", type=float, default=0.1, help="bound, share of all bytes")
    parser.add_argument("--scan", type=int, default=2000, help="one-off keys per scan")
    parser.add_argument("--every", type=int, default=20_000, help="requests between scans")
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    keys = trace(args)
    universe = sum(size_of(f"{TENANT}|0|GET|http://h/bundle/{rank}") for rank in range(args.keys))
    capacity = int(universe * args.size)
    print(
        f"trace: {len(keys)} lookups, Zipf alpha={args.alpha} over {args.keys} keys, "
        f"a scan of {args.scan} one-off keys every {args.every} requests; "
        f"bound {capacity / 1024:.0f} KiB ({args.size:.0%} of the keys' bytes)"
    )
    started = time.perf_counter()
    lru_hits = run_lru(keys, capacity)
    lru_time = time.perf_counter() - started
    started = time.perf_counter()
    tiny_hits, store = asyncio.run(run_tinylfu(keys, capacity))
    tiny_time = time.perf_counter() - started
    stats = store.stats()
    print(f"{'policy':<12}{'hit ratio':>10}{'hits':>10}{'seconds':>9}")
    print(f"{'LRU':<12}{lru_hits / len(keys):>10.3f}{lru_hits:>10}{lru_time:>9.2f}")
    print(f"{'W-TinyLFU':<12}{tiny_hits / len(keys):>10.3f}{tiny_hits:>10}{tiny_time:>9.2f}")
    print(
        f"W-TinyLFU store: {stats['entries']} entries, {stats['bytes'] / 1024:.0f} KiB, "
        f"{stats['evictions']} evictions, {stats['not_admitted']} newcomers not admitted"
    )


if __name__ == "__main__":
    main()
