"""Unit tests of the shared-cache policy, one behaviour each, named after the rule they check."""

from __future__ import annotations

from datetime import UTC, datetime
from email.utils import formatdate

import pytest
from hypothesis import given
from hypothesis import strategies as st
from multidict import CIMultiDict

from gateway.cache_status import cache_status
from gateway.directives import delta_seconds, http_date
from gateway.invalidation import invalidates, invalidation_targets
from gateway.policy import (
    Freshness,
    Reuse,
    RouteRules,
    consumed_field,
    freshness,
    initial_age,
    judge,
    parse_cache_control,
    request_directives,
    storable,
    strip_fields,
    usable_if_error,
    vary_names,
)
from gateway.validation import merge_not_modified, not_modified, validators

NOW = 1_700_000_000.0
RULES = RouteRules()


def h(*pairs: tuple[str, str]) -> CIMultiDict[str]:
    return CIMultiDict(pairs)


def date(ts: float) -> str:
    return formatdate(ts, usegmt=True)


def lifetime(*pairs: tuple[str, str], status: int = 200, rules: RouteRules = RULES) -> float:
    return freshness(status, h(*pairs), NOW, rules).lifetime


def store(*pairs: tuple[str, str], status: int = 200, method: str = "GET",
          req: CIMultiDict[str] | None = None, rules: RouteRules = RULES) -> str | None:
    return storable(method, status, req or h(), h(*pairs), rules)


# --- parse_cache_control ---------------------------------------------------------------------


def test_directive_names_are_case_insensitive_and_lines_join_rfc9111_5_2() -> None:
    assert parse_cache_control(["Max-Age=60, PUBLIC", "no-Cache"]) == {
        "max-age": "60",
        "public": None,
        "no-cache": None,
    }


def test_quoted_values_keep_commas_and_escapes_rfc9110_5_6_4() -> None:
    parsed = parse_cache_control(['no-cache="Set-Cookie, X-Foo", private="a\\"b", max-age=5'])
    assert parsed == {"no-cache": "Set-Cookie, X-Foo", "private": 'a"b', "max-age": "5"}


def test_quoted_delta_seconds_accepted_rfc9111_5_2() -> None:
    assert lifetime(("Cache-Control", 'max-age="60"')) == 60


def test_duplicate_directive_first_valid_value_wins_rfc9111_4_2_1() -> None:
    assert parse_cache_control(["max-age=abc, max-age=60, max-age=70"])["max-age"] == "60"
    assert parse_cache_control(["max-age=10", "max-age=20"])["max-age"] == "10"


def test_junk_is_ignored_and_unknown_extensions_kept_rfc9111_5_2_3() -> None:
    parsed = parse_cache_control(["nothing-to-see-here, =x, max age=3, ,, max-age=9"])
    assert parsed == {"nothing-to-see-here": None, "max-age": "9"}


def test_unterminated_quote_does_not_raise_rfc9110_5_6_4() -> None:
    assert parse_cache_control(['private="Set-Cookie, max-age=5']) == {
        "private": "Set-Cookie, max-age=5"
    }


@pytest.mark.parametrize("value", ["-1", "abc", "1.5", "", " ", "٣", None])
def test_invalid_delta_seconds_are_rejected_rfc9111_1_2_2(value: str | None) -> None:
    assert delta_seconds(value) is None


def test_huge_delta_seconds_clamp_to_2_31_rfc9111_1_2_2() -> None:
    assert delta_seconds("9" * 400) == 2**31
    assert lifetime(("Cache-Control", "max-age=99999999999")) == 2**31


@pytest.mark.parametrize("value", ["-1", "abc", "1.5", ""])
def test_invalid_max_age_makes_the_response_stale_rfc9111_4_2_1(value: str) -> None:
    assert lifetime(("Cache-Control", f"max-age={value}")) == 0


# --- storable --------------------------------------------------------------------------------


def test_plain_200_with_max_age_is_storable_rfc9111_3() -> None:
    assert store(("Cache-Control", "max-age=60")) is None


@pytest.mark.parametrize("method", ["POST", "PUT", "DELETE", "OPTIONS"])
def test_only_get_and_head_responses_are_stored_rfc9111_3(method: str) -> None:
    assert store(("Cache-Control", "max-age=60"), method=method) == "method"
    assert store(("Cache-Control", "max-age=60"), method="HEAD") is None


@pytest.mark.parametrize("status", [100, 103, 206, 304])
def test_interim_partial_and_304_are_never_stored_rfc9111_3(status: int) -> None:
    assert store(("Cache-Control", "max-age=60"), status=status) == "status"


@pytest.mark.parametrize("status", [200, 203, 204, 300, 301, 308, 404, 405, 410, 414, 501])
def test_heuristically_cacheable_statuses_store_with_a_validator_rfc9110_15_1(status: int) -> None:
    assert store(("Last-Modified", date(NOW - 3600)), status=status) is None


@pytest.mark.parametrize("status", [302, 307, 400, 500, 503])
def test_other_statuses_need_explicit_freshness_rfc9111_3(status: int) -> None:
    assert store(("ETag", '"x"'), status=status) == "status"
    assert store(("Cache-Control", "max-age=10"), status=status) is None
    assert store(("Expires", date(NOW + 10)), status=status) is None
    assert store(("Cache-Control", "public"), ("ETag", '"x"'), status=status) is None


