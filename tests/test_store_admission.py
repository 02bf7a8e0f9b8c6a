"""W-TinyLFU on its own: the frequency sketch and one byte-bounded space, fed keys and sizes."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from gateway.store.admission import FrequencySketch, TinyLfu


def test_the_sketch_counts_and_saturates_at_fifteen() -> None:
    sketch = FrequencySketch(1024)
    for _ in range(3):
        sketch.increment("a")
    assert sketch.frequency("a") == 3
    assert sketch.frequency("never") == 0
    for _ in range(40):
        sketch.increment("b")
    assert sketch.frequency("b") == 15


def test_the_sketch_halves_its_counts_after_its_sample() -> None:
    sketch = FrequencySketch(4096, sample=100)
    for _ in range(12):
        sketch.increment("old")
    assert sketch.frequency("old") == 12
    for i in range(88):
        sketch.increment(f"other{i}")
    assert sketch.frequency("old") == 6  # halved: old fame fades


def test_a_newcomer_enters_while_there_is_room() -> None:
    space = TinyLfu(10_000)
    assert space.add("a", 3000) == []
    assert space.add("b", 3000) == []
    assert "a" in space and "b" in space and space.bytes == 6000


def test_when_full_only_a_more_popular_newcomer_gets_in() -> None:
    space = TinyLfu(3100)
    for key in "abc":
        space.add(key, 1000)
    assert space.add("d", 1000) == ["d"]  # asked for as often as the others: nobody moves
    for _ in range(2):
        space.record("e")
    assert space.add("e", 1000) == ["a"]  # more popular than the least recent, a
    assert "e" in space and "a" not in space


def test_a_hit_in_probation_promotes_and_protected_overflow_is_demoted() -> None:
    space = TinyLfu(10_205)  # window 102, main 10 103: protected holds at most 8 082
    for i in range(10):
        space.add(f"k{i}", 1000)
    for i in range(9):
        space.touch(f"k{i}")
    assert len(space.protected) == 8 and len(space.probation) == 2
    assert next(iter(space.probation)) == "k9"  # demoted ones go to the recent end


def test_a_smaller_capacity_takes_effect_at_the_next_add() -> None:
    space = TinyLfu(10_000)
    for i in range(8):
        space.add(f"k{i}", 1000)
    space.capacity = 3000
    dropped = space.add("new", 10)
    assert space.bytes <= 3000 and len(dropped) >= 5
    assert not space.check()


@given(
    st.integers(1000, 50_000),
    st.lists(
        st.tuples(
            st.sampled_from(["add", "touch", "record", "remove"]),
            st.integers(0, 30),
            st.integers(1, 4000),
        ),
        max_size=200,
    ),
)
def test_bounds_and_bookkeeping_hold_under_any_sequence(
    capacity: int, steps: list[tuple[str, int, int]]
) -> None:
    space = TinyLfu(capacity)
    held: dict[str, int] = {}
    for op, n, size in steps:
        key = f"k{n}"
        if op == "add" and key not in space:
            held[key] = size
            for gone in space.add(key, size):
                del held[gone]
        elif op == "touch" and key in space:
            space.touch(key)
        elif op == "record":
            space.record(key)
        elif op == "remove" and key in space:
            space.remove(key)
            del held[key]
        assert space.bytes <= max(capacity, 0) or not held
        assert space.bytes == sum(held.values()) and set(held) == {
            *space.window, *space.probation, *space.protected
        }
        assert not space.check()
