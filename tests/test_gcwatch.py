"""gateway.gcwatch: the pause recorder (a clock injected), untracking, the start-up freeze."""

from __future__ import annotations

import gc
from dataclasses import dataclass

from pytest import approx

from gateway import gcwatch
from gateway.gcwatch import PauseRecorder


class Ticks:
    """A clock the test moves: each collection takes what the test says."""

    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def collection(recorder: PauseRecorder, clock: Ticks, generation: int, seconds: float) -> None:
    """What gc.callbacks does around one collection."""
    recorder("start", {"generation": generation, "collected": 0, "uncollectable": 0})
    clock.now += seconds
    recorder("stop", {"generation": generation, "collected": 2, "uncollectable": 0})


def test_each_collection_is_timed_by_generation() -> None:
    clock = Ticks()
    seen: list[tuple[int, float]] = []
    recorder = PauseRecorder(clock, on_pause=lambda g, s: seen.append((g, s)))
    for seconds in (0.001, 0.002, 0.003):
        collection(recorder, clock, 0, seconds)
    collection(recorder, clock, 2, 0.25)
    collection(recorder, clock, 1, 0.010)
    assert recorder.count == [3, 1, 1]
    assert recorder.longest == approx([0.003, 0.010, 0.25])
    assert [g for g, _ in seen] == [0, 0, 0, 2, 1]
    summary = recorder.summary()
    assert summary["collections"] == 5
    assert summary["pause_max_seconds"] == approx(0.25)
    assert summary["pause_total_seconds"] == approx(0.001 + 0.002 + 0.003 + 0.25 + 0.010)
    assert summary["pause_p50_seconds"] == approx(0.003)
    assert summary["pause_p99_seconds"] == approx(0.25)
    assert summary["collected"] == 10
    assert summary["by_generation"] == {
        "0": {"collections": 3, "pause_max_seconds": approx(0.003)},
        "1": {"collections": 1, "pause_max_seconds": approx(0.01)},
        "2": {"collections": 1, "pause_max_seconds": approx(0.25)},
    }


def test_percentiles_cover_the_recent_pauses_and_an_empty_recorder_says_zero() -> None:
    clock = Ticks()
    recorder = PauseRecorder(clock)
    assert recorder.percentile(0.99) == 0.0
    assert recorder.summary()["pause_max_seconds"] == 0.0
    for i in range(gcwatch.RECENT + 100):
        collection(recorder, clock, 0, 1.0 if i < 100 else 0.001)  # the slow ones are old
    assert recorder.percentile(0.99) == approx(0.001)
    assert recorder.longest[0] == approx(1.0)  # the longest since start stays


def test_a_stop_without_its_start_is_not_a_pause() -> None:
    recorder = PauseRecorder(Ticks())
    recorder("stop", {"generation": 2, "collected": 0, "uncollectable": 0})
    assert recorder.count == [0, 0, 0]


def test_installed_it_times_real_collections_and_uninstalled_it_stops() -> None:
    recorder = PauseRecorder().install()
    try:
        assert recorder in gc.callbacks
        gc.collect()
        assert recorder.count[2] >= 1 and recorder.longest[2] > 0
    finally:
        recorder.uninstall()
    assert recorder not in gc.callbacks
    before = recorder.count[2]
    gc.collect()
    assert recorder.count[2] == before


@dataclass(frozen=True, slots=True)
class Record:
    text: str


def test_untracked_records_are_out_of_the_collectors_sight() -> None:
    record = Record("x")
    assert gc.is_tracked(record)
    assert gcwatch.untracked(record) is record
    assert not gc.is_tracked(record)
    del record  # reference counting still frees it


def test_untracking_an_object_the_collector_never_tracks_is_harmless() -> None:
    # Strings, ints, bytes have no collector header: the raw C call on them would read memory
    # before the object. Each is returned as it is, many times over, without a crash.
    for value in ("text" * 100, 12345678901234567890, b"bytes", 1.5, None, ()):
        for _ in range(1000):
            assert gcwatch.untracked(value) is value
    assert gc.collect() >= 0


def test_after_start_freezes_what_start_up_built() -> None:
    try:
        frozen = gcwatch.after_start()
        assert frozen == gc.get_freeze_count() > 0
        assert not gc.get_objects(2)  # nothing left for a full collection to walk
    finally:
        gc.unfreeze()
