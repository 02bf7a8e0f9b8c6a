"""The Cache-Status response field (RFC 9211): one member per answer, in a fixed order."""

from __future__ import annotations

import math

from gateway.directives import sf_item

# Bounds of an RFC 8941 sf-integer, for Cache-Status ttl=.
_SF_INT_MAX = 999_999_999_999_999


def _sf_integer(value: float) -> int:
    """An RFC 8941 sf-integer: rounded half up, clamped to its 15 digits, NaN as 0."""
    if math.isnan(value):
        return 0
    return math.floor(max(-_SF_INT_MAX, min(_SF_INT_MAX, value + 0.5)))


def cache_status(name: str, *, hit: bool, fwd: str | None = None, fwd_status: int | None = None,
                 stored: bool = False, ttl: float | None = None, collapsed: bool = False,
                 detail: str | None = None) -> str:
    """One Cache-Status member (RFC 9211 2), e.g. `edge; fwd=uri-miss; ttl=29; stored`.

    Parameters come in a fixed order (hit, fwd, fwd-status, ttl, stored, collapsed, detail);
    ttl is rounded to the nearest second, so that it adds up with the whole-second Age served.
    """
    params: list[str] = [sf_item(name)]
    if hit:
        params.append("hit")
    if fwd is not None:
        params.append(f"fwd={sf_item(fwd)}")
    if fwd_status is not None:
        params.append(f"fwd-status={_sf_integer(fwd_status)}")
    if ttl is not None:
        params.append(f"ttl={_sf_integer(ttl)}")
    if stored:
        params.append("stored")
    if collapsed:
        params.append("collapsed")
    if detail is not None:
        params.append(f"detail={sf_item(detail)}")
    return "; ".join(params)
