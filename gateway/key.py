"""Cache keys: URL normalisation, tenant namespace, generations, Vary secondary keys. Pure.

Two requests get the same key only when the origin would see the same resource, so every
normalisation here is one RFC 3986 section 6 calls semantics-preserving (case of scheme and
host, default port, percent-encoding of unreserved characters, dot segments) plus the two the
operator opts into per route: query order and ignored (tracking) parameters. Nothing here raises
on odd input: the key of a garbage URL is just another key.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Sequence
from fnmatch import fnmatchcase
from typing import Any
from urllib.parse import unquote_plus

Headers = Any

DEFAULT_PORTS = {"http": 80, "https": 443}

_HEX = frozenset("0123456789abcdefABCDEF")
_UNRESERVED = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~")

# Above this length a secondary key is replaced by its digest, so keys stay bounded however
# many or however long the varying headers are.
MAX_READABLE_SECONDARY = 200
# Both forms start differently: readable keys never start with "#" (escaped below).
_HASHED_PREFIX = "#"

_ENCODING_PREFERENCE = ("br", "zstd", "gzip", "deflate")
_WS = re.compile(r"\s+")
_COMMA = re.compile(r" ?, ?")


def _normalize_percent(text: str) -> str:
    """Decode %XX of unreserved characters and upper-case the hex of the others.

    Malformed sequences (`%zz`, a trailing `%`) are kept verbatim. A decoded hex digit that would
    complete such a stray `%` into a new triplet is left encoded, so that the result is a fixed
    point (normalising twice changes nothing).
    """
    if "%" not in text:
        return text
    out: list[str] = []
    i, n = 0, len(text)
    while i < n:
        ch = text[i]
        if ch == "%" and i + 2 < n and text[i + 1] in _HEX and text[i + 2] in _HEX:
            decoded = chr(int(text[i + 1 : i + 3], 16))
            if decoded in _UNRESERVED and not (decoded in _HEX and _ends_with_stray(out)):
                out.append(decoded)
            else:
                out.append("%" + text[i + 1 : i + 3].upper())
            i += 3
        else:
            out.append(ch)
            i += 1
    return "".join(out)


def _ends_with_stray(out: list[str]) -> bool:
    """True when the output so far ends in `%` or `%h`, which one more hex digit would complete.

    Kept triplets are appended as whole `%XX` strings, so a lone `%` element is always stray.
    """
    if not out:
        return False
    if out[-1] == "%":
        return True
    return len(out) >= 2 and out[-2] == "%" and out[-1] in _HEX


def _remove_dot_segments(path: str) -> str:
    """RFC 3986 5.2.4: `/a/./b/../c` -> `/a/c`; the origin resolves them to the same resource."""
    if "." not in path:
        return path
    segments = path.split("/")
    out: list[str] = []
    for idx, seg in enumerate(segments[1:], start=1):
        last = idx == len(segments) - 1
        if seg == ".":
            if last:
                out.append("")
        elif seg == "..":
            if out:
                out.pop()
            if last:
                out.append("")
        else:
            out.append(seg)
    return "/" + "/".join(out)


def normalize_host(scheme: str, host: str) -> str:
    """Lower-case host, drop trailing dots and the scheme's default port; IPv6 stays bracketed."""
    h = host.strip()
    port = ""
    if h.startswith("["):
        end = h.find("]")
        if end == -1:
            name = h
        else:
            name, rest = h[: end + 1], h[end + 1 :]
            if rest.startswith(":"):
                port = rest[1:]
            else:
                name += rest
    elif h.count(":") > 1:
        name = "[" + h + "]"
    elif ":" in h:
        name, port = h.rsplit(":", 1)
    else:
        name = h
    name = name.lower()
    if not name.startswith("["):
        name = name.rstrip(".")
    if port.isascii() and port.isdigit():
        number = int(port)
        suffix = "" if DEFAULT_PORTS.get(scheme) == number else f":{number}"
    elif port:
        suffix = ":" + port
    else:
        suffix = ""
    return name + suffix


def _query_name(param: str) -> str:
    """The decoded parameter name that `ignore_query` globs are matched against."""
    return unquote_plus(param.partition("=")[0], errors="replace")


def normalize_query(query: str, ignore_query: Sequence[str] = ()) -> str:
    """Drop empty and ignored parameters, then sort by name; a stable sort keeps repeated names
    in their original order because `a=1&a=2` and `a=2&a=1` may mean different things."""
    params = [_normalize_percent(p) for p in query.split("&") if p]
    if ignore_query:
        params = [
            p for p in params if not any(fnmatchcase(_query_name(p), g) for g in ignore_query)
        ]
    params.sort(key=lambda p: p.partition("=")[0])
    return "&".join(params)


def normalize_url(
    scheme: str, host: str, raw_path_qs: str, ignore_query: Sequence[str] = ()
) -> str:
    """`scheme://host[:port]/path?sorted-query`: host lower-cased, default port dropped,
    percent-encoding of unreserved characters decoded, query parameters sorted (stable for equal
    names), parameters matching an `ignore_query` glob (e.g. `utm_*`) removed.

    Dot segments are resolved (RFC 3986 5.2.4) since the origin sees the same resource; `+` and
    `%20` are not unified (only the hex case is), the fragment is dropped, and globs match the
    decoded parameter name case-sensitively.
    """
    scheme = scheme.strip().lower()
    target = raw_path_qs.partition("#")[0]
    path, sep, query = target.partition("?")
    query = normalize_query(query, ignore_query) if sep else ""
    url = f"{scheme}://{normalize_host(scheme, host)}{normalize_path(path)}"
    return f"{url}?{query}" if query else url


