"""The memory tier charges what the process really holds: its byte figures against tracemalloc.

A bound of N bytes must hold about N bytes of memory, whatever the entries look like (issue 12:
a constant per-entry charge let small entries take 4.8 times their bound). Entries here are
built as a fill builds them: each value a string of its own, header names shared (as aiohttp's
parser shares them), tags and Vary names from the response.
"""

from __future__ import annotations

import gc
import random
import tracemalloc
from collections.abc import Callable

import pytest

from gateway.key import vary_record_key
from gateway.policy import Freshness
from gateway.store import Entry
from gateway.store.compact import VALUES
from gateway.store.memory import MemoryStore

TOLERANCE = 0.10
NAMES = ("Content-Type", "Content-Length", "Cache-Control", "ETag", "Last-Modified", "Date",
         "Surrogate-Key", "Server", "Vary", "X-Request-Id")


def entry(i: int, tenant: str, body: int, *, fields: int, tags: int, vary: bool) -> Entry:
    """One fill's entry: `fields` header fields (a subset visible), `tags` tags, maybe Vary."""
    url = f"http://{tenant}.example/assets/{i}.js?v={i % 13}"
    values = [
        "application/javascript", str(body), "public, max-age=60", f'"{i:x}-{body}"',
        f"Mon, 0{i % 9 + 1} Dec 2025 10:00:00 GMT", f"Mon, 01 Dec 2025 10:{i % 60:02}:00 GMT",
        " ".join(f"tag{i % 50}-{t}" for t in range(tags)), "origin/1.0", "Accept-Encoding",
        f"req-{i:016x}",
    ]
    headers = tuple((name, "".join(value)) for name, value in zip(NAMES, values, strict=True))
    headers = headers[:fields]
    names = ("accept-encoding",) if vary else ()
    return Entry(
        key=f"{tenant}|1|GET|{url}" + ("#accept-encoding=gzip" if vary else ""),
        tenant="".join(tenant),
        url=url,
        status=200,
        headers=headers,
        body=random.randbytes(body),
        response_time=1.7e9 + i,
        initial_age=float(i % 3),
        freshness=Freshness(lifetime=60.0 + i % 2, swr=float(i % 2) * 30),
        etag=headers[3][1] if fields > 3 else None,
        last_modified=headers[4][1] if fields > 4 else None,
        vary=tuple(name for name in names),
        tags=tuple(f"tag{i % 50}-{t}" for t in range(tags)),
        visible=tuple(pair for pair in headers if pair[0] != "Content-Length"),
    )


def tiny(i: int, tenant: str) -> Entry:
    return entry(i, tenant, random.randint(0, 40), fields=2, tags=0, vary=False)


def small(i: int, tenant: str) -> Entry:
    return entry(i, tenant, random.randint(200, 2048), fields=10, tags=2, vary=i % 3 == 0)


def large(i: int, tenant: str) -> Entry:
    return entry(i, tenant, random.randint(64 << 10, 256 << 10), fields=8, tags=1, vary=False)


Shape = Callable[[int, str], Entry]


async def traced_and_accounted(
    shapes: list[Shape], count: int, max_bytes: int, tenants: int, quota: int | None
) -> tuple[int, int, int]:
    """Fill a store under tracemalloc; the bytes it freed when dropped, what it accounted, and
    how many entries it held."""
    random.seed(7)
    gc.collect()
    tracemalloc.start()
    store = MemoryStore(max_bytes, max_bytes, tenant_quota=lambda t: quota)
    for i in range(count):
        e = shapes[i % len(shapes)](i, f"t{i % tenants}")
        await store.set_vary(vary_record_key(e.tenant, e.url), e.vary)  # as a fill does
        await store.put(e)
    del e
    gc.collect()
    full = tracemalloc.get_traced_memory()[0]
    stats = store.stats()
    store.check_invariants()
    del store
    gc.collect()
    gone = tracemalloc.get_traced_memory()[0]
    tracemalloc.stop()
    accounted = stats["bytes"] + stats["vary_bytes"] + stats["overhead_bytes"]
    return full - gone, accounted, stats["entries"]


@pytest.mark.parametrize(
    ("shapes", "count", "max_bytes", "tenants", "quota"),
    [
        ([tiny], 4000, 64 << 20, 1, None),
        ([small], 2000, 64 << 20, 1, None),
        ([large], 40, 64 << 20, 1, None),
        ([tiny, small, large], 2000, 64 << 20, 20, None),
        # past the bound (entries evicted as new ones come), tenants with their own spaces
        ([tiny, small], 8000, 3 << 20, 1, None),
        ([tiny, small, large], 4000, 6 << 20, 50, 1 << 20),
    ],
    ids=["tiny", "small", "large", "mixed", "small-past-full", "mixed-quotas-past-full"],
)
async def test_accounted_bytes_are_within_10_percent_of_what_tracemalloc_sees(
    shapes: list[Shape], count: int, max_bytes: int, tenants: int, quota: int | None
) -> None:
    traced, accounted, held = await traced_and_accounted(shapes, count, max_bytes, tenants, quota)
    assert held > 0
    assert abs(accounted - traced) <= TOLERANCE * traced, (accounted, traced, held)


async def test_equal_values_are_held_once_and_entries_are_not_tracked() -> None:
    """What entries hold alike is one object, and the collector walks none of it."""
    store = MemoryStore(1 << 20, 1 << 20)
    first, second = small(0, "t"), small(6, "t")
    await store.put(first)
    await store.put(second)
    assert first.freshness is second.freshness is VALUES(Freshness(60.0, 0.0))
    assert first.vary is second.vary
    assert all(any(p is q for q in first.headers) for p in first.visible)  # not copies
    assert first.headers[0] is second.headers[0]  # ("Content-Type", ...): a repeating field
    gc.collect()
    gc.collect()  # a tuple is untracked once its items are (seen untracked in an earlier pass)
    assert not gc.is_tracked(first) and not gc.is_tracked(first.headers)
    state = store._tenants["t"]
    assert not gc.is_tracked(state.keys) and not gc.is_tracked(state.by_url)
