"""The "cache" every candidate layer of bench/layers.py serves: the same stored responses.

Each entry is what the issue asks a hit to be: a response head rendered once, when the entry
is stored, except for the fields that change with time (`Date`, `Age`, `Cache-Status`, plus
the `X-Cache` the benches read), and a body kept as one bytes object. Entries are found in a
dict by the request target as it arrived (path + query), so every layer pays for one lookup
and no routing. Each layer only decides how the request is parsed and the bytes are written:
that is the point of the comparison, so this module is shared and kept free of any layer.

Self-contained on purpose: the candidate servers import it as `entries` (they run as scripts
from bench/_layers/, one of them under another interpreter), bench/layers.py as
`_layers.entries`.
"""

from __future__ import annotations

import time
from email.utils import formatdate

MAX_AGE = 3600  # seconds: long enough that no run sees an entry go stale
STORED_AT = int(time.time())  # every entry "was stored" when the server started
FILLER_KEYS = 1000  # other entries in the dict, so the lookup is a real one

# The two measured cases: request target -> body size. The query makes the target look like
# the gateway's keys (path + query), and the same targets are what nginx caches.
CASES = {"20KiB": ("/layers/20k?v=1", 20 * 1024), "600B": ("/layers/600b?v=1", 600)}
READY_PATH = "/__bench/ready"  # an unknown target: any answer (a 404) means "serving"


class Entry:
    """One stored response: its static head (as bytes and as aiohttp header pairs) and body."""

    __slots__ = ("body", "fields", "head", "origin_head")

    def __init__(self, tag: str, size: int) -> None:
        self.body = bytes(65 + i % 26 for i in range(size))  # A..Z, incompressible enough
        # What never changes between hits, in the order a hit sends it (no Content-Length in
        # `fields`: aiohttp sets it from the body, and a second one would be a framing bug).
        self.fields: list[tuple[str, str]] = [
            ("Server", "edge"),
            ("Content-Type", "application/javascript; charset=utf-8"),
            ("Cache-Control", f"public, max-age={MAX_AGE}"),
            ("ETag", f'"{tag}-1"'),
            ("Last-Modified", "Tue, 01 Dec 2026 00:00:00 GMT"),
        ]
        static = "".join(f"{k}: {v}\r\n" for k, v in self.fields)
        prefix = f"HTTP/1.1 200 OK\r\n{static}Content-Length: {size}\r\n"
        # The protocol layers finish this head with Date, Age, Cache-Status and X-Cache.
        self.head = (prefix + "Date: ").encode("latin-1")
        # The origin's answer (what nginx stores): no per-hit fields, nginx adds its own.
        self.origin_head = (prefix + "Date: {date}\r\n\r\n").encode("latin-1")


def make_entries() -> dict[str, Entry]:
    """The measured entries plus FILLER_KEYS small ones, keyed by request target."""
    entries = {target: Entry(tag, size) for tag, (target, size) in CASES.items()}
    for i in range(FILLER_KEYS):
        entries[f"/layers/k{i}?v=1"] = Entry(f"k{i}", 600)
    return entries


class Clock:
    """`Date` and the whole-second time, rendered at most once a second (nginx and aiohttp do
    the same): a hit should not format a date."""

    __slots__ = ("date", "date_bytes", "second")

    def __init__(self) -> None:
        self.second = -1
        self.date = ""
        self.date_bytes = b""

    def now(self) -> int:
        second = int(time.time())
        if second != self.second:
            self.second = second
            self.date = formatdate(second, usegmt=True)
            self.date_bytes = self.date.encode("latin-1")
        return second


def hit_fields(entry: Entry, clock: Clock) -> list[tuple[str, str]]:
    """The whole header list of a hit, for layers that take header pairs (aiohttp)."""
    age = clock.now() - STORED_AT
    return [
        *entry.fields,
        ("Date", clock.date),
        ("Age", str(age)),
        ("Cache-Status", f"edge; hit; ttl={MAX_AGE - age}"),
        ("X-Cache", "HIT"),
    ]


def hit_head(entry: Entry, clock: Clock) -> bytes:
    """The whole response head of a hit, for layers that write bytes: one `%` on bytes."""
    age = clock.now() - STORED_AT
    return b"%s%s\r\nAge: %d\r\nCache-Status: edge; hit; ttl=%d\r\nX-Cache: HIT\r\n\r\n" % (
        entry.head,
        clock.date_bytes,
        age,
        MAX_AGE - age,
    )


def simple_response(status: str, *, close: bool, head_only: bool = False) -> bytes:
    """A small fixed answer (404, 400, 431, 405) for the protocol layers; `close` adds
    `Connection: close`, which a refused request must carry as the connection goes."""
    body = status.encode("latin-1") + b"\n"
    head = f"HTTP/1.1 {status}\r\nServer: edge\r\nContent-Type: text/plain\r\n"
    head += f"Content-Length: {len(body)}\r\n"
    if close:
        head += "Connection: close\r\n"
    return (head + "\r\n").encode("latin-1") + (b"" if head_only else body)
