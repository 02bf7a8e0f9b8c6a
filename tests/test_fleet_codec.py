"""Entries as msgpack for the Redis tier: what is written reads back the same, and anything
else (another version, a wrong type, garbage) reads back as nothing, never as an error."""

from __future__ import annotations

import msgpack
import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway.fleet import codec
from gateway.policy import Freshness
from gateway.store import Entry

TEXT = st.text(max_size=20)
NUMBER = st.floats(0, 1e10, allow_nan=False)
PAIRS = st.lists(st.tuples(TEXT, TEXT), max_size=4).map(tuple)
ENTRIES = st.builds(
    Entry,
    key=TEXT, tenant=TEXT, url=TEXT, status=st.integers(100, 599), headers=PAIRS,
    body=st.binary(max_size=64), response_time=NUMBER, initial_age=NUMBER,
    freshness=st.builds(Freshness, NUMBER, NUMBER, NUMBER, st.booleans(), st.booleans(),
                        st.booleans()),
    etag=st.none() | TEXT, last_modified=st.none() | TEXT,
    vary=st.lists(TEXT, max_size=3).map(tuple), tags=st.lists(TEXT, max_size=3).map(tuple),
    soft_generation=st.integers(0, 10**6), stored_at=NUMBER, visible=PAIRS,
)


@given(ENTRIES)
def test_an_entry_reads_back_as_it_was_written(entry: Entry) -> None:
    assert codec.decode(codec.encode(entry)) == entry


def _fields(entry: Entry) -> list[object]:
    unpacked: list[object] = msgpack.unpackb(codec.encode(entry), raw=False)
    return unpacked


SAMPLE = Entry(key="t|g|GET|http://a/x", tenant="t", url="http://a/x", status=200,
               headers=(("a", "b"),), body=b"x", response_time=1.0, initial_age=0.0,
               freshness=Freshness(60))


@pytest.mark.parametrize(
    ("index", "value"),
    [
        (0, 2),  # another format version
        (1, 7),  # key not text
        (4, "200"),  # status not a number
        (5, ["odd"]),  # headers not pairs
        (6, "text"),  # body not bytes
        (7, "x"),  # response time not a number
        (9, [60, 0, 0]),  # freshness cut short
        (9, [60, 0, 0, "no", False, False]),  # a flag not a boolean
        (12, [1]),  # Vary names not text
        (14, True),  # soft generation a boolean
    ],
)
def test_a_field_of_the_wrong_shape_reads_back_as_nothing(index: int, value: object) -> None:
    fields = _fields(SAMPLE)
    fields[index] = value
    assert codec.decode(msgpack.packb(fields, use_bin_type=True)) is None


@pytest.mark.parametrize("raw", [b"", b"\xc1", msgpack.packb({"a": 1}), msgpack.packb([1] * 17)])
def test_bytes_that_are_no_entry_read_back_as_nothing(raw: bytes) -> None:
    assert codec.decode(raw) is None
