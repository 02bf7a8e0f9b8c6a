"""An `Entry` as msgpack bytes for the Redis tier, and back (pure).

A list, not a map: field names would cost more than most headers. The first element is the
format version; anything that does not decode into a well-formed entry of this version is
treated as absent (a miss), so a rolling upgrade or a corrupted value never fails a request.
"""

from __future__ import annotations

from typing import Any

import msgpack

from gateway.policy import Freshness
from gateway.store import Entry

VERSION = 1


def _pairs(flat: list[Any]) -> tuple[tuple[str, str], ...]:
    return tuple(zip(flat[0::2], flat[1::2], strict=True))


def _flat(pairs: tuple[tuple[str, str], ...]) -> list[str]:
    return [item for pair in pairs for item in pair]


def encode(entry: Entry) -> bytes:
    f = entry.freshness
    packed: bytes = msgpack.packb(
        [
            VERSION,
            entry.key,
            entry.tenant,
            entry.url,
            entry.status,
            _flat(entry.headers),
            entry.body,
            entry.response_time,
            entry.initial_age,
            [f.lifetime, f.swr, f.sie, f.must_revalidate, f.no_cache, f.proxy_revalidate],
            entry.etag,
            entry.last_modified,
            list(entry.vary),
            list(entry.tags),
            entry.soft_generation,
            entry.stored_at,
            _flat(entry.visible),
        ],
        use_bin_type=True,
    )
    return packed


def decode(data: bytes) -> Entry | None:
    """The entry, or None when the bytes are not one (other version, truncated, garbage)."""
    try:
        fields = msgpack.unpackb(data, raw=False, use_list=True)
        if not isinstance(fields, list) or len(fields) != 17 or fields[0] != VERSION:
            return None
        (_, key, tenant, url, status, headers, body, response_time, initial_age, fresh,
         etag, last_modified, vary, tags, soft_generation, stored_at, visible) = fields
        if not (isinstance(key, str) and isinstance(body, bytes) and isinstance(status, int)):
            return None
        return Entry(
            key=key,
            tenant=tenant,
            url=url,
            status=status,
            headers=_pairs(headers),
            body=body,
            response_time=response_time,
            initial_age=initial_age,
            freshness=Freshness(*fresh),
            etag=etag,
            last_modified=last_modified,
            vary=tuple(vary),
            tags=tuple(tags),
            soft_generation=soft_generation,
            stored_at=stored_at,
            visible=_pairs(visible),
        )
    except (ValueError, TypeError, msgpack.UnpackException):
        return None
