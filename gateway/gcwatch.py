"""Garbage collection kept out of the request path, and watched.

CPython's cycle collector stops the whole process while it walks every object it tracks in the
generations it collects. A cache holds most of the process's objects, and they live long: with
a cache of 137,000 small entries a full collection took over a second, and every request waited
through it (issue 12). What keeps collections short now, and what this module does for it:

- long-lived records of strings are not tracked at all (`untracked`): the store's entries and
  their tuples (`gateway.store.compact`), the memos of parsed targets and located URLs. They
  can be in no reference cycle, and reference counting frees them;
- `after_start`: a full collection, then `gc.freeze()`, once the gateway listens: the modules,
  the config and what start-up built (the store's own containers among them: the LRU, the
  Vary records) are never walked again;
- `PauseRecorder` times every collection through `gc.callbacks`, by generation: the longest,
  the count and the total, percentiles of the recent ones; `/admin/stats` shows them, and
  `on_pause` feeds the histogram of `/metrics`.

The collector's thresholds stay CPython's (700, 10, 10): measured with bench/memory.py, other
settings changed neither the longest pause nor the time spent collecting (docs/benchmarks.md).
"""

from __future__ import annotations

import ctypes
import gc
import time
from bisect import insort
from collections import deque
from collections.abc import Callable
from typing import Any, TypeVar

T = TypeVar("T")

RECENT = 1024  # pauses kept for the percentiles
GENERATIONS = 3


class PauseRecorder:
    """Times each collection (`gc.callbacks` calls it at its start and its stop).

    Cheap, as it runs at every collection (young ones happen hundreds of times a second under
    load): two clock reads and a few additions. The percentiles are computed when asked, from
    the last `RECENT` pauses."""

    def __init__(
        self,
        clock: Callable[[], float] = time.perf_counter,
        on_pause: Callable[[int, float], None] | None = None,
    ) -> None:
        self.clock = clock
        self.on_pause = on_pause  # (generation, seconds) after each collection
        self.count = [0] * GENERATIONS
        self.total = [0.0] * GENERATIONS
        self.longest = [0.0] * GENERATIONS
        self.recent: deque[float] = deque(maxlen=RECENT)
        self.collected = 0  # objects found unreachable and freed
        self._started: float | None = None
        self._installed = False

    def __call__(self, phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            self._started = self.clock()
            return
        started, self._started = self._started, None
        if started is None:  # installed in the middle of a collection
            return
        self.record(info["generation"], self.clock() - started, info.get("collected", 0))

    def record(self, generation: int, seconds: float, collected: int = 0) -> None:
        """One collection of `generation` that took `seconds`."""
        self.count[generation] += 1
        self.total[generation] += seconds
        if seconds > self.longest[generation]:
            self.longest[generation] = seconds
        self.recent.append(seconds)
        self.collected += collected
        if self.on_pause is not None:
            self.on_pause(generation, seconds)

    def install(self) -> PauseRecorder:
        if not self._installed:
            gc.callbacks.append(self)
            self._installed = True
        return self

    def uninstall(self) -> None:
        if self._installed:
            gc.callbacks.remove(self)
            self._installed = False
            self._started = None

    def reset(self) -> None:
        """Forget what was recorded (a benchmark's phases each start from nothing)."""
        self.count = [0] * GENERATIONS
        self.total = [0.0] * GENERATIONS
        self.longest = [0.0] * GENERATIONS
        self.recent.clear()
        self.collected = 0

    def percentile(self, share: float) -> float:
        """The pause below which `share` of the recent ones are (nearest rank); 0 with none."""
        ordered: list[float] = []
        for pause in self.recent:
            insort(ordered, pause)
        if not ordered:
            return 0.0
        rank = min(len(ordered) - 1, max(0, round(share * len(ordered) + 0.5) - 1))
        return ordered[rank]

    def summary(self) -> dict[str, object]:
        """What `/admin/stats` shows: totals since start, the recent percentiles, and per
        generation the count and the longest pause (seconds)."""
        return {
            "collections": sum(self.count),
            "pause_total_seconds": round(sum(self.total), 6),
            "pause_max_seconds": round(max(self.longest), 6),
            "pause_p50_seconds": round(self.percentile(0.5), 6),
            "pause_p99_seconds": round(self.percentile(0.99), 6),
            "collected": self.collected,
            "frozen": gc.get_freeze_count(),
            "by_generation": {
                str(g): {"collections": self.count[g], "pause_max_seconds": round(longest, 6)}
                for g, longest in enumerate(self.longest)
            },
        }


def after_start() -> int:
    """Collect everything once, then move what survives (modules, config, the parts built at
    start-up) to the permanent generation, which no collection walks again. Returns how many
    objects were frozen. Call it once the listeners are up: what is frozen is never collected,
    so only objects that live as long as the process belong there."""
    gc.collect()
    gc.freeze()
    return gc.get_freeze_count()


def _untracker() -> Callable[[object], None] | None:
    """CPython's `PyObject_GC_UnTrack`, guarded (None elsewhere: objects then stay tracked).

    The C function reads the collector's header in front of the object, which only objects of
    a collected type have: given a string or an int it would read foreign memory. So it is
    only called on what `gc.is_tracked` says is tracked (False for every other object)."""
    try:
        function = ctypes.pythonapi.PyObject_GC_UnTrack
    except AttributeError:
        return None
    function.argtypes = (ctypes.py_object,)
    function.restype = None
    is_tracked = gc.is_tracked

    def untrack(obj: object) -> None:
        if is_tracked(obj):
            function(obj)

    return untrack


# Takes an object out of the collector's sight, as the collector itself does with a tuple or a
# dict of strings. Only for objects that can be in no reference cycle: that hold strings,
# bytes, numbers, or tuples and frozen records of those. (Reference counting still frees it;
# a dict given anything else is tracked again by the interpreter itself.)
untrack = _untracker()


def untracked(obj: T) -> T:
    """`obj` itself, untracked (see `untrack`): for long-lived records a memo keeps, which
    every full collection would walk otherwise."""
    if untrack is not None:
        untrack(obj)
    return obj
