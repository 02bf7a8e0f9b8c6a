"""One canonical request per client request: the cache key is derived from it, and a shared
fill sends exactly it. Pure.

A cache is poisoned when the key says one thing and the origin is asked another. So the request
target is parsed and normalised once (`parse_target`); routing, the key and the upstream request
all use that result; and a shared fill's request fields are built from an allow-list
(`fill_fields`): each field the client influences there is part of the key, everything else the
origin sees is fixed by the gateway. docs/caching.md ("What a fill sends") states the rule.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl

from multidict import MultiDict

from gateway.headers import (
    CLIENT_CONDITIONALS,
    HOP_BY_HOP,
    OVERRIDE_FIELDS,
    connection_listed,
)
from gateway.key import (
    accept_encoding_bucket,
    normalize_host,
    normalize_path,
    normalize_url,
    normalize_value,
)

# Fields a shared fill never takes from the client, whatever the key says: the gateway sets its
# own (Host, X-Forwarded-*, Via), frames its own message (Content-Length, Expect), validates on
# its own (conditionals, Range), and decides freshness itself (request Cache-Control, Pragma).
NEVER_FROM_CLIENT = (
    HOP_BY_HOP
    | CLIENT_CONDITIONALS
    | OVERRIDE_FIELDS
    | {
        "host",
        "content-length",
        "expect",
        "x-forwarded-for",
        "x-forwarded-proto",
        "x-forwarded-host",
        "via",
        "cache-control",
        "pragma",
    }
)

# RFC 3986 pchar, "/" and "?" (and "%", checked by the key's percent normalisation). Any other
# printable character the parser lets through is percent-encoded, as browsers do.
_TARGET_CHARS = re.compile(r"[A-Za-z0-9\-._~!$&'()*+,;=:@/?%]*")
_REG_NAME = re.compile(r"[A-Za-z0-9\-._~]{1,253}")
_PORT = re.compile(r"[0-9]{1,5}")


class BadRequest(Exception):
    """A request the gateway refuses to forward or key: a 400 with `reason`."""

    status = 400

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True, slots=True)
class Target:
    """The request target as the gateway understands it, once: routing, the key and every
    upstream request use this, never the raw target."""

    scheme: str
    host: str  # normalised authority: lower case, default port dropped, IPv6 bracketed
    path: str  # percent-encoding normalised, dot segments resolved (RFC 3986 6.2.2)
    query: str | None  # as received (made valid), None when the target has no "?"
    hostname: str = ""  # the host without its port, for routing

    @property
    def path_qs(self) -> str:
        """What a pass-through request sends: normalised path, query as received."""
        return self.path if self.query is None else f"{self.path}?{self.query}"


def parse_target(raw: str, host_header: str | None, scheme: str) -> Target:
    """Resolve a request target (RFC 9112 3.2) against Host; raise BadRequest if it is not an
    origin-form path or an http(s) absolute-form URL, or names no valid host.

    In absolute-form the URL's authority replaces Host (RFC 9112 3.2.2); its scheme is only
    checked, the connection decides the scheme. The fragment, which a target must not carry, is
    dropped, as the key always did.
    """
    authority = host_header
    if not raw.startswith("/"):
        authority, raw = _absolute_form(raw)
    if authority is None:
        raise BadRequest("missing Host header")
    target = raw.partition("#")[0]
    path, sep, query = target.partition("?")
    host = normalize_host(scheme, _valid_authority(authority))
    return Target(
        scheme=scheme,
        host=host,
        path=normalize_path(_encoded(path)),
        query=_encoded(query) if sep else None,
        hostname=host.partition("]")[0] + "]" if host.startswith("[") else host.partition(":")[0],
    )


def absolute_target(url: str) -> Target:
    """An absolute http(s) URL (a purge, a Location) parsed as a request for it would be, its
    own scheme kept; BadRequest if no request could name it."""
    return parse_target(url, None, url.partition("://")[0].lower())


def _absolute_form(raw: str) -> tuple[str, str]:
    scheme, sep, rest = raw.partition("://")
    if not sep or scheme.lower() not in ("http", "https"):
        raise BadRequest("request target must be a path or an http(s) URL")
    cut = min((i for i in (rest.find("/"), rest.find("?"), rest.find("#")) if i != -1),
              default=len(rest))
    authority, tail = rest[:cut], rest[cut:]
    return authority, tail if tail.startswith("/") else "/" + tail


def _valid_authority(authority: str) -> str:
    """`host[:port]` with a DNS-style name, IPv4 or bracketed IPv6; no userinfo."""
    if authority.startswith("["):
        inner, close, rest = authority[1:].partition("]")
        try:
            ipaddress.IPv6Address(inner)
        except ValueError:
            raise BadRequest(f"invalid host {authority!r}") from None
        if not close or (rest and not rest.startswith(":")):
            raise BadRequest(f"invalid host {authority!r}")
        port = rest[1:]
        if rest and not _PORT.fullmatch(port):
            raise BadRequest(f"invalid port in {authority!r}")
        return authority
    host, colon, port = authority.rpartition(":")
    if not colon:
        host, port = authority, ""
    elif not _PORT.fullmatch(port):
        raise BadRequest(f"invalid port in {authority!r}")
    if not _REG_NAME.fullmatch(host):
        raise BadRequest(f"invalid host {authority!r}")
    return authority


def _encoded(text: str) -> str:
    """Percent-encode the printable characters RFC 3986 does not allow in a path or query."""
    if _TARGET_CHARS.fullmatch(text):
        return text
    return "".join(c if _TARGET_CHARS.fullmatch(c) else f"%{ord(c):02X}" for c in text)


def client_fields(headers: Any) -> Any:
    """A client's request fields as a proxy may use them: hop-by-hop fields and those named in
    Connection are invisible (RFC 9110 7.6.1). The key, the policy and the fill all read the
    request through this view, so none of them can see a field the others do not.

    Without a Connection field, the only hidden fields are the fixed hop-by-hop ones, which
    every reader leaves out anyway (NEVER_FROM_CLIENT, pass_request_headers): the headers are
    their own view, and a hit pays for no wrapper."""
    return ClientFields(headers) if "Connection" in headers else headers


class ClientFields:
    """The view of `client_fields` for a request that names fields in Connection."""

    __slots__ = ("_headers", "_hidden")

    def __init__(self, headers: Any) -> None:
        self._headers = headers
        self._hidden = HOP_BY_HOP | connection_listed(headers)

    def getall(self, name: str, default: Iterable[str] | None = None) -> list[str]:
        """As a multidict's: KeyError for a missing (or hidden) name without a default."""
        if name.lower() in self._hidden:
            if default is None:
                raise KeyError(name)
            return list(default)
        if default is None:
            return list(self._headers.getall(name))
        values: list[str] = self._headers.getall(name, default)
        return values

    def get(self, name: str, default: str | None = None) -> str | None:
        if name.lower() in self._hidden:
            return default
        value: str | None = self._headers.get(name, default)
        return value

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and name in self._headers and name.lower() not in self._hidden

    def items(self) -> list[tuple[str, str]]:
        return [(k, v) for k, v in self._headers.items() if k.lower() not in self._hidden]


