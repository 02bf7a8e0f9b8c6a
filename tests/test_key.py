"""Cache key construction: URL normalisation, primary and Vary keys, encoding buckets."""

from __future__ import annotations

import random

import pytest
from hypothesis import given
from hypothesis import strategies as st
from multidict import CIMultiDict

from gateway.key import (
    MAX_READABLE_SECONDARY,
    accept_encoding_bucket,
    escape_part,
    normalize_url,
    primary_key,
    secondary_key,
)


def split_url(url: str) -> tuple[str, str, str]:
    """Inverse of the output format, to feed a normalised URL back in."""
    scheme, _, rest = url.partition("://")
    slash = rest.find("/")
    return scheme, rest[:slash], rest[slash:]


# -- normalize_url --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("scheme", "host", "target", "expected"),
    [
        ("HTTP", "Example.COM", "/a", "http://example.com/a"),
        ("http", "example.com:80", "/", "http://example.com/"),
        ("https", "example.com:443", "/", "https://example.com/"),
        ("http", "example.com:443", "/", "http://example.com:443/"),
        ("https", "example.com:80", "/", "https://example.com:80/"),
        ("http", "example.com:8080", "/", "http://example.com:8080/"),
        ("http", "example.com:0080", "/", "http://example.com/"),
        ("http", "example.com:", "/", "http://example.com/"),
        ("http", "example.com.", "/", "http://example.com/"),
        ("http", "example.com.:8080", "/", "http://example.com:8080/"),
        ("http", "[::1]:8080", "/", "http://[::1]:8080/"),
        ("https", "[2001:DB8::1]:443", "/", "https://[2001:db8::1]/"),
        ("http", "[::1]", "/", "http://[::1]/"),
        ("http", "::1", "/", "http://[::1]/"),
        ("http", "h", "", "http://h/"),
        ("http", "h", "?", "http://h/"),
        ("http", "h", "?&&", "http://h/"),
        ("http", "h", "a/b", "http://h/a/b"),
        ("http", "h", "/a#frag", "http://h/a"),
        ("http", "h", "/a?b=1#frag?c=2", "http://h/a?b=1"),
    ],
)
def test_normalize_url_authority_and_shape(
    scheme: str, host: str, target: str, expected: str
) -> None:
    assert normalize_url(scheme, host, target) == expected


@pytest.mark.parametrize(
    ("target", "expected"),
    [
        ("/%7euser/%41%62%2d%5F%2E", "/~user/Ab-_."),
        ("/a%2fb", "/a%2Fb"),
        ("/a%2Fb", "/a%2Fb"),
        ("/caf%c3%a9", "/caf%C3%A9"),
        ("/a%20b", "/a%20b"),
        ("/%zz/%", "/%zz/%"),
        ("/%4", "/%4"),
        ("/a/./b/../c", "/a/c"),
        ("/a/b/..", "/a/"),
        ("/a/.", "/a/"),
        ("/../../x", "/x"),
        ("/a/%2E%2E/b", "/b"),
        ("/a//b", "/a//b"),
        ("/a/...", "/a/..."),
    ],
)
def test_normalize_url_path(target: str, expected: str) -> None:
    assert normalize_url("http", "h", target) == "http://h" + expected


def test_normalize_url_stray_percent_is_not_completed_by_decoding() -> None:
    # `%34` is "4": decoding it after a stray `%4` would create `%44` ("D") on a second pass.
    once = normalize_url("http", "h", "/%4%341")
    assert once == "http://h/%4%341"
    assert normalize_url(*split_url(once)) == once


def test_query_sorted_stably_by_name() -> None:
    url = normalize_url("http", "h", "/p?b=2&a=2&a=1&c&a=0")
    assert url == "http://h/p?a=2&a=1&a=0&b=2&c"


def test_query_plus_and_space_kept_but_hex_case_normalised() -> None:
    assert (
        normalize_url("http", "h", "/?q=a+b&r=a%20b&s=%2a%2b") == "http://h/?q=a+b&r=a%20b&s=%2A%2B"
    )


def test_query_unreserved_decoded() -> None:
    assert normalize_url("http", "h", "/?%61=%7e") == normalize_url("http", "h", "/?a=~")


