"""Cache inspection (`/admin/entries`, `/admin/entry`, `python -m gateway entries|entry`) against
a real gateway, its admin listener and an origin on loopback. Ages and TTLs move with the test's
clock, never with sleeps; the fleet cases run against a real `redis-server`."""

from __future__ import annotations

import asyncio
import json
import sys
from typing import Any

import aiohttp
import pytest
from aiohttp.test_utils import TestServer
from redis.asyncio import Redis

from gateway.inspection import MAX_ROUNDS
from gateway.key import vary_record_key
from gateway.server import Gateway
from tests.clock import SettableClock
from tests.conftest import GatewayFactory, GatewayServer, eventually
from tests.redis_fixtures import redis_cluster, redis_server  # noqa: F401
from tests.redis_servers import RedisServer
from tests.test_admin import ACME, OPS, StartAdmin, admin_yaml
from tests.test_fleet import Backend, backend, fleet_yaml  # noqa: F401
from tests.test_gateway_http import spec

CACHED = "Cache-Control:max-age=60"


class Inspect:
    """One gateway's public listener (to fill the cache) and admin listener (to look at it)."""

    def __init__(self, http: aiohttp.ClientSession, gw: GatewayServer, gateway: Gateway,
                 admin: TestServer) -> None:
        self.http, self.gw, self.gateway, self.admin = http, gw, gateway, admin

    async def fill(self, path: str, **headers: str) -> str:
        async with self.http.get(self.gw.make_url(path), headers=headers) as resp:
            await resp.read()
            return resp.headers["X-Cache"]

    async def ask(
        self, what: str, token: str | None = OPS, **params: Any
    ) -> tuple[int, dict[str, Any]]:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        query = {k: str(v) for k, v in params.items()}
        url = self.admin.make_url(f"/admin/{what}").with_query(query)
        async with self.http.get(url, headers=headers) as resp:
            assert resp.content_type == "application/json"
            return resp.status, await resp.json()

    def site(self) -> str:
        return f"http://127.0.0.1:{self.gw.port}"


@pytest.fixture
async def inspect(
    clocked_origin: TestServer, clock: SettableClock, make_gateway: GatewayFactory,
    start_admin: StartAdmin, http: aiohttp.ClientSession,
) -> Inspect:
    yaml = admin_yaml(str(clocked_origin.make_url("/")))
    gw, gateway = await make_gateway("", yaml_text=yaml, clock=clock)
    return Inspect(http, gw, gateway, await start_admin(gateway))


async def pages(inspect: Inspect, **params: Any) -> list[dict[str, Any]]:
    """Every page of a listing, following `next` until it is null."""
    answers, after = [], None
    for _ in range(50):
        query = params | ({"after": after} if after else {})
        status, answer = await inspect.ask("entries", **query)
        assert status == 200, answer
        answers.append(answer)
        after = answer["next"]
        if after is None:
            return answers
    raise AssertionError("the cursor never ran out")


async def test_entries_page_through_a_tenant_with_the_cursor(inspect: Inspect) -> None:
    paths = [spec(f"/p/{i}", CACHED, projectId="a") for i in range(7)]
    for path in paths:
        await inspect.fill(path)
    await inspect.fill(spec("/p/other", CACHED, projectId="b"))
    answers = await pages(inspect, tenant="a", limit=3)
    assert [a["count"] for a in answers] == [3, 3, 1]
    urls = [item["url"] for a in answers for item in a["items"]]
    assert urls == sorted(inspect.site() + p for p in paths)  # each once, in order, only a's
    first = answers[0]["items"][0]
    assert first["tiers"] == ["memory"] and first["status"] == 200 and first["state"] == "fresh"
    assert first["size"] > first["body_bytes"] > 0 and first["variant"] is None
    assert first["generation"] == {
        "key": ".0.0", "current": True, "soft_epoch": 1, "soft_stale_since": None
    }
    assert answers[0]["redis"] is None and answers[0]["generations"]["hard"] == 0
    status, whole = await inspect.ask("entries", tenant="a")  # default limit: all 7 at once
    assert (status, whole["count"], whole["limit"], whole["next"]) == (200, 7, 100, None)


