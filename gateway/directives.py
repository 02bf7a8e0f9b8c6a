"""Lenient parsers and serialisers for the fields `gateway.policy` decides on.

Origins and clients send every imaginable spelling of these fields; a cache that raised on one
would turn a caching hint into an outage, so nothing here raises on any input.
"""

from __future__ import annotations

import email.utils
import functools
import re
import time
from collections.abc import Iterable, Iterator
from datetime import UTC, datetime

import http_sf

# RFC 9110 5.6.7 limits delta-seconds only by what the recipient can hold; RFC 9111 1.2.2 asks
# for at least 2**31, and anything larger is clamped to it.
DELTA_MAX = 2**31

# Directives whose value is delta-seconds: of duplicates, the first valid value counts.
DELTA_DIRECTIVES = frozenset(
    {"max-age", "s-maxage", "min-fresh", "max-stale", "stale-while-revalidate", "stale-if-error"}
)
# Directives that take no value (private and no-cache may also list field names).
FLAG_DIRECTIVES = frozenset({
    "no-store", "no-cache", "private", "public", "must-revalidate", "proxy-revalidate",
    "immutable", "no-transform", "must-understand",
})

_TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")  # RFC 9110 5.6.2
_SF_TOKEN = re.compile(r"[A-Za-z*][!#$%&'*+\-.^_`|~0-9A-Za-z:/]*")  # RFC 8941 3.3.4
_ENTITY_TAG = re.compile(r'(?:W/)?"[^"]*"|[^,\s]+')  # RFC 9110 8.8.3, plus bare tokens


def _quoted(text: str, start: int) -> tuple[str, int]:
    """The quoted-string opening at `start`, unescaped, and the index after it (RFC 9110 5.6.4).
    An unterminated string runs to the end of the text."""
    out: list[str] = []
    i = start + 1
    while i < len(text):
        char = text[i]
        if char == "\\" and i + 1 < len(text):
            out.append(text[i + 1])
            i += 2
            continue
        if char == '"':
            return "".join(out), i + 1
        out.append(char)
        i += 1
    return "".join(out), i


def _pairs(text: str) -> Iterator[tuple[str, str | None]]:
    """Raw (name, value) pairs of a comma-separated directive list; commas inside quotes kept."""
    i, end = 0, len(text)
    while i < end:
        j = i
        while j < end and text[j] not in "=,":
            j += 1
        name, value = text[i:j].strip(), None
        if j < end and text[j] == "=":
            j += 1
            while j < end and text[j] in " \t":
                j += 1
            quoted = j < end and text[j] == '"'
            if quoted:
                value, j = _quoted(text, j)  # anything after the closing quote is junk
            comma = text.find(",", j)
            stop = end if comma < 0 else comma
            if not quoted:
                value = text[j:stop].strip()
            j = stop
        yield name, value
        i = j + 1


def parse_cache_control(values: Iterable[str]) -> dict[str, str | None]:
    """Lenient Cache-Control parse: lower-cased names, unquoted values, unknown kept, junk ignored.

    Several field lines are one list (RFC 9110 5.3). Of duplicate directives the first wins,
    except that a valid delta-seconds replaces an invalid earlier one (RFC 9111 4.2.1 leaves the
    choice open; first-valid keeps `max-age=abc, max-age=60` usable). A name that is not a
    token (`=x`, `max age`) is junk and dropped. Never raises.
    """
    out: dict[str, str | None] = {}
    for name, value in _pairs(",".join(values)):
        if not _TOKEN.fullmatch(name):
            continue
        key = name.lower()
        if key not in out or (
            key in DELTA_DIRECTIVES
            and delta_seconds(out[key]) is None
            and delta_seconds(value) is not None
        ):
            out[key] = value
    return out


def delta_seconds(value: str | None) -> int | None:
    """A non-negative integer (RFC 9111 1.2.2), clamped to 2**31; None when absent or invalid
    ("-1", "1.5", "abc"), which callers read as 0, i.e. stale (RFC 9111 4.2.1)."""
    if value is None:
        return None
    text = value.strip()
    if not text or not text.isascii() or not text.isdigit():
        return None
    return DELTA_MAX if len(text) > 10 else min(int(text), DELTA_MAX)


def surrogate_max_age(value: str | None) -> int | None:
    """Surrogate-Control max-age: `N`, or the Edge Architecture `N+M` of which only N is used."""
    return None if value is None else delta_seconds(value.partition("+")[0])


def field_names(value: str | None) -> tuple[str, ...]:
    """Lower-cased field names of a qualified private="..." / no-cache="..." (RFC 9111 5.2.2.4)."""
    if not value:
        return ()
    names = (part.strip().lower() for part in value.split(","))
    return tuple(name for name in names if _TOKEN.fullmatch(name))