def test_ignore_query_globs() -> None:
    target = "/p?utm_source=x&id=1&fbclid=y&utm%5Fmedium=z&UTM_X=1"
    assert normalize_url("http", "h", target, ["utm_*", "fbclid"]) == "http://h/p?UTM_X=1&id=1"
    assert normalize_url("http", "h", "/p?utm_a=1", ["utm_*"]) == "http://h/p"
    assert normalize_url("http", "h", "/p?a=1&b=2", ["?"]) == "http://h/p"


hosts = st.one_of(
    st.from_regex(r"[A-Za-z0-9.-]{0,12}(:[0-9]{0,5})?", fullmatch=True),
    st.from_regex(r"\[[0-9A-Fa-f:]{2,10}\](:[0-9]{1,5})?", fullmatch=True),
)
pct = st.from_regex(r"%[0-9A-Fa-fzZ]{0,2}", fullmatch=True)
path_chars = st.one_of(st.sampled_from(list("abAB/.-_~+=&?#;:@!$'()*,%")), pct)
targets = st.lists(path_chars, max_size=30).map("".join)


@given(st.sampled_from(["http", "HTTPS", "ws", "Http"]), hosts, targets)
def test_normalize_url_idempotent(scheme: str, host: str, target: str) -> None:
    once = normalize_url(scheme, host, target)
    assert normalize_url(*split_url(once)) == once


@given(
    st.sampled_from(["http", "https"]), hosts, targets, st.lists(st.sampled_from(["a*", "?", "b"]))
)
def test_normalize_url_idempotent_with_ignores(
    scheme: str, host: str, target: str, ignore: list[str]
) -> None:
    once = normalize_url(scheme, host, target, ignore)
    assert normalize_url(*split_url(once), ignore) == once


params = st.lists(
    st.tuples(
        st.sampled_from(["a", "b", "c", "utm_x"]), st.from_regex(r"[a-z0-9]{0,3}", fullmatch=True)
    ),
    max_size=8,
    unique_by=lambda p: p[0],
)


@given(params, st.randoms())
def test_query_order_invariance(pairs: list[tuple[str, str]], rnd: random.Random) -> None:
    shuffled = list(pairs)
    rnd.shuffle(shuffled)
    q1 = "&".join(f"{k}={v}" for k, v in pairs)
    q2 = "&".join(f"{k}={v}" for k, v in shuffled)
    assert normalize_url("http", "h", "/?" + q1) == normalize_url("http", "h", "/?" + q2)
    assert normalize_url("http", "h", "/?" + q1, ["utm_*"]) == normalize_url(
        "http", "h", "/?" + q2, ["utm_*"]
    )


@given(st.text(), st.text(), st.text(), st.lists(st.text(max_size=5), max_size=3))
def test_normalize_url_never_raises(scheme: str, host: str, target: str, ignore: list[str]) -> None:
    url = normalize_url(scheme, host, target, ignore)
    assert url.startswith(scheme.strip().lower() + "://")


# -- primary_key ----------------------------------------------------------------------------


def test_primary_key_format_and_head_is_get() -> None:
    url = "http://h/a"
    assert primary_key("acme", "3", "get", url) == "acme|3|GET|http://h/a"
    assert primary_key("acme", "3", "HEAD", url) == primary_key("acme", "3", "GET", url)
    assert primary_key("acme", "3", "head", url) == primary_key("acme", "3", "get", url)
    assert primary_key("acme", "3", "POST", url) != primary_key("acme", "3", "GET", url)


def test_primary_key_escapes_separator() -> None:
    assert primary_key("a|b", "1", "GET", "u") == "a%7Cb|1|GET|u"
    assert primary_key("a|b", "1", "GET", "u") != primary_key("a%7Cb", "1", "GET", "u")
    assert primary_key("a", "1|x", "GET", "u").count("|") == 3
    assert escape_part("100%|") == "100%25%7C"


@given(st.text(), st.text(), st.text(), st.text())
def test_primary_key_components_never_forge_separators(t: str, g: str, m: str, u: str) -> None:
    key = primary_key(t, g, m, u)
    tenant, generation, _method, url = key.split("|", 3)
    assert (tenant, generation) == (escape_part(t), escape_part(g))
    assert url == u


# -- secondary_key --------------------------------------------------------------------------


