"""The gateway as a client sees it: a real gateway in front of a scriptable origin on loopback."""

from __future__ import annotations

import asyncio
import base64
import gzip
import json
import tracemalloc
from urllib.parse import quote

import aiohttp
import pytest
from aiohttp.test_utils import TestServer
from yarl import URL

from tests.clock import SettableClock
from tests.conftest import LAYERS, GatewayFactory


@pytest.fixture(params=LAYERS)
def layer(request: pytest.FixtureRequest) -> str:
    """Every test here runs on both client-facing layers."""
    return str(request.param)


def spec(path: str, *headers: str, **params: str) -> str:
    """A path on the echo origin that answers with `headers` (Name:value) and `params`."""
    query = [("h", h) for h in headers] + list(params.items())
    return str(URL(path).with_query(query))


async def origin_count(origin: TestServer, path_qs: str | None = None) -> int:
    async with aiohttp.ClientSession() as s, s.get(origin.make_url("/__count")) as r:
        counts = await r.json()
    return counts.get("__total__", 0) if path_qs is None else counts.get(path_qs, 0)


async def get(
    http: aiohttp.ClientSession, gw: TestServer, path: str, **kw: object
) -> tuple[aiohttp.ClientResponse, bytes]:
    async with http.get(gw.make_url(path), **kw) as resp:  # type: ignore[arg-type]
        return resp, await resp.read()


async def until_hit(
    http: aiohttp.ClientSession, gw: TestServer, path: str
) -> tuple[aiohttp.ClientResponse, bytes]:
    """Poll, bounded (~2 s), until a background refresh has landed and `path` answers HIT."""
    for _ in range(100):
        resp, body = await get(http, gw, path)
        if resp.headers["X-Cache"] == "HIT":
            break
        await asyncio.sleep(0.02)
    return resp, body


async def test_second_fetch_is_a_hit_with_age_and_one_origin_request(
    clocked_origin: TestServer,
    clock: SettableClock,
    make_gateway: GatewayFactory,
    http: aiohttp.ClientSession,
) -> None:
    gw, _ = await make_gateway(str(clocked_origin.make_url("/")), clock=clock)
    path = spec("/a", "Cache-Control:public, max-age=60")
    first, body1 = await get(http, gw, path)
    clock.advance(7)
    second, body2 = await get(http, gw, path)
    assert first.headers["X-Cache"] == "MISS"
    assert "fwd=uri-miss" in first.headers["Cache-Status"]
    assert "stored" in first.headers["Cache-Status"]
    assert second.headers["X-Cache"] == "HIT"
    assert second.headers["Cache-Status"] == "edge; hit; ttl=53"
    assert second.headers["Age"] == "7"
    assert body1 == body2
    assert await origin_count(clocked_origin) == 1


async def test_private_response_is_never_shared(
    echo_origin: TestServer, make_gateway: GatewayFactory, http: aiohttp.ClientSession
) -> None:
    gw, _ = await make_gateway(str(echo_origin.make_url("/")))
    path = spec("/p", "Cache-Control:private, max-age=60")
    _, body1 = await get(http, gw, path)
    second, body2 = await get(http, gw, path)
    assert body1 != body2
    assert second.headers["X-Cache"] == "MISS"
    assert "detail=private" in second.headers["Cache-Status"]
    assert await origin_count(echo_origin) == 2


async def test_set_cookie_and_no_store_responses_are_not_shared(
    echo_origin: TestServer, make_gateway: GatewayFactory, http: aiohttp.ClientSession
) -> None:
    gw, _ = await make_gateway(str(echo_origin.make_url("/")))
    for path in (
        spec("/c", "Cache-Control:max-age=60", "Set-Cookie:sid=1"),
        spec("/n", "Cache-Control:no-store, max-age=60"),
    ):
        await get(http, gw, path)
        resp, _ = await get(http, gw, path)
        assert resp.headers["X-Cache"] == "MISS", path
    assert await origin_count(echo_origin) == 4