async def test_a_listing_does_not_change_what_the_cache_keeps(inspect: Inspect) -> None:
    path = spec("/quiet", CACHED, projectId="a")
    await inspect.fill(path)
    before = inspect.gateway.stats()["cache"]
    for _ in range(3):
        await inspect.ask("entries", tenant="a")
        await inspect.ask("entry", tenant="a", url=path)
    assert inspect.gateway.stats()["cache"] == before
    assert await inspect.fill(path) == "HIT"


async def test_prefix_as_a_path_or_an_absolute_url(inspect: Inspect) -> None:
    for path in ("/js/a", "/js/b", "/css/a", "/jsx"):
        await inspect.fill(spec(path, CACHED, projectId="a"))
    status, answer = await inspect.ask("entries", tenant="a", prefix="/js/")
    assert status == 200 and answer["prefix"] == "/js/"
    assert [i["url"].split("?")[0] for i in answer["items"]] == [
        inspect.site() + "/js/a", inspect.site() + "/js/b"
    ]
    status, answer = await inspect.ask("entries", tenant="a", prefix=inspect.site() + "/css")
    assert [i["url"].split("?")[0] for i in answer["items"]] == [inspect.site() + "/css/a"]
    status, answer = await inspect.ask("entries", tenant="a", prefix="/nothing/")
    assert (status, answer["items"], answer["next"]) == (200, [], None)


async def test_age_and_ttl_move_with_the_clock(inspect: Inspect, clock: SettableClock) -> None:
    path = spec("/aging", "Cache-Control:max-age=60, stale-while-revalidate=30", projectId="a")
    await inspect.fill(path)

    async def item() -> dict[str, Any]:
        _, answer = await inspect.ask("entries", tenant="a")
        [found] = answer["items"]
        return found  # type: ignore[no-any-return]

    assert (await item())["age"] == 0 and (await item())["ttl"] == 60
    clock.advance(45)
    assert ((await item())["age"], (await item())["ttl"], (await item())["state"]) == (
        45, 15, "fresh"
    )
    clock.advance(30)
    assert ((await item())["ttl"], (await item())["state"]) == (-15, "stale")
    status, answer = await inspect.ask("entry", tenant="a", url=path)
    [variant] = answer["variants"]
    assert status == 200 and (variant["age"], variant["ttl"]) == (75, -15)
    assert (variant["freshness_lifetime"], variant["stale_while_revalidate"]) == (60, 30)
    assert variant["stale_if_error"] == 0


async def test_vary_variants_are_listed_with_what_selected_them(inspect: Inspect) -> None:
    path = spec("/negotiated", CACHED, "Vary:Accept-Language", projectId="a")
    assert await inspect.fill(path) == "MISS"  # the field absent: a variant of its own
    assert await inspect.fill(path, **{"Accept-Language": "en"}) == "MISS"
    assert await inspect.fill(path, **{"Accept-Language": "fr"}) == "MISS"
    assert await inspect.fill(path, **{"Accept-Language": "fr"}) == "HIT"
    status, answer = await inspect.ask("entry", tenant="a", url=path)
    [url] = answer["urls"]
    assert status == 200 and url.startswith(inspect.site() + "/negotiated?")
    variants = answer["variants"]
    assert [v["request_headers"] for v in variants] == [
        {"accept-language": None}, {"accept-language": "en"}, {"accept-language": "fr"}
    ]
    assert all(v["vary"] == ["accept-language"] for v in variants)
    assert {v["url"] for v in variants} == {url}
    assert ["Vary", "Accept-Language"] in variants[0]["headers"]
    # One variant a page: the cursor goes on inside the URL, then past it.
    answers = await pages(inspect, tenant="a", limit=1)
    assert [a["items"][0]["key"] for a in answers] == [v["key"] for v in variants]
    assert answers[0]["next"] == f"{variants[0]['url']}#{variants[0]['key']}"


