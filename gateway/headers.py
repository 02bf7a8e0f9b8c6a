"""Header hygiene for a proxy: what crosses the gateway in each direction (RFC 9110 7.6)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any

from multidict import CIMultiDict, CIMultiDictProxy

if TYPE_CHECKING:
    from gateway.exchange import Incoming
    from gateway.router import Route

HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-connection",
        "proxy-authenticate",
        "proxy-authorization",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
    }
)

# Conditionals and ranges a cache fill must not forward: the stored copy must be the full
# representation, and the gateway answers the client's conditionals itself.
CLIENT_CONDITIONALS = frozenset(
    {"if-none-match", "if-modified-since", "if-match", "if-unmodified-since", "if-range", "range"}
)

# Request fields some origins trust to rewrite the URL, host, scheme or method. A fill's response
# is shared, so one client's value must not shape what everybody gets (cache poisoning); the
# gateway sends its own X-Forwarded-For/Proto/Host instead.
OVERRIDE_FIELDS = frozenset(
    {
        "forwarded",
        "x-original-url",
        "x-rewrite-url",
        "x-http-method-override",
        "x-http-method",
        "x-method-override",
        "x-forwarded-server",
        "x-forwarded-port",
        "x-forwarded-prefix",
        "x-forwarded-scheme",
        "x-forwarded-ssl",
        "x-host",
    }
)

TAG_FIELDS = frozenset({"surrogate-key", "cache-tag", "cache-groups"})

# Fields of a stored response that only make sense on the original exchange.
NOT_STORED = frozenset({"age", "set-cookie"}) | HOP_BY_HOP

AnyHeaders = CIMultiDict[str] | CIMultiDictProxy[str]


def connection_listed(headers: AnyHeaders) -> set[str]:
    """Field names a sender listed in Connection, which are hop-by-hop too (RFC 9110 7.6.1)."""
    names: set[str] = set()
    for value in headers.getall("Connection", []):
        names.update(part.strip().lower() for part in value.split(",") if part.strip())
    return names


def end_to_end(headers: AnyHeaders, drop: Iterable[str] = ()) -> list[tuple[str, str]]:
    """The headers that may be forwarded, in order, without hop-by-hop ones and `drop`."""
    skip = HOP_BY_HOP | connection_listed(headers) | {d.lower() for d in drop}
    return [(k, v) for k, v in headers.items() if k.lower() not in skip]


def forwarding_fields(req: Incoming, route: Route, origin_host: str, via: str) -> dict[str, Any]:
    """The fields the gateway sets on every request to a route's origin, as keyword arguments
    of `fill_request_headers` and `pass_request_headers`."""
    return {
        "host": req.target.host if route.cfg.preserve_host else origin_host,
        "forwarded_host": req.target.host,
        "scheme": req.target.scheme,
        "client_ip": req.client_ip,
        "via": via,
    }


def fill_request_headers(
    fields: Mapping[str, str],
    *,
    host: str,
    forwarded_host: str,
    scheme: str,
    client_ip: str | None,
    via: str,
) -> CIMultiDict[str]:
    """A shared fill's request fields: the keyed client-derived `fields` (see
    `gateway.canonical.fill_fields`) and the gateway's own Host, X-Forwarded-* and Via. The
    client's own X-Forwarded-For and Via are not carried: nothing unkeyed shapes a shared fill."""
    out: CIMultiDict[str] = CIMultiDict(fields)
    out["Host"] = host
    if client_ip:
        out["X-Forwarded-For"] = client_ip
    out["X-Forwarded-Proto"] = scheme
    out["X-Forwarded-Host"] = forwarded_host
    out["Via"] = via
    return out


def pass_request_headers(
    client: Any,
    *,
    host: str,
    forwarded_host: str,
    scheme: str,
    client_ip: str | None,
    via: str,
) -> CIMultiDict[str]:
    """A pass-through request's fields: the client's end-to-end ones (`client` is the proxy's
    view, without Connection-listed fields; hop-by-hop ones are dropped here), X-Forwarded-For
    and Via appended to, Host and the other X-Forwarded-* set by the gateway. Its answer is
    never shared."""
    drop = HOP_BY_HOP | {"x-forwarded-for", "x-forwarded-proto", "x-forwarded-host", "host", "via"}
    out: CIMultiDict[str] = CIMultiDict((k, v) for k, v in client.items() if k.lower() not in drop)
    out["Host"] = host
    prior = ", ".join(client.getall("X-Forwarded-For", []))
    if client_ip:
        out["X-Forwarded-For"] = f"{prior}, {client_ip}" if prior else client_ip
    elif prior:
        out["X-Forwarded-For"] = prior
    out["X-Forwarded-Proto"] = scheme
    out["X-Forwarded-Host"] = forwarded_host
    out["Via"] = ", ".join([*client.getall("Via", []), via])
    return out


def client_response_headers(
    headers: AnyHeaders,
    *,
    keep_tags: bool,
    consumed: str | None = None,
    drop: Iterable[str] = (),
) -> list[tuple[str, str]]:
    """Origin response headers fit for a client: no hop-by-hop or Connection-listed fields
    (RFC 9110 7.6.1), no upstream X-Cache (this cache sets its own), not the targeted field this
    cache consumed (RFC 9213), no tag fields unless the route keeps them, nothing in `drop`.
    Content-Length is left to the server, which knows what it sends."""
    dropped = {"content-length", "x-cache", *drop}
    if consumed is not None:
        dropped.add(consumed)
    if not keep_tags:
        dropped |= TAG_FIELDS
    return end_to_end(headers, dropped)


def tags_of(headers: AnyHeaders) -> tuple[str, ...]:
    """Surrogate-Key / Cache-Tag (space or comma separated) and Cache-Groups (RFC 9875, an sf-list
    of strings), deduplicated in order."""
    seen: dict[str, None] = {}
    for name in ("Surrogate-Key", "Cache-Tag"):
        for value in headers.getall(name, []):
            for tag in value.replace(",", " ").split():
                seen.setdefault(tag, None)
    for value in headers.getall("Cache-Groups", []):
        for part in value.split(","):
            tag = part.strip().split(";", 1)[0].strip()
            if len(tag) >= 2 and tag[0] == tag[-1] == '"':
                tag = tag[1:-1].replace('\\"', '"').replace("\\\\", "\\")
            if tag:
                seen.setdefault(tag, None)
    return tuple(seen)