_DAY = r"(?:mon|tue|wed|thu|fri|sat|sun)"
_DAY_LONG = r"(?:monday|tuesday|wednesday|thursday|friday|saturday|sunday)"
_MONTHS = ("jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec")
_MONTH = rf"(?P<month>{'|'.join(_MONTHS)})"
_TIME = r"(?P<hour>\d\d):(?P<minute>\d\d):(?P<second>\d\d)"
_HTTP_DATES = tuple(
    re.compile(pattern, re.IGNORECASE)
    for pattern in (
        rf"{_DAY}, (?P<day>\d\d) {_MONTH} (?P<year>\d{{4}}) {_TIME} GMT",  # IMF-fixdate
        rf"{_DAY_LONG}, (?P<day>\d\d)-{_MONTH}-(?P<year>\d\d) {_TIME} GMT",  # rfc850-date
        rf"{_DAY} {_MONTH} (?P<day>\d\d| \d) {_TIME} (?P<year>\d{{4}})",  # asctime-date
    )
)


def http_date_text(when: float) -> str:
    """An IMF-fixdate (RFC 9110 5.6.7) for epoch seconds, e.g. `Tue, 01 Dec 2026 03:04:41 GMT`."""
    return email.utils.formatdate(when, usegmt=True)


def http_date(value: str | None) -> float | None:
    """Epoch seconds of an HTTP-date in one of the three formats of RFC 9110 5.6.7, names in any
    case; None when absent or anything else (`UTC`, `AEST`, `2:01:18`, 2-digit IMF years, ...),
    which callers read per field: an invalid Expires means already expired (RFC 9111 5.3).

    An rfc850-date's 2-digit year more than 50 years ahead is taken in the past century
    (RFC 9110 5.6.7)."""
    if value is None:
        return None
    text = value.strip()
    for pattern in _HTTP_DATES:
        match = pattern.fullmatch(text)
        if match is not None:
            break
    else:
        return None
    year = int(match["year"])
    if len(match["year"]) == 2:
        this_year = time.gmtime().tm_year
        year += this_year - this_year % 100
        if year > this_year + 50:
            year -= 100
    try:
        when = datetime(
            year,
            _MONTHS.index(match["month"].lower()) + 1,
            int(match["day"]),
            int(match["hour"]),
            int(match["minute"]),
            min(int(match["second"]), 59),  # a leap second is read as :59
            tzinfo=UTC,
        )
    except ValueError:  # 31 Feb, hour 25, ...
        return None
    return when.timestamp()


_QUALIFIABLE = frozenset({"private", "no-cache"})  # bare, or a string of field names
# Directives that forbid something count whatever their value: reading `no-store=1` as absent
# would store what the origin asked not to.
_RESTRICTIVE = frozenset({"no-store", "no-cache", "private", "must-revalidate", "proxy-revalidate"})


def parse_targeted(values: Iterable[str]) -> dict[str, str | None]:
    """A targeted field such as CDN-Cache-Control (RFC 9213 2.1): an sf-dictionary, strictly.

    Returns the shape of `parse_cache_control` (value None for a bare directive) so the policy
    reads both alike. A field that does not parse as a dictionary is empty, i.e. ignored
    (RFC 9213 2.2); a known directive whose value has the wrong type (`max-age="60"`,
    `max-age=-1`, `no-store=1`) is dropped; unknown directives are kept, and ignored later.
    """
    text = ",".join(values)
    try:
        parsed = http_sf.parse(text.encode("ascii"), tltype="dictionary")
    except (http_sf.StructuredFieldError, UnicodeEncodeError, ValueError):
        return {}
    assert isinstance(parsed, dict)
    out: dict[str, str | None] = {}
    for name, member in parsed.items():
        value = member[0] if isinstance(member, tuple) else member
        if name in DELTA_DIRECTIVES:
            if type(value) is int and value >= 0:
                out[name] = str(min(value, DELTA_MAX))
        elif name in _QUALIFIABLE and isinstance(value, str):
            out[name] = value
        elif value is True or name in _RESTRICTIVE:
            out[name] = None
        elif name not in FLAG_DIRECTIVES:
            out[name] = str(value)
    return out


def entity_tags(value: str) -> list[str]:
    """Entity-tags of an ETag / If-None-Match value (`*`, lists, W/ prefixes), as sent.
    Bare unquoted tags are accepted too: some clients and origins drop the quotes."""
    return _ENTITY_TAG.findall(value)


def weak_tag(tag: str) -> str:
    """The opaque-tag that the weak comparison of RFC 9110 8.8.3.2 compares."""
    return tag[2:] if tag.startswith("W/") else tag


@functools.lru_cache(maxsize=256)  # a handful of names and details, formatted on every reply
def sf_item(text: str) -> str:
    """An RFC 8941 sf-token when `text` is one, else an sf-string (escaped, printable ASCII only,
    other characters replaced by `?` since sf-strings cannot carry them)."""
    if _SF_TOKEN.fullmatch(text):
        return text
    printable = "".join(c if " " <= c <= "~" else "?" for c in text)
    return '"' + printable.replace("\\", "\\\\").replace('"', '\\"') + '"'
