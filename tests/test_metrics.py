"""/metrics: the meter and exporter against prometheus-client's own arithmetic, then a real
gateway, origin and admin listener scraped with prometheus-client's parser after a known
sequence of requests. (Two worker processes summed in one scrape: tests/test_workers.py.)"""

from __future__ import annotations

import asyncio
import gc
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import pytest
from aiohttp.test_utils import TestServer
from hypothesis import given
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry, Histogram, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from gateway.metrics import (
    COUNTERS,
    GAUGES,
    HISTOGRAMS,
    NAMES,
    REQUEST_BOUNDS,
    Exporter,
    Meter,
    Sample,
)
from gateway.server import Gateway
from tests.conftest import GatewayFactory, eventually
from tests.echo_origin import echo_state
from tests.processes import free_port
from tests.test_gateway_http import get, spec

TOKEN = "metrics-test-admin"
CACHED = "Cache-Control:max-age=60"

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def parse(text: str) -> Samples:
    """Every sample of an exposition, by name and label set."""
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def value(samples: Samples, name: str, **labels: str) -> float:
    """One sample's value; 0 when the series does not exist (nothing counted yet)."""
    return samples.get((name, frozenset(labels.items())), 0.0)


# ---------------------------------------------------------------- meter and exporter


def exposition_of(exporter: Exporter) -> Samples:
    return parse(exporter.render().decode())


@given(st.lists(st.floats(min_value=0, max_value=100, allow_nan=False), max_size=60),
       st.integers(min_value=0, max_value=3))
def test_batched_observations_expose_what_one_by_one_observations_do(
    values: list[float], flushes: int
) -> None:
    """The exporter adds a batch of observations to prometheus-client's histogram buckets
    itself (gateway/metrics.py `_add_observations`): the exposition must be the one
    prometheus-client makes from the same values observed one at a time, however the values
    are split between flushes."""
    meter = Meter()
    exporter = Exporter(meter, list)
    direct = CollectorRegistry()
    name = "gateway_request_duration_seconds"
    reference = Histogram(name, "x", HISTOGRAMS[name][1], buckets=REQUEST_BOUNDS,
                          registry=direct)
    for i, v in enumerate(values):
        meter.observe((name, "r", "hit"), v)
        reference.labels("r", "hit").observe(v)
        if flushes and i % (flushes + 1) == 0:
            exporter.flush()
    ours = exposition_of(exporter)
    theirs = parse(generate_latest(direct).decode())
    mine = {k: v for k, v in ours.items() if k[0].startswith(name)}
    assert mine.keys() == theirs.keys()
    for key, expected in theirs.items():
        assert mine[key] == pytest.approx(expected, rel=1e-9, abs=1e-9), key


def test_counts_are_moved_once_and_running_totals_add_only_their_growth() -> None:
    meter = Meter()
    totals = {("gateway_collapsed_total",): 3}
    exporter = Exporter(meter, list, lambda: dict(totals))
    meter.count(("gateway_requests_total", "r", "HIT", "2xx"), 2)
    assert value(exposition_of(exporter), "gateway_collapsed_total") == 3
    meter.count(("gateway_requests_total", "r", "HIT", "2xx"))
    totals[("gateway_collapsed_total",)] = 5
    after = exposition_of(exporter)
    assert value(after, "gateway_requests_total", route="r", cache_status="HIT", code="2xx") == 3
    assert value(after, "gateway_collapsed_total") == 5
    assert value(exposition_of(exporter), "gateway_collapsed_total") == 5  # nothing new: same


def test_a_gauge_whose_labels_are_no_longer_sampled_drops_to_zero() -> None:
    now = [Sample("gateway_cache_bytes", ("memory", "a"), 10.0),
           Sample("gateway_cache_bytes", ("memory", "b"), 20.0)]
    exporter = Exporter(Meter(), lambda: list(now))
    assert value(exposition_of(exporter), "gateway_cache_bytes", tier="memory", tenant="a") == 10
    now.pop(0)
    samples = exposition_of(exporter)
    assert value(samples, "gateway_cache_bytes", tier="memory", tenant="a") == 0
    assert value(samples, "gateway_cache_bytes", tier="memory", tenant="b") == 20


