"""Route `default_ttl` (nginx proxy_cache_valid) and `override_ttl` (Varnish beresp.ttl), issue 11.

`default_ttl` is the operator's heuristic (RFC 9111 4.2.2): only for responses without explicit
expiration. `override_ttl` replaces the origin's explicit expiration (outside RFC 9111 4.2.1).
Neither makes storable what RFC 9111 3 refuses; both count from when the response arrived.
"""

from __future__ import annotations

from email.utils import formatdate

import aiohttp
import pytest
from aiohttp.test_utils import TestServer
from multidict import CIMultiDict
from pydantic import ValidationError

from gateway.analysis import analyse
from gateway.cache_status import cache_status
from gateway.config import RouteCacheConfig, RouteConfig
from gateway.policy import Reuse, RouteRules, freshness, judge, route_ttl, storable
from gateway.router import compile_route
from tests.clock import SettableClock
from tests.conftest import GatewayFactory
from tests.test_gateway_http import get, origin_count, spec

NOW = 1_700_000_000.0
DEFAULT = RouteRules(default_ttl=30.0)
OVERRIDE = RouteRules(override_ttl=10.0)
ETAG = ("ETag", '"v1"')


def h(*pairs: tuple[str, str]) -> CIMultiDict[str]:
    return CIMultiDict(pairs)


def date(ts: float) -> str:
    return formatdate(ts, usegmt=True)


def lifetime(*pairs: tuple[str, str], rules: RouteRules, status: int = 200,
             age: float = 0.0) -> float:
    return freshness(status, h(*pairs), NOW, rules, age=age).lifetime


def store(*pairs: tuple[str, str], rules: RouteRules, status: int = 200,
          req: CIMultiDict[str] | None = None) -> str | None:
    return storable("GET", status, req or h(), h(*pairs), rules)


# --- config -----------------------------------------------------------------------------------


def test_ttl_options_parse_as_durations_and_reach_the_route_rules() -> None:
    route = RouteConfig.model_validate(
        {"name": "r", "origin": "o", "cache": {"default_ttl": "30s"}}
    )
    assert route.cache.default_ttl == 30.0 and route.cache.override_ttl is None
    assert compile_route(route).rules.default_ttl == 30.0
    route = RouteConfig.model_validate(
        {"name": "r", "origin": "o", "cache": {"override_ttl": "2m"}}
    )
    assert compile_route(route).rules.override_ttl == 120.0
    assert RouteCacheConfig().default_ttl is None and RouteCacheConfig().override_ttl is None
    assert RouteCacheConfig.model_validate({"default_ttl": 0}).default_ttl == 0.0


