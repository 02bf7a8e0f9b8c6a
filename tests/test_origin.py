"""Tests for the demo loader origin: caching headers, validators, stats, faults, CLI."""

from __future__ import annotations

import asyncio
import re
import socket
from email.utils import parsedate_to_datetime
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient
from pytest_aiohttp import AiohttpClient, AiohttpServer

import origin.app as origin_app
from origin.app import STATE, OriginState, create_app
from origin.settings import OriginSettings
from tests.conftest import eventually
from tests.processes import fetch, free_port, run_module, serving

PUBLISHED = "/api/v1/loader/code/published?projectId={p}&platform=react"
VERSIONED = "/api/v1/loader/code/versioned?projectId={p}&version={v}"
CODEGEN = 0.05


def make_app(**overrides: Any) -> web.Application:
    values: dict[str, Any] = {"codegen_seconds": CODEGEN, "projects": 5}
    values.update(overrides)
    return create_app(OriginSettings(**values))


@pytest.fixture
async def client(aiohttp_client: AiohttpClient) -> TestClient[Any, Any]:
    return await aiohttp_client(make_app())


async def stats(client: TestClient[Any, Any]) -> dict[str, Any]:
    resp = await client.get("/__stats")
    assert resp.status == 200
    data: dict[str, Any] = await resp.json()
    return data


async def set_faults(client: TestClient[Any, Any], **faults: Any) -> dict[str, Any]:
    resp = await client.post("/__faults", json=faults)
    assert resp.status == 200, await resp.text()
    data: dict[str, Any] = await resp.json()
    return data


def state_of(client: TestClient[Any, Any]) -> OriginState:
    assert client.app is not None
    return client.app[STATE]


async def test_published_bundle_headers(client: TestClient[Any, Any]) -> None:
    resp = await client.get(PUBLISHED.format(p="p1"))
    body = await resp.read()
    assert resp.status == 200
    assert resp.headers["Content-Type"] == "application/javascript"
    assert resp.headers["Cache-Control"] == "public, s-maxage=30, stale-while-revalidate=60"
    assert re.fullmatch(r'"[0-9a-f]{32}"', resp.headers["ETag"])
    assert resp.headers["Surrogate-Key"] == "project:p1 project:p1:v1"
    assert parsedate_to_datetime(resp.headers["Last-Modified"]).tzinfo is not None
    assert parsedate_to_datetime(resp.headers["Date"]).tzinfo is not None
    assert 30_000 <= len(body) <= 60_000
    assert body.startswith(b"/*! loader bundle project=p1 version=1 platform=react")

    again = await client.get(PUBLISHED.format(p="p1"))
    assert await again.read() == body
    assert again.headers["ETag"] == resp.headers["ETag"]
    data = await stats(client)
    assert data["codegen_runs"] == 1
    assert data["db_queries"] == 4  # project lookup + latest version, twice


async def test_swr_zero_omits_directive(aiohttp_client: AiohttpClient) -> None:
    client = await aiohttp_client(make_app(swr=0, s_maxage=5))
    resp = await client.get(PUBLISHED.format(p="p2"))
    assert resp.headers["Cache-Control"] == "public, s-maxage=5"


async def test_conditional_requests(client: TestClient[Any, Any]) -> None:
    first = await client.get(PUBLISHED.format(p="p1"))
    etag, last_modified = first.headers["ETag"], first.headers["Last-Modified"]
    url = PUBLISHED.format(p="p1")

    for inm in (etag, f"W/{etag}", f'"nope", {etag}', "*"):
        resp = await client.get(url, headers={"If-None-Match": inm})
        assert resp.status == 304, inm
        assert await resp.read() == b""
        assert resp.headers["ETag"] == etag
        assert resp.headers["Last-Modified"] == last_modified
        assert resp.headers["Cache-Control"].startswith("public, s-maxage=30")

    resp = await client.get(url, headers={"If-None-Match": '"other"'})
    assert resp.status == 200
    resp = await client.get(url, headers={"If-Modified-Since": last_modified})
    assert resp.status == 304
    resp = await client.get(url, headers={"If-Modified-Since": "Thu, 01 Jan 1998 00:00:00 GMT"})
    assert resp.status == 200
    both = {"If-None-Match": '"other"', "If-Modified-Since": last_modified}
    assert (await client.get(url, headers=both)).status == 200
    assert (await stats(client))["not_modified"] == 5


async def test_bad_requests_are_json(client: TestClient[Any, Any]) -> None:
    resp = await client.get("/api/v1/loader/code/published?platform=react")
    assert resp.status == 400
    assert "projectId" in (await resp.json())["error"]
    resp = await client.get(PUBLISHED.format(p="nope"))
    assert resp.status == 404
    assert resp.content_type == "application/json"
    assert "error" in await resp.json()
    resp = await client.get("/no/such/path")
    assert resp.status == 404
    assert "error" in await resp.json()
    resp = await client.put("/api/v1/loader/code/published")
    assert resp.status == 405
    assert "error" in await resp.json()


