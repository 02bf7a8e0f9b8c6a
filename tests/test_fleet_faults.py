"""What a fleet instance does when Redis holds bad data or races a purge.

Bad data: values no version of the gateway wrote (a corrupted entry or Vary record, a
non-integer generation, an event on the purge stream or a notice on the fill channel that
cannot be read) are misses or skipped records, never a 500, a refused start or a stopped
reader. Races: a purge taken while other instances serve and fill, a purge whose Redis part
fails, a tag indexed while its tag is purged, Redis losing its data under a soft bust, a lease
held by another instance while this one's clients queue behind their leader.

Each gateway is a real listener on a loopback port, the Redis a real `redis-server` on a free
port; bad data is written with a plain redis client, and a failure is injected by patching
one coroutine of one instance to raise `RedisUnavailable` (or to do something meanwhile)."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import NoReturn

import aiohttp
import msgpack
import pytest
from aiohttp.test_utils import TestServer
from multidict import CIMultiDict
from redis.exceptions import TimeoutError as RedisTimeout
from yarl import URL

from gateway.canonical import parse_target
from gateway.exchange import Incoming
from gateway.fleet import codec
from gateway.fleet.keys import Keys, entry_field
from gateway.fleet.link import RedisUnavailable
from gateway.key import vary_record_key
from gateway.lookup import Lookup
from gateway.policy import Freshness
from gateway.server import Gateway, JsonError
from gateway.store import Entry
from tests.clock import SettableClock
from tests.conftest import GatewayFactory, eventually
from tests.echo_origin import create_echo_app, echo_state
from tests.redis_fixtures import redis_cluster, redis_server  # noqa: F401
from tests.redis_servers import RedisServer
from tests.test_fleet import (  # noqa: F401
    Backend,
    backend,
    fleet_yaml,
    get,
    start_fleet,
    stored_by,
)
from tests.test_gateway_http import origin_count, spec

CACHED = "Cache-Control:max-age=60"


def standalone(server: RedisServer) -> Backend:
    return Backend(server.url, [server.port], cluster=False)


def lookup(gateway: Gateway, path: str) -> Lookup:
    """The lookup of a GET of `path` on fleet.test, keyed as when the URL has no Vary."""
    target = parse_target(path, "fleet.test", "http")
    route = gateway.router.match("fleet.test", URL(path).path, "GET")
    assert route is not None
    look = gateway.cache.locate(Incoming("GET", target, CIMultiDict(), None), route)
    look.vary_on(())
    return look


def entries_hash(gateway: Gateway, look: Lookup) -> str:
    """The Redis hash holding the URL's entries and its Vary record."""
    assert gateway.member is not None
    return gateway.member.keys.entries(vary_record_key(look.tenant, look.url))


async def until_in_redis(check: Callable[[], Awaitable[object]], what: str) -> None:
    """`eventually` for a state read from Redis (bounded the same way)."""
    deadline = asyncio.get_running_loop().time() + 5.0
    while not await check():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"not within 5 s: {what}")
        await asyncio.sleep(0.01)


async def raise_unavailable(*args: object, **kwargs: object) -> NoReturn:
    """In place of one coroutine of an instance's Redis tier: Redis timing out."""
    raise RedisUnavailable("injected: Timeout reading from socket")


# -- races with a purge ------------------------------------------------------------------


async def test_a_purge_under_load_is_not_undone_by_another_instance_promoting_from_redis(
    echo_origin: TestServer, make_gateway: GatewayFactory, http: aiohttp.ClientSession,
    redis_server: RedisServer,  # noqa: F811
) -> None:
    """Guards against an instance that applied the purge to its memory copying the doomed
    entries back from Redis before the purging instance has deleted them there."""
    (a, gw_a), (b, gw_b) = await start_fleet(make_gateway, echo_origin,
                                             standalone(redis_server), 2)
    paths = [spec(f"/news/{i}", CACHED, projectId="p1") for i in range(300)]
    filled = await asyncio.gather(*(get(http, a, p) for p in paths))
    before = {p: body for p, (_, body) in zip(paths, filled, strict=True)}
    await stored_by(gw_a, len(paths))
    await asyncio.gather(*(get(http, b, p) for p in paths))  # in B's memory too
    sample = paths[::7]
    done = asyncio.Event()

    async def load() -> None:  # B's clients keep asking while the purge runs
        while not done.is_set():
            await asyncio.gather(*(get(http, b, p) for p in sample))

    loader = asyncio.create_task(load())
    try:
        assert await gw_a.purge("p1", prefix="/news/") >= len(paths)
        assert gw_b.member is not None
        await eventually(lambda: gw_b.member is not None and gw_b.member.control.events >= 1,
                         "B applied the purge")
    finally:
        done.set()
        await asyncio.wait_for(loader, 10)
    # The purge is done in Redis and on both instances: nothing from before it may be served.
    served = [await get(http, b, p) for p in sample]
    stale = [p for p, (_, body) in zip(sample, served, strict=True) if body == before[p]]
    assert not stale, f"{len(stale)} of {len(sample)} purged bodies still served by B"


