"""Shared-cache rules of RFC 9111 / 9213 / 5861 / 9211 as pure functions of plain data and a clock.

No I/O here: headers come in as multidicts (or any Mapping with `getall`), time as epoch seconds.
The lenient field parsers live in `gateway.directives`; this module holds the decisions.
"""

from __future__ import annotations

import enum
import math
from dataclasses import dataclass
from typing import Any

from gateway.directives import (
    DELTA_DIRECTIVES,
    FLAG_DIRECTIVES,
    delta_seconds,
    field_names,
    http_date,
    parse_cache_control,
    parse_targeted,
    surrogate_max_age,
)

Headers = Any  # multidict.CIMultiDict[str] / CIMultiDictProxy[str]: case-insensitive, getall()

# RFC 9110 15.1 plus 9111 4.2.2: statuses a cache may store without explicit freshness. 206 is
# left out on purpose: the gateway does not combine or serve ranges.
HEURISTIC_STATUSES = frozenset({200, 203, 204, 300, 301, 308, 404, 405, 410, 414, 501})
# Statuses whose caching requirements this cache implements, for must-understand (RFC 9111
# 5.2.2.3): the heuristically cacheable ones plus the redirects it stores with explicit freshness.
UNDERSTOOD_STATUSES = HEURISTIC_STATUSES | {302, 303, 307}

# Cache-Control directives that make a targeted field (RFC 9213) worth obeying; a field with
# none of them is treated as absent, as RFC 9213 2.2 asks for an empty or invalid field.
KNOWN_DIRECTIVES = (DELTA_DIRECTIVES - {"min-fresh", "max-stale"}) | FLAG_DIRECTIVES


# Request directives that send a request to the origin whatever the cache holds.
_ORIGIN_FORCING = frozenset({"no-cache", "max-age", "min-fresh", "no-store"})
# With client_no_cache: coalesce, clients cause at most one revalidation per entry this often.
CLIENT_REVALIDATION = 1.0
SURROGATE_CONTROL = "surrogate-control"




@dataclass(frozen=True, slots=True)
class RouteRules:
    """The per-route knobs of the policy, built from the YAML route `cache:` block."""

    heuristic_fraction: float | None = None  # None: no heuristic freshness (RFC 9111 4.2.2)
    heuristic_max: float = 86400.0
    default_swr: float = 0.0  # stale-while-revalidate when the origin sends none
    default_sie: float = 0.0  # stale-if-error when the origin sends none
    max_swr: float | None = None  # cap on what the origin may ask for
    max_sie: float | None = None
    targeted_fields: tuple[str, ...] = ("cdn-cache-control", "surrogate-control")
    # The defaults above apply even where s-maxage implies proxy-revalidate (CDN-style grace).
    stale_overrides_origin: bool = False
    # Operator lifetimes, counted from when the response arrived (see `route_ttl`):
    default_ttl: float | None = None  # without explicit expiration (nginx proxy_cache_valid)
    override_ttl: float | None = None  # whatever the origin says (Varnish beresp.ttl)


@dataclass(frozen=True, slots=True)
class Freshness:
    """What a stored response allows, computed once when it is stored (or refreshed by a 304)."""

    lifetime: float  # freshness_lifetime, seconds
    swr: float = 0.0  # stale-while-revalidate window after expiry
    sie: float = 0.0  # stale-if-error window after expiry
    must_revalidate: bool = False  # must-revalidate / proxy-revalidate: never served stale
    no_cache: bool = False  # store, but validate before every reuse
    # s-maxage implies proxy-revalidate for a shared cache: stale only within the origin's own
    # stale-* windows, never on a client's max-stale or stale-if-error.
    proxy_revalidate: bool = False


class Reuse(enum.Enum):
    FRESH = "fresh"  # serve as a hit
    STALE_WHILE_REVALIDATE = "swr"  # serve now, refresh in the background
    VALIDATE = "validate"  # must be validated (or refetched) before it is served