async def test_tags_and_soft_or_hard_invalidation_show(inspect: Inspect) -> None:
    tagged = spec("/tagged", CACHED, "Surrogate-Key:red shared", projectId="a")
    await inspect.fill(tagged)
    _, answer = await inspect.ask("entry", tenant="a", url=tagged)
    assert answer["variants"][0]["tags"] == ["red", "shared"]
    await inspect.gateway.purge("a", tags=["red"], soft=True)
    _, answer = await inspect.ask("entry", tenant="a", url=tagged)
    [variant] = answer["variants"]
    assert variant["state"] == "soft-stale" and variant["soft_purged_at"] is not None
    assert variant["generation"]["soft_stale_since"] == variant["soft_purged_at"]
    await inspect.gateway.bust("a", soft=True)
    _, answer = await inspect.ask("entry", tenant="a", url=tagged)
    assert answer["variants"][0]["soft_busted_at"] is not None
    assert answer["generations"]["soft"] == 1
    await inspect.gateway.bust("a", soft=False)  # the entry stays in memory, out of reach
    _, answer = await inspect.ask("entries", tenant="a")
    [item] = answer["items"]
    assert item["state"] == "unreachable" and item["generation"]["current"] is False
    assert answer["generations"]["hard"] == 1


async def test_a_path_is_looked_up_on_the_tenants_sites_and_an_absolute_url_as_given(
    inspect: Inspect,
) -> None:
    path = spec("/where", CACHED, "X-Test:1", projectId="a")
    await inspect.fill(path)
    status, by_path = await inspect.ask("entry", tenant="a", url=path)
    assert status == 200
    status, by_url = await inspect.ask("entry", tenant="a", url=inspect.site() + path)
    assert status == 200 and by_url["variants"] == by_path["variants"]
    assert ["X-Test", "1"] in by_path["variants"][0]["headers"]


async def test_nothing_stored_is_a_json_404(inspect: Inspect) -> None:
    await inspect.fill(spec("/here", CACHED, projectId="a"))
    status, answer = await inspect.ask("entry", tenant="a", url="/not-here")
    assert status == 404 and "nothing stored" in answer["error"]
    assert answer["urls"] == [inspect.site() + "/not-here"]
    status, answer = await inspect.ask("entry", tenant="b", url="/here")  # no sites at all
    assert (status, answer["urls"]) == (404, [])


async def test_missing_or_wrong_token_is_a_401(inspect: Inspect) -> None:
    for what, params in (("entries", {"tenant": "a"}), ("entry", {"tenant": "a", "url": "/x"})):
        for token in (None, "wrong"):
            status, answer = await inspect.ask(what, token=token, **params)
            assert status == 401 and answer["error"] == "missing or invalid bearer token"


async def test_a_tenant_outside_the_token_is_a_403(inspect: Inspect) -> None:
    path = spec("/scoped", CACHED, projectId="b")
    await inspect.fill(path)
    status, answer = await inspect.ask("entries", token=ACME, tenant="b")
    assert status == 403 and "acme-ci" in answer["error"]
    status, _ = await inspect.ask("entry", token=ACME, tenant="b", url=path)
    assert status == 403
    status, answer = await inspect.ask("entries", token=ACME, tenant="a")
    assert (status, answer["items"]) == (200, [])


@pytest.mark.parametrize(
    ("what", "params", "reason"),
    [
        ("entries", {}, "tenant: field required"),
        ("entries", {"tenant": "../etc"}, "invalid tenant"),
        ("entries", {"tenant": "*"}, "invalid tenant"),
        ("entries", {"tenant": "a", "limit": "ten"}, "limit"),
        ("entries", {"tenant": "a", "limit": "0"}, "limit"),
        ("entries", {"tenant": "a", "limit": "1001"}, "limit"),
        ("entries", {"tenant": "a", "limit": "2.5"}, "limit"),
        ("entries", {"tenant": "a", "prefix": "js/"}, "prefix must start with"),
        ("entries", {"tenant": "a", "prefix": ""}, "prefix"),
        ("entries", {"tenant": "a", "sort": "url"}, "unknown field 'sort'"),
        ("entry", {"tenant": "a"}, "url: field required"),
        ("entry", {"tenant": "a", "url": "x"}, "a path ('/...') or an http(s) URL"),
        ("entry", {"tenant": "a", "url": "http://a b/x"}, "invalid URL"),
        ("entry", {"url": "/x"}, "tenant: field required"),
    ],
)
async def test_bad_parameters_are_a_400_with_a_json_reason(
    inspect: Inspect, what: str, params: dict[str, str], reason: str
) -> None:
    status, answer = await inspect.ask(what, **params)
    assert status == 400 and reason in answer["error"], answer