async def test_vary_accept_encoding_keeps_one_variant_per_bucket(
    echo_origin: TestServer, make_gateway: GatewayFactory, http: aiohttp.ClientSession
) -> None:
    gw, _ = await make_gateway(str(echo_origin.make_url("/")))
    path = spec("/v", "Cache-Control:max-age=60", "Vary:Accept-Encoding")
    _, gz1 = await get(http, gw, path, headers={"Accept-Encoding": "gzip"})
    _, br1 = await get(http, gw, path, headers={"Accept-Encoding": "br, gzip"})
    gz2, gz2_body = await get(http, gw, path, headers={"Accept-Encoding": "gzip, deflate"})
    br2, _ = await get(http, gw, path, headers={"Accept-Encoding": "gzip;q=0.5, br"})
    assert gz1 != br1
    assert gz2.headers["X-Cache"] == "HIT" and gz2_body == gz1
    assert br2.headers["X-Cache"] == "HIT"
    assert await origin_count(echo_origin) == 2


async def test_client_conditional_is_answered_304_from_cache(
    echo_origin: TestServer, make_gateway: GatewayFactory, http: aiohttp.ClientSession
) -> None:
    gw, _ = await make_gateway(str(echo_origin.make_url("/")))
    path = spec("/e", "Cache-Control:max-age=60", 'ETag:"v1"')
    await get(http, gw, path)
    resp, body = await get(http, gw, path, headers={"If-None-Match": '"v1"'})
    assert resp.status == 304
    assert body == b""
    assert resp.headers["ETag"] == '"v1"'
    assert resp.headers["X-Cache"] == "HIT"
    other, _ = await get(http, gw, path, headers={"If-None-Match": '"v0"'})
    assert other.status == 200
    assert await origin_count(echo_origin) == 1


async def test_expired_entry_is_revalidated_with_etag_and_keeps_its_body(
    clocked_origin: TestServer,
    clock: SettableClock,
    make_gateway: GatewayFactory,
    http: aiohttp.ClientSession,
) -> None:
    gw, _ = await make_gateway(str(clocked_origin.make_url("/")), clock=clock)
    path = spec("/r", "Cache-Control:max-age=1", 'ETag:"e1"', "X-Gen:{n}", inm='"e1"')
    _, body1 = await get(http, gw, path)
    clock.advance(2)
    resp, body2 = await get(http, gw, path)
    assert resp.headers["X-Cache"] == "REVALIDATED"
    assert "fwd-status=304" in resp.headers["Cache-Status"]
    assert body2 == body1
    assert resp.headers["X-Gen"] == "2"  # RFC 9111 4.3.4: stored headers updated from the 304
    hit, _ = await get(http, gw, path)
    assert hit.headers["X-Cache"] == "HIT"


async def test_request_no_cache_goes_to_the_origin_when_the_route_honors_it(
    echo_origin: TestServer, make_gateway: GatewayFactory, http: aiohttp.ClientSession
) -> None:
    gw, _ = await make_gateway(
        str(echo_origin.make_url("/")), route_cache=", client_no_cache: honor"
    )
    path = spec("/nc", "Cache-Control:max-age=60")
    await get(http, gw, path)
    resp, _ = await get(http, gw, path, headers={"Cache-Control": "no-cache"})
    assert "fwd=request" in resp.headers["Cache-Status"]
    assert await origin_count(echo_origin) == 2


async def test_only_if_cached_miss_answers_504(
    echo_origin: TestServer, make_gateway: GatewayFactory, http: aiohttp.ClientSession
) -> None:
    gw, _ = await make_gateway(str(echo_origin.make_url("/")))
    resp, _ = await get(http, gw, "/oic", headers={"Cache-Control": "only-if-cached"})
    assert resp.status == 504
    assert await origin_count(echo_origin) == 0


async def test_successful_post_invalidates_the_cached_url(
    echo_origin: TestServer, make_gateway: GatewayFactory, http: aiohttp.ClientSession
) -> None:
    gw, _ = await make_gateway(str(echo_origin.make_url("/")))
    path = spec("/inv", "Cache-Control:max-age=60")
    await get(http, gw, path)
    async with http.post(gw.make_url(path), data=b"x") as resp:
        assert resp.headers["X-Cache"] == "BYPASS"
    again, _ = await get(http, gw, path)
    assert again.headers["X-Cache"] == "MISS"