def test_no_freshness_and_no_validator_is_not_stored_rfc9111_4_2_2() -> None:
    assert store() == "no-freshness"
    assert store(rules=RouteRules(heuristic_fraction=0.1)) == "no-freshness"
    assert store(("ETag", '"v1"')) is None


def test_response_no_store_is_not_stored_rfc9111_5_2_2_5() -> None:
    assert store(("Cache-Control", "max-age=60, No-Store")) == "no-store"


def test_request_no_store_is_not_stored_rfc9111_5_2_1_5() -> None:
    req = h(("Cache-Control", "no-store"))
    assert store(("Cache-Control", "max-age=60"), req=req) == "no-store"


def test_unqualified_private_is_not_stored_by_a_shared_cache_rfc9111_5_2_2_7() -> None:
    assert store(("Cache-Control", "private, max-age=60")) == "private"
    assert store(("Cache-Control", 'max-age=60, private=""')) == "private"


def test_qualified_private_is_stored_without_the_fields_rfc9111_5_2_2_7() -> None:
    resp = h(("Cache-Control", 'private="Set-Cookie, X-User", max-age=60'), ("Set-Cookie", "a=1"))
    assert storable("GET", 200, h(), resp, RULES) is None
    assert strip_fields(resp) == ("set-cookie", "x-user")


def test_qualified_no_cache_fields_are_stripped_rfc9111_5_2_2_4() -> None:
    resp = h(("Cache-Control", 'no-cache="Set-Cookie", max-age=60'), ("Set-Cookie", "a=1"))
    assert storable("GET", 200, h(), resp, RULES) is None
    assert strip_fields(resp) == ("set-cookie",)
    assert freshness(200, resp, NOW, RULES).no_cache is False


def test_set_cookie_is_never_shared_rfc9111_7_3() -> None:
    assert store(("Cache-Control", "max-age=60"), ("Set-Cookie", "sid=1")) == "set-cookie"


def test_authorization_needs_public_s_maxage_or_must_revalidate_rfc9111_3_5() -> None:
    req = h(("Authorization", "Bearer x"))
    assert store(("Cache-Control", "max-age=60"), req=req) == "authorization"
    for cc in ("public, max-age=60", "s-maxage=60", "max-age=60, must-revalidate"):
        assert store(("Cache-Control", cc), req=req) is None
    assert store(("Cache-Control", "max-age=60, proxy-revalidate"), req=req) == "authorization"


def test_vary_star_is_not_stored_rfc9111_4_1() -> None:
    assert store(("Cache-Control", "max-age=60"), ("Vary", "Accept"), ("Vary", "*")) == "vary-star"


def test_cdn_cache_control_no_store_wins_over_cache_control_rfc9213_2_2() -> None:
    pairs = (("Cache-Control", "public, max-age=60"), ("CDN-Cache-Control", "no-store"))
    assert store(*pairs) == "no-store"


def test_cdn_cache_control_replaces_cache_control_private_and_no_store_rfc9213_2_2() -> None:
    pairs = (("Cache-Control", "private, no-store"), ("CDN-Cache-Control", "max-age=60"))
    assert store(*pairs) is None


def test_cdn_cache_control_without_valid_directives_is_ignored_rfc9213_2_2() -> None:
    pairs = (("Cache-Control", "no-store"), ("CDN-Cache-Control", "nothing-to-see-here"))
    assert store(*pairs) == "no-store"


@pytest.mark.parametrize("cdn", ["max-age=10000, &&&&&", 'max-age="10000"', "Max-Age=10000"])
def test_cdn_cache_control_that_is_not_a_valid_sf_dictionary_is_ignored_rfc9213_2_1(
    cdn: str,
) -> None:
    assert store(("Cache-Control", "no-store"), ("CDN-Cache-Control", cdn)) == "no-store"
    assert lifetime(("Cache-Control", "max-age=60"), ("CDN-Cache-Control", cdn)) == 60


def test_restrictive_cdn_directive_counts_whatever_its_value_rfc9213_2_1() -> None:
    assert store(("Cache-Control", "max-age=60"), ("CDN-Cache-Control", "no-store=1")) == "no-store"


def test_only_the_targeted_field_that_was_obeyed_is_consumed_rfc9213_2_2() -> None:
    cc = ("Cache-Control", "max-age=60")
    assert consumed_field(h(cc, ("CDN-Cache-Control", "max-age=5")), RULES) == "cdn-cache-control"
    assert consumed_field(h(cc, ("CDN-Cache-Control", "foo")), RULES) is None
    assert consumed_field(h(cc, ("Surrogate-Control", "max-age=5")), RULES) == "surrogate-control"
    assert consumed_field(h(cc), RULES) is None


def test_must_understand_lifts_no_store_for_a_status_the_cache_implements_rfc9111_5_2_2_3(
) -> None:
    cc = ("Cache-Control", "max-age=3600, no-store, must-understand")
    assert storable("GET", 200, h(), h(cc), RULES) is None
    assert storable("GET", 299, h(), h(cc), RULES) == "must-understand"
    assert store(("Cache-Control", "max-age=3600, no-store")) == "no-store"