@pytest.mark.parametrize(
    ("cache", "message"),
    [
        ({"default_ttl": -1}, "must not be negative"),
        ({"override_ttl": "-5s"}, "must not be negative"),
        ({"default_ttl": "30s", "override_ttl": "10s"}, "not both"),
    ],
)
def test_ttl_options_are_validated(cache: dict[str, object], message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        RouteCacheConfig.model_validate(cache)


# --- default_ttl: the operator's heuristic (RFC 9111 4.2.2) ---------------------------------


@pytest.mark.parametrize(
    ("pairs", "expected"),
    [
        ((("Cache-Control", "max-age=600"),), 600),
        ((("Cache-Control", "s-maxage=90, max-age=600"),), 90),
        ((("Cache-Control", "max-age=0"),), 0),
        ((("Date", date(NOW)), ("Expires", date(NOW + 300))), 300),
        ((("Expires", "not a date"),), 0),  # RFC 9111 5.3: invalid Expires is explicit, expired
        ((("CDN-Cache-Control", "max-age=120"), ("Cache-Control", "no-cache")), 120),
        ((("Surrogate-Control", "max-age=45"),), 45),
    ],
)
def test_default_ttl_keeps_explicit_expiration_rfc9111_4_2_1(
    pairs: tuple[tuple[str, str], ...], expected: float
) -> None:
    assert lifetime(ETAG, *pairs, rules=DEFAULT) == expected
    assert route_ttl(200, h(*pairs), DEFAULT) is None


def test_default_ttl_applies_without_explicit_expiration_rfc9111_4_2_2() -> None:
    assert lifetime(ETAG, rules=DEFAULT) == 30
    assert lifetime(("Cache-Control", "public"), rules=DEFAULT) == 30  # public is no expiration
    assert lifetime(ETAG, rules=DEFAULT, status=404) == 30
    assert lifetime(ETAG, rules=RouteRules()) == 0  # off unless the route asks


def test_default_ttl_ignores_cache_control_when_a_targeted_field_wins_rfc9213_2_2() -> None:
    # CDN-Cache-Control without a lifetime replaces Cache-Control, max-age and Expires included.
    pairs = (("CDN-Cache-Control", "must-revalidate"), ("Cache-Control", "max-age=600"), ETAG)
    assert lifetime(*pairs, rules=DEFAULT) == 30


def test_default_ttl_wins_over_the_last_modified_heuristic_rfc9111_4_2_2() -> None:
    pairs = (("Date", date(NOW)), ("Last-Modified", date(NOW - 10_000)))
    assert lifetime(*pairs, rules=RouteRules(heuristic_fraction=0.1)) == 1000
    assert lifetime(*pairs, rules=RouteRules(heuristic_fraction=0.1, default_ttl=30)) == 30


def test_default_ttl_only_for_heuristically_cacheable_statuses_or_public_rfc9111_4_2_2() -> None:
    assert lifetime(ETAG, rules=DEFAULT, status=302) == 0
    assert store(ETAG, rules=DEFAULT, status=302) == "status"  # RFC 9111 3 still refuses it
    assert lifetime(ETAG, ("Cache-Control", "public"), rules=DEFAULT, status=302) == 30


def test_default_ttl_makes_a_response_without_validator_storable() -> None:
    assert store(rules=RouteRules()) == "no-freshness"
    assert store(rules=DEFAULT) is None
    assert store(rules=RouteRules(default_ttl=0)) == "no-freshness"  # could never be reused


def test_default_ttl_counts_from_arrival_and_cache_status_shows_it_rfc9211_2_5() -> None:
    fresh = freshness(200, h(ETAG), NOW, DEFAULT, age=12)
    assert fresh.lifetime == 42
    verdict = judge(fresh, 12, h())
    assert verdict.reuse is Reuse.FRESH and verdict.ttl == 30
    assert cache_status("edge", hit=True, ttl=verdict.ttl) == "edge; hit; ttl=30"


# --- override_ttl: the operator over the origin (outside RFC 9111 4.2.1) --------------------


@pytest.mark.parametrize(
    "pairs",
    [
        (("Cache-Control", "max-age=600"),),
        (("Cache-Control", "s-maxage=600, max-age=5"),),
        (("Date", date(NOW)), ("Expires", date(NOW + 3600))),
        (("Expires", "0"),),
        (("CDN-Cache-Control", "max-age=600"),),
        (("Surrogate-Control", "max-age=600"),),
        (ETAG,),  # no freshness at all
        (("Cache-Control", "public"),),
    ],
)
def test_override_ttl_replaces_the_origin_lifetime(pairs: tuple[tuple[str, str], ...]) -> None:
    assert lifetime(ETAG, *pairs, rules=OVERRIDE) == 10
    assert store(ETAG, *pairs, rules=OVERRIDE) is None


@pytest.mark.parametrize(
    ("pairs", "req", "status", "reason"),
    [
        ((("Cache-Control", "no-store, max-age=600"),), None, 200, "no-store"),
        ((("CDN-Cache-Control", "no-store"), ("Cache-Control", "max-age=600")), None, 200,
         "no-store"),
        ((("Cache-Control", "private, max-age=600"),), None, 200, "private"),
        ((("Cache-Control", "max-age=600"),), h(("Authorization", "Basic eA==")), 200,
         "authorization"),
        ((("Cache-Control", "max-age=600"),), h(("Cache-Control", "no-store")), 200, "no-store"),
        ((ETAG,), None, 302, "status"),  # neither heuristically cacheable nor explicitly fresh
        ((("Cache-Control", "max-age=600"),), None, 206, "status"),
        ((("Cache-Control", "max-age=600"), ("Vary", "*")), None, 200, "vary-star"),
        ((("Cache-Control", "max-age=600"), ("Set-Cookie", "sid=1")), None, 200, "set-cookie"),
        ((("Cache-Control", "must-understand, no-store"),), None, 299, "must-understand"),
    ],
)
def test_override_ttl_never_makes_storable_what_rfc9111_3_forbids(
    pairs: tuple[tuple[str, str], ...], req: CIMultiDict[str] | None, status: int, reason: str
) -> None:
    assert store(*pairs, rules=OVERRIDE, status=status, req=req) == reason
    assert store(*pairs, rules=DEFAULT, status=status, req=req) == reason


def test_authorization_with_s_maxage_stays_storable_and_gets_the_override_rfc9111_3_5() -> None:
    req = h(("Authorization", "Basic eA=="))
    assert store(("Cache-Control", "s-maxage=600"), rules=OVERRIDE, req=req) is None
    assert lifetime(("Cache-Control", "s-maxage=600"), rules=OVERRIDE) == 10


def test_override_ttl_keeps_no_cache_and_must_revalidate_rfc9111_5_2_2() -> None:
    fresh = freshness(200, h(("Cache-Control", "no-cache, max-age=600"), ETAG), NOW, OVERRIDE)
    assert fresh.lifetime == 10 and fresh.no_cache
    assert judge(fresh, 1, h()).reuse is Reuse.VALIDATE  # validated before every reuse
    rules = RouteRules(override_ttl=10, default_swr=60, default_sie=60)
    fresh = freshness(200, h(("Cache-Control", "must-revalidate, max-age=600")), NOW, rules)
    assert fresh.lifetime == 10 and fresh.must_revalidate and fresh.swr == fresh.sie == 0
    assert judge(fresh, 11, h()).reuse is Reuse.VALIDATE


def test_override_ttl_of_zero_without_validator_is_not_stored() -> None:
    assert store(("Cache-Control", "max-age=600"), rules=RouteRules(override_ttl=0)) is None
    assert store(rules=RouteRules(override_ttl=0)) == "no-freshness"


def test_override_ttl_counts_from_arrival_so_age_stays_truthful_rfc9111_4_2_3() -> None:
    resp = h(("Cache-Control", "max-age=600"), ("Age", "100"), ETAG)
    a = analyse(200, h(), resp, OVERRIDE, request_time=NOW, response_time=NOW)
    assert a.refusal is None and a.initial_age == 100
    assert a.freshness.lifetime == 110
    assert judge(a.freshness, 100, h()).ttl == 10  # Cache-Status ttl= is the TTL used
    assert judge(a.freshness, 111, h()).reuse is Reuse.VALIDATE


# --- through a real gateway ------------------------------------------------------------------


async def test_default_ttl_turns_a_response_without_caching_headers_into_a_hit_until_it_expires(
    clocked_origin: TestServer,
    clock: SettableClock,
    make_gateway: GatewayFactory,
    http: aiohttp.ClientSession,
) -> None:
    gw, _ = await make_gateway(
        str(clocked_origin.make_url("/")), route_cache=", default_ttl: 30s", clock=clock
    )
    path = spec("/plain")  # no Cache-Control, Expires, ETag or Last-Modified
    first, body1 = await get(http, gw, path)
    assert first.headers["X-Cache"] == "MISS"
    assert "stored" in first.headers["Cache-Status"]
    assert "ttl=30" in first.headers["Cache-Status"]
    clock.advance(10)
    hit, body2 = await get(http, gw, path)
    assert hit.headers["X-Cache"] == "HIT"
    assert hit.headers["Cache-Status"] == "edge; hit; ttl=20"
    assert hit.headers["Age"] == "10"
    assert body2 == body1
    assert await origin_count(clocked_origin) == 1
    clock.advance(21)
    expired, body3 = await get(http, gw, path)
    assert expired.headers["X-Cache"] != "HIT"
    assert "fwd=stale" in expired.headers["Cache-Status"]
    assert body3 != body1
    assert await origin_count(clocked_origin) == 2


async def test_override_ttl_makes_a_max_age_600_response_stale_after_5s(
    clocked_origin: TestServer,
    clock: SettableClock,
    make_gateway: GatewayFactory,
    http: aiohttp.ClientSession,
) -> None:
    gw, _ = await make_gateway(
        str(clocked_origin.make_url("/")), route_cache=", override_ttl: 5s", clock=clock
    )
    path = spec("/long", "Cache-Control:max-age=600")
    first, _ = await get(http, gw, path)
    assert "ttl=5" in first.headers["Cache-Status"]
    assert first.headers["Cache-Control"] == "max-age=600"  # the origin's field passes through
    clock.advance(4)
    hit, _ = await get(http, gw, path)
    assert hit.headers["X-Cache"] == "HIT"
    assert hit.headers["Cache-Status"] == "edge; hit; ttl=1"
    assert hit.headers["Age"] == "4"
    clock.advance(2)
    stale, _ = await get(http, gw, path)
    assert stale.headers["X-Cache"] != "HIT"
    assert "fwd=stale" in stale.headers["Cache-Status"]
    assert await origin_count(clocked_origin) == 2


async def test_override_ttl_does_not_share_a_no_store_response(
    echo_origin: TestServer, make_gateway: GatewayFactory, http: aiohttp.ClientSession
) -> None:
    gw, _ = await make_gateway(str(echo_origin.make_url("/")), route_cache=", override_ttl: 1h")
    path = spec("/ns", "Cache-Control:no-store")
    await get(http, gw, path)
    second, _ = await get(http, gw, path)
    assert second.headers["X-Cache"] != "HIT"
    assert "detail=no-store" in second.headers["Cache-Status"]
    assert await origin_count(echo_origin) == 2
