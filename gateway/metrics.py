"""Prometheus metrics: counted as plain Python on the request path, exported by prometheus-client.

A hit must stay cheap, and a prometheus-client counter costs 0.7 us per `inc()` in one process
and 2.2 us with `workers: N` (its multiprocess values are mmap writes under a lock); a histogram
`observe()` costs 1 and 4 us. So the request path does not touch prometheus-client: it adds to a
`Meter` (dict counters and bucket counts, a fraction of a microsecond), and the `Exporter` moves
what the meter holds into prometheus-client's metrics when they are read: at each scrape, and,
with several worker processes, every second, so that any worker can answer for all of them.

Workers: the supervisor gives its workers a fresh `PROMETHEUS_MULTIPROC_DIR`; prometheus-client
then keeps each process's values in files there, and a scrape of any worker reads them all
(`MultiProcessCollector`). Counters of a worker that died stay counted (the machine's totals
never go down while it runs); gauges are summed (or maxed) over the live workers only, which the
supervisor tells prometheus-client when one ends.

Gauges (in flight, queue, bytes held...) are not counted but sampled, from a callback that the
gateway gives (`Sample`s), at the same moments.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from bisect import bisect_left
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, Literal

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    disable_created_metrics,
    generate_latest,
)
from prometheus_client import Counter as PromCounter
from prometheus_client import Gauge as PromGauge
from prometheus_client import Histogram as PromHistogram
from prometheus_client.multiprocess import MultiProcessCollector

CONTENT_TYPE = CONTENT_TYPE_LATEST
disable_created_metrics()  # no `*_created` series: a start time per label set is noise here
MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
FLUSH_EVERY = 1.0  # seconds between two flushes of a worker's meter, with several workers

# Bucket bounds (seconds). Requests: a hit takes about a millisecond, a loader bundle's code
# generation 2-5 s, a slow fill up to the collapse and fetch timeouts.
REQUEST_BOUNDS = (
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
)
REDIS_BOUNDS = (0.0002, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0)
# Garbage collection pauses: a young collection takes ~0.1 ms; one over 10 ms is a problem.
GC_BOUNDS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.1, 0.5, 2.0)

# Counters: name as exposed -> (help, label names).
COUNTERS: dict[str, tuple[str, tuple[str, ...]]] = {
    "gateway_requests_total": (
        "Requests answered, by route, X-Cache value (NONE: answered by the gateway itself) and"
        " status class",
        ("route", "cache_status", "code"),
    ),
    "gateway_tenant_requests_total": (
        "Requests on cached routes by tenant (configured tenants, '_' and 'other')",
        ("tenant", "cache_status"),
    ),
    "gateway_origin_fetches_total": (
        "Requests sent to an origin, by response status or, without one, by failure",
        ("origin", "status"),
    ),
    "gateway_origin_rejected_total": (
        "Origin requests refused before they were sent: breaker open or budget full",
        ("origin", "reason"),
    ),
    "gateway_collapsed_total": ("Requests answered by a fill another request started", ()),
    "gateway_background_refreshes_total": ("Revalidations run in the background", ()),
    "gateway_cache_evictions_total": (
        "Entries pushed out of memory: by the global size bound or the tenant's quota",
        ("tenant", "reason"),
    ),
    "gateway_redis_errors_total": ("Redis commands that failed or timed out", ()),
}
# Histograms: name -> (help, label names, bucket bounds).
HISTOGRAMS: dict[str, tuple[str, tuple[str, ...], tuple[float, ...]]] = {
    "gateway_request_duration_seconds": (
        "Time from a request's head to its last body byte handed to the socket; cache: hit"
        " (answered from the cache) or miss",
        ("route", "cache"),
        REQUEST_BOUNDS,
    ),
    "gateway_origin_fetch_duration_seconds": (
        "Time from sending a request to an origin to its response head", ("origin",),
        REQUEST_BOUNDS,
    ),
    "gateway_redis_duration_seconds": ("Time a Redis command took", (), REDIS_BOUNDS),
    "gateway_gc_pause_seconds": (
        "Time the garbage collector stopped the process, by the oldest generation collected"
        " (0, 1 or 2: a full collection)", ("generation",), GC_BOUNDS,
    ),
}
# How a gauge combines over workers: prometheus-client's multiprocess modes, live workers only.
Combine = Literal["livesum", "livemax", "livemin"]
# Gauges: name -> (help, label names, how workers combine).
GAUGES: dict[str, tuple[str, tuple[str, ...], Combine]] = {
    "gateway_origin_in_flight": ("Requests at an origin now", ("origin",), "livesum"),
    "gateway_origin_concurrency_limit": (
        "An origin's max_concurrency (per worker, so summed over workers)", ("origin",), "livesum",
    ),
    "gateway_origin_queue": ("Requests waiting for an origin's budget", ("origin",), "livesum"),
    "gateway_breaker_open": (
        "1 while an origin's breaker refuses requests (open, or half-open with its probe out)",
        ("origin",), "livemax",
    ),
    "gateway_cache_bytes": ("Bytes the cache holds, by tier and tenant", ("tier", "tenant"),
                            "livesum"),
    "gateway_cache_max_bytes": ("The cache's size bound, by tier", ("tier",), "livesum"),
    "gateway_cache_entries": ("Entries the cache holds, by tier", ("tier",), "livesum"),
    "gateway_purge_stream_lag_seconds": (
        "Seconds from Redis recording the last purge stream event to this instance applying it",
        (), "livemax",
    ),
    "gateway_redis_available": ("1 while Redis answers (its breaker closed)", (), "livemin"),
    "gateway_gc_pause_max_seconds": (
        "The longest garbage collection pause since the process started", (), "livemax",
    ),
}
REQUESTS = "gateway_requests_total"
TENANT_REQUESTS = "gateway_tenant_requests_total"
DURATION = "gateway_request_duration_seconds"
GC_PAUSE = "gateway_gc_pause_seconds"
_REQUEST_SLOTS = (*REQUEST_BOUNDS, float("inf"))
NAMES = frozenset(COUNTERS) | frozenset(HISTOGRAMS) | frozenset(GAUGES)


@dataclass(slots=True)
class Observations:
    """A histogram's observations since the last flush: per-bucket counts (the last is +Inf)
    and their sum."""

    bounds: tuple[float, ...]
    counts: list[int]
    total: float = 0.0

    def add(self, value: float) -> None:
        self.counts[bisect_left(self.bounds, value)] += 1  # a bucket holds values <= its bound
        self.total += value


Answer = tuple[str, str, str, str | None]  # route, cache status, status class, tenant label


class Meter:
    """What the request path counts, until the exporter takes it. Keys are tuples: the metric's
    name then its label values, in the order `COUNTERS` / `HISTOGRAMS` give; each answered
    request is one `answered` call, which the exporter turns into three metrics."""

    __slots__ = ("answers", "counts", "durations", "observed")

    def __init__(self) -> None:
        self.counts: Counter[tuple[str, ...]] = Counter()
        self.observed: dict[tuple[str, ...], Observations] = {}
        self.answers: Counter[Answer] = Counter()
        self.durations: dict[tuple[str, str], Observations] = {}

    def answered(
        self, route: str, cache: str, code: str, tenant: str | None, hit: bool, seconds: float
    ) -> None:
        """One answered request: gateway_requests_total, gateway_tenant_requests_total (with a
        tenant) and gateway_request_duration_seconds, for about a microsecond."""
        self.answers[(route, cache, code, tenant)] += 1
        key = (route, "hit" if hit else "miss")
        seen = self.durations.get(key)
        if seen is None:
            seen = self.durations[key] = Observations(REQUEST_BOUNDS, [0] * len(_REQUEST_SLOTS))
        seen.add(seconds)

    def count(self, key: tuple[str, ...], n: int = 1) -> None:
        self.counts[key] += n

    def observe(self, key: tuple[str, ...], value: float) -> None:
        seen = self.observed.get(key)
        if seen is None:
            bounds = HISTOGRAMS[key[0]][2]
            seen = self.observed[key] = Observations(bounds, [0] * (len(bounds) + 1))
        seen.add(value)

    def take(self) -> tuple[Counter[tuple[str, ...]], dict[tuple[str, ...], Observations]]:
        """Everything counted since the last call, as metric keys; the meter starts again from
        nothing."""
        counts, observed = self.counts, self.observed
        answers, durations = self.answers, self.durations
        self.counts, self.observed, self.answers, self.durations = Counter(), {}, Counter(), {}
        for (route, cache, code, tenant), n in answers.items():
            counts[(REQUESTS, route, cache, code)] += n
            if tenant is not None:
                counts[(TENANT_REQUESTS, tenant, cache)] += n
        for (route, hit), seen in durations.items():
            observed[(DURATION, route, hit)] = seen
        return counts, observed


@dataclass(frozen=True, slots=True)
class Sample:
    """One gauge's value now: name, label values, value."""

    name: str
    labels: tuple[str, ...]
    value: float