def test_surrogate_control_no_store_is_not_stored_edge_arch_1_0() -> None:
    assert store(("Cache-Control", "max-age=60"), ("Surrogate-Control", "no-store")) == "no-store"


def test_surrogate_control_does_not_lift_cache_control_private_rfc9111_5_2_2_7() -> None:
    assert store(("Cache-Control", "private"), ("Surrogate-Control", "max-age=60")) == "private"


# --- freshness -------------------------------------------------------------------------------


def test_s_maxage_overrides_max_age_for_shared_cache_rfc9111_5_2_2_10() -> None:
    assert lifetime(("Cache-Control", "max-age=10, s-maxage=300")) == 300


def test_max_age_overrides_expires_rfc9111_5_3() -> None:
    assert lifetime(("Cache-Control", "max-age=10"), ("Expires", date(NOW + 3600))) == 10


def test_expires_minus_date_rfc9111_4_2_1() -> None:
    assert lifetime(("Date", date(NOW - 100)), ("Expires", date(NOW + 200))) == 300


def test_expires_without_date_uses_response_time_rfc9111_4_2_1() -> None:
    assert lifetime(("Expires", date(NOW + 200))) == 200


@pytest.mark.parametrize("expires", ["0", "-1", "never", "Sun, 31 Feb 1994 08:49:37 GMT"])
def test_invalid_expires_is_already_expired_rfc9111_5_3(expires: str) -> None:
    assert lifetime(("Date", date(NOW)), ("Expires", expires)) == 0


def test_expires_before_date_is_zero_not_negative_rfc9111_4_2_1() -> None:
    assert lifetime(("Date", date(NOW)), ("Expires", date(NOW - 60))) == 0


@pytest.mark.parametrize(
    "text",
    ["Sun, 06 Nov 1994 08:49:37 GMT", "Sunday, 06-Nov-94 08:49:37 GMT", "Sun Nov  6 08:49:37 1994",
     "SUN, 06 NOV 1994 08:49:37 gmt"],
)
def test_three_http_date_formats_are_read_in_any_case_rfc9110_5_6_7(text: str) -> None:
    assert http_date(text) == 784111777.0


@pytest.mark.parametrize(
    "text",
    ["Thu, 18 Aug 2050 02:01:18 UTC", "Thu, 18 Aug 2050 02:01:18 AEST",
     "Thu, 18 Aug 50 02:01:18 GMT", "Thu 18 Aug 2050 02:01:18 GMT",
     "Thu, 18  Aug  2050 02:01:18 GMT", "Thu, 18-Aug-2050 02:01:18 GMT",
     "Thu, 18 Aug 2050 02.01.18 GMT", "Thu, 18 Aug 2050 2:01:18 GMT",
     "Thu, 31 Feb 2050 02:01:18 GMT", "Thu, 18 Aug 2050 24:01:18 GMT", "tomorrow", ""],
)
def test_anything_but_the_three_formats_is_not_an_http_date_rfc9110_5_6_7(text: str) -> None:
    assert http_date(text) is None


def test_rfc850_two_digit_year_more_than_50_years_ahead_is_in_the_past_rfc9110_5_6_7() -> None:
    this_year = datetime.now(UTC).year
    ahead = (this_year + 60) % 100
    text = f"Sunday, 06-Nov-{ahead:02d} 08:49:37 GMT"
    parsed = http_date(text)
    assert parsed is not None
    assert datetime.fromtimestamp(parsed, UTC).year == this_year + 60 - 100


def test_several_expires_lines_mean_already_expired_rfc9111_5_3() -> None:
    later = date(NOW + 3600)
    assert lifetime(("Date", date(NOW)), ("Expires", later), ("Expires", later)) == 0


def test_heuristic_freshness_only_when_enabled_rfc9111_4_2_2() -> None:
    pairs = (("Date", date(NOW)), ("Last-Modified", date(NOW - 1000)))
    assert lifetime(*pairs) == 0
    assert lifetime(*pairs, rules=RouteRules(heuristic_fraction=0.1)) == 100


def test_heuristic_freshness_is_capped_rfc9111_4_2_2() -> None:
    rules = RouteRules(heuristic_fraction=0.1, heuristic_max=50)
    assert lifetime(("Date", date(NOW)), ("Last-Modified", date(NOW - 1000)), rules=rules) == 50


def test_heuristic_freshness_needs_last_modified_and_a_cacheable_status_rfc9111_4_2_2() -> None:
    rules = RouteRules(heuristic_fraction=0.1)
    assert lifetime(("Date", date(NOW)), rules=rules) == 0
    modified = ("Last-Modified", date(NOW - 1000))
    assert lifetime(("Date", date(NOW)), modified, status=302, rules=rules) == 0
    assert lifetime(("Date", date(NOW)), modified, status=404, rules=rules) == 100


@pytest.mark.parametrize("status", [200, 302, 307, 403, 500])
def test_a_public_response_of_any_status_gets_a_heuristic_lifetime_rfc9111_4_2_2(
    status: int,
) -> None:
    rules = RouteRules(heuristic_fraction=0.1)
    pairs = (("Date", date(NOW)), ("Last-Modified", date(NOW - 1000)), ("Cache-Control", "public"))
    assert lifetime(*pairs, status=status, rules=rules) == 100
    assert store(*pairs, status=status, rules=rules) is None
    assert lifetime(*pairs, status=status) == 0  # heuristics stay off unless the route asks


