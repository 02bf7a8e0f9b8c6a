"""MemoryStore: byte bounds, W-TinyLFU per space, tenant quotas, purge indexes, Vary registry."""

from __future__ import annotations

import asyncio
import random
from collections import Counter
from collections.abc import Coroutine
from typing import Any, TypeVar

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule

from gateway.key import primary_key
from gateway.policy import Freshness
from gateway.store import Entry
from gateway.store.compact import compact
from gateway.store.memory import QUOTA, SIZE, MemoryStore

T = TypeVar("T")


def make(
    key: str,
    body_len: int = 100,
    *,
    tenant: str = "t",
    url: str | None = None,
    tags: tuple[str, ...] = (),
) -> Entry:
    return Entry(
        key=key,
        tenant=tenant,
        url=url if url is not None else f"http://h/{key}",
        status=200,
        headers=(),
        body=b"x" * body_len,
        response_time=0.0,
        initial_age=0.0,
        freshness=Freshness(lifetime=30.0),
        tags=tags,
    )


def sized(key: str, size: int, **kw: object) -> Entry:
    """An entry whose size() is exactly `size` (key and url of fixed length), as the store
    charges it (after it shares what entries hold alike)."""
    entry = make(key, 0, **kw)  # type: ignore[arg-type]
    compact(entry)
    entry.body = b"x" * (size - entry.size())
    assert entry.size() == size
    return entry


def keys(store: MemoryStore) -> list[str]:
    return list(store._lru)


def tag_index(store: MemoryStore) -> dict[tuple[str, str], set[str]]:
    """(tenant, tag) -> the keys the store's tag index holds."""
    return {
        (name, tag): set(held)
        for name, t in store._tenants.items()
        for tag, held in t.by_tag.items()
    }


# -- LRU and byte bound ---------------------------------------------------------------------


async def test_get_put_delete_roundtrip() -> None:
    store = MemoryStore(max_bytes=10_000, max_object_bytes=10_000)
    e = make("a")
    assert await store.get("a") is None
    assert await store.put(e)
    assert await store.get("a") is e
    assert await store.delete("a")
    assert not await store.delete("a")
    assert await store.get("a") is None
    assert store.stats()["bytes"] == 0
    store.check_invariants()


async def asked(store: MemoryStore, key: str, times: int = 2) -> None:
    """Lookups that find nothing: the key's popularity grows before it is stored."""
    for _ in range(times):
        assert await store.get(key) is None


async def test_a_full_store_admits_a_newcomer_only_if_more_popular_than_its_victim() -> None:
    store = MemoryStore(max_bytes=3 * 1000 + 100, max_object_bytes=3000)
    for k in "abc":
        assert await store.put(sized(k, 1000))
    assert not await store.put(sized("d", 1000))  # asked for by nobody: not worth an eviction
    assert keys(store) == ["a", "b", "c"]
    assert store.stats()["not_admitted"] == 1 and store.stats()["evictions"] == 0
    await asked(store, "d")
    assert await store.put(sized("d", 1000))  # asked for twice: beats the least recent, a
    assert keys(store) == ["b", "c", "d"]
    await asked(store, "e", 3)
    assert await store.put(sized("e", 2000))  # needs two victims, and beats both
    assert keys(store) == ["d", "e"]
    assert store.stats()["evictions"] == 3
    store.check_invariants()


async def test_a_hit_protects_an_entry_from_the_next_eviction() -> None:
    store = MemoryStore(max_bytes=3100, max_object_bytes=3000)
    for k in "abc":
        await store.put(sized(k, 1000))
    assert await store.get("a") is not None
    await asked(store, "d")
    await store.put(sized("d", 1000))
    assert keys(store) == ["c", "a", "d"]  # b, not a, made room
    assert await store.get("b") is None
    store.check_invariants()


