"""The admin API against a real gateway, its admin listener and real origins on loopback."""

from __future__ import annotations

import json
import logging
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp.test_utils import TestServer

from gateway.config import DEMO_ADMIN_TOKEN
from gateway.server import Gateway
from origin.app import create_app
from origin.settings import OriginSettings
from tests.conftest import GatewayFactory
from tests.test_gateway_http import get, origin_count, spec, until_hit

OPS, ACME = "ops-secret", "acme-secret"
CACHED = "Cache-Control:max-age=60"

ADMIN_YAML = """
listen: 127.0.0.1:0
admin:
  listen: 127.0.0.1:0
  tokens:
    - {{name: ops, token: {ops}, tenants: ["*"]}}
    - {{name: acme-ci, token: {acme}, tenants: [a]}}
cache:
  memory: {{max_bytes: 8MiB, max_object_bytes: 1MiB}}
  bust_grace: 5m
origins:
  o: {{url: "{origin}", read_timeout: 10s}}
routes:
  - name: {route_name}
    match: {{path_prefix: /}}
    origin: o
    tenant: {{query: projectId}}
"""

StartAdmin = Callable[[Gateway], Awaitable[TestServer]]


class Admin:
    """A client of one gateway's admin listener and its public listener."""

    def __init__(self, http: aiohttp.ClientSession, gw: TestServer, admin: TestServer) -> None:
        self.http, self.gw, self.admin = http, gw, admin

    async def call(
        self, path: str, body: Any = None, *, token: str | None = OPS, raw: bytes | None = None
    ) -> tuple[int, dict[str, Any]]:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        data = raw if raw is not None else (None if body is None else json.dumps(body).encode())
        method = "GET" if path == "/admin/stats" else "POST"
        async with self.http.request(
            method, self.admin.make_url(path), data=data, headers=headers
        ) as resp:
            assert resp.content_type == "application/json"
            return resp.status, await resp.json()

    async def x_cache(self, path: str) -> str:
        resp, _ = await get(self.http, self.gw, path)
        return resp.headers["X-Cache"]


def admin_yaml(origin: str, route_name: str = "all") -> str:
    return ADMIN_YAML.format(ops=OPS, acme=ACME, origin=origin.rstrip("/"), route_name=route_name)


@pytest.fixture
async def admin(
    echo_origin: TestServer,
    make_gateway: GatewayFactory,
    start_admin: StartAdmin,
    http: aiohttp.ClientSession,
) -> Admin:
    gw, gateway = await make_gateway("", yaml_text=admin_yaml(str(echo_origin.make_url("/"))))
    return Admin(http, gw, await start_admin(gateway))


async def warm(admin: Admin, *paths: str) -> None:
    for path in paths:
        assert await admin.x_cache(path) == "MISS"
        assert await admin.x_cache(path) == "HIT"


async def test_hard_purge_by_url_misses_and_leaves_other_urls(admin: Admin) -> None:
    one, two = spec("/one", CACHED, projectId="a"), spec("/two", CACHED, projectId="a")
    await warm(admin, one, two)
    status, answer = await admin.call("/admin/purge", {"tenant": "a", "urls": [one]})
    assert (status, answer) == (200, {"purged": 1, "soft": False, "tenant": "a"})
    assert await admin.x_cache(one) == "MISS"
    assert await admin.x_cache(two) == "HIT"


async def test_soft_purge_by_url_serves_stale_once_then_the_refreshed_entry(
    admin: Admin, echo_origin: TestServer
) -> None:
    path = spec("/soft", CACHED, "X-Gen:{n}", projectId="a")
    await warm(admin, path)
    status, answer = await admin.call("/admin/purge", {"tenant": "a", "urls": [path], "soft": True})
    assert (status, answer["purged"], answer["soft"]) == (200, 1, True)
    assert await admin.x_cache(path) == "UPDATING"
    assert (await until_hit(admin.http, admin.gw, path))[0].headers["X-Cache"] == "HIT"
    resp, _ = await get(admin.http, admin.gw, path)
    assert resp.headers["X-Gen"] == "2"
    assert await origin_count(echo_origin) == 2


