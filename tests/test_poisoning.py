"""Cache poisoning, tried as an attacker would: the attack is sent, then the victim's request, and
the victim's response is compared with what the origin makes for the victim alone.

The origin reflects what it was asked (path and every request field) into a cacheable body, so
any client input that reaches a shared fill without being part of its key shows up in a victim's
response. Each scenario runs twice on fresh gateways in front of the same origin: attack then
victim, and victim alone; the two victim responses must be the same bytes.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp
import pytest
from aiohttp.test_utils import TestServer

from tests.conftest import LAYERS, GatewayFactory, GatewayServer
from tests.test_gateway_http import origin_count


@pytest.fixture(params=LAYERS)
def layer(request: pytest.FixtureRequest) -> str:
    """Every test here runs on both client-facing layers."""
    return str(request.param)


HOST = "shop.example"
REFLECT = "h=Cache-Control:max-age%3D60&body=echo"

Attack = Callable[[GatewayServer], Awaitable[None]]


async def fetch(
    gw: GatewayServer, target: str, headers: dict[str, str] | None = None
) -> tuple[int, dict[str, str], bytes]:
    """One GET with a fixed Host (so both runs send the same one) and nothing else added."""
    async with (
        aiohttp.ClientSession(
            auto_decompress=False, skip_auto_headers={"Accept-Encoding", "User-Agent", "Accept"}
        ) as session,
        session.get(
            str(gw.make_url("/")).rstrip("/") + target,
            headers={"Host": HOST, **(headers or {})},
        ) as resp,
    ):
        return resp.status, dict(resp.headers), await resp.read()


async def raw_exchange(gw: GatewayServer, data: bytes, *, wait: float = 5.0) -> bytes:
    """Send bytes on a fresh connection; everything the gateway answers until it closes."""
    reader, writer = await asyncio.open_connection(gw.host, gw.port)
    try:
        writer.write(data)
        await writer.drain()
        out = b""
        async with asyncio.timeout(wait):
            while chunk := await reader.read(65536):
                out += chunk
        return out
    finally:
        writer.close()


async def differential(
    make_gateway: GatewayFactory,
    origin: TestServer,
    attack: Attack,
    victim: str,
    victim_headers: dict[str, str] | None = None,
    **options: Any,
) -> bytes:
    """The victim's body after the attack; asserts it equals the victim-alone body."""
    poisoned_gw, _ = await make_gateway(str(origin.make_url("/")), **options)
    await attack(poisoned_gw)
    status, _, after_attack = await fetch(poisoned_gw, victim, victim_headers)
    clean_gw, _ = await make_gateway(str(origin.make_url("/")), **options)
    clean_status, _, alone = await fetch(clean_gw, victim, victim_headers)
    assert (status, after_attack) == (clean_status, alone)
    return after_attack


def head(method: str, target: str, *fields: str, host: str = HOST) -> bytes:
    """A request head, byte for byte: the fields as given, one per line."""
    lines = [f"{method} {target} HTTP/1.1", f"Host: {host}", *fields]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def seen_by_origin(body: bytes) -> dict[str, str]:
    """What the reflecting origin was asked: `__raw_path`, and its fields by lower-case name."""
    return {name.lower(): value for name, value in json.loads(body).items()}


UNKEYED_FIELDS = {
    "X-Forwarded-Host": "evil.example",
    "X-Host": "evil.example",
    "X-Original-Host": "evil.example",
    "X-HTTP-Host-Override": "evil.example",
    "X-Forwarded-Server": "evil.example",
    "X-Forwarded-Path": "/evil",
    "X-Forwarded-Uri": "/evil",
    "X-Original-URL": "/evil",
    "X-Rewrite-URL": "/evil",
    "X-Forwarded-Prefix": "/evil",
    "X-Forwarded-Proto": "evil",
    "X-Forwarded-Protocol": "evil",
    "X-Forwarded-Scheme": "evil",
    "X-Forwarded-Ssl": "on",
    "X-Forwarded-Port": "6666",
    "Front-End-Https": "on",
    "Forwarded": "for=6.6.6.6;host=evil.example;proto=https",
    "X-Forwarded-For": "6.6.6.6",
    "X-Real-IP": "6.6.6.6",
    "X-HTTP-Method-Override": "DELETE",
    "X-Method-Override": "DELETE",
    "Via": "1.1 evil",
    "User-Agent": "evil",
    "Cookie": "session=evil",
    "Origin": "https://evil.example",
    "Referer": "https://evil.example/",
    "Accept-Language": "evil",
    "X-Anything-Else": "evil",
    "Cache-Control": "evil",
    "Pragma": "evil",
}