async def test_a_scan_of_one_off_keys_leaves_the_hot_entries_in_place() -> None:
    store = MemoryStore(max_bytes=20_000, max_object_bytes=2000, tenant_quota=lambda t: 10_000)
    hot = [f"hot{i}" for i in range(8)]
    for key in hot:
        await store.put(sized(f"acme|{key}", 1000, tenant="acme"))
    for _ in range(3):
        for key in hot:
            assert await store.get(f"acme|{key}") is not None
    for i in range(120):  # junk URLs, each asked for once
        await asked(store, f"acme|junk{i}", 1)
        await store.put(sized(f"acme|junk{i}", 1000, tenant="acme"))
    assert all([await store.get(f"acme|{key}") is not None for key in hot])
    assert store.tenant_bytes("acme") <= 10_000
    store.check_invariants()


async def test_replace_adjusts_bytes_and_recency() -> None:
    store = MemoryStore(max_bytes=10_000, max_object_bytes=10_000)
    await store.put(sized("a", 1000, tags=("x",)))
    await store.put(sized("b", 1000))
    assert await store.put(sized("a", 3000, tags=("y",)))
    assert store.stats()["bytes"] == 4000
    assert store.tenant_bytes("t") == 4000
    assert keys(store) == ["b", "a"]
    assert ("t", "x") not in tag_index(store)
    assert tag_index(store)[("t", "y")] == {"a"}
    assert await store.put(sized("a", 800))
    assert store.stats()["bytes"] == 1800
    assert store.stats()["entries"] == 2
    store.check_invariants()


async def test_refuses_objects_over_bounds_and_keeps_old() -> None:
    store = MemoryStore(
        max_bytes=5000, max_object_bytes=2000, tenant_quota=lambda t: 1500 if t == "small" else None
    )
    old = sized("a", 1000)
    assert await store.put(old)
    assert not await store.put(sized("a", 2001))
    assert await store.get("a") is old
    assert await store.put(sized("b", 2000))
    big_store = MemoryStore(max_bytes=1000, max_object_bytes=10_000)
    assert not await big_store.put(sized("x", 1001))
    assert len(big_store) == 0
    assert not await store.put(sized("s", 1501, tenant="small"))
    assert store.tenant_bytes("small") == 0
    assert store.stats()["evictions"] == 0
    store.check_invariants()
    big_store.check_invariants()


async def test_entry_size_counts_overhead() -> None:
    store = MemoryStore(max_bytes=10 * 600, max_object_bytes=10**6)
    for i in range(100):
        await store.put(make(f"k{i}", 0))
    # tiny entries still hit the byte bound: the objects and index places each one costs
    assert len(store) < 10
    store.check_invariants()


async def test_size_charged_at_put_time() -> None:
    store = MemoryStore(max_bytes=10_000, max_object_bytes=10_000)
    e = sized("a", 1000)
    await store.put(e)
    e.body = b"y" * 5000  # a caller mutating a stored entry must not skew the accounting
    await store.delete("a")
    assert store.stats()["bytes"] == 0
    store.check_invariants()


async def test_on_evict_hook_only_for_capacity_evictions() -> None:
    evicted: list[tuple[str, str]] = []
    store = MemoryStore(
        max_bytes=2000, max_object_bytes=2000, on_evict=lambda e, why: evicted.append((e.key, why))
    )
    await store.put(sized("a", 1000))
    await store.put(sized("b", 1000))
    await asked(store, "c")
    await store.put(sized("c", 1000))
    await store.put(sized("d", 1000))  # not admitted: not an eviction
    await store.delete("b")
    await store.purge_tenant("t")
    assert evicted == [("a", SIZE)]


# -- tenant quotas --------------------------------------------------------------------------


async def test_noisy_tenant_evicts_only_its_own_entries() -> None:
    quotas = {"noisy": 3100}
    evicted: Counter[tuple[str, str]] = Counter()
    store = MemoryStore(
        max_bytes=10_000, max_object_bytes=2000, tenant_quota=quotas.get,
        on_evict=lambda e, why: evicted.update([(e.tenant, why)]),
    )
    for i in range(4):
        assert await store.put(sized(f"q{i}", 1000, tenant="quiet"))
    for i in range(20):  # keys as gateway.key makes them: the tenant first
        await asked(store, f"noisy|n{i:02}", 1 + i % 4)
        await store.put(sized(f"noisy|n{i:02}", 1000, tenant="noisy"))
        assert store.tenant_bytes("noisy") <= 3100
    assert all([await store.get(f"q{i}") is not None for i in range(4)])
    stats = store.stats()
    assert stats["tenants"]["noisy"] == {"entries": 3, "bytes": 3000}
    assert stats["tenants"]["quiet"] == {"entries": 4, "bytes": 4000}
    assert stats["evictions"] + stats["not_admitted"] == 17  # each newcomer past three
    assert stats["evictions"] > 0 and set(evicted) == {("noisy", QUOTA)}
    store.check_invariants()