async def test_a_recorded_purge_whose_redis_part_failed_does_not_leave_the_purged_copy_here(
    echo_origin: TestServer, make_gateway: GatewayFactory, http: aiohttp.ClientSession,
    redis_server: RedisServer, monkeypatch: pytest.MonkeyPatch,  # noqa: F811
) -> None:
    """Guards against a purge answered 503 after it was recorded for the fleet, while the
    instance that took it keeps serving the purged copy from its own memory."""
    redis = standalone(redis_server)
    (a, gw_a), (b, _) = await start_fleet(make_gateway, echo_origin, redis, 2)
    path = spec("/f", CACHED, projectId="p1")
    _, before = await get(http, a, path)
    await stored_by(gw_a, 1)
    await get(http, b, path)
    assert gw_a.member is not None
    client = redis.client()
    try:
        events = await client.xlen(gw_a.member.keys.stream)
        with monkeypatch.context() as patch:
            patch.setattr(gw_a.member.l2, "purge_url", raise_unavailable)
            with pytest.raises(JsonError) as refused:
                await gw_a.purge("p1", urls=[path])
        assert refused.value.status == 503
        recorded = await client.xlen(gw_a.member.keys.stream) > events
    finally:
        await client.aclose()
    resp, body = await get(http, a, path)
    # Either is safe: not recorded (the caller retries the 503), or recorded and done here.
    assert not recorded or body != before, (
        f"recorded for the fleet, yet A still serves the purged copy ({resp.headers['X-Cache']})"
    )


async def test_a_purge_by_path_is_refused_when_the_tenants_sites_in_redis_are_unreadable(
    echo_origin: TestServer, make_gateway: GatewayFactory, http: aiohttp.ClientSession,
    redis_server: RedisServer, monkeypatch: pytest.MonkeyPatch,  # noqa: F811
) -> None:
    """Guards against a purge by path answered 200 for the sites this instance knows only,
    while the copy under a site known only to Redis (filled by another instance) stays."""
    (a, gw_a), (b, gw_b) = await start_fleet(make_gateway, echo_origin,
                                             standalone(redis_server), 2)
    path = spec("/p", CACHED, projectId="p1")
    async with http.get(b.make_url(path), headers={"Host": "other.test"}) as resp:
        await resp.read()  # a site A never served: in Redis's site index only
    await stored_by(gw_b, 1)
    await get(http, a, path)
    assert gw_a.member is not None
    monkeypatch.setattr(gw_a.member.l2, "sites", raise_unavailable)
    with pytest.raises(JsonError) as refused:
        await gw_a.purge("p1", urls=[path])
    assert refused.value.status == 503


