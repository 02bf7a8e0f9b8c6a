"""HTTP validators (RFC 9110 section 13): lets the gateway revalidate with cheap 304s."""

from __future__ import annotations

import re
from collections.abc import Mapping
from email.utils import formatdate, parsedate_to_datetime

_ETAG_RE = re.compile(r'(?:W/)?"[^"]*"')


def http_date(timestamp: float) -> str:
    """IMF-fixdate, as required for Last-Modified and Date."""
    return formatdate(timestamp, usegmt=True)


def parse_http_date(value: str) -> int | None:
    """Parse an HTTP-date to epoch seconds; None when invalid (header is then ignored)."""
    try:
        parsed = parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if parsed.tzinfo is None:
        return None
    return int(parsed.timestamp())


def _opaque(tag: str) -> str:
    return tag[2:] if tag.startswith("W/") else tag


def etag_matches(if_none_match: str, etag: str) -> bool:
    """Weak comparison against an If-None-Match list (``*`` matches any current ETag)."""
    if if_none_match.strip() == "*":
        return True
    wanted = _opaque(etag)
    return any(_opaque(tag) == wanted for tag in _ETAG_RE.findall(if_none_match))


def not_modified(headers: Mapping[str, str], etag: str, last_modified: int) -> bool:
    """If-None-Match wins; If-Modified-Since is only consulted when it is absent."""
    inm = headers.get("If-None-Match")
    if inm is not None:
        return etag_matches(inm, etag)
    ims = headers.get("If-Modified-Since")
    if ims is None:
        return False
    since = parse_http_date(ims)
    return since is not None and last_modified <= since
