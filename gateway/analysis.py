"""An origin response, analysed once per fill: may it be shared, for how long, on what terms.

Every rule lives in `gateway.policy`; this reads the response's directives once (RFC 9213
field selection included) and hands them to each rule, so a fill parses Cache-Control once.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from gateway import policy
from gateway.headers import tags_of


@dataclass(frozen=True, slots=True)
class Analysis:
    refusal: str | None  # why it may not be stored or shared (policy.storable); None: it may
    freshness: policy.Freshness  # lifetime and stale windows (RFC 9111 4.2.1, RFC 5861)
    initial_age: float  # corrected_initial_age (RFC 9111 4.2.3)
    vary: tuple[str, ...]  # lower-cased names it varies on (empty for Vary: *, refused anyway)
    strip: tuple[str, ...]  # fields a shared copy drops (private="X", no-cache="X")
    consumed: str | None  # the targeted field obeyed, kept from clients (RFC 9213)
    etag: str | None
    last_modified: str | None
    tags: tuple[str, ...]  # Surrogate-Key, Cache-Tag, Cache-Groups


def analyse(
    status: int,
    req_headers: Any,
    resp_headers: Any,
    rules: policy.RouteRules,
    *,
    client_no_cache: str = "honor",
    request_time: float,
    response_time: float,
) -> Analysis:
    """What a shared cache may do with a response to a GET (headers as in `gateway.policy`)."""
    directives = policy.effective(resp_headers, rules)
    refusal = policy.storable(
        "GET", status, req_headers, resp_headers, rules, client_no_cache, directives
    )
    age = policy.initial_age(resp_headers, request_time, response_time)
    return Analysis(
        refusal=refusal,
        freshness=policy.freshness(
            status, resp_headers, response_time, rules, directives, age=age
        ),
        initial_age=age,
        vary=policy.vary_names(resp_headers) or (),
        strip=policy.strip_fields(resp_headers, rules),
        consumed=directives.consumed,
        etag=resp_headers.get("ETag"),
        last_modified=resp_headers.get("Last-Modified"),
        tags=tags_of(resp_headers),
    )