class Exporter:
    """The meter's counts and the sampled gauges, as prometheus-client metrics and as the text
    a scrape gets. `totals` gives running totals kept elsewhere (the recorder's) by counter key:
    their growth since the last flush is added."""

    def __init__(
        self,
        meter: Meter,
        sample: Callable[[], Iterable[Sample]],
        totals: Callable[[], dict[tuple[str, ...], int]] = dict,
    ) -> None:
        self.meter = meter
        self.sample = sample
        self.totals = totals
        self.shared_dir = os.environ.get(MULTIPROC_ENV) or None
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.counters = {
            name: PromCounter(name.removesuffix("_total"), text, labels, registry=r)
            for name, (text, labels) in COUNTERS.items()
        }
        self.histograms = {
            name: PromHistogram(name, text, labels, registry=r, buckets=bounds)
            for name, (text, labels, bounds) in HISTOGRAMS.items()
        }
        self.gauges = {
            name: PromGauge(name, text, labels, registry=r, multiprocess_mode=mode)
            for name, (text, labels, mode) in GAUGES.items()
        }
        self._seen_totals: dict[tuple[str, ...], int] = {}
        self._gauge_keys: set[tuple[str, ...]] = set()
        self._task: asyncio.Task[None] | None = None

    def flush(self) -> None:
        """Move the meter's counts, the totals' growth and the gauges' values now into
        prometheus-client (in a worker: into its file, which the others' scrapes read)."""
        counts, observed = self.meter.take()
        for (name, *labels), n in counts.items():
            _child(self.counters[name], labels).inc(n)
        for (name, *labels), seen in observed.items():
            _add_observations(_child(self.histograms[name], labels), seen)
        for key, total in self.totals().items():
            grown = total - self._seen_totals.get(key, 0)
            if grown > 0:
                _child(self.counters[key[0]], key[1:]).inc(grown)
            self._seen_totals[key] = total
        keys = set()
        for s in self.sample():
            key = (s.name, *s.labels)
            keys.add(key)
            _child(self.gauges[s.name], s.labels).set(s.value)
        for name, *labels in self._gauge_keys - keys:  # a tenant, an origin that is gone
            _child(self.gauges[name], labels).set(0)
        self._gauge_keys = keys

    def render(self) -> bytes:
        """The exposition text for a scrape: this process's, or every worker's when they share
        a directory."""
        self.flush()
        return generate_latest(self.registry) if self.shared_dir is None else self._read_shared()

    async def render_async(self) -> bytes:
        """`render`, with the other workers' files read off the event loop."""
        if self.shared_dir is None:
            return self.render()
        self.flush()
        return await asyncio.to_thread(self._read_shared)

    def _read_shared(self) -> bytes:
        machine = CollectorRegistry()
        MultiProcessCollector(machine, self.shared_dir)
        return generate_latest(machine)

    def start(self) -> None:
        """With a shared directory, flush every `FLUSH_EVERY` so other workers' scrapes see
        this one's counts; alone, a scrape flushes, and nothing runs in between."""
        if self.shared_dir is not None and self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._flush_forever())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        if self.shared_dir is not None:
            self.flush()  # the last counts stay in this worker's file for the others' scrapes

    async def _flush_forever(self) -> None:
        while True:
            await asyncio.sleep(FLUSH_EVERY)
            self.flush()


def _child(metric: Any, labels: Iterable[str]) -> Any:
    values = tuple(labels)
    return metric.labels(*values) if values else metric


def _add_observations(histogram: Any, seen: Observations) -> None:
    """Add many observations to a prometheus-client histogram at once. Its `observe()` takes one
    value; a histogram keeps a sum and a count per bucket (not cumulative, the last is +Inf),
    which is what `Observations` holds, so those are added to. The test that scrapes /metrics
    checks the buckets, so a change in prometheus-client shows there."""
    histogram._sum.inc(seen.total)
    for bucket, n in zip(histogram._buckets, seen.counts, strict=True):
        if n:
            bucket.inc(n)
