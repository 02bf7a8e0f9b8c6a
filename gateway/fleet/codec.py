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


def _number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _strings(value: object, *, pairs: bool = False) -> bool:
    return (
        isinstance(value, list)
        and all(isinstance(v, str) for v in value)
        and (not pairs or len(value) % 2 == 0)
    )


def _well_formed(
    key: object, tenant: object, url: object, status: object, headers: object, body: object,
    response_time: object, initial_age: object, fresh: object, etag: object,
    last_modified: object, vary: object, tags: object, soft_generation: object,
    stored_at: object, visible: object,
) -> bool:
    """Every field of the type an Entry holds: a value written by another version, or
    corrupted, must be a miss, not an error on every later hit of the copy in memory."""
    return (
        all(isinstance(v, str) for v in (key, tenant, url))
        and isinstance(status, int) and not isinstance(status, bool)
        and isinstance(body, bytes)
        and all(_number(v) for v in (response_time, initial_age, stored_at))
        and isinstance(soft_generation, int) and not isinstance(soft_generation, bool)
        and isinstance(fresh, list) and len(fresh) == 6
        and all(_number(v) for v in fresh[:3]) and all(isinstance(v, bool) for v in fresh[3:])
        and all(v is None or isinstance(v, str) for v in (etag, last_modified))
        and _strings(headers, pairs=True) and _strings(visible, pairs=True)
        and _strings(vary) and _strings(tags)
    )


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
        if not _well_formed(
            key, tenant, url, status, headers, body, response_time, initial_age, fresh, etag,
            last_modified, vary, tags, soft_generation, stored_at, visible,
        ):
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