async def test_unhandled_error_is_json_500(client: TestClient[Any, Any]) -> None:
    async def boom(project_id: str) -> None:
        raise RuntimeError("db exploded")

    state_of(client).db.latest_published = boom  # type: ignore[assignment,method-assign]
    resp = await client.get(PUBLISHED.format(p="p1"))
    assert resp.status == 500
    assert await resp.json() == {"error": "internal server error", "status": 500}


async def test_versioned_is_immutable(client: TestClient[Any, Any]) -> None:
    resp = await client.get(VERSIONED.format(p="p3", v=1))
    assert resp.status == 200
    assert resp.headers["Cache-Control"] == "public, max-age=31536000, immutable"
    assert "ETag" in resp.headers and "Last-Modified" in resp.headers
    assert len(await resp.read()) >= 30_000
    assert (await client.get(VERSIONED.format(p="p3", v=2))).status == 404
    assert (await client.get(VERSIONED.format(p="zz", v=1))).status == 404
    assert (await client.get(VERSIONED.format(p="p3", v="x"))).status == 400


async def test_data_source_is_private_and_unique(client: TestClient[Any, Any]) -> None:
    url = "/api/v1/server-data/sources/orders/execute"
    first = await client.post(url, json={"limit": 3})
    second = await client.post(url)
    assert first.status == second.status == 200
    assert first.headers["Cache-Control"] == "private, no-store"
    a, b = await first.json(), await second.json()
    assert a["requestId"] != b["requestId"]
    assert a["sequence"] != b["sequence"]
    assert a["sourceId"] == "orders"
    assert len(a["rows"]) == 3 and a["rows"][0]["projectId"] == "p1"
    bad = await client.post(url, data=b"{not json", headers={"Content-Type": "application/json"})
    assert bad.status == 400


async def test_publish_serves_new_version(client: TestClient[Any, Any]) -> None:
    old = await client.get(PUBLISHED.format(p="p1"))
    old_etag = old.headers["ETag"]
    resp = await client.post("/api/v1/projects/p1/publish")
    assert resp.status == 200
    data = await resp.json()
    assert data["projectId"] == "p1" and data["version"] == 2
    assert data["gateway_notified"] is None

    new = await client.get(PUBLISHED.format(p="p1"), headers={"If-None-Match": old_etag})
    assert new.status == 200
    assert new.headers["ETag"] != old_etag
    assert new.headers["Surrogate-Key"] == "project:p1 project:p1:v2"
    assert b"version=2" in (await new.read())[:120]
    assert parsedate_to_datetime(new.headers["Last-Modified"]) > parsedate_to_datetime(
        old.headers["Last-Modified"]
    )
    assert (await stats(client))["codegen_runs"] == 2
    assert (await client.get(VERSIONED.format(p="p1", v=2))).status == 200
    assert (await client.post("/api/v1/projects/nope/publish")).status == 404


async def test_publish_notifies_gateway(aiohttp_server: AiohttpServer) -> None:
    seen: list[tuple[str | None, Any]] = []

    async def bust(request: web.Request) -> web.Response:
        seen.append((request.headers.get("Authorization"), await request.json()))
        return web.json_response({"ok": True})

    admin = web.Application()
    admin.router.add_post("/admin/bust", bust)
    gateway = await aiohttp_server(admin)
    origin = await aiohttp_server(
        make_app(gateway_admin=str(gateway.make_url("")), gateway_token="s3cret")
    )
    async with TestClient(origin) as client:
        data = await (await client.post("/api/v1/projects/p2/publish")).json()
    assert data["gateway_notified"] is True
    assert seen == [("Bearer s3cret", {"tenant": "p2", "soft": True})]

    unreachable = make_app(gateway_admin=f"http://127.0.0.1:{free_port()}", gateway_token="t")
    async with TestClient(await aiohttp_server(unreachable)) as client:
        data = await (await client.post("/api/v1/projects/p2/publish")).json()
    assert data == {**data, "version": 2, "gateway_notified": False}


async def test_stats_keys_and_reset(client: TestClient[Any, Any]) -> None:
    await client.get(PUBLISHED.format(p="p4"))
    await client.get("/healthz")
    data = await stats(client)
    for key in (
        "requests_total", "requests_by_path", "codegen_runs", "db_queries",
        "db_pool_in_use_max", "db_pool_waits", "in_flight", "in_flight_max",
        "requests_by_method", "not_modified",
    ):
        assert key in data, key
    assert data["requests_total"] == 1
    assert data["requests_by_path"] == {PUBLISHED.format(p="p4"): 1}
    assert data["requests_by_method"] == {"GET": 1}
    assert data["in_flight"] == 0 and data["in_flight_max"] == 1
    assert data["db_pool_in_use_max"] == 1

    resp = await client.post("/__stats/reset")
    zeroed = await resp.json()
    for key in ("requests_total", "codegen_runs", "db_queries", "db_pool_in_use_max",
                "db_pool_waits", "in_flight_max", "not_modified"):
        assert zeroed[key] == 0, key
    assert zeroed["requests_by_path"] == {}
    assert (await stats(client))["requests_total"] == 0


