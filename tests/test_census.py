"""The machine-wide stats of `workers: N`: the pure merge of the workers' snapshots (properties),
and the census against a real Redis (two workers of one machine, a stale one, Redis away)."""

from __future__ import annotations

import itertools
import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.config import RedisConfig
from gateway.fleet.census import STALE_AFTER, Census, merge
from gateway.fleet.keys import Keys
from gateway.fleet.link import RedisLink
from tests.clock import SettableClock
from tests.redis_fixtures import redis_server  # noqa: F401
from tests.redis_servers import RedisServer

NAMES = st.sampled_from(["hit", "miss", "bytes", "mean_ms", "generations", "hard", "tenants",
                         "breaker", "ready", "instance", "p1", "p2"])
COUNTERS = st.sampled_from(["hit", "miss", "collapsed", "origin_fetches", "bytes"])
LEAVES = (
    st.integers(-(10**12), 10**12)
    | st.floats(-1e15, 1e15, allow_nan=False)  # stats: counts, bytes, seconds
    | st.booleans()
    | st.text(max_size=5)
    | st.none()
)
SNAPSHOTS = st.recursive(
    st.dictionaries(NAMES, LEAVES, max_size=5),
    lambda inner: st.dictionaries(NAMES, inner | LEAVES, max_size=5),
    max_leaves=30,
)


def numbers(tree: Any, path: tuple[str, ...] = ()) -> dict[tuple[str, ...], float]:
    """Every number (not bool) in a stats tree, by its path."""
    if isinstance(tree, dict):
        out: dict[tuple[str, ...], float] = {}
        for key, value in tree.items():
            out.update(numbers(value, (*path, key)))
        return out
    if isinstance(tree, int | float) and not isinstance(tree, bool):
        return {path: tree}
    return {}


@settings(max_examples=300, deadline=None)
@given(SNAPSHOTS)
def test_merging_one_snapshot_gives_it_back(snapshot: dict[str, Any]) -> None:
    merged = merge([snapshot])
    assert numbers(merged) == numbers(snapshot)
    assert merged == snapshot


@settings(max_examples=300, deadline=None)
@given(st.lists(SNAPSHOTS, min_size=2, max_size=4), st.randoms(use_true_random=False))
def test_merging_does_not_depend_on_the_order_of_the_workers(
    snapshots: list[dict[str, Any]], rng: Any
) -> None:
    shuffled = list(snapshots)
    rng.shuffle(shuffled)
    assert merge(shuffled) == merge(snapshots)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.dictionaries(COUNTERS, st.integers(0, 10**9), max_size=6), min_size=1,
                max_size=5))
def test_counters_are_summed_key_by_key(workers: list[dict[str, int]]) -> None:
    counters = [{"cache": w} for w in workers]
    merged = merge(counters)["cache"]
    for key in set(itertools.chain.from_iterable(workers)):
        assert merged[key] == sum(w.get(key, 0) for w in workers)


def test_what_is_not_a_counter_is_merged_as_documented() -> None:
    a = {
        "cache": {"hit": 3, "miss": 1},
        "tenants": {"p1": {"hit": 2}},
        "store": {"bytes": 10, "max_bytes": 100},
        "generations": {"tenant": "*", "hard": 2, "soft": 5, "key": ".2.5"},
        "origins": {"o": {"breaker": "closed", "in_flight_max": 3}},
        "fleet": {"instance": "h:1:a", "redis": {"available": True, "mean_ms": 0.5},
                  "purge_stream": {"ready": True, "lag_seconds": 0.1}},
    }
    b = {
        "cache": {"hit": 4},
        "tenants": {"p1": {"hit": 1}, "p2": {"miss": 7}},
        "store": {"bytes": 5, "max_bytes": 100},
        "generations": {"tenant": "*", "hard": 2, "soft": 5, "key": ".2.5"},
        "origins": {"o": {"breaker": "open", "in_flight_max": 1}},
        "fleet": {"instance": "h:2:b", "redis": {"available": False, "mean_ms": 1.5},
                  "purge_stream": {"ready": True, "lag_seconds": 0.3}},
    }
    assert merge([a, b]) == {
        "cache": {"hit": 7, "miss": 1},
        "tenants": {"p1": {"hit": 3}, "p2": {"miss": 7}},
        "store": {"bytes": 15, "max_bytes": 200},  # the machine's memory tier
        "generations": {"tenant": "*", "hard": 2, "soft": 5, "key": ".2.5"},  # not doubled
        "origins": {"o": {"breaker": ["closed", "open"], "in_flight_max": 4}},
        "fleet": {"instance": ["h:1:a", "h:2:b"], "redis": {"available": False, "mean_ms": 1.5},
                  "purge_stream": {"ready": True, "lag_seconds": 0.3}},
    }


