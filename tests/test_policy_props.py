"""Property tests of the policy: invariants for any header an origin or a client may send."""

from __future__ import annotations

import re
from email.utils import formatdate

from hishel._core import _headers as hishel_headers  # an independent reading of RFC 9111
from hishel._core import _spec as hishel_spec
from hishel._core import models as hishel_models
from hypothesis import given, settings
from hypothesis import strategies as st
from multidict import CIMultiDict

from gateway.cache_status import cache_status
from gateway.policy import (
    Freshness,
    Reuse,
    RouteRules,
    freshness,
    initial_age,
    judge,
    parse_cache_control,
    storable,
    usable_if_error,
)
from gateway.store import Entry
from gateway.validation import not_modified

NOW = 1_700_000_000.0
TCHARS = "!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"


props = settings(max_examples=150, deadline=None)  # per test: no global profile for other files

tokens = st.text(TCHARS, min_size=1, max_size=12)
header_text = st.text(st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=60)
deltas = st.integers(min_value=0, max_value=10**6)
times = st.floats(min_value=0, max_value=4e9, allow_nan=False)


def quote(value: str) -> str:
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def flip_case(text: str, mask: list[bool]) -> str:
    return "".join(c.upper() if up else c.lower() for c, up in zip(text, mask, strict=False))


# A well-formed directive: a token name, no value, a token value or any quoted string.
directive = st.tuples(
    tokens,
    st.one_of(st.none(), tokens, st.text(max_size=20).map(quote)),
).map(lambda pair: pair[0] if pair[1] is None else f"{pair[0]}={pair[1]}")

# Directives a request may carry, without max-stale (which allows serving stale on purpose).
request_directive = st.sampled_from(
    ["no-cache", "min-fresh=5", "max-age=30", "max-age=0", "stale-if-error=9", "only-if-cached"]
)


def request_cc(parts: list[str]) -> CIMultiDict[str]:
    return CIMultiDict([("Cache-Control", ", ".join(parts))] if parts else [])


@props
@given(st.lists(st.text(), max_size=4))
def test_parse_cache_control_never_raises_rfc9111_5_2(values: list[str]) -> None:
    parsed = parse_cache_control(values)
    assert all(name == name.lower() and re.fullmatch(r"[!#$%&'*+\-.^_`|~0-9a-z]+", name)
               for name in parsed)


@props
@given(st.dictionaries(tokens.map(str.lower), st.one_of(st.none(), tokens, st.text(max_size=20)),
                       max_size=6))
def test_well_formed_directives_round_trip_rfc9111_5_2(directives: dict[str, str | None]) -> None:
    text = ", ".join(name if v is None else f"{name}={quote(v)}" for name, v in directives.items())
    assert parse_cache_control([text]) == directives


@props
@given(
    age=st.one_of(st.none(), deltas.map(str), header_text),
    date_offset=st.one_of(st.none(), st.floats(-1e6, 1e6, allow_nan=False)),
    delay=st.floats(0, 100, allow_nan=False),
    later=st.lists(st.floats(0, 1e6, allow_nan=False), min_size=2, max_size=5),
)
def test_age_is_monotonic_and_at_least_the_age_header_rfc9111_4_2_3(
    age: str | None, date_offset: float | None, delay: float, later: list[float]
) -> None:
    headers: CIMultiDict[str] = CIMultiDict()
    if age is not None:
        headers["Age"] = age
    if date_offset is not None:
        headers["Date"] = formatdate(NOW + date_offset, usegmt=True)
    entry = Entry(
        key="k", tenant="t", url="http://h/", status=200, headers=(), body=b"",
        response_time=NOW, initial_age=initial_age(headers, NOW - delay, NOW),
        freshness=freshness(200, headers, NOW, RouteRules()),
    )
    ages = [entry.age(NOW + offset) for offset in sorted(later)]
    assert ages == sorted(ages)
    if age is not None and age.isdigit():
        assert ages[0] >= int(age)


@props
@given(age=st.one_of(deltas.map(str), header_text), request_time=times, response_time=times,
       date=st.one_of(st.none(), header_text, times.map(lambda t: formatdate(t, usegmt=True))))
def test_initial_age_is_never_below_the_age_header_rfc9111_4_2_3(
    age: str, request_time: float, response_time: float, date: str | None
) -> None:
    headers = CIMultiDict([("Age", age)] + ([("Date", date)] if date is not None else []))
    value = initial_age(headers, request_time, response_time)
    assert value >= 0
    if age.isdigit():
        assert value >= min(int(age), 2**31)


