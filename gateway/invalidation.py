"""Which stored URLs an unsafe request invalidates (RFC 9111 4.4). Pure functions."""

from __future__ import annotations

from typing import Any
from urllib.parse import urldefrag, urljoin, urlsplit

Headers = Any  # multidict.CIMultiDict[str] / CIMultiDictProxy[str]: case-insensitive, getall()

SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS", "TRACE"})


def invalidates(method: str, status: int) -> bool:
    """RFC 9111 4.4: an unsafe method with a non-error status invalidates the target URI."""
    return method.upper() not in SAFE_METHODS and 200 <= status <= 399


def _origin(url: str) -> tuple[str, str, int | None] | None:
    parts = urlsplit(url)
    try:
        port = parts.port
    except ValueError:
        return None
    scheme = parts.scheme.lower()
    if not parts.hostname or scheme not in ("http", "https"):
        return None
    return scheme, parts.hostname, port or {"http": 80, "https": 443}[scheme]


def invalidation_targets(request_url: str, resp_headers: Headers) -> list[str]:
    """Absolute same-origin URLs of Location and Content-Location to invalidate too (RFC 9111 4.4).

    Other origins are left alone so that one site cannot purge another's entries.
    """
    origin = _origin(request_url)
    if origin is None:
        return []
    targets: list[str] = []
    for name in ("Location", "Content-Location"):
        for value in resp_headers.getall(name, []):
            url = urldefrag(urljoin(request_url, value.strip())).url
            if _origin(url) == origin and url != request_url and url not in targets:
                targets.append(url)
    return targets