def normalize_path(path: str) -> str:
    """Percent-encoding normalised, a leading `/` ensured, dot segments resolved."""
    path = _normalize_percent(path)
    if not path.startswith("/"):
        path = "/" + path
    return _remove_dot_segments(path)


def escape_part(part: str) -> str:
    """Escape `%` and `|` so a key component cannot forge the separator (`a|b` != `a%7Cb`)."""
    if "%" not in part and "|" not in part:
        return part
    return part.replace("%", "%25").replace("|", "%7C")


def primary_key(tenant: str, generation: str, method: str, url: str) -> str:
    """`tenant|generation|METHOD|url`; HEAD shares GET's key.

    Tenant, generation and method are escaped with `escape_part`; the URL is last, so it may
    hold `|` as it is.
    """
    m = method.strip().upper()
    if m == "HEAD":
        m = "GET"
    return f"{escape_part(tenant)}|{escape_part(generation)}|{escape_part(m)}|{url}"


def vary_record_key(tenant: str, url: str) -> str:
    """Where the Vary names last seen for a URL are kept: like `primary_key` but without the
    generation, so that what a URL varies on survives a bust (its content changes, its
    negotiation rarely does) and the first fill after the bust already sends those fields."""
    return f"{escape_part(tenant)}|GET|{url}"


def vary_record_key_of(key: str) -> str:
    """The `vary_record_key` of an entry key (`primary_key`, maybe with `#` and a secondary
    key): its tenant and URL. A normalised URL holds no `#` (the fragment is cut off and an
    encoded one stays `%23`), so the first `#` after the URL starts the secondary key."""
    tenant, _, rest = key.partition("|")
    url = rest.split("|", 2)[-1].partition("#")[0]
    return f"{tenant}|GET|{url}"


def _header_values(req_headers: Headers, name: str) -> list[str] | None:
    """All values of a header (None when absent) from a multidict or a plain mapping."""
    getall = getattr(req_headers, "getall", None)
    if getall is not None:
        values = list(getall(name, []))
    else:
        values = [v for k, v in req_headers.items() if k.lower() == name]
    return values or None


def _escape_secondary(text: str) -> str:
    """Keep `&`, `=` and the hashed-form prefix unambiguous inside the readable form."""
    return text.replace("%", "%25").replace("&", "%26").replace("=", "%3D").replace("#", "%23")


def normalize_value(name: str, values: list[str]) -> str:
    """One comparable string for a header: lines joined, whitespace collapsed, case folded
    only where the field is case-insensitive."""
    joined = ("; " if name == "cookie" else ", ").join(values)  # RFC 6265 5.4 for cookies
    if name == "accept-encoding":
        return accept_encoding_bucket(joined)
    text = _COMMA.sub(", ", _WS.sub(" ", joined).strip())
    if name == "accept-language":
        text = text.lower()
    return text


def secondary_key(names: Sequence[str], req_headers: Headers) -> str:
    """The Vary part of the key: each named request header normalised (whitespace, case where it
    is insensitive); Accept-Encoding folded into a few buckets (br, gzip, identity, ...).

    Readable form `name=value&name2` (a bare name means absent, which differs from empty);
    longer than MAX_READABLE_SECONDARY it becomes `#` + a 128-bit BLAKE2b hex digest.
    """
    parts: list[str] = []
    seen: set[str] = set()
    for raw in names:
        name = raw.strip().lower()
        if not name or name in seen:
            continue
        seen.add(name)
        values = _header_values(req_headers, name)
        if values is None and name != "accept-encoding":
            parts.append(_escape_secondary(name))
        else:
            value = normalize_value(name, values or [])
            parts.append(f"{_escape_secondary(name)}={_escape_secondary(value)}")
    readable = "&".join(parts)
    if len(readable) <= MAX_READABLE_SECONDARY:
        return readable
    digest = hashlib.blake2b(readable.encode("utf-8", "surrogatepass"), digest_size=16)
    return _HASHED_PREFIX + digest.hexdigest()


def _qvalue(params: list[str]) -> float:
    """The q of one Accept-Encoding member; a malformed q counts as not acceptable."""
    for param in params:
        pname, _, pvalue = param.partition("=")
        if pname.strip().lower() == "q":
            try:
                q = float(pvalue.strip())
            except ValueError:
                return 0.0
            return q if 0.0 <= q <= 1.0 else 0.0
    return 1.0


def accept_encoding_bucket(value: str | None) -> str:
    """`br` / `zstd` / `gzip` / `deflate` / `identity` by what the client accepts (q>0), best first.

    Few buckets keep the Vary fan-out small: clients that accept br share one variant whatever
    else they list. An absent header buckets as `identity` (the conservative reading).
    """
    if not value:
        return "identity"
    explicit: dict[str, float] = {}
    for member in value.split(","):
        coding, *params = member.split(";")
        coding = coding.strip().lower()
        if not coding:
            continue
        if coding == "x-gzip":
            coding = "gzip"
        q = _qvalue(params)
        explicit[coding] = max(q, explicit.get(coding, 0.0))
    wildcard = explicit.get("*", 0.0)
    for coding in _ENCODING_PREFERENCE:
        if explicit.get(coding, wildcard) > 0.0:
            return coding
    return "identity"
