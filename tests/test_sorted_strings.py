"""SortedStrings (the memory tier's sorted URLs) against a sorted list, through many chunks."""

from __future__ import annotations

import gc

from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.store import sorted_strings
from gateway.store.sorted_strings import SortedStrings

WORDS = st.text(alphabet="abc/", min_size=0, max_size=6)
OPS = st.lists(st.tuples(st.booleans(), WORDS), max_size=400)


@settings(max_examples=200)
@given(ops=OPS, probe=WORDS, inclusive=st.booleans())
def test_behaves_as_a_sorted_set(ops: list[tuple[bool, str]], probe: str, inclusive: bool) -> None:
    chunk = sorted_strings.CHUNK
    sorted_strings.CHUNK = 4  # many chunks: splits and merges on every few changes
    try:
        held = SortedStrings()
        model: set[str] = set()
        for add, word in ops:
            if add:
                held.add(word)
                model.add(word)
            else:
                held.discard(word)
                model.discard(word)
            assert len(held) == len(model)
        assert list(held) == sorted(model)
        assert all(word in held for word in model) and (probe in held) == (probe in model)
        expected = [w for w in sorted(model) if w > probe or (inclusive and w == probe)]
        assert list(held.irange(probe, inclusive=inclusive)) == expected
        assert all(0 < len(c) <= 8 for c in held._chunks)
        assert held._maxes == [c[-1] for c in held._chunks]
    finally:
        sorted_strings.CHUNK = chunk


def test_its_chunks_are_not_walked_by_the_collector() -> None:
    held = SortedStrings()
    for i in range(5000):
        held.add(f"http://h/{i}")
    gc.collect()
    assert not any(gc.is_tracked(chunk) for chunk in held._chunks)
