"""What an entry really costs in memory, and how the memory tier keeps that small (issue 12).

A byte bound is only a bound if each entry is charged what the process holds for it. A small
entry's Python objects (the entry, its strings, tuples and floats) and its places in the memory
tier's indexes cost more than its body: charged as a constant, a tier of small objects held
~4.8 times its bound. So `entry_bytes` adds up `sys.getsizeof` of the objects an entry owns,
which is what `tracemalloc` sees allocated for them (checked by tests/test_store_accounting.py),
and `INDEX_BYTES` and friends are what the memory tier's indexes hold per entry, measured.

Three things make entries smaller and cheaper for the garbage collector (`compact`):

- what many entries hold alike is held once: header names, the pairs of fields whose values
  repeat (Content-Type, Cache-Control...), the Freshness, the Vary names. Shared values are
  not charged to the entries (they are few, and their tables are bounded: `SHARE_LIMIT`);
- the pairs of `visible` are the very pairs of `headers` (it is a subset of them), not copies;
- the entry and its tuples are taken out of the collector's sight (`gcwatch.untrack`): they
  hold only strings, bytes, numbers and tuples of them, so they can never be part of a
  reference cycle, and reference counting frees them. A full cache then adds nothing to a
  collection's walk.
"""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING, Any, TypeVar

from gateway.gcwatch import untrack

if TYPE_CHECKING:
    from gateway.store import Entry

T = TypeVar("T")

SHARE_LIMIT = 4096  # values held once per table; past it new ones stay with their entries
# Fields whose values repeat across a site's responses: their (name, value) pairs are shared.
REPEATING_FIELDS = frozenset({
    "accept-ranges", "access-control-allow-origin", "cache-control", "cdn-cache-control",
    "content-encoding", "content-language", "content-type", "cross-origin-resource-policy",
    "referrer-policy", "server", "strict-transport-security", "surrogate-control",
    "timing-allow-origin", "vary", "x-content-type-options", "x-frame-options",
})

# What the memory tier's indexes hold per entry (CPython 3.11, 64-bit), averaged over the
# sizes a container goes through as it grows (`sys.getsizeof` of the container / items):
# the LRU (an OrderedDict item: hash slot, entry, linked-list node), the entry's place in its
# admission segment (the same), the tenant's key -> size dict and the size (an int), its URL
# index and sorted URLs, and the entry's share of the frequency sketch (4 rows, each of 8
# counters for each of twice the entries held and a few, rounded up to a power of two: 64 to
# 128 bytes an entry as the sketch grows by doubling, more in a space that holds few).
ODICT_ITEM = 80
DICT_ITEM = 30
SORTED_ITEM = 8
SKETCH_SHARE = 96
SIZE_INT = sys.getsizeof(1 << 20)
INDEX_BYTES = 2 * ODICT_ITEM + 2 * DICT_ITEM + SIZE_INT + SORTED_ITEM + SKETCH_SHARE
TAG_BYTES = 40  # the entry's key in one tag's index (a dict of keys per tag, many of them small)
VARIANT_BYTES = 24  # a varying entry's share of the tuple of its URL's keys (Vary variants)
# A Vary record: its OrderedDict item and its place in the tenant's record index.
VARY_RECORD_BYTES = ODICT_ITEM + DICT_ITEM

_sizeof = sys.getsizeof
_PAIR = _sizeof(("", ""))
_FLOAT = _sizeof(0.0)


class Shared:
    """One copy of each equal immutable value, for the first `limit` distinct values (no
    eviction: what is shared stays shared, so an entry's charge never changes)."""

    __slots__ = ("limit", "values")

    def __init__(self, limit: int = SHARE_LIMIT) -> None:
        self.limit = limit
        self.values: dict[Any, Any] = {}

    def __call__(self, value: T) -> T:
        found = self.values.get(value)
        if found is not None:
            return found  # type: ignore[no-any-return]
        if len(self.values) < self.limit:
            self.values[value] = value
        return value

    def holds(self, value: object) -> bool:
        """Is this very object the shared copy (and so not charged to an entry)?"""
        return self.values.get(value) is value


NAMES = Shared()  # header field names
PAIRS = Shared()  # (name, value) of the REPEATING_FIELDS
VALUES = Shared()  # Freshness, Vary names


