"""Reply builders: a stored entry, a fill's stream, an origin response passed on, an error.

The cache path and the pass-through path build their header blocks here, so what a client
sees of an origin response is decided in one place (`forwarded`).
"""

from __future__ import annotations

import json
from collections.abc import Sequence

from multidict import CIMultiDict

from gateway import ranges, validation
from gateway.cache_status import cache_status
from gateway.exchange import Incoming, Reply
from gateway.fill import Passed, Stored, Streaming
from gateway.headers import client_response_headers
from gateway.settings import CacheSettings
from gateway.store import Entry
from gateway.upstream import OriginError, OriginResponse

Fields = Sequence[tuple[str, str]]

# Cache-Status `fwd` values of requests the cache does not serve (an uncached route or method):
# their errors say X-Cache: BYPASS, as their answers do, not MISS.
NOT_CACHED = frozenset({"bypass", "method"})

# The fields a bodiless answer about the stored response keeps (304, 416).
_NOT_MODIFIED_FIELDS = frozenset(
    {"cache-control", "content-location", "date", "etag", "expires", "vary", "last-modified", "via"}
)


class Replies:
    def __init__(self, settings: CacheSettings) -> None:
        self.settings = settings

    def _extra(self, entry: Entry, now: float, x_cache: str, status: str) -> list[tuple[str, str]]:
        return [
            ("Via", self.settings.via),
            ("Age", str(int(entry.age(now)))),
            ("Cache-Status", status),
            ("X-Cache", x_cache),
        ]

    def from_entry(
        self,
        req: Incoming,
        entry: Entry,
        now: float,
        x_cache: str,
        status: str,
        headers: Fields | None = None,
    ) -> Reply:
        """Reply from a stored entry (or with `headers`, the fill's own response): Age,
        Cache-Status, X-Cache; 304 for a matching conditional; 206 / 416 for a Range."""
        base = entry.visible if headers is None else headers
        extra = [  # as `_extra`, written out: this is every hit's path
            ("Via", self.settings.via),
            ("Age", str(int(entry.age(now)))),
            ("Cache-Status", status),
            ("X-Cache", x_cache),
        ]
        fields = req.headers
        if "If-None-Match" in fields or "If-Modified-Since" in fields:
            not_modified = _not_modified(req, entry, base, extra)
            if not_modified is not None:
                return not_modified
        if "Range" in fields and req.method == "GET" and entry.status == 200:
            return _range_reply(req, entry, base, extra)
        return Reply(entry.status, [*base, *extra], entry.body)

    def stored(
        self, req: Incoming, fill: Stored, now: float, fwd: str, *, collapsed: bool, own: bool
    ) -> Reply:
        """The reply from a fill's whole entry; `own` when this request caused the fill, which
        then sees the origin's own response rather than the shared copy."""
        entry = fill.entry
        status = self._fill_status(fill, now, fwd, collapsed, stored=fill.stored)
        headers = fill.own_headers if own else None
        reply = self.from_entry(req, entry, now, fill.x_cache, status, headers)
        if own:  # this request's fetch: the access log shows how long the origin took
            reply.origin_time = fill.waited
        return reply

    def streaming(
        self, req: Incoming, fill: Streaming, now: float, fwd: str, *, collapsed: bool, own: bool
    ) -> Reply | None:
        """The reply from a fill whose body is still arriving: its bytes so far, then the rest.
        A Range is not honoured on a body still arriving (RFC 9110 14.2 allows ignoring it).
        None when the fill no longer holds the start of its body."""
        entry = fill.entry
        detail = None if fill.broadcast.keep_all else "too-big"
        status = self._fill_status(fill, now, fwd, collapsed, detail=detail)
        base = fill.own_headers if own else entry.visible
        extra = self._extra(entry, now, fill.x_cache, status)
        if "If-None-Match" in req.headers or "If-Modified-Since" in req.headers:
            not_modified = _not_modified(req, entry, base, extra)
            if not_modified is not None:
                return not_modified
        reader = fill.broadcast.reader()
        if reader is None:
            return None
        if fill.length is not None:
            extra.append(("Content-Length", fill.length))
        waited = fill.waited if own else None
        return Reply(entry.status, [*base, *extra], reader, origin_time=waited)

    def _fill_status(
        self,
        fill: Stored | Streaming,
        now: float,
        fwd: str,
        collapsed: bool,
        *,
        stored: bool = False,
        detail: str | None = None,
    ) -> str:
        """Cache-Status of an answer from a fill (RFC 9211: fwd, fwd-status, ttl, ...)."""
        entry = fill.entry
        return cache_status(
            self.settings.name,
            hit=False,
            fwd=fwd,
            fwd_status=fill.fwd_status,
            ttl=entry.freshness.lifetime - entry.age(now),
            stored=stored,
            collapsed=collapsed,
            detail=detail,
        )

    def passed(self, fill: Passed, fwd: str, *, keep_tags: bool) -> Reply:
        """An origin response that may not be shared, to the one client that caused it."""
        fill.claimed = True
        resp = fill.response
        status = cache_status(
            self.settings.name, hit=False, fwd=fwd, fwd_status=resp.status, detail=fill.reason
        )
        return self.forwarded(resp, status, "MISS", keep_tags=keep_tags, consumed=fill.consumed)

    def forwarded(
        self,
        resp: OriginResponse,
        cache_status: str,
        x_cache: str,
        *,
        keep_tags: bool,
        consumed: str | None = None,
    ) -> Reply:
        """An origin response streamed to the client as it arrives (pass and bypass)."""
        headers = client_response_headers(resp.headers, keep_tags=keep_tags, consumed=consumed)
        headers.append(("Via", self.settings.via))
        headers += [("Cache-Status", cache_status), ("X-Cache", x_cache)]
        length = resp.headers.get("Content-Length")
        if length is not None:
            headers.append(("Content-Length", length))
        return Reply(resp.status, headers, resp, origin_time=resp.waited)

    def origin_error(self, exc: OriginError, fwd: str) -> Reply:
        """The clean JSON 502/503/504 (or 408) for an origin failure, saying what failed."""
        return self.error(
            exc.status, exc.reason, fwd=fwd, retry_after=exc.retry_after, detail=exc.detail
        )

    def error(
        self,
        status: int,
        reason: str,
        *,
        fwd: str,
        retry_after: float | None = None,
        detail: str = "",
    ) -> Reply:
        payload: dict[str, object] = {"error": reason, "status": status}
        if detail:
            payload["detail"] = detail
        status_field = cache_status(self.settings.name, hit=False, fwd=fwd, detail=reason)
        headers = [
            ("Content-Type", "application/json"),
            ("Cache-Control", "no-store"),
            ("Cache-Status", status_field),
            ("X-Cache", "BYPASS" if fwd in NOT_CACHED else "MISS"),
        ]
        if retry_after is not None:
            headers.append(("Retry-After", str(max(1, round(retry_after)))))
        return Reply(status, headers, json.dumps(payload).encode())