async def test_tenant_quota_evicts_from_the_tenants_own_space_not_the_global_lru() -> None:
    quotas = {"a": 2100}
    store = MemoryStore(max_bytes=10_000, max_object_bytes=2000, tenant_quota=quotas.get)
    await store.put(sized("b|1", 1000, tenant="b"))  # globally oldest, other tenant
    await store.put(sized("a|1", 1000, tenant="a"))
    await store.put(sized("a|2", 1000, tenant="a"))
    await store.get("a|1")  # a|2 is now a's least valuable
    await asked(store, "a|3")
    await store.put(sized("a|3", 1000, tenant="a"))
    assert keys(store) == ["b|1", "a|1", "a|3"]
    store.check_invariants()


async def test_global_bound_still_applies_across_tenants() -> None:
    evicted: list[tuple[str, str]] = []
    store = MemoryStore(
        max_bytes=3000, max_object_bytes=3000, tenant_quota=lambda t: 2000,
        on_evict=lambda e, why: evicted.append((e.tenant, why)),
    )
    await store.put(sized("a1", 1000, tenant="a"))
    await store.put(sized("b1", 1000, tenant="b"))
    await store.put(sized("c1", 1000, tenant="c"))
    await store.put(sized("d1", 1000, tenant="d"))
    assert keys(store) == ["b1", "c1", "d1"]
    assert evicted == [("a", SIZE)]
    assert "a" not in store.stats()["tenants"]  # holds nothing: forgotten
    store.check_invariants()


async def test_tenants_that_hold_nothing_cost_nothing() -> None:
    store = MemoryStore(max_bytes=5000, max_object_bytes=1000)
    for i in range(1000):  # client-invented tenant names, each pushed out by the next ones
        await asked(store, f"k{i}", 1 + i % 15)
        await store.put(sized(f"k{i}", 1000, tenant=f"t{i}"))
    assert len(store._tenants) == len(store) <= 5
    store.check_invariants()


async def test_sites_are_the_hosts_of_the_tenants_entries() -> None:
    store = MemoryStore(max_bytes=100_000, max_object_bytes=10_000)
    await store.put(make("1", tenant="a", url="http://one.example/x"))
    await store.put(make("2", tenant="a", url="https://two.example:8443/y?q=1"))
    await store.put(make("3", tenant="a", url="http://one.example/z"))
    await store.put(make("4", tenant="b", url="http://three.example/"))
    assert await store.sites("a") == ["http://one.example", "https://two.example:8443"]
    await store.delete("2")
    assert await store.sites("a") == ["http://one.example"]
    assert await store.sites("nobody") == []
    store.check_invariants()


# -- purges ---------------------------------------------------------------------------------


async def test_purge_tenant() -> None:
    store = MemoryStore(max_bytes=100_000, max_object_bytes=10_000)
    for i in range(5):
        await store.put(make(f"a{i}", tenant="a", tags=("all",)))
        await store.put(make(f"b{i}", tenant="b", tags=("all",)))
    assert await store.purge_tenant("a") == 5
    assert await store.purge_tenant("a") == 0
    assert await store.purge_tenant("nobody") == 0
    assert len(store) == 5
    assert store.tenant_bytes("a") == 0
    assert ("a", "all") not in tag_index(store)
    assert len(tag_index(store)[("b", "all")]) == 5
    assert "a" not in store._tenants
    store.check_invariants()