async def test_purge_by_prefix_hard_and_soft_touch_only_that_prefix(admin: Admin) -> None:
    js1, js2 = spec("/js/a", CACHED, projectId="a"), spec("/js/b", CACHED, projectId="a")
    css = spec("/css/a", CACHED, projectId="a")
    await warm(admin, js1, js2, css)
    soft = {"tenant": "a", "prefix": "/js/", "soft": True}
    status, answer = await admin.call("/admin/purge", soft)
    assert (status, answer["purged"]) == (200, 2)
    assert await admin.x_cache(js1) == "UPDATING"
    assert await admin.x_cache(css) == "HIT"
    status, answer = await admin.call("/admin/purge", {"tenant": "a", "prefix": "/js/"})
    assert (status, answer["purged"]) == (200, 2)
    assert await admin.x_cache(js2) == "MISS"
    assert await admin.x_cache(css) == "HIT"


async def test_purge_by_tag_hard_and_soft(admin: Admin) -> None:
    red = spec("/red", CACHED, "Surrogate-Key:red shared", projectId="a")
    blue = spec("/blue", CACHED, "Cache-Tag:blue,shared", projectId="a")
    grey = spec("/grey", CACHED, "Surrogate-Key:grey", projectId="a")
    await warm(admin, red, blue, grey)
    soft = {"tenant": "a", "tags": ["red"], "soft": True}
    status, answer = await admin.call("/admin/purge", soft)
    assert (status, answer["purged"]) == (200, 1)
    assert await admin.x_cache(red) == "UPDATING"
    assert await admin.x_cache(blue) == "HIT"
    status, answer = await admin.call("/admin/purge", {"tenant": "a", "tags": ["shared"]})
    assert (status, answer["purged"]) == (200, 2)
    assert await admin.x_cache(blue) == "MISS"
    assert await admin.x_cache(grey) == "HIT"


async def test_purge_of_a_namespace_hard_and_soft_spares_other_tenants(admin: Admin) -> None:
    a1, a2 = spec("/n1", CACHED, projectId="a"), spec("/n2", CACHED, projectId="a")
    b1 = spec("/n1", CACHED, projectId="b")
    await warm(admin, a1, a2, b1)
    status, answer = await admin.call("/admin/purge", {"tenant": "a", "soft": True})
    assert (status, answer["purged"]) == (200, 2)
    assert await admin.x_cache(a1) == "UPDATING"
    status, answer = await admin.call("/admin/purge", {"tenant": "a"})
    assert (status, answer["purged"]) == (200, 2)
    assert await admin.x_cache(a2) == "MISS"
    assert await admin.x_cache(b1) == "HIT"


async def test_bust_hard_and_soft_for_a_tenant_and_for_everyone(admin: Admin) -> None:
    a, b = spec("/g", CACHED, projectId="a"), spec("/g", CACHED, projectId="b")
    await warm(admin, a, b)
    status, answer = await admin.call("/admin/bust", {"tenant": "a", "soft": True})
    assert status == 200
    assert answer["tenant"] == "a" and answer["busted"] == "soft" and answer["soft"] >= 1
    assert await admin.x_cache(a) == "UPDATING"
    assert await admin.x_cache(b) == "HIT"
    status, answer = await admin.call("/admin/bust", {"tenant": "a"})
    assert (status, answer["busted"], answer["hard"]) == (200, "hard", 1)
    assert await admin.x_cache(a) == "MISS"
    assert await admin.x_cache(b) == "HIT"
    status, answer = await admin.call("/admin/bust", {"tenant": "*"})
    assert (status, answer["tenant"], answer["hard"]) == (200, "*", 1)
    assert await admin.x_cache(b) == "MISS"


async def test_scoped_token_gets_403_on_another_tenant_and_its_entries_survive(
    admin: Admin,
) -> None:
    a, b = spec("/s", CACHED, projectId="a"), spec("/s", CACHED, projectId="b")
    await warm(admin, a, b)
    for path, body in (
        ("/admin/purge", {"tenant": "b"}),
        ("/admin/purge", {"tenant": "b", "urls": [b]}),
        ("/admin/bust", {"tenant": "b"}),
        ("/admin/bust", {"tenant": "*"}),
        ("/admin/reload", {}),
    ):
        status, answer = await admin.call(path, body, token=ACME)
        assert status == 403, (path, body)
        assert "acme-ci" in answer["error"]
    assert await admin.x_cache(b) == "HIT"
    status, answer = await admin.call("/admin/purge", {"tenant": "a"}, token=ACME)
    assert (status, answer["purged"]) == (200, 1)
    status, answer = await admin.call("/admin/stats", token=ACME)
    assert status == 200 and set(answer) == {"tenants"} and set(answer["tenants"]) == {"a"}