def _not_modified(
    req: Incoming, entry: Entry, base: Fields, extra: list[tuple[str, str]]
) -> Reply | None:
    """304 when the client's conditional matches the stored response (RFC 9111 4.3.2)."""
    if not validation.not_modified(
        req.headers,
        req.method,
        entry.status,
        CIMultiDict(entry.headers),
        response_time=entry.response_time,
    ):
        return None
    return Reply(304, [*_validator_fields(base), *extra])


def _range_reply(req: Incoming, entry: Entry, base: Fields, extra: list[tuple[str, str]]) -> Reply:
    """206 with the one range asked for, 416 when none of it exists, else the whole 200."""
    length = len(entry.body)
    wanted = ranges.requested_range(req.headers.get("Range"), length)
    if_range = req.headers.get("If-Range")
    if wanted is None or not ranges.if_range_allows(if_range, entry.etag, entry.last_modified):
        return Reply(entry.status, [*base, *extra], entry.body)
    if isinstance(wanted, ranges.ByteRange):
        part = entry.body[wanted.first : wanted.last + 1]
        content_range = ("Content-Range", wanted.content_range(length))
        return Reply(206, [*base, *extra, content_range], part)
    unsatisfied = ("Content-Range", f"bytes */{length}")
    return Reply(416, [*_validator_fields(base), *extra, unsatisfied])


def _validator_fields(headers: Fields) -> list[tuple[str, str]]:
    return [(k, v) for k, v in headers if k.lower() in _NOT_MODIFIED_FIELDS]