async def test_a_url_tagged_during_a_tag_purge_is_purged_by_the_next_one(
    echo_origin: TestServer, make_gateway: GatewayFactory, http: aiohttp.ClientSession,
    redis_server: RedisServer, monkeypatch: pytest.MonkeyPatch,  # noqa: F811
) -> None:
    """Guards against a tag purge dropping the whole tag index after reading it: a URL that
    another instance tagged meanwhile would escape every later purge of the tag."""
    (a, gw_a), (b, gw_b) = await start_fleet(make_gateway, echo_origin,
                                             standalone(redis_server), 2)
    one = spec("/t1", CACHED, "Surrogate-Key:news", projectId="p1")
    two = spec("/t2", CACHED, "Surrogate-Key:news", projectId="p1")
    await get(http, a, one)
    await stored_by(gw_a, 1)
    assert gw_a.member is not None
    l2 = gw_a.member.l2
    real = l2._purge_urls
    filled: list[bool] = []

    async def fill_meanwhile(tenant: str, urls: list[str]) -> int:
        count = await real(tenant, urls)
        if not filled:  # B stores /t2 (tag news) while A purges the tag
            filled.append(True)
            await get(http, b, two)
            await stored_by(gw_b, 1)
        return count

    with monkeypatch.context() as patch:
        patch.setattr(l2, "_purge_urls", fill_meanwhile)
        await gw_a.purge("p1", tags=["news"])
    assert filled
    await gw_a.purge("p1", tags=["news"])
    resp, _ = await get(http, a, two)  # A never had /t2 in memory: a hit is Redis's copy
    assert resp.headers["X-Cache"] == "MISS"
    assert await origin_count(echo_origin) == 3


async def test_an_entry_written_without_its_index_does_not_escape_a_prefix_purge(
    echo_origin: TestServer, make_gateway: GatewayFactory, http: aiohttp.ClientSession,
    redis_server: RedisServer, monkeypatch: pytest.MonkeyPatch,  # noqa: F811
) -> None:
    """Guards against an entry written to Redis whose index write failed: purges by prefix,
    tag or tenant read the index, never find it, and it is served on."""
    (a, gw_a), (b, _) = await start_fleet(make_gateway, echo_origin,
                                          standalone(redis_server), 2)
    assert gw_a.member is not None
    path = spec("/news/x", CACHED, projectId="p1")

    l2 = gw_a.member.l2
    real_write = l2._write
    written = asyncio.Event()
    failed: list[object] = []

    async def write(*args: object, **kwargs: object) -> object:
        try:
            return await real_write(*args, **kwargs)  # type: ignore[arg-type]
        finally:
            written.set()

    async def index_times_out(*args: object, **kwargs: object) -> NoReturn:
        await asyncio.wait_for(written.wait(), 5)  # the timeout after the entry was written
        failed.append(kwargs.get("args"))
        raise RedisTimeout("injected: Timeout reading from socket")  # the script, not the link

    with monkeypatch.context() as patch:
        patch.setattr(l2, "_write", write)
        patch.setattr(l2, "_index", index_times_out)
        _, before = await get(http, a, path)
        await eventually(lambda: bool(failed), "A's fill tried to index its entry")
    await stored_by(gw_a, 1)
    await gw_a.purge("p1", prefix="/news/")
    resp, body = await get(http, b, path)  # B never had it in memory: Redis's copy or a fetch
    assert body != before, f"the purged copy served from Redis ({resp.headers['X-Cache']})"
    assert await origin_count(echo_origin) == 2


# -- bad data in Redis ---------------------------------------------------------------------


def _wrong_types(look: Lookup) -> bytes:
    """This version's 17 fields, one of the wrong type (a time that is text)."""
    fields = [codec.VERSION, look.key, look.tenant, look.url, 200, [], b"x", "not-a-time", 0.0,
              [60.0, 0.0, 0.0, False, False, False], None, None, [], [], 1, 0.0, []]
    packed: bytes = msgpack.packb(fields, use_bin_type=True)
    return packed


def _truncated(look: Lookup) -> bytes:
    """A well-formed entry for the key, cut short (a write torn, or memory corrupted)."""
    entry = Entry(key=look.key, tenant=look.tenant, url=look.url, status=200, headers=(),
                  body=b"x" * 100, response_time=0.0, initial_age=0.0,
                  freshness=Freshness(60.0), soft_generation=1)
    return codec.encode(entry)[:-20]


@pytest.mark.parametrize("corrupt", [_wrong_types, _truncated], ids=["wrong-types", "truncated"])
async def test_a_corrupted_entry_in_redis_is_a_miss_also_once_redis_drops_it(
    corrupt: Callable[[Lookup], bytes], echo_origin: TestServer, make_gateway: GatewayFactory,
    http: aiohttp.ClientSession, backend: Backend,  # noqa: F811
) -> None:
    """Guards against a value that unpacks but is no entry being served (a 500), and kept in
    memory so that the URL fails on after Redis no longer holds it."""
    [(a, gw)] = await start_fleet(make_gateway, echo_origin, backend, 1)
    path = spec("/corrupt", CACHED, projectId="p1")
    look = lookup(gw, path)
    client = backend.client()
    try:
        await client.hset(entries_hash(gw, look), entry_field(look.key), corrupt(look))
        answers = [await get(http, a, path) for _ in range(2)]
        await client.delete(entries_hash(gw, look))
        answers.append(await get(http, a, path))
    finally:
        await client.aclose()
    assert [resp.status for resp, _ in answers] == [200, 200, 200]
    assert {body for _, body in answers} == {b"body of /corrupt #1"}