async def test_missing_or_wrong_token_gets_401_and_changes_nothing(admin: Admin) -> None:
    path = spec("/auth", CACHED, projectId="a")
    await warm(admin, path)
    for token in (None, "wrong", OPS + "x"):
        status, answer = await admin.call("/admin/purge", {"tenant": "a"}, token=token)
        assert status == 401 and answer["error"] == "missing or invalid bearer token"
    assert await admin.x_cache(path) == "HIT"


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        (b"{not json", "not valid JSON"),
        (b"[1, 2]", "must be a JSON object"),
        (b'{"tenant": "a", "url": ["/x"]}', "url: unknown field"),
        (b'{"tenant": "../etc"}', "invalid tenant"),
        (b'{"tenant": "*"}', "invalid tenant"),
        (b'{"tenant": "a", "soft": "yes"}', "soft"),
        (b'{"tenant": "a", "urls": ["/x"], "tags": ["t"]}', "at most one of urls, prefix, tags"),
        (b'{"tenant": "a", "urls": []}', "urls"),
        (b'{"tenant": "a", "prefix": "js/"}', "prefix must start with"),
        (b'{"soft": true}', "tenant: field required"),
        (b'{"tenant": "a", "urls": ["https://[::1"]}', "invalid URL"),
        (b'{"tenant": "a", "urls": ["http://a b/x"]}', "invalid URL"),
        (b'{"tenant": "a", "urls": ["http://user@a/x"]}', "invalid URL"),
        (b'{"tenant": "a", "urls": ["http://a:99x/"]}', "invalid URL"),
        (b'{"tenant": ' + b"[" * 100_000 + b"]" * 100_000 + b"}", "not valid JSON"),
        (b'{"tenant": {"a": {"b": [1, {"c": null}]}}}', "tenant"),
        (b'{"tenant": "a", "urls": [["/x"]]}', "urls"),
    ],
)
async def test_bad_purge_request_is_a_400_with_a_json_reason_and_changes_nothing(
    admin: Admin, body: bytes, reason: str
) -> None:
    path = spec("/bad", CACHED, projectId="a")
    await warm(admin, path)
    status, answer = await admin.call("/admin/purge", raw=body)
    assert status == 400
    assert reason in answer["error"], answer
    assert await admin.x_cache(path) == "HIT"


async def test_unknown_admin_path_is_a_json_404(admin: Admin) -> None:
    status, answer = await admin.call("/admin/nope", {})
    assert (status, answer["status"]) == (404, 404)


async def test_admin_actions_are_logged_as_one_structured_line(
    admin: Admin, caplog: pytest.LogCaptureFixture
) -> None:
    path = spec("/log", CACHED, projectId="a")
    await warm(admin, path)
    with caplog.at_level(logging.INFO, logger="gateway.audit"):
        await admin.call("/admin/purge", {"tenant": "a", "tags": ["x"], "soft": True})
    records = [json.loads(r.getMessage()) for r in caplog.records if r.name == "gateway.audit"]
    assert records == [
        {
            "event": "admin",
            "who": "ops",
            "action": "purge",
            "tenant": "a",
            "scope": "tags",
            "soft": True,
            "purged": 0,
        }
    ]
    assert OPS not in caplog.text


async def test_reload_of_a_broken_file_keeps_the_old_routes_and_names_the_line(
    admin: Admin, tmp_path: Path
) -> None:
    path = spec("/r", CACHED, projectId="a")
    await warm(admin, path)
    config_file = tmp_path / "gateway.yaml"
    good = config_file.read_text()
    config_file.write_text(good.replace("origin: o\n", "origin: o\n    surprise: 1\n"))
    status, answer = await admin.call("/admin/reload", {})
    assert status == 400
    assert answer["error"].startswith("config not reloaded")
    [issue] = answer["issues"]
    assert issue["file"] == str(config_file)
    assert issue["field"] == "routes[0].surprise"
    assert issue["line"] == good.splitlines().index("    origin: o") + 2
    assert await admin.x_cache(path) == "HIT"


async def test_reload_that_brings_in_the_demo_token_is_refused_outside_the_demo(
    admin: Admin, tmp_path: Path
) -> None:
    config_file = tmp_path / "gateway.yaml"
    config_file.write_text(config_file.read_text().replace(OPS, DEMO_ADMIN_TOKEN))
    status, answer = await admin.call("/admin/reload", {})
    assert status == 400
    [issue] = answer["issues"]
    assert issue["field"] == "admin.tokens" and "--demo" in issue["message"]
    status, _ = await admin.call("/admin/stats")
    assert status == 200  # the running tokens are kept