def fill_fields(
    client: Any, names: Iterable[str], tenant_field: tuple[str, str] | None
) -> dict[str, str]:
    """The client-derived fields of a shared fill, lower-case names to normalised values.

    Only these reach the origin, and each is in the key: the Accept-Encoding bucket (one of five
    values; a response that depends on it is keyed on it, see `gateway.cache`), the tenant
    field with its validated value, and the `names` the key varies on (the route's
    `forward_headers` and the response's Vary). A name the gateway fixes is never taken.
    """
    accept = client.getall("Accept-Encoding", [])
    fields = {"accept-encoding": accept_encoding_bucket(", ".join(accept) if accept else None)}
    if tenant_field is not None:
        fields[tenant_field[0].lower()] = tenant_field[1]
    for name in names:
        lower = name.lower()
        if lower in fields or lower in NEVER_FROM_CLIENT:
            continue
        values = client.getall(lower, [])
        if values:
            fields[lower] = normalize_value(lower, values)
    return fields


def keyed_url(target: Target, ignore_query: Iterable[str]) -> tuple[str, str]:
    """The key's URL of a target (`gateway.key.normalize_url`: ignored parameters dropped, the
    rest sorted), and the path and query of it that a fill sends."""
    url = normalize_url(target.scheme, target.host, target.path_qs, list(ignore_query))
    return url, url[len(target.scheme) + 3 + len(target.host) :]


def query_values(query: str) -> Mapping[str, str]:
    """A query's parameters, decoded, as a multidict for tenant sources (every value kept, so
    that one given twice can be told)."""
    return MultiDict(parse_qsl(query, keep_blank_values=True))