def _share_pairs(
    pairs: tuple[tuple[str, str], ...], held: dict[tuple[str, str], tuple[str, str]]
) -> tuple[tuple[str, str], ...]:
    """The pairs with shared names (and shared pairs for repeating fields), each one the same
    object as an equal pair in `held` (which it adds to)."""
    out = []
    changed = False
    for pair in pairs:
        same = held.get(pair)
        if same is None:
            name, value = pair
            shared_name = NAMES(name)
            if shared_name.lower() in REPEATING_FIELDS:
                same = PAIRS(pair if shared_name is name else (shared_name, value))
            else:
                same = pair if shared_name is name else (shared_name, value)
            held[pair] = same
        changed = changed or same is not pair
        out.append(same)
    return tuple(out) if changed else pairs


def compact(entry: Entry) -> None:
    """Share what the entry holds in common with others, and untrack it (see the module's
    docstring). Changes no value: only which objects hold them."""
    held: dict[tuple[str, str], tuple[str, str]] = {}
    entry.headers = _share_pairs(entry.headers, held)
    entry.visible = _share_pairs(entry.visible, held)
    entry.freshness = VALUES(entry.freshness)
    if entry.vary:
        entry.vary = VALUES(tuple(NAMES(name) for name in entry.vary))
    if untrack is not None:
        # Tuples of strings the collector would untrack itself, but only when a collection
        # sees them: under a steady churn of entries few collections run, and the young
        # generation grows with every entry stored, then takes tens of ms to walk.
        for pair in held.values():
            untrack(pair)
        for tuple_ in (entry.headers, entry.visible, entry.tags, entry.vary):
            untrack(tuple_)
        untrack(entry)
        if not VALUES.holds(entry.freshness):
            untrack(entry.freshness)


def _text(value: str | None, counted: set[int]) -> int:
    if value is None or id(value) in counted:
        return 0
    counted.add(id(value))
    return _sizeof(value)


def _pairs_bytes(pairs: tuple[tuple[str, str], ...], counted: set[int]) -> int:
    if not pairs:
        return 0
    total = _sizeof(pairs)
    for pair in pairs:
        if id(pair) in counted or PAIRS.holds(pair):
            continue
        counted.add(id(pair))
        name, value = pair
        total += _PAIR + _text(value, counted)
        if not NAMES.holds(name):
            total += _text(name, counted)
    return total


def entry_bytes(entry: Entry) -> int:
    """The bytes of the objects the entry alone holds (not the shared ones, nor its tenant's
    name, which the memory tier holds once per tenant)."""
    counted: set[int] = set()
    total = (
        _sizeof(entry) + _sizeof(entry.key) + _sizeof(entry.url) + _sizeof(entry.body)
        + _pairs_bytes(entry.headers, counted) + _pairs_bytes(entry.visible, counted)
        + _text(entry.etag, counted) + _text(entry.last_modified, counted)
        + 2 * _FLOAT  # response_time, initial_age
    )
    if entry.stored_at is not entry.response_time:
        total += _FLOAT
    if entry.soft_purged_at is not None:
        total += _FLOAT
    if not VALUES.holds(entry.freshness):
        total += _sizeof(entry.freshness) + 3 * _FLOAT
    if entry.vary and not VALUES.holds(entry.vary):
        total += _sizeof(entry.vary) + sum(_text(n, counted) for n in entry.vary
                                           if not NAMES.holds(n))
    if entry.tags:
        total += _sizeof(entry.tags) + sum(_text(tag, counted) for tag in entry.tags)
    return total


def index_bytes(entry: Entry) -> int:
    """What the memory tier's indexes hold for the entry (see INDEX_BYTES)."""
    return INDEX_BYTES + TAG_BYTES * len(entry.tags) + (VARIANT_BYTES if entry.vary else 0)


def vary_record_bytes(primary_key: str, names: tuple[str, ...]) -> int:
    """A Vary record: its key, its names unless shared, its places in the two indexes."""
    own = 0 if not names or VALUES.holds(names) else _sizeof(names) + sum(map(_sizeof, names))
    return VARY_RECORD_BYTES + _sizeof(primary_key) + own