async def test_a_location_is_invalidated_under_the_key_a_request_for_it_has_rfc9111_4_4(
    echo_origin: TestServer, make_gateway: GatewayFactory, http: aiohttp.ClientSession
) -> None:
    gw, _ = await make_gateway(str(echo_origin.make_url("/")))
    base = str(gw.make_url("/")).rstrip("/")
    cached = '/x/../loc"1?h=Cache-Control:max-age%3D60'  # keyed as /loc%221?h=...
    async with http.get(URL(base + cached, encoded=True)) as resp:
        await resp.read()
    location = quote('/x/../loc"1?h=Cache-Control:max-age%3D60', safe="")
    async with http.post(gw.make_url(f"/p?status=201&h=Location:{location}")) as resp:
        assert resp.status == 201
    async with http.get(URL(base + '/loc"1?h=Cache-Control:max-age%3D60', encoded=True)) as again:
        assert again.headers["X-Cache"] == "MISS"


async def test_targeted_cdn_cache_control_wins_and_is_not_forwarded(
    echo_origin: TestServer, make_gateway: GatewayFactory, http: aiohttp.ClientSession
) -> None:
    gw, _ = await make_gateway(str(echo_origin.make_url("/")))
    path = spec("/t", "Cache-Control:no-store", "CDN-Cache-Control:max-age=60", "Surrogate-Key:a b")
    first, _ = await get(http, gw, path)
    second, _ = await get(http, gw, path)
    assert second.headers["X-Cache"] == "HIT"
    for resp in (first, second):
        assert "CDN-Cache-Control" not in resp.headers
        assert "Surrogate-Key" not in resp.headers
        assert resp.headers["Cache-Control"] == "no-store"


async def test_upstream_age_counts_in_the_age_served(
    clocked_origin: TestServer,
    clock: SettableClock,
    make_gateway: GatewayFactory,
    http: aiohttp.ClientSession,
) -> None:
    gw, _ = await make_gateway(str(clocked_origin.make_url("/")), clock=clock)
    path = spec("/age", "Cache-Control:max-age=60", "Age:10")
    await get(http, gw, path)
    resp, _ = await get(http, gw, path)
    assert resp.headers["Age"] == "10"
    assert resp.headers["Cache-Status"] == "edge; hit; ttl=50"  # 60 - 10
    clock.advance(5)
    resp, _ = await get(http, gw, path)
    assert (resp.headers["Age"], resp.headers["Cache-Status"]) == ("15", "edge; hit; ttl=45")


async def test_ignored_and_reordered_query_parameters_share_an_entry(
    echo_origin: TestServer, make_gateway: GatewayFactory, http: aiohttp.ClientSession
) -> None:
    gw, _ = await make_gateway(str(echo_origin.make_url("/")))
    cc = "Cache-Control:max-age=60"
    await get(http, gw, str(URL("/q").with_query([("h", cc), ("b", "1"), ("a", "2")])))
    resp, _ = await get(
        http,
        gw,
        str(URL("/q").with_query([("a", "2"), ("utm_source", "x"), ("h", cc), ("b", "1")])),
    )
    assert resp.headers["X-Cache"] == "HIT"


async def test_head_is_answered_from_the_cached_get(
    echo_origin: TestServer, make_gateway: GatewayFactory, http: aiohttp.ClientSession
) -> None:
    gw, _ = await make_gateway(str(echo_origin.make_url("/")))
    path = spec("/h", "Cache-Control:max-age=60", body="hello")
    await get(http, gw, path)
    async with http.head(gw.make_url(path)) as resp:
        assert resp.status == 200
        assert resp.headers["X-Cache"] == "HIT"
        assert resp.headers["Content-Length"] == "5"
        assert await resp.read() == b""


async def test_proxy_headers_and_the_routed_path_reach_the_origin(
    echo_origin: TestServer, make_gateway: GatewayFactory, http: aiohttp.ClientSession
) -> None:
    gw, _ = await make_gateway(str(echo_origin.make_url("/")))
    raw = "/nocache/a%2Fb/%7Euser?x=%41&body=echo"
    async with http.get(
        URL(str(gw.make_url("/")).rstrip("/") + raw, encoded=True),
        headers={"Connection": "keep-alive, X-Secret", "X-Secret": "1", "Host": "shop.example"},
    ) as resp:
        seen = json.loads(await resp.read())
        assert resp.headers["X-Cache"] == "BYPASS"
    assert seen["__raw_path"] == "/nocache/a%2Fb/~user?x=%41&body=echo"  # as routed: RFC 3986 6.2.2
    assert "X-Secret" not in seen
    assert seen["X-Forwarded-Host"] == "shop.example"
    assert seen["X-Forwarded-Proto"] == "http"
    assert seen["X-Forwarded-For"] == "127.0.0.1"
    assert seen["Via"].endswith("1.1 edge")
    assert "Accept-Encoding" not in seen or seen["Accept-Encoding"]  # never added empty