@pytest.mark.parametrize("record", [msgpack.packb([1]), b"\xc1"], ids=["not-names", "not-msgpack"])
async def test_a_corrupted_vary_record_in_redis_is_a_miss_also_once_redis_drops_it(
    record: bytes, echo_origin: TestServer, make_gateway: GatewayFactory,
    http: aiohttp.ClientSession, backend: Backend,  # noqa: F811
) -> None:
    """Guards against a Vary record that is no list of header names failing every request
    for the URL (a 500), and being kept in memory after Redis no longer holds it."""
    [(a, gw)] = await start_fleet(make_gateway, echo_origin, backend, 1)
    path = spec("/vary", CACHED, projectId="p1")
    look = lookup(gw, path)
    client = backend.client()
    try:
        await client.hset(entries_hash(gw, look), "v", record)
        first, _ = await get(http, a, path)
        await client.delete(entries_hash(gw, look))
        second, _ = await get(http, a, path)
    finally:
        await client.aclose()
    assert (first.status, second.status) == (200, 200)


async def test_a_non_integer_generation_in_redis_does_not_prevent_start(
    echo_origin: TestServer, make_gateway: GatewayFactory, http: aiohttp.ClientSession,
    redis_server: RedisServer,  # noqa: F811
) -> None:
    """Guards against one unreadable generation or soft bust making every instance fail to
    start (or to reload on reconnect) while the readable ones are ignored too."""
    redis = standalone(redis_server)
    keys = Keys("gw")  # the default redis.prefix
    client = redis.client()
    try:
        await client.hset(keys.hard, mapping={"p1": "x", "p2": "3"})
        await client.sadd(keys.soft + "s", "p3")
        await client.rpush(f"{keys.soft}:p3", "soon later")
    finally:
        await client.aclose()
    [(a, gw)] = await start_fleet(make_gateway, echo_origin, redis, 1)
    assert gw.cache.generations.hard.get("p2") == 3
    resp, _ = await get(http, a, spec("/started", CACHED, projectId="p1"))
    assert resp.status == 200


@pytest.mark.parametrize(
    "event",
    [
        {"op": "purge", "from": "old-version", "tenant": "p1", "kind": "urls", "items": "[]",
         "soft_at": "soon"},
        {"op": "bust", "from": "old-version", "tenant": "p1", "soft": "0", "value": "x",
         "at": "0"},
    ],
    ids=["purge-time-unreadable", "bust-generation-unreadable"],
)
async def test_a_malformed_purge_stream_event_does_not_stop_the_reader(
    event: dict[str, str], echo_origin: TestServer, make_gateway: GatewayFactory,
    http: aiohttp.ClientSession, backend: Backend,  # noqa: F811
) -> None:
    """Guards against one unreadable event ending an instance's stream reader for good: no
    later purge or bust would reach it."""
    (a, gw_a), (b, gw_b) = await start_fleet(make_gateway, echo_origin, backend, 2)
    path = spec("/i", CACHED, projectId="p1")
    await get(http, a, path)
    await stored_by(gw_a, 1)
    await get(http, b, path)
    assert gw_a.member is not None and gw_b.member is not None
    client = backend.client()
    try:
        await client.xadd(gw_a.member.keys.stream, event)  # type: ignore[arg-type]
    finally:
        await client.aclose()
    await gw_a.purge("p1", urls=[path])
    await eventually(lambda: gw_b.member is not None and gw_b.member.control.events >= 2,
                     "B read the purge after the bad event", within=2)
    resp, _ = await get(http, b, path)
    assert resp.headers["X-Cache"] == "MISS"