def test_heuristic_freshness_never_overrides_explicit_expiry_rfc9111_4_2_2() -> None:
    rules = RouteRules(heuristic_fraction=0.1)
    pairs = (("Cache-Control", "max-age=0"), ("Last-Modified", date(NOW - 10_000)))
    assert lifetime(*pairs, rules=rules) == 0


def test_cdn_cache_control_decides_freshness_alone_rfc9213_2_2() -> None:
    pairs = (
        ("Cache-Control", "s-maxage=5, stale-while-revalidate=99, must-revalidate"),
        ("Expires", date(NOW + 999)),
        ("CDN-Cache-Control", "max-age=600, stale-while-revalidate=30"),
    )
    fresh = freshness(200, h(*pairs), NOW, RULES)
    assert fresh == Freshness(lifetime=600, swr=30)


def test_cdn_cache_control_ignores_expires_rfc9213_2_2() -> None:
    assert lifetime(("CDN-Cache-Control", "public"), ("Expires", date(NOW + 999))) == 0


def test_junk_cdn_cache_control_falls_back_to_cache_control_rfc9213_2_2() -> None:
    assert lifetime(("Cache-Control", "max-age=60"), ("CDN-Cache-Control", "bogus")) == 60


def test_surrogate_control_max_age_beats_cache_control_edge_arch_1_0() -> None:
    pairs = (
        ("Cache-Control", "s-maxage=5, stale-if-error=40"),
        ("Surrogate-Control", "max-age=90"),
    )
    fresh = freshness(200, h(*pairs), NOW, RULES)
    assert (fresh.lifetime, fresh.sie) == (90, 40)


def test_surrogate_control_max_age_plus_extension_uses_the_first_number_edge_arch_1_0() -> None:
    assert lifetime(("Surrogate-Control", "max-age=90+600")) == 90


def test_cdn_cache_control_beats_surrogate_control_rfc9213_2_2() -> None:
    pairs = (("Surrogate-Control", "max-age=90"), ("CDN-Cache-Control", "max-age=20"))
    assert lifetime(*pairs) == 20


def test_must_revalidate_and_proxy_revalidate_forbid_stale_rfc9111_5_2_2_2() -> None:
    for cc in ("max-age=5, must-revalidate", "max-age=5, proxy-revalidate"):
        assert freshness(200, h(("Cache-Control", cc)), NOW, RULES).must_revalidate


def test_s_maxage_implies_proxy_revalidate_route_defaults_do_not_apply_rfc9111_5_2_2_10() -> None:
    rules = RouteRules(default_swr=15, default_sie=300)
    fresh = freshness(200, h(("Cache-Control", "s-maxage=60")), NOW, rules)
    assert fresh == Freshness(lifetime=60, proxy_revalidate=True)
    assert judge(fresh, 70, h(("Cache-Control", "max-stale=3600"))).reuse is Reuse.VALIDATE
    assert not usable_if_error(fresh, 70, h(("Cache-Control", "stale-if-error=3600")))


def test_stale_overrides_origin_lets_route_grace_apply_over_s_maxage() -> None:
    rules = RouteRules(default_swr=15, default_sie=300, stale_overrides_origin=True)
    fresh = freshness(200, h(("Cache-Control", "s-maxage=60")), NOW, rules)
    assert fresh == Freshness(lifetime=60, swr=15, sie=300)


def test_max_age_alone_keeps_route_defaults_and_client_max_stale_rfc9111_5_2_1_2() -> None:
    rules = RouteRules(default_swr=15)
    fresh = freshness(200, h(("Cache-Control", "max-age=60")), NOW, rules)
    assert fresh == Freshness(lifetime=60, swr=15)
    assert judge(fresh, 100, h(("Cache-Control", "max-stale=3600"))).reuse is Reuse.FRESH


def test_unqualified_no_cache_requires_validation_rfc9111_5_2_2_4() -> None:
    assert freshness(200, h(("Cache-Control", "no-cache, max-age=60")), NOW, RULES).no_cache


def test_response_pragma_is_ignored_rfc9111_5_4() -> None:
    fresh = freshness(200, h(("Pragma", "no-cache"), ("Cache-Control", "max-age=5")), NOW, RULES)
    assert fresh == Freshness(lifetime=5)


def test_origin_swr_and_sie_windows_rfc5861_3_4() -> None:
    cc = "max-age=60, stale-while-revalidate=30, stale-if-error=600"
    assert freshness(200, h(("Cache-Control", cc)), NOW, RULES) == Freshness(60, 30, 600)


def test_origin_windows_are_capped_by_the_route_rfc5861_3_4() -> None:
    rules = RouteRules(max_swr=10, max_sie=100)
    cc = "max-age=60, stale-while-revalidate=30, stale-if-error=600"
    assert freshness(200, h(("Cache-Control", cc)), NOW, rules) == Freshness(60, 10, 100)


def test_route_default_windows_apply_when_the_origin_sends_none_rfc5861_3_4() -> None:
    rules = RouteRules(default_swr=20, default_sie=300)
    assert freshness(200, h(("Cache-Control", "max-age=60")), NOW, rules) == Freshness(60, 20, 300)


