"""Validation: answering a client's conditional from a stored response, and refreshing a stored
response from the origin's 304 (RFC 9110 13, RFC 9111 4.3). Pure functions of headers."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from gateway.directives import entity_tags, http_date, weak_tag
from gateway.headers import HOP_BY_HOP

Headers = Any  # multidict.CIMultiDict[str] / CIMultiDictProxy[str]: case-insensitive, getall()

# Fields a 304 must not change in the stored copy (RFC 9111 3.2): Content-Length always; the
# others describe the stored bytes (kept as received, encoded) or the one exchange.
_NOT_UPDATED = frozenset({"content-length", "content-encoding", "content-range"}) | HOP_BY_HOP


def _all_of(headers: Headers, name: str) -> list[str]:
    return list(headers.getall(name, []))


def _first_of(headers: Headers, name: str) -> str | None:
    values = _all_of(headers, name)
    return values[0] if values else None


def not_modified(req_headers: Headers, method: str, status: int, resp_headers: Headers,
                 *, response_time: float | None = None) -> bool:
    """True when a client conditional (If-None-Match, else If-Modified-Since) is answered by 304
    (RFC 9110 13.1.2, 13.1.3, 13.2.2; RFC 9111 4.3.2).

    If-None-Match uses the weak comparison; when it is present If-Modified-Since is ignored.
    Without Last-Modified, the stored Date (else `response_time`) is the modification time.
    """
    if method.upper() not in ("GET", "HEAD") or not 200 <= status <= 299:
        return False
    if_none_match = _all_of(req_headers, "If-None-Match")
    if if_none_match:
        wanted = [tag for value in if_none_match for tag in entity_tags(value)]
        if "*" in wanted:
            return True  # a stored response means a current representation exists
        etag = _first_of(resp_headers, "ETag")
        if etag is None or not entity_tags(etag):
            return False
        current = weak_tag(entity_tags(etag)[0])
        return any(weak_tag(tag) == current for tag in wanted)
    ims_values = _all_of(req_headers, "If-Modified-Since")
    if len(ims_values) != 1:
        return False  # absent, or several: RFC 9110 13.1.3 says ignore
    since = http_date(ims_values[0])
    if since is None:
        return False
    modified = http_date(_first_of(resp_headers, "Last-Modified"))
    if modified is None:
        modified = http_date(_first_of(resp_headers, "Date"))
    if modified is None:
        modified = response_time
    return modified is not None and modified <= since


def validators(resp_headers: Headers) -> dict[str, str]:
    """If-None-Match / If-Modified-Since to revalidate a stored response (RFC 9111 4.3.1)."""
    out: dict[str, str] = {}
    etag = _first_of(resp_headers, "ETag")
    if etag is not None and etag.strip():
        out["If-None-Match"] = etag.strip()
    last_modified = _first_of(resp_headers, "Last-Modified")
    if last_modified is not None and last_modified.strip():
        out["If-Modified-Since"] = last_modified.strip()
    return out


def merge_not_modified(stored: Sequence[tuple[str, str]], fresh_headers: Headers,
                       ) -> tuple[tuple[str, str], ...]:
    """Stored headers updated from a 304 (RFC 9111 3.2, 4.3.4): replace what the 304 carries,
    except Content-Length and the fields that must not be updated.

    A name the 304 carries replaces every stored value of that name, in the place of its first
    stored occurrence; new names are appended. Content-Encoding and Content-Range describe the
    stored bytes and stay; hop-by-hop and Connection-listed fields are not taken (RFC 9111 3.1).
    """
    listed = {
        name.strip().lower()
        for value in _all_of(fresh_headers, "Connection")
        for name in value.split(",")
    }
    skip = _NOT_UPDATED | listed
    updates: dict[str, list[tuple[str, str]]] = {}
    for name, value in fresh_headers.items():
        if name.lower() not in skip:
            updates.setdefault(name.lower(), []).append((name, value))
    merged: list[tuple[str, str]] = []
    replaced: set[str] = set()
    for name, value in stored:
        key = name.lower()
        if key not in updates:
            merged.append((name, value))
        elif key not in replaced:
            merged.extend(updates[key])
            replaced.add(key)
    for key, items in updates.items():
        if key not in replaced:
            merged.extend(items)
    return tuple(merged)