def census(server: RedisServer, worker: int, stats: dict[str, Any], clock: SettableClock,
           machine: str = "host:1") -> Census:
    link = RedisLink(RedisConfig(url=server.url, timeout=0.3))
    return Census(link, Keys("gw"), machine, worker, lambda: stats, clock=clock)


async def test_any_worker_answers_for_every_live_worker_of_its_machine(
    redis_server: RedisServer,  # noqa: F811
) -> None:
    clock = SettableClock()
    w0 = census(redis_server, 0, {"cache": {"hit": 1}}, clock)
    w1 = census(redis_server, 1, {"cache": {"hit": 10, "miss": 2}}, clock)
    other = census(redis_server, 0, {"cache": {"hit": 1000}}, clock, machine="host:2")
    try:
        for c in (w0, w1, other):
            assert await c.publish()
        # w0 answers with its live stats, not the snapshot it published a moment ago
        got = await w0.machine_stats({"cache": {"hit": 5}})
        assert got["cache"] == {"hit": 15, "miss": 2}  # not the other machine's
        assert (got["machine"], got["worker"], got["workers"]) == ("host:1", 0, 2)
        assert set(got["per_worker"]) == {"0", "1"}
        assert "census" not in got

        clock.advance(STALE_AFTER * w0.interval + 0.5)  # w1 stopped publishing: dead
        assert await w0.publish()
        got = await w0.machine_stats({"cache": {"hit": 5}})
        assert (got["cache"], got["workers"]) == ({"hit": 5}, 1)

        assert await w1.publish()  # back (restarted)
        await w1.stop()  # a worker that stops takes its snapshot out at once
        got = await w0.machine_stats({"cache": {"hit": 5}})
        assert got["workers"] == 1
        raw = await w0.link.run(lambda r: r.hgetall(w0.key))
        assert set(raw) == {b"0"}
        assert json.loads(raw[b"0"])["stats"] == {"cache": {"hit": 1}}
        assert 0 < await w0.link.run(lambda r: r.pttl(w0.key)) <= 5000  # expires unless fed
    finally:
        for c in (w0, w1, other):
            await c.link.close()


async def test_without_redis_a_worker_answers_for_itself_and_says_so(
    redis_server: RedisServer,  # noqa: F811
) -> None:
    clock = SettableClock()
    w0 = census(redis_server, 0, {"cache": {"hit": 1}}, clock)
    redis_server.kill()
    try:
        assert not await w0.publish()
        got = await w0.machine_stats({"cache": {"hit": 5}})
        assert got["cache"] == {"hit": 5}
        assert got["workers"] == 1
        assert got["census"].startswith("unavailable")
        await w0.stop()  # fails open too
    finally:
        await w0.link.close()


@pytest.mark.parametrize("value", [b"not json", b"[]", b'{"at": "x", "pid": 1, "stats": {}}',
                                   b'{"at": 1}'])
async def test_a_field_that_is_not_a_snapshot_is_ignored(
    redis_server: RedisServer, value: bytes  # noqa: F811
) -> None:
    clock = SettableClock()
    w0 = census(redis_server, 0, {}, clock)
    try:
        await w0.link.run(lambda r: r.hset(w0.key, "1", value))
        await w0.link.run(lambda r: r.hset(w0.key, "nope", b"{}"))
        got = await w0.machine_stats({"cache": {"hit": 5}})
        assert (got["cache"], got["workers"]) == ({"hit": 5}, 1)
    finally:
        await w0.link.close()