@dataclass(slots=True)  # built on every hit: not frozen, which costs twice as much
class Judgement:
    reuse: Reuse
    age: float  # current age, seconds
    ttl: float  # remaining freshness (negative once stale), for Cache-Status ttl=
    detail: str = ""  # why VALIDATE: "stale", "no-cache", "req-no-cache", "req-max-age", ...


@dataclass(frozen=True, slots=True)
class Directives:
    """The response directives this gateway obeys, after RFC 9213 field selection.

    `cc` is the winning CDN-Cache-Control-like field, else Cache-Control. `surrogate` is set when
    Surrogate-Control won: it then only supplies the lifetime (and no-store), the rest still
    comes from Cache-Control. `consumed` names the targeted field that won, if one did: Expires
    is then ignored (RFC 9213 2.2) and clients do not see that field.
    """

    cc: dict[str, str | None]
    surrogate: dict[str, str | None] | None = None
    consumed: str | None = None

    @property
    def targeted(self) -> bool:
        return self.consumed is not None and self.surrogate is None

    @property
    def no_store(self) -> bool:
        surrogate = self.surrogate or {}
        return "no-store" in self.cc or "no-store" in surrogate

    def forbids_storing(self, status: int) -> bool:
        """no-store, unless must-understand comes with a status whose rules this cache
        implements: that no-store is meant for caches that do not (RFC 9111 5.2.2.3)."""
        if "must-understand" in self.cc and status in UNDERSTOOD_STATUSES:
            return "no-store" in (self.surrogate or {})
        return self.no_store

    @property
    def must_revalidate(self) -> bool:
        return "must-revalidate" in self.cc or "proxy-revalidate" in self.cc

    @property
    def no_cache(self) -> bool:
        """Unqualified no-cache only: no-cache="X" just keeps field X out of the stored copy."""
        return "no-cache" in self.cc and not field_names(self.cc["no-cache"])

    @property
    def private(self) -> bool:
        """Unqualified private (an empty list counts as unqualified, to stay on the safe side)."""
        return "private" in self.cc and not field_names(self.cc["private"])

    def expiration(self, resp_headers: Headers) -> bool:
        """Does the response carry an explicit expiration time (RFC 9111 4.2.1): a targeted
        max-age / s-maxage (RFC 9213), else s-maxage, max-age or Expires? `public` is not one."""
        if self.surrogate is not None and "max-age" in self.surrogate:
            return True
        if self.cc.keys() & {"s-maxage", "max-age"}:
            return True
        return not self.targeted and bool(_all(resp_headers, "Expires"))

    def explicit(self, resp_headers: Headers) -> bool:
        """Does the response carry explicit freshness or `public` (RFC 9111 3, 4.2.1)?"""
        return "public" in self.cc or self.expiration(resp_headers)


def _all(headers: Headers, name: str) -> list[str]:
    return list(headers.getall(name, []))


def _first(headers: Headers, name: str) -> str | None:
    values = _all(headers, name)
    return values[0] if values else None


def effective(resp_headers: Headers, rules: RouteRules) -> Directives:
    """The response directives this cache obeys, parsed once per response.

    RFC 9213 2.2: the first targeted field with usable directives replaces Cache-Control."""
    for name in rules.targeted_fields:
        values = _all(resp_headers, name)
        if not values:
            continue
        if name.lower() == SURROGATE_CONTROL:
            directives = parse_cache_control(values)
            if "max-age" in directives or "no-store" in directives:
                cc = parse_cache_control(_all(resp_headers, "Cache-Control"))
                return Directives(cc, surrogate=directives, consumed=name)
        else:
            directives = parse_targeted(values)
            if directives.keys() & KNOWN_DIRECTIVES:
                return Directives(directives, consumed=name)
    return Directives(parse_cache_control(_all(resp_headers, "Cache-Control")))


def consumed_field(resp_headers: Headers, rules: RouteRules) -> str | None:
    """The targeted field (CDN-Cache-Control, Surrogate-Control, ...) whose directives this cache
    obeyed, which it then keeps from clients; an unusable one is ignored and passes through."""
    return effective(resp_headers, rules).consumed