async def test_purge_prefix_path_and_absolute() -> None:
    store = MemoryStore(max_bytes=100_000, max_object_bytes=10_000)
    urls = {
        "1": "http://h/api/v1/users",
        "2": "http://h/api/v1/users?page=2",
        "3": "http://h/api/v2/x",
        "4": "https://other/api/v1/users",
        "5": "http://h/static/api/v1",
        "6": "http://hh/api/v1/z",
    }
    for k, u in urls.items():
        await store.put(make(k, url=u))
    await store.put(make("other-tenant", tenant="o", url="http://h/api/v1/users"))
    assert await store.purge_prefix("t", "/api/v1/users?") == 1
    assert await store.purge_prefix("t", "/api/v1/") == 3  # 1, 4, 6 (any host of the tenant)
    assert sorted(k for k in keys(store)) == ["3", "5", "other-tenant"]
    assert await store.purge_prefix("t", "HTTP://H") == 2
    assert keys(store) == ["other-tenant"]
    assert await store.purge_prefix("nobody", "/") == 0
    store.check_invariants()


async def test_purge_prefix_absolute_host_boundary() -> None:
    store = MemoryStore(max_bytes=100_000, max_object_bytes=10_000)
    await store.put(make("a", url="http://h/x"))
    await store.put(make("b", url="http://hh/x"))
    await store.put(make("c", url="http://h:8080/x"))
    assert await store.purge_prefix("t", "http://h") == 1
    assert sorted(keys(store)) == ["b", "c"]
    assert await store.purge_prefix("t", "api") == 0
    await store.put(make("d", url="http://h/api/z"))
    assert await store.purge_prefix("t", "api") == 1


async def test_purge_tags() -> None:
    store = MemoryStore(max_bytes=100_000, max_object_bytes=10_000)
    await store.put(make("1", tags=("red", "big")))
    await store.put(make("2", tags=("red",)))
    await store.put(make("3", tags=("blue",)))
    await store.put(make("4", tags=("big",)))
    await store.put(make("o", tenant="other", tags=("red",)))
    assert await store.purge_tags("t", ["red", "big"]) == 3
    assert keys(store) == ["3", "o"]
    assert await store.purge_tags("t", ["red"]) == 0
    assert set(tag_index(store)) == {("t", "blue"), ("other", "red")}
    assert await store.purge_tags("t", []) == 0
    store.check_invariants()


async def test_a_large_purge_lets_requests_run_between_slices_and_ends_complete() -> None:
    store = MemoryStore(max_bytes=10**8, max_object_bytes=10**6)
    for i in range(5000):
        await store.put(make(f"k{i}", 10, url=f"http://h/p/{i}"))
    seen: list[int] = []

    async def meanwhile() -> None:
        seen.append(len(store))

    task = asyncio.get_running_loop().create_task(meanwhile())
    assert await store.purge_prefix("t", "/p/") == 5000
    await task
    assert len(store) == 0 and 0 < seen[0] < 5000  # it ran in the middle of the purge
    store.check_invariants()


async def test_a_prefix_purge_is_a_range_of_the_tenants_urls() -> None:
    store = MemoryStore(max_bytes=10**8, max_object_bytes=10**6)
    for i in range(2000):
        await store.put(make(f"k{i}", 10, url=f"http://h/p/{i:04}"))
    await store.put(make("x", 10, url="https://other.example/p/0001"))
    assert await store.purge_prefix("t", "/p/0001") == 2  # on each of the tenant's sites
    assert await store.purge_prefix("t", "http://h/p/01") == 100
    assert await store.purge_prefix("t", "/p/00") == 99  # 0001 went already
    assert len(store) == 2000 - 1 - 100 - 99
    store.check_invariants()


async def test_no_stale_index_entries_after_eviction() -> None:
    store = MemoryStore(max_bytes=5000, max_object_bytes=5000, tenant_quota=lambda t: 3000)
    for i in range(50):
        await asked(store, f"k{i}", 1 + i % 10)
        await store.put(sized(f"k{i}", 1000, tenant=f"t{i % 3}", tags=(f"tag{i}", "common")))
    assert len(store) == 5
    tags = tag_index(store)
    indexed = set().union(*tags.values())
    assert indexed == set(store._lru)
    assert sum(len(t.keys) for t in store._tenants.values()) == 5
    assert len(tags) == 5 + len({store._lru[k].tenant for k in store._lru})
    store.check_invariants()


# -- Vary registry --------------------------------------------------------------------------