def test_origin_windows_beat_route_defaults_even_when_zero_rfc5861_3() -> None:
    rules = RouteRules(default_swr=20, default_sie=300)
    cc = "max-age=60, stale-while-revalidate=0, stale-if-error=abc"
    assert freshness(200, h(("Cache-Control", cc)), NOW, rules) == Freshness(60, 0, 0)


@pytest.mark.parametrize(
    "directive", ["must-revalidate", "proxy-revalidate", "no-cache", "no-store"]
)
def test_route_defaults_never_apply_when_stale_is_forbidden_rfc9111_4_2_4(directive: str) -> None:
    rules = RouteRules(default_swr=20, default_sie=300)
    fresh = freshness(200, h(("Cache-Control", f"max-age=60, {directive}")), NOW, rules)
    assert (fresh.swr, fresh.sie) == (0, 0)


@pytest.mark.parametrize("directive", ["must-revalidate", "proxy-revalidate", "no-cache"])
def test_explicit_windows_are_dropped_when_stale_is_forbidden_rfc9111_4_2_4(directive: str) -> None:
    cc = f"max-age=60, stale-while-revalidate=30, stale-if-error=60, {directive}"
    fresh = freshness(200, h(("Cache-Control", cc)), NOW, RULES)
    assert (fresh.swr, fresh.sie) == (0, 0)


def test_the_origins_own_windows_apply_alongside_s_maxage_rfc5861_3() -> None:
    cc = "s-maxage=60, stale-while-revalidate=30, stale-if-error=90"
    rules = RouteRules(default_swr=5, default_sie=5)
    fresh = freshness(200, h(("Cache-Control", cc)), NOW, rules)
    assert fresh == Freshness(60, 30, 90, proxy_revalidate=True)
    assert judge(fresh, 80, h()).reuse is Reuse.STALE_WHILE_REVALIDATE
    assert usable_if_error(fresh, 140, h())


# --- initial_age -----------------------------------------------------------------------------


def test_age_without_age_or_date_is_the_response_delay_rfc9111_4_2_3() -> None:
    assert initial_age(h(), NOW - 2, NOW) == 2


def test_apparent_age_from_date_rfc9111_4_2_3() -> None:
    assert initial_age(h(("Date", date(NOW - 30))), NOW - 1, NOW) == 30


def test_upstream_age_is_corrected_by_the_delay_rfc9111_4_2_3() -> None:
    assert initial_age(h(("Age", "100"), ("Date", date(NOW - 5))), NOW - 3, NOW) == 103


def test_clock_skewed_date_in_the_future_gives_no_negative_age_rfc9111_4_2_3() -> None:
    assert initial_age(h(("Date", date(NOW + 500))), NOW, NOW) == 0


@pytest.mark.parametrize("age", ["-5", "abc", "1.5", ""])
def test_invalid_age_is_ignored_rfc9111_5_1(age: str) -> None:
    assert initial_age(h(("Age", age)), NOW - 1, NOW) == 1


def test_first_age_value_counts_rfc9111_5_1() -> None:
    assert initial_age(h(("Age", "10"), ("Age", "99")), NOW, NOW) == 10
    assert initial_age(h(("Age", "10, 99")), NOW, NOW) == 10


def test_huge_age_is_clamped_rfc9111_1_2_2() -> None:
    assert initial_age(h(("Age", "9" * 50)), NOW, NOW) == 2**31


def test_invalid_date_gives_no_apparent_age_rfc9110_6_6_1() -> None:
    assert initial_age(h(("Date", "yesterday")), NOW, NOW) == 0


# --- judge -----------------------------------------------------------------------------------


def test_fresh_entry_is_a_hit_with_remaining_ttl_rfc9111_4_2() -> None:
    verdict = judge(Freshness(60), 20, h())
    assert (verdict.reuse, verdict.age, verdict.ttl) == (Reuse.FRESH, 20, 40)


def test_entry_is_stale_when_age_equals_lifetime_rfc9111_4_2() -> None:
    assert judge(Freshness(60), 60, h()).reuse is Reuse.VALIDATE


def test_request_no_cache_forces_validation_rfc9111_5_2_1_4() -> None:
    verdict = judge(Freshness(60), 1, h(("Cache-Control", "no-cache")))
    assert (verdict.reuse, verdict.detail) == (Reuse.VALIDATE, "req-no-cache")


def test_pragma_no_cache_counts_without_cache_control_rfc9111_5_4() -> None:
    assert judge(Freshness(60), 1, h(("Pragma", "no-cache"))).detail == "req-no-cache"
    both = h(("Pragma", "no-cache"), ("Cache-Control", "max-age=600"))
    assert judge(Freshness(60), 1, both).reuse is Reuse.FRESH


def test_request_max_age_limits_the_age_rfc9111_5_2_1_1() -> None:
    req = h(("Cache-Control", "max-age=10"))
    assert judge(Freshness(60), 10, req).reuse is Reuse.FRESH
    verdict = judge(Freshness(60), 11, req)
    assert (verdict.reuse, verdict.detail) == (Reuse.VALIDATE, "req-max-age")


def test_request_max_age_zero_validates_any_aged_entry_rfc9111_5_2_1_1() -> None:
    assert judge(Freshness(60), 0.5, h(("Cache-Control", "max-age=0"))).detail == "req-max-age"