def test_every_declared_name_comes_out_of_a_scrape_as_declared() -> None:
    """NAMES is what deploy/ (alerts, dashboard) may use: each must come out of a scrape, once
    it has a value, under exactly that name."""
    meter = Meter()
    exporter = Exporter(
        meter, lambda: [Sample(n, ("x",) * len(g[1]), 1.0) for n, g in GAUGES.items()]
    )
    for name, (_, labels) in COUNTERS.items():
        meter.count((name, *("x",) * len(labels)))
    for name, (_, labels, _bounds) in HISTOGRAMS.items():
        meter.observe((name, *("x",) * len(labels)), 0.1)
    exposed = {
        name.removesuffix("_bucket").removesuffix("_sum").removesuffix("_count")
        for name in names_in(exposition_of(exporter))
    }
    assert exposed == NAMES


# ---------------------------------------------------------------- a real gateway


def gateway_yaml(origin: TestServer, dead_port: int, extra_admin: str = "") -> str:
    return f"""\
listen: 127.0.0.1:0
access_log: off
admin:
  listen: 127.0.0.1:0
  tokens: [{{name: ops, token: "{TOKEN}", tenants: ["*"]}}]
  {extra_admin}
tenants:
  p1: {{max_bytes: 1MiB}}
cache: {{name: edge, memory: {{max_bytes: 4MiB}}}}
origins:
  o: {{url: "{str(origin.make_url('')).rstrip('/')}", max_concurrency: 7, retries: 0}}
  dead: {{url: "http://127.0.0.1:{dead_port}", connect_timeout: 1s, retries: 0}}
routes:
  - name: dead
    match: {{path_prefix: /dead/}}
    origin: dead
  - name: all
    match: {{path_prefix: /}}
    origin: o
    tenant: {{query: projectId}}
"""


@dataclass
class Stack:
    """A gateway (public and admin listeners) in front of the echo origin."""

    gw: TestServer
    gateway: Gateway
    admin: TestServer
    echo: TestServer


StackFactory = Callable[..., Awaitable[Stack]]


@pytest.fixture
def start(
    make_gateway: GatewayFactory,
    echo_origin: TestServer,
    start_admin: Callable[[Gateway], Awaitable[TestServer]],
) -> StackFactory:
    """`await start(edit=..., extra_admin=...)`: `gateway_yaml`, changed by `edit`, served."""

    async def go(edit: Callable[[str], str] = str, extra_admin: str = "") -> Stack:
        text = edit(gateway_yaml(echo_origin, free_port(), extra_admin))
        gw, gateway = await make_gateway("", yaml_text=text)
        return Stack(gw, gateway, await start_admin(gateway), echo_origin)

    return go


async def scrape(
    http: aiohttp.ClientSession, admin: TestServer, token: str | None = None
) -> Samples:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    async with http.get(admin.make_url("/metrics"), headers=headers) as resp:
        assert resp.status == 200, await resp.text()
        assert resp.headers["Content-Type"].startswith("text/plain; version=")
        return parse(await resp.text())