async def test_a_bad_fill_notice_does_not_stop_the_subscriber(
    echo_origin: TestServer, make_gateway: GatewayFactory,
    redis_server: RedisServer,  # noqa: F811
) -> None:
    """Guards against one notice that is not UTF-8 ending the notice subscriber for good:
    every later wait on another instance's fill would sleep out its re-check interval."""
    redis = standalone(redis_server)
    [(_, gw)] = await start_fleet(make_gateway, echo_origin, redis, 1)
    notices = gw.member.notices  # type: ignore[union-attr]
    await eventually(lambda: notices.subscribed, "subscribed to fill notices")
    woken = notices.wait("probe")
    client = redis.client()
    try:
        await client.publish(notices.channel, b"\xff\xfe stored")
        await client.publish(notices.channel, "probe stored")
    finally:
        await client.aclose()
    done, _ = await asyncio.wait({woken}, timeout=2)
    assert woken in done, "the notice after a bad one never arrived"
    assert woken.result() == "stored"


async def test_the_redis_copy_lives_as_long_as_the_entry_may_be_served_not_a_day(
    echo_origin: TestServer, make_gateway: GatewayFactory, http: aiohttp.ClientSession,
    redis_server: RedisServer,  # noqa: F811
) -> None:
    """Guards against a URL's hashes taking the Vary record's one-day TTL: Redis holding every
    entry a day, whatever its lifetime, filling its memory with dead entries."""
    redis = standalone(redis_server)
    yaml = fleet_yaml(redis.url, ", keep_stale: 30s")
    a, gw = await make_gateway(str(echo_origin.make_url("/")), top_extra=yaml,
                               cache_extra="bust_grace: 5s")
    await eventually(lambda: gw.member is not None and gw.member.control.ready, "joined")
    path = spec("/ttl", "Cache-Control:max-age=10", projectId="p1")
    await get(http, a, path)
    await stored_by(gw, 1)
    name = entries_hash(gw, lookup(gw, path))
    client = redis.client()
    try:
        # The Vary record (written beside the fill) first: its day must not become the URL's.
        await until_in_redis(lambda: client.hexists(name, "v"), "the Vary record written")
        ttls = [await client.pttl(name), await client.pttl(name + "x")]
    finally:
        await client.aclose()
    keep_ms = (10 + 5 + 30) * 1000  # freshness, then the bust grace, then keep_stale
    assert all(0 < ttl <= keep_ms + 2000 for ttl in ttls), ttls


# -- generations and leases ------------------------------------------------------------------


async def test_a_soft_bust_past_its_grace_is_not_answered_from_redis_through_the_lease(
    clocked_origin: TestServer, make_gateway: GatewayFactory, http: aiohttp.ClientSession,
    redis_server: RedisServer, clock: SettableClock,  # noqa: F811
) -> None:
    """Guards against the lease claim handing back, as another instance's fill, the very
    entry in Redis that the soft bust made unusable."""
    yaml = fleet_yaml(redis_server.url)
    a, gw = await make_gateway(str(clocked_origin.make_url("/")), top_extra=yaml,
                               cache_extra="bust_grace: 1s", clock=clock)
    await eventually(lambda: gw.member is not None and gw.member.control.ready, "joined")
    path = spec("/sb", CACHED, projectId="p1")
    await get(http, a, path)
    await stored_by(gw, 1)
    await gw.bust("p1", soft=True)
    clock.advance(5)  # past the 1 s grace: the entry may not be served at all
    resp, body = await get(http, a, path)
    assert body == b"body of /sb #2", f"the soft-busted copy served ({resp.headers['X-Cache']})"
    assert await origin_count(clocked_origin) == 2