def test_request_min_fresh_needs_enough_ttl_left_rfc9111_5_2_1_3() -> None:
    req = h(("Cache-Control", "min-fresh=30"))
    assert judge(Freshness(60), 20, req).reuse is Reuse.FRESH
    verdict = judge(Freshness(60), 40, req)
    assert (verdict.reuse, verdict.detail) == (Reuse.VALIDATE, "req-min-fresh")


def test_request_max_stale_without_value_accepts_any_staleness_rfc9111_5_2_1_2() -> None:
    verdict = judge(Freshness(60), 10_000, h(("Cache-Control", "max-stale")))
    assert (verdict.reuse, verdict.detail, verdict.ttl) == (Reuse.FRESH, "max-stale", -9940)


def test_request_max_stale_with_value_bounds_staleness_rfc9111_5_2_1_2() -> None:
    req = h(("Cache-Control", "max-stale=30"))
    assert judge(Freshness(60), 90, req).reuse is Reuse.FRESH
    assert judge(Freshness(60), 91, req).reuse is Reuse.VALIDATE


def test_max_stale_cannot_override_must_revalidate_rfc9111_5_2_2_2() -> None:
    verdict = judge(Freshness(60, must_revalidate=True), 61, h(("Cache-Control", "max-stale")))
    assert (verdict.reuse, verdict.detail) == (Reuse.VALIDATE, "stale")


def test_response_no_cache_validates_even_when_fresh_rfc9111_5_2_2_4() -> None:
    verdict = judge(Freshness(60, no_cache=True), 1, h())
    assert (verdict.reuse, verdict.detail) == (Reuse.VALIDATE, "no-cache")


def test_stale_within_swr_window_is_served_while_revalidating_rfc5861_3() -> None:
    fresh = Freshness(60, swr=30)
    assert judge(fresh, 90, h()).reuse is Reuse.STALE_WHILE_REVALIDATE
    verdict = judge(fresh, 91, h())
    assert (verdict.reuse, verdict.detail) == (Reuse.VALIDATE, "stale")


def test_swr_does_not_apply_under_must_revalidate_rfc9111_4_2_4() -> None:
    assert judge(Freshness(60, swr=30, must_revalidate=True), 61, h()).reuse is Reuse.VALIDATE


def test_soft_stale_fresh_entry_uses_its_swr_window_rfc5861_3() -> None:
    verdict = judge(Freshness(60, swr=5), 10, h(), now_soft_stale=True)
    assert (verdict.reuse, verdict.ttl) == (Reuse.STALE_WHILE_REVALIDATE, 0)
    assert judge(Freshness(60), 10, h(), now_soft_stale=True).reuse is Reuse.VALIDATE


def test_soft_stale_grace_serves_while_revalidating_rfc5861_3() -> None:
    assert (
        judge(Freshness(60), 10, h(), True, soft_grace=30).reuse is Reuse.STALE_WHILE_REVALIDATE
    )
    assert judge(Freshness(60), 10, h(), True, soft_grace=0).reuse is Reuse.VALIDATE


def test_soft_stale_grace_is_refused_by_must_revalidate_and_no_cache_rfc9111_4_2_4() -> None:
    for fresh in (Freshness(60, must_revalidate=True), Freshness(60, no_cache=True)):
        assert judge(fresh, 10, h(), True, soft_grace=30).reuse is Reuse.VALIDATE


# --- usable_if_error -------------------------------------------------------------------------


def test_fresh_entry_is_usable_on_error_rfc5861_4() -> None:
    assert usable_if_error(Freshness(60), 10, h())


def test_no_cache_entry_is_never_served_without_the_origin_rfc9111_5_2_2_4() -> None:
    assert not usable_if_error(Freshness(60, sie=600, no_cache=True), 10, h())


def test_stale_if_error_window_rfc5861_4() -> None:
    assert usable_if_error(Freshness(60, sie=100), 160, h())
    assert not usable_if_error(Freshness(60, sie=100), 161, h())
    assert not usable_if_error(Freshness(60), 61, h())


def test_stale_if_error_never_under_must_revalidate_rfc9111_5_2_2_2() -> None:
    assert not usable_if_error(Freshness(60, sie=100, must_revalidate=True), 61, h())


def test_request_stale_if_error_widens_the_window_rfc5861_4() -> None:
    req = h(("Cache-Control", "stale-if-error=50"))
    assert usable_if_error(Freshness(60), 110, req)
    assert not usable_if_error(Freshness(60), 111, req)


def test_request_no_cache_still_allows_stale_on_error_rfc5861_4() -> None:
    assert usable_if_error(Freshness(60, sie=100), 100, h(("Cache-Control", "no-cache")))


# --- conditionals ----------------------------------------------------------------------------


def test_if_none_match_strong_match_rfc9110_13_1_2() -> None:
    assert not_modified(h(("If-None-Match", '"v1"')), "GET", 200, h(("ETag", '"v1"')))
    assert not not_modified(h(("If-None-Match", '"v2"')), "GET", 200, h(("ETag", '"v1"')))


def test_if_none_match_uses_weak_comparison_rfc9110_8_8_3_2() -> None:
    assert not_modified(h(("If-None-Match", 'W/"v1"')), "GET", 200, h(("ETag", '"v1"')))
    assert not_modified(h(("If-None-Match", '"v1"')), "HEAD", 200, h(("ETag", 'W/"v1"')))