freshnesses = st.builds(
    Freshness,
    lifetime=st.floats(0, 1e6, allow_nan=False),
    swr=st.floats(0, 1e4, allow_nan=False),
    sie=st.floats(0, 1e4, allow_nan=False),
    must_revalidate=st.booleans(),
    no_cache=st.booleans(),
)


@props
@given(fresh=freshnesses, age=st.floats(0, 2e6, allow_nan=False),
       parts=st.lists(request_directive, max_size=3), soft=st.booleans(),
       grace=st.floats(0, 100, allow_nan=False))
def test_never_fresh_beyond_the_lifetime_without_max_stale_rfc9111_4_2(
    fresh: Freshness, age: float, parts: list[str], soft: bool, grace: float
) -> None:
    verdict = judge(fresh, age, request_cc(parts), soft, soft_grace=grace)
    if verdict.reuse is Reuse.FRESH:
        assert age < fresh.lifetime and not soft and not fresh.no_cache


@props
@given(fresh=freshnesses, staleness=st.floats(0, 2e6, allow_nan=False),
       parts=st.lists(st.one_of(request_directive, st.just("max-stale"), st.just("max-stale=99"),
                                st.just("stale-if-error=99999")), max_size=3),
       soft=st.booleans(), grace=st.floats(0, 100, allow_nan=False))
def test_stale_must_revalidate_entry_is_never_served_stale_rfc9111_5_2_2_2(
    fresh: Freshness, staleness: float, parts: list[str], soft: bool, grace: float
) -> None:
    fresh = Freshness(fresh.lifetime, fresh.swr, fresh.sie, must_revalidate=True)
    age = fresh.lifetime + staleness
    req = request_cc(parts)
    assert judge(fresh, age, req, soft, soft_grace=grace).reuse is Reuse.VALIDATE
    assert not usable_if_error(fresh, age, req)


opaque = st.text(st.characters(min_codepoint=0x21, max_codepoint=0x7E, exclude_characters='"'),
                 max_size=20)
etags = st.tuples(st.booleans(), opaque).map(lambda t: ("W/" if t[0] else "") + quote(t[1]))


@props
@given(etag=etags, status=st.integers(200, 299), method=st.sampled_from(["GET", "get", "HEAD"]),
       ims=st.one_of(st.none(), header_text))
def test_if_none_match_equal_to_the_etag_is_not_modified_rfc9110_13_1_2(
    etag: str, status: int, method: str, ims: str | None
) -> None:
    req = CIMultiDict([("If-None-Match", etag)] + ([("If-Modified-Since", ims)] if ims else []))
    assert not_modified(req, method, status, CIMultiDict([("ETag", etag)]))


harmless = st.sampled_from(
    ["max-age=60", "s-maxage=120", "public", "must-revalidate", "stale-while-revalidate=30",
     'no-cache="Set-Cookie"', "immutable", 'x-ext="a, private=1"']
)
forbidden = st.sampled_from(["private", "no-store", 'private=""', 'no-store="x"'])


@props
@given(
    word=forbidden,
    mask=st.lists(st.booleans(), min_size=12, max_size=12),
    before=st.lists(st.one_of(harmless, directive), max_size=3),
    after=st.lists(st.one_of(harmless, directive), max_size=3),
    split_lines=st.booleans(),
    padding=st.sampled_from(["", " ", "  ", "\t"]),
    where=st.sampled_from(["cache-control", "cache-control+surrogate"]),
    authorization=st.booleans(),
)
def test_private_or_no_store_is_never_stored_rfc9111_5_2_2_5_and_5_2_2_7(
    word: str, mask: list[bool], before: list[str], after: list[str], split_lines: bool,
    padding: str, where: str, authorization: bool,
) -> None:
    name, _, value = word.partition("=")
    spelled = padding + flip_case(name, mask) + (f"={value}" if value else "") + padding
    parts = [*before, spelled, *after]
    lines = [", ".join(parts[:len(before)]), ", ".join(parts[len(before):])] if split_lines else [
        ", ".join(parts)
    ]
    resp = CIMultiDict([("Cache-Control", line) for line in lines] + [("ETag", '"v"')])
    if where == "cache-control+surrogate":
        resp["Surrogate-Control"] = "max-age=600"
    req = CIMultiDict([("Authorization", "Basic x")] if authorization else [])
    assert storable("GET", 200, req, resp, RouteRules()) in ("private", "no-store")