async def test_no_unkeyed_request_field_reaches_a_shared_fill(
    echo_origin: TestServer, make_gateway: GatewayFactory
) -> None:
    target = f"/page?{REFLECT}"

    async def attack(gw: GatewayServer) -> None:
        status, headers, body = await fetch(gw, target, UNKEYED_FIELDS)
        assert status == 200 and headers["X-Cache"] == "MISS"
        assert b"evil" not in body and b"6.6.6.6" not in body

    body = await differential(make_gateway, echo_origin, attack, target)
    seen = seen_by_origin(body)
    assert seen["x-forwarded-host"] == HOST
    assert seen["x-forwarded-for"] == "127.0.0.1"
    assert await origin_count(echo_origin) == 2  # one fill per gateway


@pytest.mark.parametrize("name", sorted(UNKEYED_FIELDS))
async def test_an_unkeyed_field_alone_never_shapes_the_stored_response(
    name: str, echo_origin: TestServer, make_gateway: GatewayFactory
) -> None:
    target = f"/one?{REFLECT}&n={name}"

    async def attack(gw: GatewayServer) -> None:
        await fetch(gw, target, {name: UNKEYED_FIELDS[name]})

    await differential(make_gateway, echo_origin, attack, target)


async def test_ignored_query_parameters_never_reach_the_origin(
    echo_origin: TestServer, make_gateway: GatewayFactory
) -> None:
    clean = f"/cb?{REFLECT}"

    async def attack(gw: GatewayServer) -> None:
        # Origins that split on ";" read a callback the key never saw; so is a repeated name.
        for junk in ("utm_source=x;callback=evil", "utm_x=evil", "utm_a=1&utm_b=evil;x=1"):
            _, headers, body = await fetch(gw, f"{clean}&{junk}")
            assert b"evil" not in body, junk
        assert headers["X-Cache"] == "HIT"

    body = await differential(make_gateway, echo_origin, attack, clean)
    assert "utm" not in seen_by_origin(body)["__raw_path"]


@pytest.mark.parametrize(
    "attack_target",
    ["/x/../dots?{q}", "/x/%2e%2e/dots?{q}", "/x/%2E%2E/./dots?{q}", "/./dots?{q}", "/dots/?{q}&"],
)
async def test_dot_segments_are_resolved_before_keying_and_forwarding(
    attack_target: str, echo_origin: TestServer, make_gateway: GatewayFactory
) -> None:
    victim = f"/dots?{REFLECT}"

    async def attack(gw: GatewayServer) -> None:
        _, _, body = await fetch(gw, attack_target.format(q=REFLECT))
        path = seen_by_origin(body)["__raw_path"]
        assert ".." not in path and "/./" not in path and "%2" not in path.split("?")[0]

    await differential(make_gateway, echo_origin, attack, victim)


async def test_the_path_a_request_is_routed_on_is_the_path_the_origin_gets(
    echo_origin: TestServer, make_gateway: GatewayFactory
) -> None:
    gw, _ = await make_gateway(str(echo_origin.make_url("/")))
    # Routed as /nocache/... (pass-through), so it must be sent as /nocache/..., not /public.
    _, headers, body = await fetch(gw, "/public/../nocache/x?body=echo")
    assert headers["X-Cache"] == "BYPASS"
    assert seen_by_origin(body)["__raw_path"] == "/nocache/x?body=echo"
    # And /nocache/../cached is a cached route's URL, keyed and sent as /cached.
    _, headers, body = await fetch(gw, f"/nocache/../cached?{REFLECT}")
    assert headers["X-Cache"] == "MISS"
    assert seen_by_origin(body)["__raw_path"].startswith("/cached?")


HEADER_TENANT = """\
listen: 127.0.0.1:0
cache: {{memory: {{max_bytes: 8MiB, max_object_bytes: 1MiB}}}}
origins:
  o: {{url: "{origin}", connect_timeout: 1s}}
routes:
  - name: all
    match: {{path_prefix: /}}
    origin: o
    tenant: {{header: X-Tenant}}
    cache: {{forward_headers: [X-Api-Version]}}
"""


