"""W-TinyLFU: which entries a byte-bounded space keeps, by recency and frequency. Pure.

Plain LRU lets a scan of one-off keys push out the hot ones: 120 junk requests for a tenant
evict its bundles. W-TinyLFU (Einziger, Friedman, Manes, "TinyLFU: A Highly Efficient Cache
Admission Policy", 2017; as in Caffeine) keeps:

- a small *window* LRU (1% of the bytes) that every newcomer enters, so a burst of new keys
  gets a chance to prove itself;
- a *main* space split into *probation* and *protected* (80% of main) segments: a hit in
  probation promotes to protected; protected overflow is demoted to probation;
- a *frequency sketch* (count-min, 4-bit saturating counters, halved every 10 x width
  increments so that old popularity fades): an entry leaving the window enters main only if
  it is requested more often than the victims it would push out.

Sizes are bytes (entries differ widely); a newcomer that needs several victims must beat each.
Nothing here knows about entries: it is told keys and sizes and answers which keys to drop.
"""

from __future__ import annotations

from collections import OrderedDict

WINDOW_SHARE = 0.01
PROTECTED_SHARE = 0.8
COUNTERS_PER_ENTRY = 8  # a row's counters per entry a space may hold (4 rows: 32 bytes each)
MAX_WIDTH = 1 << 22
_MAX_COUNT = 15
_HALVE = bytes(i >> 1 for i in range(256))
_ROWS = 4


class FrequencySketch:
    """How often each key was asked for, approximately and in bounded memory: 4 rows of one
    byte per counter (saturating at 15); the minimum over the rows is the estimate."""

    __slots__ = ("_additions", "_mask", "_rows", "_sample")

    def __init__(self, width: int = 64, sample: int | None = None) -> None:
        size = 1 << max(4, (width - 1).bit_length())
        self._mask = size - 1
        self._rows = [bytearray(size) for _ in range(_ROWS)]
        self._sample = 10 * size if sample is None else sample
        self._additions = 0

    @property
    def width(self) -> int:
        return self._mask + 1

    def _slots(self, key: str) -> tuple[int, int, int, int]:
        """One counter per row: four windows of the key's 64-bit hash (SipHash, well mixed),
        as Caffeine derives its indexes from one hash. Cheap: this runs on every hit."""
        h, mask = hash(key), self._mask
        return h & mask, (h >> 16) & mask, (h >> 32) & mask, ((h >> 48) ^ (h >> 7)) & mask

    def increment(self, key: str) -> None:
        """Count one request for `key`."""
        r0, r1, r2, r3 = self._rows
        i0, i1, i2, i3 = self._slots(key)
        added = False
        if r0[i0] < _MAX_COUNT:
            r0[i0] += 1
            added = True
        if r1[i1] < _MAX_COUNT:
            r1[i1] += 1
            added = True
        if r2[i2] < _MAX_COUNT:
            r2[i2] += 1
            added = True
        if r3[i3] < _MAX_COUNT:
            r3[i3] += 1
            added = True
        if added:
            self._additions += 1
            if self._additions >= self._sample:
                self._age()

    def frequency(self, key: str) -> int:
        r0, r1, r2, r3 = self._rows
        i0, i1, i2, i3 = self._slots(key)
        return min(r0[i0], r1[i1], r2[i2], r3[i3])

    def _age(self) -> None:
        """Halve every counter: popularity from long ago counts half as much."""
        self._rows = [row.translate(_HALVE) for row in self._rows]
        self._additions //= 2