async def test_vary_registry_roundtrip_and_purge_tenant() -> None:
    store = MemoryStore(max_bytes=100_000, max_object_bytes=10_000)
    pa = primary_key("a", "1", "GET", "http://h/x")
    pb = primary_key("b", "1", "GET", "http://h/x")
    assert await store.get_vary(pa) is None
    await store.set_vary(pa, ("accept-encoding",))
    await store.set_vary(pa, ("accept-encoding", "accept-language"))
    await store.set_vary(pb, ("cookie",))
    assert await store.get_vary(pa) == ("accept-encoding", "accept-language")
    assert await store.get_vary(pb) == ("cookie",)
    assert store.stats()["vary_entries"] == 2
    store.check_invariants()
    await store.purge_tenant("a")
    assert await store.get_vary(pa) is None
    assert await store.get_vary(pb) == ("cookie",)
    store.check_invariants()


async def test_vary_registry_with_escaped_tenant() -> None:
    store = MemoryStore(max_bytes=100_000, max_object_bytes=10_000)
    p = primary_key("a|b", "1", "GET", "http://h/x")
    await store.set_vary(p, ("x",))
    await store.purge_tenant("a|b")
    assert await store.get_vary(p) is None
    store.check_invariants()


async def test_vary_records_count_against_max_bytes_with_the_entries() -> None:
    store = MemoryStore(max_bytes=10_000, max_object_bytes=10_000, vary_max_bytes=3000)
    for i in range(8):
        await store.put(sized(f"k{i}", 1000))
    for i in range(12):
        await store.set_vary(f"t|1|GET|http://h/{i:03}", ("accept",))
    recorded = store.stats()["vary_bytes"]
    assert 2000 < recorded <= 3000
    await store.put(sized("new", 1000))  # the oldest entries make room for the records too
    assert store.stats()["bytes"] + recorded <= 10_000
    assert "new" in store and "k0" not in store and len(store) == (10_000 - recorded) // 1000
    store.check_invariants()


async def test_vary_registry_bounded_lru() -> None:
    store = MemoryStore(max_bytes=100_000, max_object_bytes=10_000, vary_max_bytes=1000)
    for i in range(100):
        await store.set_vary(f"t|1|GET|http://h/{i:03}", ("accept",))
        if i == 5:
            await store.get_vary("t|1|GET|http://h/000")
    stats = store.stats()
    assert stats["vary_bytes"] <= 1000
    assert 0 < stats["vary_entries"] < 100
    assert await store.get_vary("t|1|GET|http://h/099") == ("accept",)
    assert await store.get_vary("t|1|GET|http://h/001") is None
    store.check_invariants()


# -- randomized invariants ------------------------------------------------------------------


@pytest.mark.parametrize("seed", range(20))
async def test_random_operations_keep_invariants(seed: int) -> None:
    rnd = random.Random(seed)
    tenants = ["a", "b", "c"]
    quotas = {"a": 4000, "b": None, "c": 2500}
    store = MemoryStore(max_bytes=8000, max_object_bytes=3000, tenant_quota=quotas.get)
    for _ in range(400):
        op = rnd.random()
        tenant = rnd.choice(tenants)
        key = f"{tenant}|1|GET|http://h/{rnd.choice(['x', 'y'])}/{rnd.randrange(15)}"
        if op < 0.5:
            tags = tuple(rnd.sample(["r", "g", "b"], rnd.randrange(3)))
            entry = make(
                key, rnd.randrange(0, 3500), tenant=tenant, url=key.split("|")[3], tags=tags
            )
            accepted = await store.put(entry)
            quota = quotas[tenant]
            fits = entry.size() <= 3000 and (quota is None or entry.size() <= quota)
            assert fits or not accepted  # and one that fits may lose its admission
            if accepted:
                assert await store.get(key) is entry
        elif op < 0.7:
            await store.get(key)
        elif op < 0.8:
            await store.delete(key)
        elif op < 0.85:
            await store.purge_tags(tenant, [rnd.choice(["r", "g", "b"])])
        elif op < 0.9:
            await store.purge_prefix(tenant, rnd.choice(["/x/", "/y/1", "http://h/x"]))
        elif op < 0.93:
            await store.purge_tenant(tenant)
        else:
            await store.set_vary(key, ("accept-encoding",))
        store.check_invariants()
        stats = store.stats()
        assert stats["bytes"] == sum(e.size() for e in store._lru.values()) <= 8000
        for name, t in stats["tenants"].items():
            if quotas[name] is not None:
                assert t["bytes"] <= quotas[name]