async def test_a_scrape_counts_a_miss_two_hits_a_stampede_and_origin_failures(
    start: StackFactory,
    http: aiohttp.ClientSession,
) -> None:
    stack = await start()
    gw, admin, origin = stack.gw, stack.admin, stack.echo
    page = spec("/a", CACHED, projectId="p1")
    statuses = [(await get(http, gw, page))[0].headers["X-Cache"] for _ in range(3)]
    assert statuses == ["MISS", "HIT", "HIT"]

    held = spec("/s", CACHED, projectId="p1", hold="s")
    echo_state(origin).gate("s").clear()
    stampede = [asyncio.ensure_future(get(http, gw, held)) for _ in range(5)]
    await eventually(lambda: echo_state(origin).in_flight == 1, "the fill at the origin")
    during = await scrape(http, admin)
    assert value(during, "gateway_origin_in_flight", origin="o") == 1
    echo_state(origin).gate("s").set()
    answers = await asyncio.gather(*stampede)
    assert all(resp.status == 200 for resp, _ in answers)

    assert (await get(http, gw, "/dead/x"))[0].status == 502
    assert (await get(http, gw, spec("/e", status="503")))[0].status == 503
    assert (await get(http, gw, "/a", data=b"x"))[0].status == 400  # refused before routing

    after = await scrape(http, admin)
    requests = "gateway_requests_total"
    assert value(after, requests, route="all", cache_status="HIT", code="2xx") == 2
    assert value(after, requests, route="all", cache_status="MISS", code="2xx") == 6
    assert value(after, requests, route="dead", cache_status="MISS", code="5xx") == 1
    assert value(after, requests, route="all", cache_status="MISS", code="5xx") == 1
    assert value(after, requests, route="none", cache_status="NONE", code="4xx") == 1
    assert value(after, "gateway_tenant_requests_total", tenant="p1", cache_status="HIT") == 2
    assert value(after, "gateway_collapsed_total") == 4
    fetches = "gateway_origin_fetches_total"
    assert value(after, fetches, origin="o", status="200") == 2
    assert value(after, fetches, origin="o", status="503") == 1
    assert value(after, fetches, origin="dead", status="unreachable") == 1
    duration = "gateway_request_duration_seconds"
    assert value(after, duration + "_count", route="all", cache="hit") == 2
    assert value(after, duration + "_count", route="all", cache="miss") == 7
    assert value(after, duration + "_bucket", route="all", cache="hit", le="+Inf") == 2
    assert 0 < value(after, duration + "_sum", route="all", cache="hit") < 5
    assert value(after, "gateway_origin_fetch_duration_seconds_count", origin="o") == 3
    assert value(after, "gateway_origin_in_flight", origin="o") == 0
    assert value(after, "gateway_origin_concurrency_limit", origin="o") == 7
    assert value(after, "gateway_cache_entries", tier="memory") == 2
    assert value(after, "gateway_cache_bytes", tier="memory", tenant="p1") > 0
    assert value(after, "gateway_breaker_open", origin="dead") == 0


async def test_an_open_breaker_and_its_refusals_show(
    start: StackFactory,
    http: aiohttp.ClientSession,
    caplog: pytest.LogCaptureFixture,
) -> None:
    stack = await start(lambda text: text.replace(
        "connect_timeout: 1s, retries: 0", "connect_timeout: 1s, retries: 0,"
        " breaker: {failures: 2, reset: 30s}"
    ).replace("origin: dead\n", "origin: dead\n    cache: false\n"))
    gw, admin = stack.gw, stack.admin
    answers = [(await get(http, gw, f"/dead/{i}"))[0] for i in range(4)]
    assert [resp.status for resp in answers] == [502, 502, 503, 503]
    assert {resp.headers["X-Cache"] for resp in answers} == {"BYPASS"}  # an uncached route
    samples = await scrape(http, admin)
    assert value(samples, "gateway_requests_total", route="dead", cache_status="BYPASS",
                 code="5xx") == 4
    assert value(samples, "gateway_breaker_open", origin="dead") == 1
    assert value(samples, "gateway_origin_rejected_total", origin="dead",
                 reason="circuit_open") == 2
    assert value(samples, "gateway_origin_fetches_total", origin="dead",
                 status="unreachable") == 2
    opened = [r for r in caplog.records if "circuit breaker closed -> open" in r.getMessage()]
    assert len(opened) == 1 and opened[0].levelname == "ERROR"
    failures = [r for r in caplog.records if r.getMessage().startswith("origin dead: GET /dead/")]
    assert len(failures) == 2


async def test_evictions_are_counted_by_tenant_and_bound(
    start: StackFactory,
    http: aiohttp.ClientSession,
) -> None:
    stack = await start(lambda text: text.replace(
        "p1: {max_bytes: 1MiB}", "p1: {max_bytes: 300KiB}"
    ))
    gw, gateway, admin = stack.gw, stack.gateway, stack.admin
    for i in range(8):  # 100 KiB each: p1's quota holds two or three
        resp, _ = await get(http, gw, spec(f"/big{i}", CACHED, projectId="p1",
                                           body="size:102400"))
        assert resp.status == 200
        await get(http, gw, spec(f"/big{i}", CACHED, projectId="p1", body="size:102400"))
    samples = await scrape(http, admin)
    evicted = value(samples, "gateway_cache_evictions_total", tenant="p1", reason="quota")
    assert evicted > 0
    assert evicted == gateway.stats()["store"]["evictions"]  # type: ignore[index]
    assert value(samples, "gateway_cache_bytes", tier="memory", tenant="p1") <= 300 * 1024


