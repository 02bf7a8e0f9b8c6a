"""Byte ranges from a complete stored response (RFC 9110 14), as pure functions."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.ranges import UNSATISFIABLE, ByteRange, if_range_allows, requested_range


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("bytes=0-1", ByteRange(0, 1)),
        ("bytes=1-", ByteRange(1, 9)),
        ("bytes=-1", ByteRange(9, 9)),
        ("bytes=-50", ByteRange(0, 9)),
        ("bytes=5-500", ByteRange(5, 9)),
        ("BYTES = 2 - 3", ByteRange(2, 3)),
    ],
)
def test_one_satisfiable_range_is_served_clipped_to_the_length_rfc9110_14_1_2(
    value: str, expected: ByteRange
) -> None:
    assert requested_range(value, 10) == expected


@pytest.mark.parametrize("value", ["bytes=10-", "bytes=10-20", "bytes=-0"])
def test_a_range_past_the_end_is_unsatisfiable_rfc9110_14_1_2(value: str) -> None:
    assert requested_range(value, 10) is UNSATISFIABLE


@pytest.mark.parametrize(
    "value", [None, "items=0-1", "bytes=3-1", "bytes=a-b", "bytes=", "bytes=-", "0-1",
              "bytes=0-1, 4-5"]
)
def test_other_units_bad_syntax_and_several_ranges_get_the_whole_response_rfc9110_14_2(
    value: str | None,
) -> None:
    assert requested_range(value, 10) is None


def test_if_range_needs_a_strong_etag_match_or_the_exact_last_modified_rfc9110_13_1_5() -> None:
    lm = "Sun, 06 Nov 1994 08:49:37 GMT"
    assert if_range_allows(None, None, None)
    assert if_range_allows('"a"', '"a"', None)
    assert not if_range_allows('"a"', '"b"', None)
    assert not if_range_allows('W/"a"', 'W/"a"', None)  # weak tags never match for ranges
    assert not if_range_allows('"a"', 'W/"a"', None)
    assert if_range_allows(lm, None, lm)
    assert not if_range_allows("Sun, 06 Nov 1994 08:49:38 GMT", None, lm)
    assert not if_range_allows("garbage", '"a"', lm)


@settings(max_examples=300, deadline=None)
@given(length=st.integers(0, 10_000), first=st.one_of(st.none(), st.integers(0, 20_000)),
       last=st.one_of(st.none(), st.integers(0, 20_000)))
def test_a_served_range_always_lies_inside_the_body_rfc9110_14_1_2(
    length: int, first: int | None, last: int | None
) -> None:
    value = f"bytes={'' if first is None else first}-{'' if last is None else last}"
    got = requested_range(value, length)
    if isinstance(got, ByteRange):
        assert 0 <= got.first <= got.last < length
        if first is not None:
            assert got.first == first