def _request_directives(req_headers: Headers) -> dict[str, str | None]:
    """Request directives; `Pragma: no-cache` counts only without Cache-Control (RFC 9111 5.4)."""
    values = _all(req_headers, "Cache-Control")
    if values:
        return parse_cache_control(values)
    pragma = _all(req_headers, "Pragma")
    if pragma and "no-cache" in parse_cache_control(pragma):
        return {"no-cache": None}
    return {}


def request_directives(req_headers: Headers, client_no_cache: str = "honor",
                       validated_ago: float = math.inf) -> dict[str, str | None]:
    """The request directives the cache obeys, after the route's `client_no_cache` policy.

    A client's no-cache, max-age and min-fresh (RFC 9111 5.2.1) make the cache go to the origin,
    so any client could turn a shared cache off for everyone. `honor` obeys them as written;
    `coalesce` obeys them at most once per CLIENT_REVALIDATION seconds per entry (an entry the
    origin validated that recently satisfies them); `ignore` drops them, and a request
    no-store too, as nginx does. only-if-cached, max-stale and stale-if-error only ever ask for
    less from the origin, and stay.
    """
    req = _request_directives(req_headers)
    if not req or client_no_cache == "honor" or not req.keys() & _ORIGIN_FORCING:
        return req
    if client_no_cache == "ignore":
        return {k: v for k, v in req.items() if k not in _ORIGIN_FORCING}
    if validated_ago < CLIENT_REVALIDATION:
        return {k: v for k, v in req.items() if k not in _ORIGIN_FORCING or k == "no-store"}
    return req


def strip_fields(resp_headers: Headers, rules: RouteRules | None = None) -> tuple[str, ...]:
    """Lower-cased names listed in private="..." / no-cache="..." (RFC 9111 5.2.2.4, 5.2.2.7).

    A shared cache may store such a response only without those fields. Names are collected from
    Cache-Control and every CDN-Cache-Control-like targeted field: stripping too much is safe.
    """
    rules = rules or RouteRules()
    sources = [parse_cache_control(_all(resp_headers, "Cache-Control"))] + [
        parse_targeted(_all(resp_headers, f))
        for f in rules.targeted_fields
        if f.lower() != SURROGATE_CONTROL
    ]
    names: set[str] = set()
    for directives in sources:
        for qualified in ("private", "no-cache"):
            names.update(field_names(directives.get(qualified)))
    return tuple(sorted(names))


def storable(method: str, status: int, req_headers: Headers, resp_headers: Headers,
             rules: RouteRules, client_no_cache: str = "honor",
             directives: Directives | None = None) -> str | None:
    """None when a shared cache may store the response (RFC 9111 3, 3.5), else the reason.

    Reasons: "method", "status", "must-understand", "no-store", "private", "authorization",
    "vary-star", "set-cookie", "no-freshness". Cache-Control private / no-store are ignored when a
    CDN-Cache-Control field wins (RFC 9213 2.2); Surrogate-Control only overrides the lifetime.
    A response with no explicit freshness and no validator is refused as "no-freshness": it
    could never be reused (heuristic freshness needs Last-Modified, which is a validator),
    unless the route assigns it a positive TTL (`route_ttl`). A route TTL never lifts any other
    refusal: no-store, private, Authorization, a status neither heuristically cacheable nor
    explicitly fresh, and so on stay refused (RFC 9111 3).
    """
    if method.upper() not in ("GET", "HEAD"):
        return "method"
    if not 200 <= status <= 599 or status in (206, 304):
        return "status"
    if "no-store" in request_directives(req_headers, client_no_cache):
        return "no-store"  # RFC 9111 5.2.1.5
    d = directives or effective(resp_headers, rules)
    if "must-understand" in d.cc and status not in UNDERSTOOD_STATUSES:
        return "must-understand"  # RFC 9111 5.2.2.3
    if d.forbids_storing(status):
        return "no-store"  # RFC 9111 5.2.2.5
    if d.private:
        return "private"  # RFC 9111 5.2.2.7
    if _first(req_headers, "Authorization") is not None and not (
        d.cc.keys() & {"public", "s-maxage", "must-revalidate"}
    ):
        return "authorization"  # RFC 9111 3.5
    if vary_names(resp_headers) is None:
        return "vary-star"  # RFC 9111 4.1
    if _all(resp_headers, "Set-Cookie") and "set-cookie" not in strip_fields(resp_headers, rules):
        return "set-cookie"  # RFC 9111 7.3: a shared cache must not hand one user's cookie out
    explicit = d.explicit(resp_headers)
    if not explicit and status not in HEURISTIC_STATUSES:
        return "status"  # RFC 9111 3: neither heuristically cacheable nor explicitly fresh
    validator = bool(_all(resp_headers, "ETag") or _all(resp_headers, "Last-Modified"))
    if not (explicit or validator or (route_ttl(status, resp_headers, rules, d) or 0.0) > 0):
        return "no-freshness"  # a route TTL gives it a lifetime of its own
    return None