# A valid sf-dictionary member (RFC 8941 3.2) that does not itself restrict storing.
sf_member = st.one_of(
    harmless,
    st.tuples(
        st.from_regex(r"[a-z][a-z0-9_\-.]{0,10}", fullmatch=True).filter(
            lambda k: k not in ("private", "no-store", "no-cache", "public", "s-maxage", "max-age")
        ),
        st.one_of(st.none(), deltas.map(str), st.text(
            st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=10).map(quote)),
    ).map(lambda pair: pair[0] if pair[1] is None else f"{pair[0]}={pair[1]}"),
)


@props
@given(word=forbidden, before=st.lists(sf_member, max_size=3),
       after=st.lists(sf_member, max_size=3), split_lines=st.booleans())
def test_private_or_no_store_in_a_valid_cdn_cache_control_is_never_stored_rfc9213_2_1(
    word: str, before: list[str], after: list[str], split_lines: bool
) -> None:
    parts = [*before, word, *after]
    lines = [", ".join(parts[:len(before)]), ", ".join(parts[len(before):])] if split_lines else [
        ", ".join(parts)
    ]
    resp = CIMultiDict([("CDN-Cache-Control", line) for line in lines if line])
    resp.extend([("Cache-Control", "public, max-age=600"), ("ETag", '"v"')])
    assert storable("GET", 200, CIMultiDict(), resp, RouteRules()) in ("private", "no-store")


SF_TOKEN = r"[A-Za-z*][!#$%&'*+\-.^_`|~0-9A-Za-z:/]*"
SF_STRING = r'"(?:[\x20\x21\x23-\x5b\x5d-\x7e]|\\["\\])*"'
SF_INTEGER = r"-?[0-9]{1,15}"
SF_KEY = r"[a-z*][a-z0-9_\-.*]*"
SF_MEMBER = re.compile(
    rf"(?:{SF_TOKEN}|{SF_STRING})(?:; ?{SF_KEY}(?:=(?:{SF_INTEGER}|{SF_TOKEN}|{SF_STRING}))?)*"
)


@props
@given(
    name=st.text(max_size=20),
    hit=st.booleans(),
    fwd=st.one_of(st.none(), st.sampled_from(["uri-miss", "stale", "miss", "request", "bypass",
                                                "vary-miss", "method"]), st.text(max_size=10)),
    fwd_status=st.one_of(st.none(), st.integers(100, 599)),
    stored=st.booleans(),
    ttl=st.one_of(st.none(), st.floats()),
    collapsed=st.booleans(),
    detail=st.one_of(st.none(), st.text(max_size=30)),
)
def test_cache_status_is_always_an_sf_list_member_rfc9211_2(
    name: str, hit: bool, fwd: str | None, fwd_status: int | None, stored: bool,
    ttl: float | None, collapsed: bool, detail: str | None,
) -> None:
    member = cache_status(name, hit=hit, fwd=fwd, fwd_status=fwd_status, stored=stored, ttl=ttl,
                          collapsed=collapsed, detail=detail)
    assert SF_MEMBER.fullmatch(member), member


@props
@given(
    max_age=st.one_of(st.none(), deltas),
    s_maxage=st.one_of(st.none(), deltas),
    expires_offset=st.one_of(st.none(), st.integers(-10**6, 10**6)),
)
def test_lifetime_agrees_with_hishel_for_plain_responses_rfc9111_4_2_1(
    max_age: int | None, s_maxage: int | None, expires_offset: int | None
) -> None:
    """Differential check against an independent implementation; skipped without hishel."""
    cc = [f"max-age={max_age}"] if max_age is not None else []
    cc += [f"s-maxage={s_maxage}"] if s_maxage is not None else []
    headers = {"date": formatdate(NOW, usegmt=True)}
    if cc:
        headers["cache-control"] = ", ".join(cc)
    if expires_offset is not None:
        headers["expires"] = formatdate(NOW + expires_offset, usegmt=True)
    response = hishel_models.Response(200, hishel_headers.Headers(headers))
    theirs = hishel_spec.get_freshness_lifetime(response, is_cache_shared=True)
    ours = freshness(200, CIMultiDict(headers), NOW, RouteRules()).lifetime
    assert ours == max(0, theirs or 0)