def test_secondary_key_absent_differs_from_empty() -> None:
    absent = secondary_key(["x-foo"], CIMultiDict())
    empty = secondary_key(["x-foo"], CIMultiDict([("X-Foo", "")]))
    assert absent != empty
    assert absent == "x-foo"
    assert empty == "x-foo="


def test_secondary_key_normalises_values() -> None:
    h1 = CIMultiDict([("X-Foo", "a   b"), ("x-foo", "c"), ("Accept-Language", "EN-US,  fr")])
    h2 = CIMultiDict([("x-foo", "a b, c"), ("accept-language", "en-us, fr")])
    names = ["X-Foo", "Accept-Language"]
    assert secondary_key(names, h1) == secondary_key(names, h2)
    assert secondary_key(names, h1) == "x-foo=a b, c&accept-language=en-us, fr"


def test_secondary_key_case_sensitive_values_kept() -> None:
    assert secondary_key(["x-foo"], {"X-Foo": "A"}) != secondary_key(["x-foo"], {"x-foo": "a"})


def test_secondary_key_order_follows_names() -> None:
    h = CIMultiDict([("a", "1"), ("b", "2")])
    assert secondary_key(["a", "b"], h) == "a=1&b=2"
    assert secondary_key(["b", "a"], h) == "b=2&a=1"
    assert secondary_key(["a", "A", "b"], h) == "a=1&b=2"
    assert secondary_key([], h) == ""


def test_secondary_key_escapes_separators() -> None:
    forged = secondary_key(["a"], {"a": "1&b=2"})
    honest = secondary_key(["a", "b"], {"a": "1", "b": "2"})
    assert forged != honest
    assert forged == "a=1%26b%3D2"


def test_secondary_key_accept_encoding_bucketed() -> None:
    names = ["accept-encoding"]
    gz1 = secondary_key(names, {"Accept-Encoding": "gzip, deflate"})
    gz2 = secondary_key(names, {"accept-encoding": "deflate;q=0.5, x-gzip"})
    assert gz1 == gz2 == "accept-encoding=gzip"
    assert secondary_key(names, {}) == "accept-encoding=identity"


def test_secondary_key_bounded_length() -> None:
    long_value = "x" * (MAX_READABLE_SECONDARY + 1)
    k1 = secondary_key(["cookie"], {"cookie": long_value})
    k2 = secondary_key(["cookie"], {"cookie": long_value + "y"})
    assert k1.startswith("#") and len(k1) == 33
    assert k1 != k2
    assert secondary_key(["cookie"], {"cookie": long_value}) == k1


@given(
    st.lists(st.sampled_from(["a", "b", "accept-encoding", "x&y", "#"]), max_size=4),
    st.dictionaries(st.sampled_from(["a", "b", "accept-encoding", "x&y", "#"]), st.text()),
)
def test_secondary_key_never_raises_and_bounded(names: list[str], headers: dict[str, str]) -> None:
    key = secondary_key(names, headers)
    assert len(key) <= MAX_READABLE_SECONDARY + 1 or (key.startswith("#") and len(key) == 33)


# -- accept_encoding_bucket -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "bucket"),
    [
        (None, "identity"),
        ("", "identity"),
        ("identity", "identity"),
        ("gzip", "gzip"),
        ("x-gzip", "gzip"),
        ("GZIP", "gzip"),
        ("gzip, deflate, br", "br"),
        ("gzip, deflate, br, zstd", "br"),
        ("gzip, zstd", "zstd"),
        ("deflate", "deflate"),
        ("br;q=0, gzip", "gzip"),
        ("br; q=0.0, gzip;q=0", "identity"),
        ("br;q=0.001", "br"),
        ("*", "br"),
        ("*;q=0", "identity"),
        ("*, br;q=0", "zstd"),
        ("gzip;q=0, *", "br"),
        ("*;q=0, deflate", "deflate"),
        ("gzip;q=abc", "identity"),
        ("gzip;q=2", "identity"),
        ("compress, ,;;", "identity"),
        (" br ; q=1 ", "br"),
    ],
)
def test_accept_encoding_bucket(value: str | None, bucket: str) -> None:
    assert accept_encoding_bucket(value) == bucket


@given(st.text())
def test_accept_encoding_bucket_never_raises(value: str) -> None:
    assert accept_encoding_bucket(value) in {"br", "zstd", "gzip", "deflate", "identity"}