async def test_a_parameter_given_twice_is_a_400(inspect: Inspect) -> None:
    url = inspect.admin.make_url("/admin/entries").with_query([("tenant", "a"), ("tenant", "b")])
    async with inspect.http.get(url, headers={"Authorization": f"Bearer {OPS}"}) as resp:
        assert resp.status == 400
        assert "repeated: tenant" in (await resp.json())["error"]


async def run_cli(inspect: Inspect, *argv: str) -> tuple[int, str, str]:
    """`python -m gateway ARGV` against the admin listener, as an operator runs it."""
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "gateway", "--admin-url", str(inspect.admin.make_url("/")),
        "--token", OPS, *argv,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(process.communicate(), 30)
    assert process.returncode is not None
    return process.returncode, out.decode(), err.decode()


async def test_cli_entries_and_entry(inspect: Inspect, clock: SettableClock) -> None:
    for i in range(3):
        await inspect.fill(spec(f"/cli/{i}", CACHED, "Surrogate-Key:cli", projectId="a"))
    clock.advance(10)
    code, out, err = await run_cli(inspect, "entries", "--tenant", "a", "--limit", "2")
    assert code == 0, err
    lines = out.splitlines()
    assert lines[0] == "tenant a: 2 entries"
    assert lines[1].split() == ["state", "status", "age", "ttl", "size", "tiers", "url"]
    assert lines[2].split()[:4] == ["fresh", "200", "10", "50"]
    assert lines[-1].startswith("next page: --after ")
    cursor = lines[-1].removeprefix("next page: --after ").strip("'")
    code, out, _ = await run_cli(inspect, "--json", "entries", "--tenant", "a", "--after", cursor)
    answer = json.loads(out)
    assert code == 0 and answer["count"] == 1 and answer["next"] is None
    code, out, err = await run_cli(inspect, "entry", "--tenant", "a", spec("/cli/0", CACHED,
                                                                          "Surrogate-Key:cli",
                                                                          projectId="a"))
    assert code == 0, err
    assert "1 variant(s)" in out and "tags:      cli" in out and "(does not vary)" in out
    code, _, err = await run_cli(inspect, "entry", "--tenant", "a", "/missing")
    assert code == 1 and "HTTP 404: nothing stored" in err


# -- the fleet ------------------------------------------------------------------------------


def stored(gateway: Gateway) -> int:
    """Fills stored (in Redis too): a client has its body a moment before that."""
    cache = gateway.stats()["cache"]
    assert isinstance(cache, dict)
    return int(cache.get("stored", 0))


async def start_member(
    origin: TestServer, clock: SettableClock, make_gateway: GatewayFactory,
    start_admin: StartAdmin, http: aiohttp.ClientSession, redis: Backend,
) -> Inspect:
    yaml = admin_yaml(str(origin.make_url("/"))) + fleet_yaml(redis.url, redis.extra) + "\n"
    gw, gateway = await make_gateway("", yaml_text=yaml, clock=clock)
    await eventually(lambda: gateway.member is not None and gateway.member.control.ready,
                     "purge stream followed")
    return Inspect(http, gw, gateway, await start_admin(gateway))


FLEET = {"Host": "fleet.test"}  # one public name: the URL, so the key, is the same everywhere


async def filled_by_a(
    clocked_origin: TestServer, clock: SettableClock, make_gateway: GatewayFactory,
    start_admin: StartAdmin, http: aiohttp.ClientSession, redis: Backend,
) -> tuple[Inspect, Inspect, list[str]]:
    """Two members, A and B; A has filled three URLs (so they are in Redis), B nothing."""
    a, b = [await start_member(clocked_origin, clock, make_gateway, start_admin, http, redis)
            for _ in range(2)]
    paths = [spec(f"/f/{i}", CACHED, "Surrogate-Key:f", projectId="a") for i in range(3)]
    for path in paths:
        assert await a.fill(path, **FLEET) == "MISS"
    await eventually(lambda: stored(a.gateway) >= 3, "A stored its fills")
    return a, b, paths