async def test_check_invariants_detects_corruption() -> None:
    store = MemoryStore(max_bytes=10_000, max_object_bytes=10_000)
    await store.put(make("a", tags=("x",)))
    store._tenants["t"].by_tag["x"]["ghost"] = None
    with pytest.raises(AssertionError):
        store.check_invariants()


# -- stateful -------------------------------------------------------------------------------


def run(coro: Coroutine[Any, Any, T]) -> T:
    """Drive a store coroutine to completion: the memory store never really suspends."""
    try:
        coro.send(None)
    except StopIteration as done:
        return done.value  # type: ignore[no-any-return]
    raise AssertionError("MemoryStore coroutine suspended")


KEYS = st.sampled_from(
    [f"{t}|1|GET|http://h/{p}/{i}" for t in "ab" for p in "xy" for i in range(4)]
)


class StoreMachine(RuleBasedStateMachine):
    """Random put/get/delete/purge sequences against a model of which keys may be present."""

    def __init__(self) -> None:
        super().__init__()
        self.store = MemoryStore(
            max_bytes=3000, max_object_bytes=1500, tenant_quota={"a": 1800}.get
        )

    @rule(key=KEYS, body=st.integers(0, 1800), tags=st.sets(st.sampled_from("rgb"), max_size=2))
    def put(self, key: str, body: int, tags: set[str]) -> None:
        tenant = key[0]
        entry = make(key, body, tenant=tenant, url=key.split("|")[3], tags=tuple(sorted(tags)))
        before = run(self.store.get(key))
        accepted = run(self.store.put(entry))
        if entry.size() > 1500:  # refused by a bound (tenant a's 1800 quota is looser)
            assert not accepted and run(self.store.get(key)) is before
        else:  # stored, or not admitted (the old entry gone either way)
            assert run(self.store.get(key)) is (entry if accepted else None)

    @rule(key=KEYS)
    def get(self, key: str) -> None:
        run(self.store.get(key))

    @rule(key=KEYS)
    def delete(self, key: str) -> None:
        present = key in self.store
        assert run(self.store.delete(key)) == present
        assert key not in self.store

    @rule(tenant=st.sampled_from("ab"), tag=st.sampled_from("rgb"))
    def purge_tags(self, tenant: str, tag: str) -> None:
        expected = {
            k
            for k, e in self.store._lru.items()
            if e.tenant == tenant and tag in e.tags
        }
        assert run(self.store.purge_tags(tenant, [tag])) == len(expected)
        assert not expected & set(self.store._lru)

    @rule(tenant=st.sampled_from("ab"), prefix=st.sampled_from(["/x/", "/y/1", "http://h/x"]))
    def purge_prefix(self, tenant: str, prefix: str) -> None:
        full = prefix if prefix.startswith("http") else "http://h" + prefix
        before = len(self.store)
        n = run(self.store.purge_prefix(tenant, prefix))
        assert len(self.store) == before - n
        assert not any(
            e.tenant == tenant and e.url.startswith(full)
            for e in self.store._lru.values()
        )

    @rule(tenant=st.sampled_from("ab"))
    def purge_tenant(self, tenant: str) -> None:
        run(self.store.purge_tenant(tenant))
        assert self.store.tenant_bytes(tenant) == 0

    @rule(key=KEYS)
    def set_vary(self, key: str) -> None:
        run(self.store.set_vary(key, ("accept-encoding",)))

    @invariant()
    def consistent(self) -> None:
        self.store.check_invariants()
        stats = self.store.stats()
        assert stats["bytes"] == sum(e.size() for e in self.store._lru.values())
        assert stats["bytes"] <= 3000
        assert self.store.tenant_bytes("a") <= 1800


TestStoreMachine = StoreMachine.TestCase
TestStoreMachine.settings = settings(max_examples=150, stateful_step_count=40, deadline=None)