def route_ttl(status: int, resp_headers: Headers, rules: RouteRules,
              directives: Directives | None = None) -> float | None:
    """The lifetime the route assigns instead of the origin's, or None to keep RFC 9111 4.2.1.

    `override_ttl` (Varnish's beresp.ttl) applies to every response: it deliberately departs from
    RFC 9111 4.2.1, where a cache MUST use s-maxage / max-age / Expires. `default_ttl` (nginx's
    proxy_cache_valid) applies only without explicit expiration (`Directives.expiration`), to the
    statuses a heuristic may cover (heuristically cacheable ones, or any marked `public`): it is
    the operator's explicit choice of heuristic freshness (RFC 9111 4.2.2), and wins over the
    Last-Modified fraction. Neither decides whether a response may be stored (`storable`).
    """
    if rules.override_ttl is not None:
        return max(0.0, rules.override_ttl)
    if rules.default_ttl is None:
        return None
    d = directives or effective(resp_headers, rules)
    if d.expiration(resp_headers):
        return None
    if status in HEURISTIC_STATUSES or "public" in d.cc:
        return max(0.0, rules.default_ttl)
    return None


def _cap(value: float, cap: float | None) -> float:
    return value if cap is None else min(value, cap)


def _lifetime(status: int, resp_headers: Headers, response_time: float, rules: RouteRules,
              d: Directives) -> float:
    """RFC 9111 4.2.1, with the targeted fields of RFC 9213 in front; invalid values are 0."""
    if d.surrogate is not None and "max-age" in d.surrogate:
        return float(surrogate_max_age(d.surrogate["max-age"]) or 0)
    for name in ("s-maxage", "max-age"):
        if name in d.cc:
            return float(delta_seconds(d.cc[name]) or 0)
    date = http_date(_first(resp_headers, "Date"))
    date_value = response_time if date is None else date
    expires = _all(resp_headers, "Expires")
    if expires and not d.targeted:
        # RFC 9111 5.3: an invalid date, or several lines, means already expired.
        expires_at = http_date(expires[0]) if len(expires) == 1 else None
        return 0.0 if expires_at is None else max(0.0, expires_at - date_value)
    # RFC 9111 4.2.2: heuristically cacheable statuses, and any status marked public.
    if rules.heuristic_fraction is not None and (
        status in HEURISTIC_STATUSES or "public" in d.cc
    ):
        last_modified = http_date(_first(resp_headers, "Last-Modified"))
        if last_modified is not None:
            guess = rules.heuristic_fraction * max(0.0, date_value - last_modified)
            return min(guess, rules.heuristic_max)  # RFC 9111 4.2.2
    return 0.0


def _window(value: str | None, present: bool, cap: float | None, default: float,
            forbidden: bool) -> float:
    """An RFC 5861 window: the origin's own (capped) or the route default; none if forbidden."""
    if forbidden:
        return 0.0
    if present:
        return _cap(float(delta_seconds(value) or 0), cap)
    return max(0.0, default)