async def test_compressed_body_passes_through_untouched(
    echo_origin: TestServer, make_gateway: GatewayFactory
) -> None:
    gw, _ = await make_gateway(str(echo_origin.make_url("/")))
    payload = gzip.compress(b"hello " * 100, mtime=0)
    encoded = base64.urlsafe_b64encode(payload).decode()
    headers = ("Cache-Control:max-age=60", "Content-Encoding:gzip", "Content-Type:text/plain")
    async with aiohttp.ClientSession(
        auto_decompress=False, skip_auto_headers={"Accept-Encoding"}
    ) as s:
        for path, label in ((spec("/gz", *headers, body=f"b64:{encoded}"), "MISS"),
                            (spec("/gz", *headers, body=f"b64:{encoded}"), "HIT"),
                            (spec("/nocache/gz", *headers, body=f"b64:{encoded}"), "BYPASS")):
            async with s.get(gw.make_url(path)) as resp:
                # the origin's gzip bytes, as sent: not decoded, re-encoded or re-framed
                assert resp.headers["X-Cache"] == label
                assert resp.headers["Content-Encoding"] == "gzip", label
                assert await resp.read() == payload, label
                assert resp.headers["Content-Length"] == str(len(payload)), label
        async with s.get(gw.make_url("/nocache/x?body=echo")) as resp:
            seen = json.loads(await resp.read())
    assert "Accept-Encoding" not in seen  # nor did it ask the origin for an encoding
    assert gzip.decompress(payload) == b"hello " * 100


async def test_no_route_answers_404_json(
    echo_origin: TestServer, make_gateway: GatewayFactory, http: aiohttp.ClientSession
) -> None:
    yaml_text = f"""
    listen: 127.0.0.1:0
    origins:
      o: {{url: "{str(echo_origin.make_url("/")).rstrip("/")}"}}
    routes:
      - {{name: only, match: {{path_prefix: /only/}}, origin: o}}
    """
    gw, _ = await make_gateway("", yaml_text=yaml_text)
    resp, body = await get(http, gw, "/elsewhere")
    assert resp.status == 404
    assert json.loads(body)["error"] == "no route matches"


async def test_unreachable_origin_gives_502_and_timeout_gives_504(
    echo_origin: TestServer, make_gateway: GatewayFactory, http: aiohttp.ClientSession
) -> None:
    dead, _ = await make_gateway("http://127.0.0.1:9")
    resp, body = await get(http, dead, "/x")
    assert resp.status == 502
    assert json.loads(body)["error"] == "origin unreachable"
    slow, _ = await make_gateway(str(echo_origin.make_url("/")), read_timeout="300ms")
    resp, body = await get(http, slow, spec("/slow", delay="2"))
    assert resp.status == 504
    assert resp.headers["Content-Type"] == "application/json"
    ok, _ = await get(http, slow, spec("/fast", "Cache-Control:max-age=5"))
    assert ok.status == 200  # the gateway keeps serving


async def test_concurrent_misses_make_one_origin_request(
    echo_origin: TestServer, make_gateway: GatewayFactory, http: aiohttp.ClientSession
) -> None:
    gw, _ = await make_gateway(str(echo_origin.make_url("/")))
    path = spec("/hot", "Cache-Control:max-age=60", delay="0.3")
    results = await asyncio.gather(*(get(http, gw, path) for _ in range(50)))
    assert await origin_count(echo_origin) == 1
    statuses = [r.headers["Cache-Status"] for r, _ in results]
    assert sum("collapsed" in s for s in statuses) == 49
    assert len({body for _, body in results}) == 1


