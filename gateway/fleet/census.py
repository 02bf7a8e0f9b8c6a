"""Stats for the whole machine: every worker process publishes its own, any one answers the sum.

With `workers: N` the admin port is shared (SO_REUSEPORT) and a call to `/admin/stats` reaches
whichever worker the kernel picks. So that it answers for the machine, each worker writes a
snapshot of its `Gateway.stats()` every `interval` into one Redis hash per machine,
`keys.stats + machine` (field: the worker index; value: `{"at": wall time, "pid": ..., "stats":
{...}}`), which expires a few intervals after the last write. The worker that takes the call
reads the hash, drops snapshots older than `STALE_AFTER` intervals (a worker that died), puts its
own live stats in place of its own snapshot and merges them (`merge`, pure).

Redis is never waited on for long (the link's timeout) and never fails a call: a write that
does not go through is skipped, and a read that does not answers this worker's stats alone,
saying so (`"census": "unavailable: ..."`).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
import os
import time
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from gateway.fleet.keys import Keys
from gateway.fleet.link import RedisLink, RedisUnavailable

log = logging.getLogger("gateway.fleet")

INTERVAL = 1.0  # seconds between two snapshots of one worker
STALE_AFTER = 3  # intervals after which a worker's snapshot is no longer counted
EXPIRE_AFTER = 5  # intervals after the last write at which the machine's hash expires
STOP_WAIT = 2.0  # seconds `stop()` waits for the publishing task to end

# Keys whose numbers (the whole subtree under them) are not summed but the largest is kept:
# - `generations`: fleet-wide state that every worker holds a copy of (summing two copies of
#   generation 3 would say 6); the largest is the newest any worker has seen;
# - `lag_seconds`, `mean_ms`: per-worker figures; the sum means nothing, the worst one does.
LARGEST = frozenset({"generations", "lag_seconds", "mean_ms"})


def merge(snapshots: Iterable[Mapping[str, Any]]) -> dict[str, Any]:
    """Workers' stats dicts as one, for the machine (pure; the order of `snapshots` does not
    matter). Key by key, through nested dicts (a key some workers lack is merged over those
    that have it):

    - numbers are summed (counters, bytes, entries, in-flight counts, `max_bytes`: the
      machine's totals; an `*_max` peak becomes the sum of the workers' peaks, an upper bound),
      except under the keys in `LARGEST`, where the largest is kept;
    - booleans are AND-ed: true only if true in every worker (`available`, `ready`);
    - anything else (strings such as a breaker state or an instance id, null, lists, values
      whose types differ between workers) is kept as is where every worker agrees, and
      otherwise becomes the sorted list of the distinct values.

    So one snapshot merges to itself."""
    return _merge_dicts(list(snapshots), largest=False)


def _merge_dicts(dicts: list[Mapping[str, Any]], *, largest: bool) -> dict[str, Any]:
    keys: dict[str, None] = {}
    for d in dicts:
        keys.update(dict.fromkeys(d))
    return {
        k: _merge_values([d[k] for d in dicts if k in d], largest=largest or k in LARGEST)
        for k in keys
    }


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _merge_values(values: list[Any], *, largest: bool) -> Any:
    if all(isinstance(v, dict) for v in values):
        return _merge_dicts(values, largest=largest)
    if all(isinstance(v, bool) for v in values):
        return all(values)
    if all(_is_number(v) for v in values):
        if largest:
            return max(values)
        if all(isinstance(v, int) for v in values):
            return sum(values)
        return math.fsum(values)  # exactly rounded: the same whatever the order
    return _distinct(values)


def _distinct(values: list[Any]) -> Any:
    """The one value all agree on, or the sorted list of the distinct ones."""
    seen = {json.dumps(v, sort_keys=True, default=str): v for v in values}
    if len(seen) == 1:
        return values[0]
    return [seen[text] for text in sorted(seen)]


class Census:
    """This worker's part of the machine's stats: `start()` publishes `snapshot()` every
    `interval`; `machine_stats(own)` answers the machine-wide sum."""

    def __init__(
        self,
        link: RedisLink,
        keys: Keys,
        machine: str,
        worker: int,
        snapshot: Callable[[], dict[str, Any]],
        *,
        interval: float = INTERVAL,
        clock: Callable[[], float] = time.time,  # wall time: comparable between processes
    ) -> None:
        self.link = link
        self.key = keys.stats + machine
        self.machine = machine
        self.worker = worker
        self.field = str(worker)
        self.snapshot = snapshot
        self.interval = interval
        self.clock = clock
        self.pid = os.getpid()
        self.published = 0  # snapshots written
        self.skipped = 0  # snapshots Redis did not take
        self._task: asyncio.Task[None] | None = None
        self._stopping = False

    async def start(self) -> None:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run(), name="census")

    async def stop(self) -> None:
        """Stop publishing and take this worker's snapshot out (best effort: it would go
        stale anyway)."""
        self._stopping = True  # should a cancellation be lost in the client, the loop ends
        if self._task is not None:
            self._task.cancel()
            await asyncio.wait([self._task], timeout=STOP_WAIT)
            self._task = None
        with contextlib.suppress(RedisUnavailable):
            await self.link.run(lambda r: r.hdel(self.key, self.field))

    async def _run(self) -> None:
        while not self._stopping:
            try:
                await self.publish()
            except Exception:  # a bug in a snapshot must not end the census
                log.exception("stats snapshot not published")
            await asyncio.sleep(self.interval)

    async def publish(self) -> bool:
        """Write this worker's snapshot now; False if Redis did not take it."""
        value = json.dumps({"at": self.clock(), "pid": self.pid, "stats": self.snapshot()})
        expire_ms = max(1, round(EXPIRE_AFTER * self.interval * 1000))
        try:
            await self.link.run(lambda r: r.hset(self.key, self.field, value))
            await self.link.run(lambda r: r.pexpire(self.key, expire_ms))
        except RedisUnavailable:
            self.skipped += 1
            return False
        self.published += 1
        return True

    async def machine_stats(self, own: dict[str, Any]) -> dict[str, Any]:
        """`merge` of every live worker's stats, with `own` (this worker's, now) for this
        worker, plus `machine`, `worker` (the one that answered), `workers` (how many were
        summed) and `per_worker` ({index: {pid, age_seconds, cache}}: its process, how old
        its snapshot is and its own `cache` counters, which show how the kernel spreads the
        load). Redis unavailable: `own` alone, with `"census": "unavailable: <why>"`."""
        now = self.clock()
        workers: dict[int, tuple[float, int, dict[str, Any]]] = {}
        problem = None
        try:
            raw = await self.link.run(lambda r: r.hgetall(self.key))
        except RedisUnavailable as exc:
            problem = f"unavailable: {exc}"
        else:
            for field, value in raw.items():
                parsed = _parse(field, value)
                if parsed is not None and now - parsed[1] <= STALE_AFTER * self.interval:
                    workers[parsed[0]] = parsed[1:]
        workers[self.worker] = (now, self.pid, own)
        ordered = sorted(workers.items())
        merged = merge(stats for _, (_, _, stats) in ordered)
        merged.update(
            machine=self.machine,
            worker=self.worker,
            workers=len(ordered),
            per_worker={
                str(index): {
                    "pid": pid,
                    "age_seconds": round(max(0.0, now - at), 3),
                    "cache": stats.get("cache", {}),
                }
                for index, (at, pid, stats) in ordered
            },
        )
        if problem is not None:
            merged["census"] = problem
        return merged


def _parse(field: bytes | str, value: bytes | str) -> tuple[int, float, int, dict[str, Any]] | None:
    """(worker index, at, pid, stats) from one field of the hash; None if it is not one (a
    value from another version, say: ignored, not an error)."""
    try:
        index = int(field)
        data = json.loads(value)
        at, pid, stats = data["at"], data["pid"], data["stats"]
    except (ValueError, TypeError, KeyError):
        return None
    if not (_is_number(at) and isinstance(pid, int) and isinstance(stats, dict)):
        return None
    return index, float(at), pid, stats