def freshness(status: int, resp_headers: Headers, response_time: float,
              rules: RouteRules, directives: Directives | None = None, *,
              age: float = 0.0) -> Freshness:
    """Lifetime from CDN-Cache-Control > Surrogate-Control > s-maxage > max-age > Expires >
    heuristic (only if the route enables it), plus the RFC 5861 windows.

    A route's `override_ttl`, or its `default_ttl` where no explicit expiration came
    (`route_ttl`), replaces that lifetime. Such a TTL counts from when the response arrived:
    the lifetime is the TTL plus `age`, the response's corrected_initial_age (RFC 9111 4.2.3),
    so the Age served stays the true age and Cache-Status ttl= (RFC 9211 2.5) starts at the
    TTL. Only the lifetime changes: no-cache still means validating before every reuse (RFC
    9111 5.2.2.4), and must-revalidate / proxy-revalidate (also implied by s-maxage) still
    forbid serving stale.

    An explicit must-revalidate / proxy-revalidate / no-cache / no-store forbids serving stale
    (RFC 9111 4.2.4): both windows are 0, whatever the origin or the route asked for. s-maxage
    implies proxy-revalidate for a shared cache (RFC 9111 5.2.2.10): the route's default windows
    do not apply to it (unless the route says `stale_overrides_origin`), but the origin's own
    stale-while-revalidate / stale-if-error, sent next to s-maxage, are explicit and do.
    """
    d = directives or effective(resp_headers, rules)
    forbidden = d.must_revalidate or d.no_cache or d.forbids_storing(status)
    implied = "s-maxage" in d.cc and not rules.stale_overrides_origin
    default_swr, default_sie = (0.0, 0.0) if implied else (rules.default_swr, rules.default_sie)
    swr = "stale-while-revalidate"
    sie = "stale-if-error"
    ttl = route_ttl(status, resp_headers, rules, d)
    if ttl is None:
        lifetime = _lifetime(status, resp_headers, response_time, rules, d)
    else:
        lifetime = ttl + max(0.0, age)
    return Freshness(
        lifetime=lifetime,
        swr=_window(d.cc.get(swr), swr in d.cc, rules.max_swr, default_swr, forbidden),
        sie=_window(d.cc.get(sie), sie in d.cc, rules.max_sie, default_sie, forbidden),
        must_revalidate=d.must_revalidate,
        no_cache=d.no_cache,
        proxy_revalidate=implied,
    )


def initial_age(resp_headers: Headers, request_time: float, response_time: float) -> float:
    """corrected_initial_age of RFC 9111 4.2.3 (Age and Date of the response).

    An invalid Age (RFC 9111 5.1: not a non-negative integer) is ignored; of several, the first
    counts. A missing or invalid Date gives no apparent age. A clock that runs backwards between
    request and response adds no delay rather than a negative one.
    """
    age_value = 0
    age = _first(resp_headers, "Age")
    if age is not None:
        age_value = delta_seconds(age.split(",")[0]) or 0
    date = http_date(_first(resp_headers, "Date"))
    apparent_age = 0.0 if date is None else max(0.0, response_time - date)
    response_delay = max(0.0, response_time - request_time)
    return max(apparent_age, age_value + response_delay)