async def test_garbage_collection_pauses_show_in_stats_and_metrics(
    start: StackFactory,
    http: aiohttp.ClientSession,
) -> None:
    """A started gateway times every collection: the longest in /admin/stats, each pause in
    gateway_gc_pause_seconds by generation, the longest as a gauge."""
    stack = await start()
    gc.collect()  # one full collection at least
    samples = await scrape(http, stack.admin)
    assert value(samples, "gateway_gc_pause_seconds_count", generation="2") >= 1
    assert value(samples, "gateway_gc_pause_seconds_sum", generation="2") > 0
    longest = value(samples, "gateway_gc_pause_max_seconds")
    assert longest > 0
    async with http.get(stack.admin.make_url("/admin/stats"),
                        headers={"Authorization": "Bearer " + TOKEN}) as resp:
        stats = (await resp.json())["gc"]
    assert stats["by_generation"]["2"]["collections"] >= 1
    assert stats["pause_max_seconds"] >= round(longest, 6)
    assert stats["collections"] >= stats["by_generation"]["2"]["collections"]


async def test_a_tenant_purged_to_nothing_holds_zero_bytes_in_the_next_scrape(
    start: StackFactory,
    http: aiohttp.ClientSession,
) -> None:
    stack = await start()
    gw, gateway, admin = stack.gw, stack.gateway, stack.admin
    await get(http, gw, spec("/a", CACHED, projectId="p1"))
    assert value(await scrape(http, admin), "gateway_cache_bytes", tier="memory",
                 tenant="p1") > 0
    await gateway.purge("p1")
    samples = await scrape(http, admin)
    assert value(samples, "gateway_cache_bytes", tier="memory", tenant="p1") == 0
    assert value(samples, "gateway_cache_entries", tier="memory") == 0


async def test_metrics_token_is_required_once_configured(
    start: StackFactory,
    http: aiohttp.ClientSession,
) -> None:
    admin = (await start(extra_admin='metrics_token: "scrape-me"')).admin
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": f"Bearer {TOKEN}"}):
        async with http.get(admin.make_url("/metrics"), headers=headers) as resp:
            assert resp.status == 401
            assert (await resp.json())["error"] == "missing or invalid bearer token"
    assert "gateway_origin_concurrency_limit" in {
        name for name, _ in await scrape(http, admin, "scrape-me")
    }


async def test_metrics_is_open_without_a_token_and_never_cached(
    start: StackFactory,
    http: aiohttp.ClientSession,
) -> None:
    admin = (await start()).admin
    async with http.get(admin.make_url("/metrics")) as resp:
        assert resp.status == 200
        assert resp.headers["Cache-Control"] == "no-store"


def names_in(samples: Iterable[tuple[str, frozenset[tuple[str, str]]]]) -> set[str]:
    return {name for name, _ in samples}


async def test_a_gateway_stopped_and_started_again_in_one_process_counts_afresh(
    tmp_path: Path, echo_origin: TestServer
) -> None:
    """Each Gateway has its own registry: tests (and an embedding program) may run several."""
    from gateway.config import load_config

    path = tmp_path / "g.yaml"
    path.write_text(gateway_yaml(echo_origin, free_port()))
    first, second = Gateway(load_config(path, env={})), Gateway(load_config(path, env={}))
    first.meter.count(("gateway_requests_total", "all", "HIT", "2xx"))
    one = parse(first.exporter.render().decode())
    two = parse(second.exporter.render().decode())
    assert value(one, "gateway_requests_total", route="all", cache_status="HIT", code="2xx") == 1
    assert value(two, "gateway_requests_total", route="all", cache_status="HIT", code="2xx") == 0
    assert "gateway_origin_concurrency_limit" in names_in(two)
