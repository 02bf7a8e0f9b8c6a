"""Byte ranges served from a complete stored response (RFC 9110 14). Pure.

A fill always stores the whole representation (the client's Range is not forwarded), so any
later single-range request can be answered from it. Several ranges are answered with the whole
200, which RFC 9110 14.2 allows; a multipart/byteranges body is not worth its complexity here.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal

from gateway.directives import entity_tags, http_date

_SPEC = re.compile(r"\s*(\d*)\s*-\s*(\d*)\s*")


@dataclass(frozen=True, slots=True)
class ByteRange:
    first: int
    last: int  # inclusive

    def content_range(self, length: int) -> str:
        return f"bytes {self.first}-{self.last}/{length}"


Unsatisfiable = Literal["unsatisfiable"]
UNSATISFIABLE: Unsatisfiable = "unsatisfiable"


def requested_range(
    range_value: str | None, length: int
) -> ByteRange | Unsatisfiable | None:
    """The one range a `Range: bytes=...` asks of `length` bytes (RFC 9110 14.1.2).

    None: serve the whole response (no header, another unit, invalid syntax, or several
    ranges). UNSATISFIABLE: answer 416 (no requested byte exists).
    """
    if range_value is None:
        return None
    unit, eq, specs = range_value.partition("=")
    if not eq or unit.strip().lower() != "bytes":
        return None
    parts = [part for part in specs.split(",") if part.strip()]
    if len(parts) != 1:
        return None
    match = _SPEC.fullmatch(parts[0])
    if match is None or match.group(1) == match.group(2) == "":
        return None
    first_text, last_text = match.groups()
    if first_text == "":  # suffix: the last N bytes
        suffix = int(last_text)
        if suffix == 0 or length == 0:
            return UNSATISFIABLE
        return ByteRange(max(0, length - suffix), length - 1)
    first = int(first_text)
    if last_text != "" and int(last_text) < first:
        return None  # invalid: the whole field is ignored (RFC 9110 14.1.1)
    if first >= length:
        return UNSATISFIABLE
    last = length - 1 if last_text == "" else min(int(last_text), length - 1)
    return ByteRange(first, last)


def if_range_allows(
    if_range: str | None, etag: str | None, last_modified: str | None
) -> bool:
    """RFC 9110 13.1.5: a Range applies only if If-Range matches the stored representation,
    by strong comparison of entity-tags, or an exact match of Last-Modified."""
    if if_range is None:
        return True
    value = if_range.strip()
    if value.startswith(('"', "W/")):
        tags = entity_tags(value)
        if len(tags) != 1 or tags[0].startswith("W/") or etag is None:
            return False
        return etag.strip() == tags[0] and not etag.strip().startswith("W/")
    wanted = http_date(value)
    return wanted is not None and wanted == http_date(last_modified)