async def test_an_expired_entry_in_redis_is_not_served_as_fresh_after_one_failed_read(
    clocked_origin: TestServer, make_gateway: GatewayFactory, http: aiohttp.ClientSession,
    redis_server: RedisServer, clock: SettableClock,  # noqa: F811
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Guards against the lease claim, after a failed L2 read, taking the expired entry it
    reads from Redis for a fresh fill and serving it without revalidation."""
    yaml = fleet_yaml(redis_server.url)
    members = [await make_gateway(str(clocked_origin.make_url("/")), top_extra=yaml, clock=clock)
               for _ in range(2)]
    for _, g in members:
        await eventually(lambda g=g: g.member is not None and g.member.control.ready, "joined")
    (a, gw_a), (b, gw_b) = members
    path = spec("/exp", "Cache-Control:max-age=10", projectId="p1")
    _, first = await get(http, a, path)
    await stored_by(gw_a, 1)
    clock.advance(3600)  # an hour past its freshness, no stale window (still in Redis)
    assert gw_b.member is not None
    l2 = gw_b.member.l2
    real = l2.get
    reads: list[str] = []

    async def one_blip(key: str) -> Entry | None:
        reads.append(key)
        if len(reads) == 1:
            raise RedisUnavailable("injected: Timeout reading from socket")
        return await real(key)

    monkeypatch.setattr(l2, "get", one_blip)
    resp, body = await get(http, b, path)
    assert reads  # the blip happened
    assert body != first, f"an hour-old entry served as {resp.headers['X-Cache']}"
    assert await origin_count(clocked_origin) == 2


async def test_a_soft_bust_after_redis_lost_its_data_still_makes_entries_stale(
    echo_origin: TestServer, make_gateway: GatewayFactory, http: aiohttp.ClientSession,
    redis_server: RedisServer,  # noqa: F811
) -> None:
    """Guards against the soft-bust epoch counter restarting from 0 after Redis lost its data:
    busts stamped below the epochs entries already carry are accepted and change nothing."""
    [(a, gw)] = await start_fleet(make_gateway, echo_origin, standalone(redis_server), 1)
    assert gw.member is not None
    control = gw.member.control
    for _ in range(3):
        await gw.bust("p1", soft=True)
    read_up_to = control.last_id
    redis_server.kill()
    redis_server.restart()  # empty
    await eventually(lambda: control.flushes >= 1 and control.ready
                     and control.last_id != read_up_to and gw.member is not None
                     and gw.member.link.available,
                     "reloaded from the emptied Redis", within=10)
    path = spec("/after-loss", CACHED, projectId="p1")
    await get(http, a, path)
    await stored_by(gw, 1)
    await gw.bust("p1", soft=True)
    resp, _ = await get(http, a, path)
    assert resp.headers["X-Cache"] != "HIT"


async def test_joiners_behind_a_leader_waiting_on_another_instances_lease_share_its_one_fetch(
    echo_origin: TestServer, make_gateway: GatewayFactory, http: aiohttp.ClientSession,
    redis_server: RedisServer, aiohttp_server,  # type: ignore[no-untyped-def]  # noqa: F811
) -> None:
    """Guards against the leader waiting on another instance's lease for the whole of its
    joiners' collapse_timeout: they give up on it together and each sets out on its own."""
    yaml = fleet_yaml(redis_server.url)
    # A fills from an origin that holds its answer; B from one that answers in 0.3 s. B's
    # leader must give up on A's lease early enough for its own fetch to answer its joiners
    # within their collapse_timeout.
    fast = await aiohttp_server(create_echo_app())
    a, gw_a = await make_gateway(str(echo_origin.make_url("/")), top_extra=yaml,
                                 collapse_timeout="1500ms")
    b, gw_b = await make_gateway(str(fast.make_url("/")), top_extra=yaml,
                                 collapse_timeout="1500ms")
    for g in (gw_a, gw_b):
        await eventually(lambda g=g: g.member is not None and g.member.control.ready, "joined")
    gate = echo_state(echo_origin).gate("slow")
    gate.clear()
    path = spec("/slow", CACHED, hold="slow", delay="0.3")
    holder = asyncio.create_task(get(http, a, path))
    try:
        await eventually(lambda: echo_state(echo_origin).in_flight == 1, "A holds the lease")
        clients = [asyncio.create_task(get(http, b, path)) for _ in range(8)]
        answers = await asyncio.wait_for(asyncio.gather(*clients), 10)
    finally:
        gate.set()
        await asyncio.wait_for(holder, 10)
    assert [resp.status for resp, _ in answers] == [200] * 8
    assert await origin_count(fast) == 1  # one fetch for B's eight clients
    gave_up = gw_b.stats()["cache"].get("collapse_timeout", 0)  # type: ignore[union-attr]
    assert gave_up == 0, f"{gave_up} of B's joiners gave up on their leader and went alone"
    assert gw_b.member is not None and gw_b.member.leases.waited == 1  # only the leader waited