class TinyLfu:
    """One byte-bounded space under W-TinyLFU: a tenant's quota, or the store shared by the
    tenants without one. `capacity` may change (a reload); the next `add` honours it."""

    __slots__ = (
        "_probation_bytes",
        "_protected_bytes",
        "_window_bytes",
        "capacity",
        "probation",
        "protected",
        "sketch",
        "window",
    )

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self.window: OrderedDict[str, int] = OrderedDict()  # key -> size, oldest first
        self.probation: OrderedDict[str, int] = OrderedDict()
        self.protected: OrderedDict[str, int] = OrderedDict()
        self._window_bytes = self._probation_bytes = self._protected_bytes = 0
        self.sketch = FrequencySketch()

    def __len__(self) -> int:
        return len(self.window) + len(self.probation) + len(self.protected)

    def __contains__(self, key: object) -> bool:
        return key in self.window or key in self.probation or key in self.protected

    @property
    def bytes(self) -> int:
        return self._window_bytes + self._probation_bytes + self._protected_bytes

    @property
    def _window_cap(self) -> int:
        return max(1, int(self.capacity * WINDOW_SHARE))

    @property
    def _main_cap(self) -> int:
        return self.capacity - self._window_cap

    def record(self, key: str) -> None:
        """A lookup of a key this space does not hold: only its popularity counts."""
        self.sketch.increment(key)

    def touch(self, key: str) -> None:
        """A hit: count it, and move the key up its segment (probation promotes)."""
        self.sketch.increment(key)
        if key in self.protected:  # where hot keys live: one lookup for most hits
            self.protected.move_to_end(key)
        elif key in self.window:
            self.window.move_to_end(key)
        elif key in self.probation:
            size = self.probation.pop(key)
            self._probation_bytes -= size
            self.protected[key] = size
            self._protected_bytes += size
            protected_cap = int(self._main_cap * PROTECTED_SHARE)
            while self._protected_bytes > protected_cap and len(self.protected) > 1:
                old, old_size = self.protected.popitem(last=False)
                self._protected_bytes -= old_size
                self.probation[old] = old_size
                self._probation_bytes += old_size

    def add(self, key: str, size: int) -> list[str]:
        """A new key enters the window; returns the keys that must leave to keep the bounds
        (possibly the new key itself, when it loses its admission)."""
        self._grow_sketch()
        self.window[key] = size
        self._window_bytes += size
        dropped: list[str] = []
        while self._window_bytes > self._window_cap and self.window:
            candidate, cand_size = self.window.popitem(last=False)
            self._window_bytes -= cand_size
            if self._admit(candidate, cand_size, dropped):
                self.probation[candidate] = cand_size
                self._probation_bytes += cand_size
            else:
                dropped.append(candidate)
        while self.bytes > self.capacity:  # the capacity shrank: oldest of main, then window
            dropped.append(self._pop_oldest())
        return dropped

    def remove(self, key: str) -> None:
        """A key that left for another reason (delete, purge, the store's global bound)."""
        for segment in (self.window, self.probation, self.protected):
            size = segment.pop(key, None)
            if size is not None:
                if segment is self.window:
                    self._window_bytes -= size
                elif segment is self.probation:
                    self._probation_bytes -= size
                else:
                    self._protected_bytes -= size
                return

    def _admit(self, candidate: str, size: int, dropped: list[str]) -> bool:
        """Make room in main for a candidate from the window, if it is more popular than each
        victim it needs (least recently used first, probation before protected)."""
        need = self._probation_bytes + self._protected_bytes + size - self._main_cap
        if need <= 0:
            return True
        if size > self._main_cap:
            return False
        wanted = self.sketch.frequency(candidate)
        victims: list[str] = []
        for segment in (self.probation, self.protected):
            for victim, victim_size in segment.items():
                if need <= 0:
                    break
                if self.sketch.frequency(victim) >= wanted:
                    return False
                victims.append(victim)
                need -= victim_size
        for victim in victims:
            self.remove(victim)
            dropped.append(victim)
        return True

    def _pop_oldest(self) -> str:
        for segment in (self.probation, self.protected, self.window):
            if segment:
                key = next(iter(segment))
                self.remove(key)
                return key
        raise AssertionError("over capacity with nothing held")

    def _grow_sketch(self) -> None:
        """Keep COUNTERS_PER_ENTRY counters a row for twice the entries held (and some):
        the sketch must also count keys it does not hold, or one-off keys collide with the
        hot ones and look popular; but a space holding little must cost little. Never above
        what the space could hold at the average size so far. Counts restart when it grows,
        a few times while a space fills."""
        held = len(self) + 1
        could_hold = self.capacity * held // max(1, self.bytes)
        wanted = COUNTERS_PER_ENTRY * min(2 * held + 64, max(held, could_hold))
        if min(MAX_WIDTH, wanted) > 2 * self.sketch.width:
            self.sketch = FrequencySketch(min(MAX_WIDTH, wanted))

    def check(self) -> list[str]:
        """Inconsistencies between the segments and their byte counts (for tests)."""
        problems = []
        for name, segment, counted in (
            ("window", self.window, self._window_bytes),
            ("probation", self.probation, self._probation_bytes),
            ("protected", self.protected, self._protected_bytes),
        ):
            if sum(segment.values()) != counted:
                problems.append(f"{name} bytes mismatch")
        if len(set(self.window) | set(self.probation) | set(self.protected)) != len(self):
            problems.append("a key in two segments")
        return problems