def test_if_none_match_lists_and_lines_rfc9110_13_1_2() -> None:
    req = h(("If-None-Match", '"a", W/"b,c"'), ("If-None-Match", '"d"'))
    assert not_modified(req, "GET", 200, h(("ETag", '"b,c"')))
    assert not_modified(req, "GET", 200, h(("ETag", '"d"')))


def test_if_none_match_star_matches_any_stored_response_rfc9110_13_1_2() -> None:
    assert not_modified(h(("If-None-Match", "*")), "GET", 200, h())


def test_if_none_match_takes_precedence_over_if_modified_since_rfc9110_13_2_2() -> None:
    req = h(("If-None-Match", '"other"'), ("If-Modified-Since", date(NOW)))
    resp = h(("ETag", '"v1"'), ("Last-Modified", date(NOW - 100)))
    assert not not_modified(req, "GET", 200, resp)


def test_if_modified_since_against_last_modified_rfc9110_13_1_3() -> None:
    resp = h(("Last-Modified", date(NOW - 100)))
    assert not_modified(h(("If-Modified-Since", date(NOW - 100))), "GET", 200, resp)
    assert not not_modified(h(("If-Modified-Since", date(NOW - 101))), "GET", 200, resp)


def test_if_modified_since_falls_back_to_date_rfc9111_4_3_2() -> None:
    resp = h(("Date", date(NOW - 100)))
    assert not_modified(h(("If-Modified-Since", date(NOW - 50))), "GET", 200, resp)
    req = h(("If-Modified-Since", date(NOW - 50)))
    assert not_modified(req, "GET", 200, h(), response_time=NOW - 60)
    assert not not_modified(req, "GET", 200, h())


def test_invalid_if_modified_since_is_ignored_rfc9110_13_1_3() -> None:
    resp = h(("Last-Modified", date(NOW - 100)))
    assert not not_modified(h(("If-Modified-Since", "yesterday")), "GET", 200, resp)


def test_conditionals_only_for_get_head_and_2xx_rfc9110_13_2_1() -> None:
    req, resp = h(("If-None-Match", '"v1"')), h(("ETag", '"v1"'))
    assert not not_modified(req, "POST", 200, resp)
    assert not not_modified(req, "GET", 404, resp)


def test_validators_for_revalidation_rfc9111_4_3_1() -> None:
    modified = date(NOW - 100)
    assert validators(h(("ETag", '"v1"'), ("Last-Modified", modified))) == {
        "If-None-Match": '"v1"',
        "If-Modified-Since": modified,
    }
    assert validators(h(("ETag", 'W/"v1"'))) == {"If-None-Match": 'W/"v1"'}
    assert validators(h()) == {}


# --- 304 merge -------------------------------------------------------------------------------


def test_304_replaces_all_values_of_a_field_in_place_rfc9111_3_2() -> None:
    stored = (("Content-Type", "text/plain"), ("X-A", "1"), ("X-A", "2"), ("ETag", '"v1"'))
    new = h(("x-a", "3"), ("Date", "d"), ("Cache-Control", "max-age=9"))
    merged = merge_not_modified(stored, new)
    assert merged == (
        ("Content-Type", "text/plain"),
        ("x-a", "3"),
        ("ETag", '"v1"'),
        ("Date", "d"),
        ("Cache-Control", "max-age=9"),
    )


def test_304_never_updates_content_length_rfc9111_3_2() -> None:
    stored = (("Content-Length", "10"), ("Content-Encoding", "gzip"))
    new = h(("Content-Length", "0"), ("Content-Encoding", "br"), ("ETag", '"v2"'))
    assert merge_not_modified(stored, new) == (*stored, ("ETag", '"v2"'))


def test_304_hop_by_hop_and_connection_listed_fields_are_not_stored_rfc9111_3_1() -> None:
    new = h(("Connection", "close, X-Hop"), ("X-Hop", "1"), ("Keep-Alive", "5"), ("X-End", "2"))
    assert merge_not_modified((), new) == (("X-End", "2"),)


# --- Vary, invalidation ----------------------------------------------------------------------


def test_vary_names_lower_cased_deduped_sorted_rfc9111_4_1() -> None:
    resp = h(("Vary", "Accept-Encoding, accept"), ("Vary", "Accept-Language,, Accept"))
    assert vary_names(resp) == ("accept", "accept-encoding", "accept-language")
    assert vary_names(h()) == ()


def test_vary_star_anywhere_is_none_rfc9111_4_1() -> None:
    assert vary_names(h(("Vary", "Accept, *"))) is None


@pytest.mark.parametrize(
    ("method", "status", "expected"),
    [
        ("POST", 201, True),
        ("PUT", 204, True),
        ("DELETE", 302, True),
        ("PATCH", 200, True),
        ("POST", 404, False),
        ("POST", 500, False),
        ("GET", 200, False),
        ("HEAD", 200, False),
        ("OPTIONS", 200, False),
        ("TRACE", 200, False),
    ],
)
def test_unsafe_methods_with_non_error_status_invalidate_rfc9111_4_4(
    method: str, status: int, expected: bool
) -> None:
    assert invalidates(method, status) is expected