async def test_an_entry_stored_by_one_instance_is_listed_by_another(
    clocked_origin: TestServer, clock: SettableClock, make_gateway: GatewayFactory,
    start_admin: StartAdmin, http: aiohttp.ClientSession, backend: Backend,  # noqa: F811
) -> None:
    _, b, paths = await filled_by_a(clocked_origin, clock, make_gateway, start_admin, http,
                                    backend)
    clock.advance(5)
    answers = await pages(b, tenant="a", limit=2)
    items = [i for answer in answers for i in answer["items"]]
    assert [i["url"] for i in items] == sorted("http://fleet.test" + p for p in paths)
    assert all(i["tiers"] == ["redis"] and i["age"] == 5 and i["ttl"] == 55 for i in items)
    assert all(i["tags"] == ["f"] and i["state"] == "fresh" for i in items)
    assert answers[0]["redis"] == "ok"
    assert await b.fill(paths[0], **FLEET) == "HIT"  # promoted into B's memory
    status, answer = await b.ask("entry", tenant="a", url=paths[0])
    assert status == 200 and answer["urls"] == ["http://fleet.test" + paths[0]]
    assert answer["variants"][0]["tiers"] == ["memory", "redis"]
    mixed = await pages(b, tenant="a", limit=1)  # B's memory and Redis, merged in URL order
    assert [a["items"][0]["tiers"] for a in mixed] == [["memory", "redis"], ["redis"], ["redis"]]
    status, answer = await b.ask("entries", tenant="a", prefix="/f/1")  # on the sites in Redis
    assert [i["url"] for i in answer["items"]] == ["http://fleet.test" + paths[1]]


# Standalone only: the module's cluster is shared and its nodes are not to be killed.
async def test_with_redis_down_the_answer_comes_from_memory_and_says_so(
    clocked_origin: TestServer, clock: SettableClock, make_gateway: GatewayFactory,
    start_admin: StartAdmin, http: aiohttp.ClientSession,
    redis_server: RedisServer,  # noqa: F811
) -> None:
    standalone = Backend(redis_server.url, [redis_server.port], cluster=False)
    a, b, paths = await filled_by_a(clocked_origin, clock, make_gateway, start_admin, http,
                                    standalone)
    assert await b.fill(paths[0], **FLEET) == "HIT"
    redis_server.kill()
    status, answer = await b.ask("entries", tenant="a")
    assert status == 200 and answer["redis"].startswith("unavailable: ")
    assert [(i["url"], i["tiers"]) for i in answer["items"]] == [
        ("http://fleet.test" + paths[0], ["memory"])
    ]
    status, answer = await b.ask("entry", tenant="a", url=paths[0])
    assert status == 200 and answer["redis"].startswith("unavailable: ")
    status, answer = await b.ask("entry", tenant="a", url=paths[1])  # only Redis had it
    assert status == 404 and answer["redis"].startswith("unavailable: ")
    status, answer = await a.ask("entries", tenant="a", prefix="/f/")
    assert status == 200 and [i["tiers"] for i in answer["items"]] == [["memory"]] * 3


async def test_a_page_over_urls_whose_entries_expired_ends_early_and_goes_on(
    clocked_origin: TestServer, clock: SettableClock, make_gateway: GatewayFactory,
    start_admin: StartAdmin, http: aiohttp.ClientSession,
    redis_server: RedisServer,  # noqa: F811
) -> None:
    """Redis's URL index is trimmed as the tenant writes, so it may name URLs whose entries
    are gone. A page reads at most MAX_ROUNDS short rounds of them, then ends with a `next`."""
    standalone = Backend(redis_server.url, [redis_server.port], cluster=False)
    one = await start_member(clocked_origin, clock, make_gateway, start_admin, http, standalone)
    paths = [spec(f"/gone/{i:02d}", CACHED, projectId="a") for i in range(2 * MAX_ROUNDS + 4)]
    for path in paths:
        await one.fill(path, **FLEET)
    await eventually(lambda: stored(one.gateway) >= len(paths), "every fill stored")
    member = one.gateway.member
    assert member is not None
    client = Redis.from_url(redis_server.url)
    for path in paths[:-1]:  # the entries go; the index still names their URLs
        await client.delete(member.keys.entries(vary_record_key("a", "http://fleet.test" + path)))
    await client.aclose()
    await one.gateway.store.clear()
    status, first = await one.ask("entries", tenant="a", limit=1)
    assert (status, first["items"], first["redis"]) == (200, [], "ok")
    assert first["next"] == "http://fleet.test" + paths[2 * MAX_ROUNDS - 1]
    status, second = await one.ask("entries", tenant="a", limit=1, after=first["next"])
    assert [i["url"] for i in second["items"]] == ["http://fleet.test" + paths[-1]]
    assert second["next"] is None