async def test_response_larger_than_max_object_streams_uncached_with_bounded_memory(
    echo_origin: TestServer, make_gateway: GatewayFactory, http: aiohttp.ClientSession
) -> None:
    gw, gateway = await make_gateway(
        str(echo_origin.make_url("/")), max_object_bytes="256KiB", max_bytes="1MiB"
    )
    size = 24 * 1024 * 1024
    path = spec("/big", "Cache-Control:max-age=60", stream=str(size))
    tracemalloc.start()
    try:
        received = 0
        async with http.get(gw.make_url(path)) as resp:
            assert resp.headers["X-Cache"] == "MISS"
            assert "stored" not in resp.headers["Cache-Status"]  # its size is not known yet
            async for chunk in resp.content.iter_chunked(65536):
                received += len(chunk)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert received == size
    assert peak < 6 * 1024 * 1024, peak  # origin, gateway and client together hold no whole body
    assert gateway.store.stats()["bytes"] == 0
    await get(http, gw, path)
    assert await origin_count(echo_origin) == 2


async def test_hop_by_hop_fields_of_the_origin_never_reach_clients_rfc9110_7_6_1(
    echo_origin: TestServer, make_gateway: GatewayFactory, http: aiohttp.ClientSession
) -> None:
    gw, _ = await make_gateway(str(echo_origin.make_url("/")))
    hop = ("Keep-Alive:timeout=5", "Proxy-Authenticate:Basic", "Connection:x-hop", "X-Hop:1")
    for path in (
        spec("/hop-pass", "Cache-Control:no-store", *hop),  # not shareable: streamed through
        spec("/nocache/hop", *hop),  # a `cache: false` route
        spec("/hop-stored", "Cache-Control:max-age=60", *hop),  # stored, then a hit
        spec("/hop-stored", "Cache-Control:max-age=60", *hop),
    ):
        resp, _ = await get(http, gw, path)
        for name in ("Keep-Alive", "Proxy-Authenticate", "X-Hop"):
            assert name not in resp.headers, (path, name)
    async with http.post(gw.make_url(spec("/hop-post", *hop)), data=b"x") as resp:
        assert "X-Hop" not in resp.headers and "Proxy-Authenticate" not in resp.headers


async def test_the_client_that_fills_keeps_fields_the_shared_copy_drops_rfc9111_5_2_2_7(
    echo_origin: TestServer, make_gateway: GatewayFactory, http: aiohttp.ClientSession
) -> None:
    gw, _ = await make_gateway(str(echo_origin.make_url("/")))
    path = spec(
        "/login",
        'Cache-Control:max-age=60, private="Set-Cookie", no-cache="X-Debug"',
        "Set-Cookie:sid=secret",
        "X-Debug:1",
    )
    own, _ = await get(http, gw, path)
    assert own.headers["X-Cache"] == "MISS" and "stored" in own.headers["Cache-Status"]
    assert own.headers["Set-Cookie"] == "sid=secret"  # the filling client's own response
    assert own.headers["X-Debug"] == "1"
    shared, _ = await get(http, gw, path)
    assert shared.headers["X-Cache"] == "HIT"
    assert "Set-Cookie" not in shared.headers and "X-Debug" not in shared.headers


async def test_a_targeted_field_the_cache_did_not_obey_reaches_clients_rfc9213_2_2(
    echo_origin: TestServer, make_gateway: GatewayFactory, http: aiohttp.ClientSession
) -> None:
    gw, _ = await make_gateway(str(echo_origin.make_url("/")))
    path = spec("/cdn-foo", "Cache-Control:max-age=60", "CDN-Cache-Control:foo")
    await get(http, gw, path)
    resp, _ = await get(http, gw, path)
    assert resp.headers["X-Cache"] == "HIT"
    assert resp.headers["CDN-Cache-Control"] == "foo"


async def test_a_response_with_an_invalid_expires_is_not_reused_rfc9111_5_3(
    echo_origin: TestServer, make_gateway: GatewayFactory, http: aiohttp.ClientSession
) -> None:
    gw, _ = await make_gateway(str(echo_origin.make_url("/")))
    path = spec("/bad-expires", "Expires:Thu, 18 Aug 2050 02:01:18 UTC", 'ETag:"x"')
    await get(http, gw, path)
    resp, _ = await get(http, gw, path)
    assert resp.headers["X-Cache"] != "HIT"
    assert await origin_count(echo_origin) == 2