async def test_connection_listed_fields_are_invisible_to_the_key_and_the_fill(
    echo_origin: TestServer, make_gateway: GatewayFactory
) -> None:
    yaml_text = HEADER_TENANT.format(origin=str(echo_origin.make_url("/")).rstrip("/"))
    target = f"/conn?{REFLECT}&h=Vary:Accept-Language"

    async def attack(gw: GatewayServer) -> None:
        # The tenant and the Vary field are hop-by-hop here: the key must not use them either.
        hop = {"Connection": "X-Tenant, Accept-Language", "X-Tenant": "acme",
               "Accept-Language": "fr"}
        _, _, body = await fetch(gw, target, hop)
        seen = seen_by_origin(body)
        assert "x-tenant" not in seen and "accept-language" not in seen

    # The victim is in the default namespace, without Accept-Language, like the attack was seen.
    await differential(make_gateway, echo_origin, attack, target, yaml_text=yaml_text)


async def test_a_tenant_field_is_sent_with_its_validated_value_only(
    echo_origin: TestServer, make_gateway: GatewayFactory
) -> None:
    yaml_text = HEADER_TENANT.format(origin=str(echo_origin.make_url("/")).rstrip("/"))
    target = f"/tenant?{REFLECT}"

    async def attack(gw: GatewayServer) -> None:
        # Both values are invalid tenant names, so both land in the default namespace: the
        # origin must not see either of them there.
        await fetch(gw, target, {"X-Tenant": "../evil"})
        _, _, body = await fetch(gw, target, {"X-Tenant": "evil value"})
        assert "x-tenant" not in seen_by_origin(body)

    await differential(make_gateway, echo_origin, attack, target, yaml_text=yaml_text)
    gw, _ = await make_gateway(str(echo_origin.make_url("/")), yaml_text=yaml_text)
    _, _, body = await fetch(gw, target, {"X-Tenant": "acme"})
    assert seen_by_origin(body)["x-tenant"] == "acme"
    raw = await raw_exchange(gw, head("GET", target, "X-Tenant: acme", "X-Tenant: b"))
    assert raw.startswith(b"HTTP/1.1 400 ")  # ambiguous: the origin might read the other one


async def test_forward_headers_reach_the_fill_and_are_part_of_the_key(
    echo_origin: TestServer, make_gateway: GatewayFactory
) -> None:
    yaml_text = HEADER_TENANT.format(origin=str(echo_origin.make_url("/")).rstrip("/"))
    gw, _ = await make_gateway(str(echo_origin.make_url("/")), yaml_text=yaml_text)
    target = f"/api?{REFLECT}"
    _, _, v1 = await fetch(gw, target, {"X-Api-Version": "1"})
    _, _, v2 = await fetch(gw, target, {"X-Api-Version": "2"})
    _, again, v1_again = await fetch(gw, target, {"X-Api-Version": " 1 "})
    assert seen_by_origin(v1)["x-api-version"] == "1" and seen_by_origin(v2)["x-api-version"] == "2"
    assert again["X-Cache"] == "HIT" and v1_again == v1  # same normalised value, same key
    assert await origin_count(echo_origin) == 2


async def test_a_vary_field_is_sent_once_the_key_varies_on_it(
    echo_origin: TestServer, make_gateway: GatewayFactory
) -> None:
    gw, _ = await make_gateway(str(echo_origin.make_url("/")))
    target = f"/lang?{REFLECT}&h=Vary:Accept-Language"
    _, _, none = await fetch(gw, target)
    assert "accept-language" not in seen_by_origin(none)
    # The first French client: the fill without the field was stored for clients without it,
    # and this one gets a fill that sends it (the key now knows the response varies on it).
    _, headers, fr = await fetch(gw, target, {"Accept-Language": "fr"})
    assert headers["X-Cache"] == "MISS" and seen_by_origin(fr)["accept-language"] == "fr"
    _, hit, fr_again = await fetch(gw, target, {"Accept-Language": "FR"})
    _, hit_none, none_again = await fetch(gw, target)
    assert (hit["X-Cache"], fr_again) == ("HIT", fr)
    assert (hit_none["X-Cache"], none_again) == ("HIT", none)