def test_location_and_content_location_resolved_against_the_request_rfc9111_4_4() -> None:
    resp = h(("Location", "/items/7"), ("Content-Location", "../other#frag"))
    assert invalidation_targets("https://ex.com/a/b", resp) == [
        "https://ex.com/items/7",
        "https://ex.com/other",
    ]


def test_only_same_origin_targets_are_invalidated_rfc9111_4_4() -> None:
    resp = h(
        ("Location", "https://evil.com/x"),
        ("Location", "http://ex.com/x"),
        ("Location", "https://ex.com:8443/x"),
        ("Content-Location", "https://EX.com:443/y"),
        ("Content-Location", "https://ex.com/a"),
    )
    assert invalidation_targets("https://ex.com/a", resp) == ["https://EX.com:443/y"]


# --- Cache-Status ----------------------------------------------------------------------------


def test_cache_status_miss_stored_rfc9211_2() -> None:
    assert (
        cache_status("edge", hit=False, fwd="uri-miss", fwd_status=200, ttl=30, stored=True)
        == "edge; fwd=uri-miss; fwd-status=200; ttl=30; stored"
    )


def test_cache_status_hit_rfc9211_2_1() -> None:
    assert cache_status("edge", hit=True, ttl=29.6) == "edge; hit; ttl=30"
    assert cache_status("edge", hit=True, ttl=29.4) == "edge; hit; ttl=29"


def test_cache_status_negative_ttl_and_collapsed_rfc9211_2_7() -> None:
    assert (
        cache_status("edge", hit=False, fwd="stale", ttl=-0.6, collapsed=True)
        == "edge; fwd=stale; ttl=-1; collapsed"
    )


def test_cache_status_parameter_order_rfc9211_2() -> None:
    status = cache_status(
        "edge", hit=True, fwd="stale", fwd_status=503, ttl=-5, stored=True, collapsed=True,
        detail="stale-if-error",
    )
    assert status == (
        "edge; hit; fwd=stale; fwd-status=503; ttl=-5; stored; collapsed; detail=stale-if-error"
    )


def test_cache_status_detail_not_a_token_is_an_escaped_string_rfc9211_2_8() -> None:
    status = cache_status("edge", hit=False, detail='origin said "no" \\ é')
    assert status == 'edge; detail="origin said \\"no\\" \\\\ ?"'


def test_cache_status_name_not_a_token_is_a_string_rfc9211_2() -> None:
    assert cache_status("my cache", hit=True) == '"my cache"; hit'


# --- client_no_cache: what a client's directives may make the cache do -----------------------


FORCING = ["no-cache", "max-age=0", "min-fresh=60", "no-store"]


@pytest.mark.parametrize("directive", FORCING)
def test_honor_keeps_every_request_directive_rfc9111_5_2_1(directive: str) -> None:
    req = h(("Cache-Control", f"{directive}, max-stale=5"))
    assert request_directives(req, "honor", validated_ago=0).keys() == {
        directive.split("=")[0], "max-stale"
    }


@pytest.mark.parametrize("directive", FORCING)
def test_ignore_drops_what_forces_the_origin_and_keeps_the_rest(directive: str) -> None:
    req = h(("Cache-Control", f"{directive}, only-if-cached, max-stale=5"))
    assert request_directives(req, "ignore").keys() == {"only-if-cached", "max-stale"}


def test_coalesce_obeys_forcing_directives_once_a_second_but_always_no_store() -> None:
    req = h(("Cache-Control", "no-cache, max-age=0, min-fresh=9, no-store"))
    assert request_directives(req, "coalesce", validated_ago=5.0).keys() == {
        "no-cache", "max-age", "min-fresh", "no-store"
    }
    assert request_directives(req, "coalesce", validated_ago=0.5).keys() == {"no-store"}
    pragma = h(("Pragma", "no-cache"))
    assert request_directives(pragma, "coalesce", validated_ago=0.5) == {}
    assert request_directives(pragma, "coalesce", validated_ago=1.5) == {"no-cache": None}


@given(
    st.sampled_from(["honor", "coalesce", "ignore"]),
    st.floats(min_value=0, max_value=1e6),
    st.lists(st.sampled_from([*FORCING, "max-stale", "only-if-cached", "x-y=1"]), max_size=5),
)
def test_a_policy_never_adds_a_directive_and_only_honor_keeps_all(
    mode: str, ago: float, directives: list[str]
) -> None:
    req = h(("Cache-Control", ", ".join(directives))) if directives else h()
    written = request_directives(req, "honor")
    seen = request_directives(req, mode, validated_ago=ago)
    assert seen.keys() <= written.keys()
    assert written.keys() - seen.keys() <= {"no-cache", "max-age", "min-fresh", "no-store"}


def test_judge_serves_a_just_validated_entry_to_no_cache_under_coalesce() -> None:
    fresh = Freshness(lifetime=60)
    req = h(("Cache-Control", "no-cache"))
    assert judge(fresh, 10, req, client_no_cache="coalesce", validated_ago=0.2).reuse is Reuse.FRESH
    assert judge(fresh, 10, req, client_no_cache="coalesce", validated_ago=2).reuse is (
        Reuse.VALIDATE
    )
    assert judge(fresh, 10, req, client_no_cache="ignore").reuse is Reuse.FRESH