async def test_an_origin_answering_garbage_gets_a_clean_502_naming_it(
    make_gateway: GatewayFactory, http: aiohttp.ClientSession
) -> None:
    async def oversend(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n" + b"x" * 36)
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(oversend, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        gw, _ = await make_gateway(f"http://127.0.0.1:{port}")
        resp, body = await get(http, gw, "/nocache/x")
        assert resp.status == 502
        assert json.loads(body)["error"] == "invalid response from origin"
    finally:
        server.close()
        await server.wait_closed()


async def test_a_range_is_served_from_the_complete_cached_response_rfc9110_14(
    echo_origin: TestServer, make_gateway: GatewayFactory, http: aiohttp.ClientSession
) -> None:
    gw, _ = await make_gateway(str(echo_origin.make_url("/")))
    path = spec("/ranged", "Cache-Control:max-age=60", 'ETag:"r1"', body="0123456789")
    first, body = await get(http, gw, path, headers={"Range": "bytes=2-4"})
    assert (first.status, body, first.headers["X-Cache"]) == (206, b"234", "MISS")
    assert first.headers["Content-Range"] == "bytes 2-4/10"
    hit, body = await get(http, gw, path, headers={"Range": "bytes=-3"})
    assert (hit.status, body, hit.headers["X-Cache"]) == (206, b"789", "HIT")
    assert hit.headers["Content-Length"] == "3"
    gone, _ = await get(http, gw, path, headers={"Range": "bytes=10-"})
    assert (gone.status, gone.headers["Content-Range"]) == (416, "bytes */10")
    stale_tag, body = await get(http, gw, path, headers={"Range": "bytes=0-1", "If-Range": '"old"'})
    assert (stale_tag.status, body) == (200, b"0123456789")
    several, body = await get(http, gw, path, headers={"Range": "bytes=0-1, 3-4"})
    assert (several.status, body) == (200, b"0123456789")
    assert await origin_count(echo_origin) == 1  # the fill asked for the whole representation


async def test_a_fill_sends_no_client_override_fields_and_the_encoding_bucket(
    echo_origin: TestServer, make_gateway: GatewayFactory, http: aiohttp.ClientSession
) -> None:
    gw, _ = await make_gateway(str(echo_origin.make_url("/")))
    poison = {
        "Forwarded": "host=evil.example;proto=https",
        "X-Original-URL": "/admin",
        "X-HTTP-Method-Override": "DELETE",
        "X-Forwarded-Host": "evil.example",
        "X-Forwarded-Scheme": "nothttp",
        "Accept-Encoding": "gzip, deflate",
    }
    resp, body = await get(http, gw, spec("/filled", "Cache-Control:max-age=60", body="echo"),
                           headers=poison)
    seen = json.loads(body)
    assert resp.headers["X-Cache"] == "MISS"
    for name in ("Forwarded", "X-Original-URL", "X-HTTP-Method-Override", "X-Forwarded-Scheme"):
        assert name not in seen, name
    assert seen["X-Forwarded-Host"] != "evil.example"  # the gateway's own, from the keyed Host
    assert seen["Accept-Encoding"] == "gzip"  # the bucket the key uses, accepted by all in it
    async with http.post(gw.make_url("/nocache/x?body=echo"), headers=poison) as passed:
        assert json.loads(await passed.read())["X-Original-URL"] == "/admin"  # never shared


async def test_an_origin_dying_mid_body_cuts_that_response_and_nothing_else(
    make_gateway: GatewayFactory, http: aiohttp.ClientSession, caplog: pytest.LogCaptureFixture
) -> None:
    async def dies(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        if b" /nocache/ok " in head:
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
        else:  # promises 100000 bytes, sends 1000, hangs up
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 100000\r\n\r\n" + b"x" * 1000)
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(dies, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        gw, _ = await make_gateway(f"http://127.0.0.1:{port}")
        for path in ("/nocache/cut", "/cut-uncacheable"):  # streamed through, nothing stored
            with pytest.raises(aiohttp.ClientPayloadError):
                await get(http, gw, path)
        assert "unhandled error" not in caplog.text
        resp, body = await get(http, gw, "/nocache/ok")  # the gateway still serves
        assert (resp.status, body) == (200, b"ok")
    finally:
        server.close()
        await server.wait_closed()