async def test_what_a_url_varies_on_survives_a_bust_so_its_first_fill_sends_the_field(
    echo_origin: TestServer, make_gateway: GatewayFactory
) -> None:
    gw, gateway = await make_gateway(str(echo_origin.make_url("/")))
    target = f"/lang-bust?{REFLECT}&h=Vary:Accept-Language"
    await fetch(gw, target, {"Accept-Language": "de"})
    before = await origin_count(echo_origin)
    await gateway.bust("*", soft=False)  # every key is new now
    _, headers, fr = await fetch(gw, target, {"Accept-Language": "fr"})
    assert headers["X-Cache"] == "MISS" and seen_by_origin(fr)["accept-language"] == "fr"
    assert await origin_count(echo_origin) == before + 1  # one fill, not one without it first


async def test_forward_unkeyed_keys_a_revealed_vary_on_what_was_sent_in_one_fill(
    echo_origin: TestServer, make_gateway: GatewayFactory
) -> None:
    gw, _ = await make_gateway(
        str(echo_origin.make_url("/")), route_cache=", forward_unkeyed: true"
    )
    target = f"/fwd?{REFLECT}&h=Vary:X-Variant"
    _, headers, a = await fetch(gw, target, {"X-Variant": "a", "X-Trace": "1"})
    assert headers["X-Cache"] == "MISS" and seen_by_origin(a)["x-trace"] == "1"
    assert await origin_count(echo_origin) == 1  # a cold key with Vary: still one fetch
    _, same, a_again = await fetch(gw, target, {"X-Variant": "a", "X-Trace": "2"})
    _, other, _ = await fetch(gw, target, {"X-Variant": "b"})
    assert (same["X-Cache"], a_again) == ("HIT", a)
    assert other["X-Cache"] == "MISS"
    _, _, forged = await fetch(gw, target, {"X-Forwarded-Host": "evil.example"})
    assert b"evil" not in forged  # the gateway's own fields are never the client's


async def test_a_coded_response_without_vary_is_keyed_on_the_encoding_bucket(
    echo_origin: TestServer, make_gateway: GatewayFactory
) -> None:
    target = "/coded?h=Cache-Control:max-age%3D60&h=Content-Encoding:gzip&body=zz"

    async def attack(gw: GatewayServer) -> None:
        _, headers, _ = await fetch(gw, target, {"Accept-Encoding": "gzip"})
        assert headers["Content-Encoding"] == "gzip"
        assert "Accept-Encoding" in headers["Vary"]  # said for the caches behind us too

    # The victim accepts no coding: it must not be handed the gzip variant from the cache.
    gw, _ = await make_gateway(str(echo_origin.make_url("/")))
    await attack(gw)
    _, headers, _ = await fetch(gw, target)
    assert headers["X-Cache"] == "MISS"
    _, again, _ = await fetch(gw, target, {"Accept-Encoding": "gzip, br;q=0"})
    assert again["X-Cache"] == "HIT"


async def test_authorization_fetches_alone_and_is_shared_only_when_the_origin_says_public(
    echo_origin: TestServer, make_gateway: GatewayFactory
) -> None:
    gw, _ = await make_gateway(str(echo_origin.make_url("/")))
    secret = {"Authorization": "Bearer evil"}
    plain = f"/auth?{REFLECT}"
    _, _, body = await fetch(gw, plain, secret)
    assert seen_by_origin(body)["authorization"] == "Bearer evil"
    _, headers, body = await fetch(gw, plain)
    assert headers["X-Cache"] == "MISS" and "authorization" not in seen_by_origin(body)
    public = "/auth-public?h=Cache-Control:public,max-age%3D60&body=shared"
    await fetch(gw, public, secret)
    _, headers, body = await fetch(gw, public)
    assert (headers["X-Cache"], body) == ("HIT", b"shared")  # RFC 9111 3.5: the origin allowed it


async def test_absolute_form_uses_its_own_authority_and_other_schemes_are_refused(
    echo_origin: TestServer, make_gateway: GatewayFactory
) -> None:
    gw, _ = await make_gateway(str(echo_origin.make_url("/")))
    victim = f"/abs?{REFLECT}"
    # RFC 9112 3.2.2: the target's authority wins over Host; both the key and the fill use it.
    raw = await raw_exchange(gw, head("GET", f"http://other.example{victim}", "Connection: close"))
    assert b" 200 " in raw.split(b"\r\n", 1)[0]
    assert b'"X-Forwarded-Host": "other.example"' in raw
    _, headers, _ = await fetch(gw, victim)
    assert headers["X-Cache"] == "MISS"  # shop.example's entry is its own
    for target in ("abc://x/path", "ftp://x/", "http://user@x/", "http://[::1/"):
        raw = await raw_exchange(gw, head("GET", target, host="a"))
        assert raw.startswith((b"HTTP/1.1 400 ", b"HTTP/1.0 400 ")), (target, raw[:100])
        assert b"Traceback" not in raw