async def test_fault_status_and_reset(client: TestClient[Any, Any]) -> None:
    assert await set_faults(client, status=503) == {
        "delay_seconds": 0.0, "status": 503, "fail_rate": 0.0, "drop": False,
    }
    resp = await client.get(PUBLISHED.format(p="p1"))
    assert resp.status == 503
    assert "error" in await resp.json()
    assert (await client.get("/healthz")).status == 200
    data = await stats(client)
    assert data["requests_total"] == 1 and data["codegen_runs"] == 0
    await set_faults(client, reset=True)
    assert (await client.get(PUBLISHED.format(p="p1"))).status == 200


async def test_fault_delay(client: TestClient[Any, Any], monkeypatch: pytest.MonkeyPatch) -> None:
    """The delay fault holds each counted request for `delay_seconds` before it is handled, and
    never a control endpoint. The origin's sleep is replaced by one the test lets go of, so what
    is asserted is that the request waits and for how long it was told to, not a stopwatch."""
    asked: list[float] = []
    release = asyncio.Event()

    async def held(seconds: float) -> None:
        asked.append(seconds)
        await release.wait()

    monkeypatch.setattr(origin_app, "asyncio", SimpleNamespace(**{**vars(asyncio), "sleep": held}))
    assert (await client.get(PUBLISHED.format(p="p1"))).status == 200  # no fault: not held
    await set_faults(client, delay_seconds=0.3)
    delayed = asyncio.create_task(client.get(PUBLISHED.format(p="p1")))
    await eventually(lambda: asked == [0.3], "the request is held by the delay")
    data = await stats(client)  # answered while the delayed request is held
    assert (data["in_flight"], data["responses_by_status"]) == (1, {"200": 1})
    release.set()
    assert (await delayed).status == 200
    assert asked == [0.3]
    assert (await stats(client))["responses_by_status"] == {"200": 2}


async def test_fault_fail_rate(client: TestClient[Any, Any]) -> None:
    state_of(client).rng.seed(1234)
    await set_faults(client, fail_rate=0.5)
    statuses = [
        (await client.post("/api/v1/server-data/sources/s/execute")).status for _ in range(40)
    ]
    assert statuses.count(500) > 5 and statuses.count(200) > 5
    assert set(statuses) == {200, 500}
    await set_faults(client, fail_rate=1.0, status=502)
    assert (await client.post("/api/v1/server-data/sources/s/execute")).status == 502


async def test_fault_validation_and_drop(client: TestClient[Any, Any]) -> None:
    bad = await client.post("/__faults", data=b"{oops")
    assert bad.status == 400 and "error" in await bad.json()
    for payload in ({"bogus": 1}, {"status": "x"}, {"fail_rate": 2}, [1]):
        resp = await client.post("/__faults", json=payload)
        assert resp.status == 400, payload
    assert (await client.get("/__faults")).status == 200
    await set_faults(client, drop=True)
    with pytest.raises(aiohttp.ClientConnectionError):
        await client.get(PUBLISHED.format(p="p1"))
    assert (await stats(client))["requests_total"] >= 1


async def test_cold_stampede_is_not_deduplicated(aiohttp_client: AiohttpClient) -> None:
    client = await aiohttp_client(make_app(codegen_seconds=0.2, pool_size=3))
    url = PUBLISHED.format(p="p2")
    responses = await asyncio.gather(*(client.get(url) for _ in range(40)))
    assert {r.status for r in responses} == {200}
    assert len({r.headers["ETag"] for r in responses}) == 1
    data = await stats(client)
    assert data["codegen_runs"] == 40
    assert data["db_pool_in_use_max"] <= 3
    assert data["db_pool_waits"] > 0
    assert data["in_flight_max"] > 3
    assert data["requests_by_path"][url] == 40


def test_cli_help() -> None:
    out = run_module("origin", "--help").stdout
    for flag in ("--host", "--port", "--db", "--projects", "--codegen-seconds",
                 "--s-maxage", "--swr", "--pool-size", "--gateway-admin", "--gateway-token"):
        assert flag in out


def test_cli_serves(tmp_path: Path) -> None:
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    args = ["origin", "--host", "127.0.0.1", "--port", str(port), "--codegen-seconds", "0.1",
            "--projects", "3", "--db", str(tmp_path / "o.db")]
    with serving(args, f"{base}/healthz"):
        status, headers, body = fetch(base + PUBLISHED.format(p="p3"))
        assert status == 200
        assert headers["Surrogate-Key"] == "project:p3 project:p3:v1"
        assert len(body) >= 30_000


def test_a_busy_port_is_one_line_and_a_non_zero_exit() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        done = run_module("origin", "--host", "127.0.0.1", "--port", str(port))
    assert done.returncode == 1
    assert "Traceback" not in done.stderr
    said = done.stderr.strip()
    assert said == f"origin: cannot listen on 127.0.0.1:{port}: Address already in use"