def judge(fresh: Freshness, age: float, req_headers: Headers, now_soft_stale: bool = False,
          *, soft_grace: float = 0.0, client_no_cache: str = "honor",
          validated_ago: float = math.inf) -> Judgement:
    """May a stored response of this age be reused for this request (RFC 9111 4.2, 5.2.1; RFC 5861)?
    `now_soft_stale` forces the entry to count as stale (soft purge / soft bust); it may still be
    served while revalidating for `soft_grace` more seconds (or within its swr window), unless
    the response forbids stale (must-revalidate, no-cache). The request's directives are read
    through `request_directives` (the route's client_no_cache, and `validated_ago`: seconds since
    the origin last confirmed the entry)."""
    age = max(0.0, age)
    ttl = fresh.lifetime - age
    if now_soft_stale:
        ttl = min(ttl, 0.0)

    def verdict(reuse: Reuse, detail: str = "") -> Judgement:
        return Judgement(reuse, age, ttl, detail)

    req = request_directives(req_headers, client_no_cache, validated_ago)
    if "no-cache" in req:
        return verdict(Reuse.VALIDATE, "req-no-cache")  # RFC 9111 5.2.1.4
    if "max-age" in req and age > (delta_seconds(req["max-age"]) or 0):
        return verdict(Reuse.VALIDATE, "req-max-age")  # RFC 9111 5.2.1.1
    if "min-fresh" in req and ttl < (delta_seconds(req["min-fresh"]) or 0):
        return verdict(Reuse.VALIDATE, "req-min-fresh")  # RFC 9111 5.2.1.3
    if fresh.no_cache:
        return verdict(Reuse.VALIDATE, "no-cache")  # RFC 9111 5.2.2.4
    if ttl > 0:
        return verdict(Reuse.FRESH)
    if fresh.must_revalidate:
        return verdict(Reuse.VALIDATE, "stale")  # RFC 9111 5.2.2.2, 5.2.2.8
    staleness = -ttl
    if "max-stale" in req and not fresh.proxy_revalidate:  # RFC 9111 5.2.1.2, 5.2.2.10
        limit = req["max-stale"]
        if limit is None or staleness <= (delta_seconds(limit) or 0):
            return verdict(Reuse.FRESH, "max-stale")
    if (now_soft_stale and soft_grace > 0) or (fresh.swr > 0 and staleness <= fresh.swr):
        return verdict(Reuse.STALE_WHILE_REVALIDATE)  # RFC 5861 3
    return verdict(Reuse.VALIDATE, "stale")


def usable_if_error(fresh: Freshness, age: float, req_headers: Headers) -> bool:
    """RFC 5861 4: may the stale response be served because the origin failed?

    A fresh entry always may, except a no-cache one (it needs the origin every time). A stale one
    may within the response's stale-if-error window or the request's own stale-if-error, never
    under must-revalidate (RFC 9111 5.2.2.2: a disconnected cache must answer with an error).
    """
    if fresh.no_cache:
        return False
    ttl = fresh.lifetime - max(0.0, age)
    if ttl > 0:
        return True
    if fresh.must_revalidate:
        return False
    staleness = -ttl
    if fresh.sie > 0 and staleness <= fresh.sie:
        return True
    if fresh.proxy_revalidate:
        return False  # RFC 9111 5.2.2.10: only the origin's own window, not the client's
    asked = _request_directives(req_headers).get("stale-if-error", "")
    limit = delta_seconds(asked)
    return limit is not None and staleness <= limit


def vary_names(resp_headers: Headers) -> tuple[str, ...] | None:
    """Lower-cased, sorted Vary names; None for `Vary: *` (never reusable, RFC 9111 4.1)."""
    names: set[str] = set()
    for value in _all(resp_headers, "Vary"):
        for part in value.split(","):
            name = part.strip().lower()
            if name == "*":
                return None
            if name:
                names.add(name)
    return tuple(sorted(names))


def coded_without_vary(resp_headers: Headers) -> bool:
    """A content-coded response that does not say it varies on Accept-Encoding (nor `Vary: *`).

    Such a response was chosen by the Accept-Encoding the request carried, whatever its Vary
    says: a cache that stored it for every client would hand gzip to clients that cannot
    decode it (RFC 9110 12.5.3), so the gateway keys it on Accept-Encoding as if it said so.
    """
    values = _all(resp_headers, "Content-Encoding")
    codings = {c.strip().lower() for value in values for c in value.split(",")}
    if not codings - {"", "identity"}:
        return False
    names = vary_names(resp_headers)
    return names is not None and "accept-encoding" not in names