@pytest.mark.parametrize("text", ["", "# only a comment\n", "routes: []\n"])
async def test_reload_of_a_file_without_routes_is_refused_and_keeps_serving(
    admin: Admin, tmp_path: Path, text: str
) -> None:
    path = spec("/kept", CACHED, projectId="a")
    await warm(admin, path)
    (tmp_path / "gateway.yaml").write_text(text)
    status, answer = await admin.call("/admin/reload", {})
    assert status == 400
    assert [i["field"] for i in answer["issues"]] == ["routes"]
    assert await admin.x_cache(path) == "HIT"


async def test_reload_of_a_good_file_takes_the_new_routes(
    admin: Admin, tmp_path: Path
) -> None:
    config_file = tmp_path / "gateway.yaml"
    text = config_file.read_text()
    config_file.write_text(text.replace("path_prefix: /}", "path_prefix: /only/}"))
    status, answer = await admin.call("/admin/reload", {})
    assert (status, answer["reloaded"], answer["routes"]) == (200, True, 1)
    async with admin.http.get(admin.gw.make_url("/elsewhere")) as resp:
        assert resp.status == 404
        assert (await resp.json())["error"] == "no route matches"


async def test_origin_publish_soft_busts_the_project_and_the_new_version_goes_live(
    aiohttp_server,  # type: ignore[no-untyped-def]
    make_gateway: GatewayFactory,
    start_admin: StartAdmin,
    http: aiohttp.ClientSession,
) -> None:
    settings = OriginSettings(projects=3, codegen_seconds=0.05, s_maxage=300, swr=0)
    app = create_app(settings)
    loader = await aiohttp_server(app)
    gw, gateway = await make_gateway("", yaml_text=admin_yaml(str(loader.make_url("/"))))
    admin_server = await start_admin(gateway)
    # The origin learns the admin URL only now (each needs the other's port); it reads its
    # settings per request, as a restarted origin with --gateway-admin would.
    settings.gateway_admin = str(admin_server.make_url("/"))
    settings.gateway_token = OPS
    bundle = "/api/v1/loader/code/published?projectId=p1&platform=react"
    other = "/api/v1/loader/code/published?projectId=p2&platform=react"
    first, _ = await get(http, gw, bundle)
    await get(http, gw, other)
    async with http.post(loader.make_url("/api/v1/projects/p1/publish")) as resp:
        published = await resp.json()
    assert published["gateway_notified"] is True
    stale, _ = await get(http, gw, bundle)
    assert stale.headers["X-Cache"] == "UPDATING"
    assert stale.headers["ETag"] == first.headers["ETag"]
    resp, body = await until_hit(http, gw, bundle)  # the one background refresh
    assert resp.headers["X-Cache"] == "HIT"
    assert resp.headers["ETag"] != first.headers["ETag"]
    assert b"version=2" in body
    assert (await get(http, gw, other))[0].headers["X-Cache"] == "HIT"


async def test_reload_that_changes_key_rules_applies_to_urls_seen_before(
    admin: Admin, tmp_path: Path
) -> None:
    config_file = tmp_path / "gateway.yaml"
    rule = "tenant: {query: projectId}"
    ignoring = rule + '\n    cache: {ignore_query: ["utm_*"]}'
    config_file.write_text(config_file.read_text().replace(rule, ignoring))
    assert (await admin.call("/admin/reload", {}))[0] == 200
    plain = spec("/k", CACHED, projectId="a")
    tracked = plain + "&utm_x=1"
    await warm(admin, plain)
    assert await admin.x_cache(tracked) == "HIT"  # utm_* is not part of the key
    config_file.write_text(config_file.read_text().replace(ignoring, rule))
    assert (await admin.call("/admin/reload", {}))[0] == 200
    assert await admin.x_cache(tracked) == "MISS"  # now it is, also for a URL seen before


async def test_a_reload_that_changes_what_is_fixed_at_start_says_so(
    admin: Admin, tmp_path: Path
) -> None:
    config_file = tmp_path / "gateway.yaml"
    text = config_file.read_text()
    assert "listen: 127.0.0.1:0\n" in text
    config_file.write_text(text.replace("listen: 127.0.0.1:0\n", "listen: 127.0.0.1:1\n", 1))
    status, answer = await admin.call("/admin/reload", {})
    assert status == 200 and answer["restart_needed"] == ["listen"]
    status, answer = await admin.call("/admin/reload", {})  # the rest did take effect
    assert status == 200 and answer["restart_needed"] == ["listen"]
    config_file.write_text(text)
    status, answer = await admin.call("/admin/reload", {})
    assert status == 200 and "restart_needed" not in answer
