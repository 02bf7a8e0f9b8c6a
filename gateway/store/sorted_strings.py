"""A sorted set of strings in tuples: range queries in O(log n), invisible to the collector.

The memory tier keeps each tenant's URLs in order, so that a purge by prefix is a range rather
than a scan. `sortedcontainers.SortedList` did that in lists of ~1,000, and lists are always
tracked by the garbage collector: a full collection walked every URL of the cache (tens of
milliseconds with a full cache). Here each chunk is a tuple of strings, which the collector
stops tracking the first time it sees it; a change rebuilds one chunk (a copy of at most
2 x CHUNK pointers, about a microsecond).
"""

from __future__ import annotations

from bisect import bisect_left, bisect_right
from collections.abc import Iterator

CHUNK = 512  # strings per chunk: split past twice this, merged with a neighbour below a quarter


class SortedStrings:
    """A set of strings, iterated in order."""

    __slots__ = ("_chunks", "_len", "_maxes")

    def __init__(self) -> None:
        self._chunks: list[tuple[str, ...]] = []
        self._maxes: list[str] = []  # the last string of each chunk
        self._len = 0

    def __len__(self) -> int:
        return self._len

    def __iter__(self) -> Iterator[str]:
        for chunk in self._chunks:
            yield from chunk

    def __contains__(self, value: object) -> bool:
        if not isinstance(value, str):
            return False
        i = bisect_left(self._maxes, value)
        if i == len(self._maxes):
            return False
        chunk = self._chunks[i]
        j = bisect_left(chunk, value)
        return j < len(chunk) and chunk[j] == value

    def add(self, value: str) -> None:
        if not self._chunks:
            self._chunks.append((value,))
            self._maxes.append(value)
            self._len = 1
            return
        i = min(bisect_left(self._maxes, value), len(self._maxes) - 1)
        chunk = self._chunks[i]
        j = bisect_left(chunk, value)
        if j < len(chunk) and chunk[j] == value:
            return
        chunk = (*chunk[:j], value, *chunk[j:])
        self._len += 1
        if len(chunk) > 2 * CHUNK:
            self._chunks[i : i + 1] = [chunk[:CHUNK], chunk[CHUNK:]]
            self._maxes[i : i + 1] = [chunk[CHUNK - 1], chunk[-1]]
        else:
            self._chunks[i] = chunk
            self._maxes[i] = chunk[-1]

    def discard(self, value: str) -> None:
        i = bisect_left(self._maxes, value)
        if i == len(self._maxes):
            return
        chunk = self._chunks[i]
        j = bisect_left(chunk, value)
        if j == len(chunk) or chunk[j] != value:
            return
        chunk = chunk[:j] + chunk[j + 1 :]
        self._len -= 1
        if len(chunk) < CHUNK // 4 and len(self._chunks) > 1:  # merge with a neighbour
            k = i - 1 if i > 0 else i + 1
            low, high = min(i, k), max(i, k)
            merged = (self._chunks[low] if low != i else chunk) + (
                self._chunks[high] if high != i else chunk
            )
            if len(merged) > 2 * CHUNK:
                halves = [merged[: len(merged) // 2], merged[len(merged) // 2 :]]
                self._chunks[low : high + 1] = halves
                self._maxes[low : high + 1] = [halves[0][-1], halves[1][-1]]
            else:
                self._chunks[low : high + 1] = [merged]
                self._maxes[low : high + 1] = [merged[-1]]
        elif chunk:
            self._chunks[i] = chunk
            self._maxes[i] = chunk[-1]
        else:
            del self._chunks[i]
            del self._maxes[i]

    def irange(self, minimum: str, *, inclusive: bool = True) -> Iterator[str]:
        """The strings from `minimum` on (after it unless `inclusive`), in order."""
        find = bisect_left if inclusive else bisect_right
        i = find(self._maxes, minimum)
        for n in range(i, len(self._chunks)):
            chunk = self._chunks[n]
            start = find(chunk, minimum) if n == i else 0
            for j in range(start, len(chunk)):
                yield chunk[j]