@pytest.mark.parametrize(
    "host", ["evil.example/x", "a b", "a@b", "[::1", "x:99999x", "x:", "", "bad_host\\"]
)
async def test_an_invalid_host_is_refused_before_it_reaches_a_key(
    host: str, echo_origin: TestServer, make_gateway: GatewayFactory
) -> None:
    gw, _ = await make_gateway(str(echo_origin.make_url("/")))
    raw = await raw_exchange(gw, head("GET", f"/h?{REFLECT}", host=host))
    assert raw.startswith((b"HTTP/1.1 400 ", b"HTTP/1.0 400 ")), raw[:200]
    assert await origin_count(echo_origin) == 0


async def test_equivalent_hosts_share_a_key_and_the_origin_sees_the_keyed_one(
    echo_origin: TestServer, make_gateway: GatewayFactory
) -> None:
    gw, _ = await make_gateway(str(echo_origin.make_url("/")))
    target = f"/hosts?{REFLECT}"
    _, _, body = await fetch(gw, target, {"Host": "SHOP.Example:80"})
    _, headers, again = await fetch(gw, target, {"Host": "shop.example."})
    assert seen_by_origin(body)["x-forwarded-host"] == "shop.example"
    assert (headers["X-Cache"], again) == ("HIT", body)


async def test_a_get_with_a_body_is_refused_and_never_desyncs_the_origin_connection(
    echo_origin: TestServer, make_gateway: GatewayFactory
) -> None:
    target = f"/fat?{REFLECT}"
    smuggled = f"GET /smuggled?{REFLECT}&h=X-Smuggled:1 HTTP/1.1\r\nHost: {HOST}\r\n\r\n"

    async def attack(gw: GatewayServer) -> None:
        for method, framing, body in (
            ("GET", f"Content-Length: {len(smuggled)}", smuggled),
            ("HEAD", f"Content-Length: {len(smuggled)}", smuggled),
            ("GET", "Transfer-Encoding: chunked", f"{len(smuggled):x}\r\n{smuggled}\r\n0\r\n\r\n"),
        ):
            raw = await raw_exchange(gw, head(method, target, framing) + body.encode())
            answer = raw.split(b"\r\n\r\n", 1)[0]
            assert answer.startswith(b"HTTP/1.1 400 ") and b"Connection: close" in answer, raw
            assert raw.count(b"HTTP/1.1") == 1  # the body was not read as a second request

    body = await differential(make_gateway, echo_origin, attack, target)
    assert "x-smuggled" not in seen_by_origin(body)
    assert await origin_count(echo_origin) == 2  # the victim's fill on each gateway, no more


async def test_a_get_with_an_empty_body_is_served_and_its_framing_not_forwarded(
    echo_origin: TestServer, make_gateway: GatewayFactory
) -> None:
    gw, _ = await make_gateway(str(echo_origin.make_url("/")))
    raw = await raw_exchange(
        gw, head("GET", f"/empty?{REFLECT}", "Content-Length: 0", "Connection: close")
    )
    assert raw.startswith(b"HTTP/1.1 200 ")
    assert b'"Content-Length"' not in raw.split(b"\r\n\r\n", 1)[1]


async def test_a_background_refresh_sends_only_the_canonical_request(
    echo_origin: TestServer, make_gateway: GatewayFactory
) -> None:
    target = "/swr?h=Cache-Control:max-age%3D600&body=echo"
    gw, _ = await make_gateway(str(echo_origin.make_url("/")))
    await fetch(gw, target)
    await gw.gateway.purge("_", soft=True)  # stale now: the next request refreshes in background
    _, headers, _ = await fetch(gw, target, UNKEYED_FIELDS)
    assert headers["X-Cache"] == "UPDATING"  # the refresh runs with the attacker's request
    for _ in range(100):
        if not gw.gateway.cache.flights:
            break
        await asyncio.sleep(0.01)
    _, headers, body = await fetch(gw, target)
    assert headers["X-Cache"] == "HIT"
    assert await origin_count(echo_origin) == 2
    assert b"evil" not in body and b"6.6.6.6" not in body
