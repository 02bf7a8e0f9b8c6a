"""The access log: one line per request on the public listener, as JSON or nginx's combined.

`AccessRecord` holds what the handler already knows about a request once it is answered (no
header is parsed again); `json_line` and `combined_line` are pure formatters of it;
`LineWriter` writes the lines to stdout.

Why a bounded queue and a thread, not a `logging.StreamHandler`: a write to stdout blocks
when the pipe is full (a slow log shipper, a stopped `less`), and a blocking write in the
event loop would stall every request of the process. The handler only formats the line and
appends it to a list, handed to the thread in batches (`LineWriter`); one daemon thread writes
them. When QUEUE_LINES lines wait already, more are dropped and counted in
`LineWriter.dropped`: the log falls behind, requests never wait for it. The stream is
`sys.stdout` as it is when the writer starts (in a test, pytest's capture of it). A batch is
at most PIPE_BUF bytes (unless one line is longer), written and flushed at once, so that the
workers of `workers: N`, sharing one stdout pipe, do not interleave their lines mid-line.
"""

from __future__ import annotations

import asyncio
import functools
import json
import queue
import re
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TextIO

from gateway.exchange import Reply

FORMATS = ("json", "combined", "off")
QUEUE_LINES = 10_000  # lines waiting for the writer thread at most; more are dropped
HANDOFF_LINES = 100  # lines handed to the writer thread at once, at most
HANDOFF_SECONDS = 0.05  # a line waits this long at most before it is handed over
BATCH_BYTES = 4096  # PIPE_BUF on Linux: a write of at most this much to a pipe is atomic

_MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")
# Anything but printable ASCII, and the two characters that end or escape a quoted field.
_UNSAFE = re.compile(r'[^\x20\x21\x23-\x5b\x5d-\x7e]')


@dataclass(slots=True)
class AccessRecord:
    """One answered request. `time` is the gateway's wall clock when the request arrived;
    `duration` and `origin_time` are seconds on the event loop's clock. None: not known."""

    time: float
    method: str
    host: str | None
    path: str  # the request target as the client sent it (path and query)
    status: int
    bytes: int | None  # body bytes sent (0 for HEAD, 204, 304)
    duration: float  # from the handler's start to the last body byte handed to the transport
    cache: str | None  # X-Cache: HIT, MISS, ..., BYPASS; None for the gateway's own errors
    tenant: str | None = None  # only on the cache path (a bypass does not locate its tenant)
    route: str | None = None
    origin_time: float | None = None  # to the origin's response head, when this request fetched
    collapsed: bool = False  # answered by a fill another request started
    client: str | None = None  # the peer address
    protocol: str = "HTTP/1.1"
    referer: str | None = None
    user_agent: str | None = None


def json_line(record: AccessRecord) -> str:
    """The record as one line of JSON, the same text `json.dumps(..., separators=(",", ":"))`
    makes of it (a test holds them equal), assembled by hand: it is formatted on every request,
    and the generic encoder's dict walk costs a hit about as much as the cache lookup.

    ASCII only: strings go through the C escaper `json.dumps` itself uses, so a control
    character, a quote or a lone surrogate in a client value is escaped and no client can
    forge a line."""
    r = record
    return (
        f'{{"time":"{_iso_time(r.time)}","method":{_text(r.method)},"host":{_text(r.host)},'
        f'"path":{_text(r.path)},"protocol":{_text(r.protocol)},"status":{r.status},'
        f'"bytes":{"null" if r.bytes is None else r.bytes},"duration":{_seconds(r.duration)},'
        f'"cache":{_text(r.cache)},"tenant":{_text(r.tenant)},"route":{_text(r.route)},'
        f'"origin_time":{_seconds(r.origin_time)},'
        f'"collapsed":{"true" if r.collapsed else "false"},"client":{_text(r.client)},'
        f'"referer":{_text(r.referer)},"user_agent":{_text(r.user_agent)}}}'
    )


_escape_json = json.encoder.encode_basestring_ascii  # json.dumps's own (C) string escaper


def _text(value: str | None) -> str:
    return "null" if value is None else _escape_json(value)


def _seconds(value: float | None) -> str:
    """Microsecond precision, written as json.dumps writes a float."""
    return "null" if value is None else float.__repr__(round(value, 6))


def combined_line(record: AccessRecord) -> str:
    """nginx's `combined` format plus the cache status:
    `client - - [01/Dec/2026:12:00:00 +0000] "GET /p HTTP/1.1" 200 5 "referer" "agent" HIT`.
    Quoted fields escape `"`, `\\` and every byte outside printable ASCII as nginx does
    (`\\"`, `\\\\`, `\\xHH`), so a hostile path or User-Agent stays inside its quotes."""
    request = f"{record.method} {record.path} {record.protocol}"
    return (
        f"{_bare(record.client)} - - [{_clf_time(record.time)}] \"{escape(request)}\" "
        f"{record.status} {'-' if record.bytes is None else record.bytes} "
        f"\"{_quoted(record.referer)}\" \"{_quoted(record.user_agent)}\" {_bare(record.cache)}"
    )


def escape(text: str) -> str:
    """`text` with `"`, `\\`, control characters and non-ASCII escaped (nginx's escaping)."""
    if _UNSAFE.search(text) is None:
        return text
    return _UNSAFE.sub(_escape_char, text)


def _escape_char(match: re.Match[str]) -> str:
    char = match.group()
    if char in '"\\':
        return "\\" + char
    try:
        raw = char.encode("utf-8", "surrogateescape")  # a byte aiohttp could not decode
    except UnicodeEncodeError:
        raw = char.encode("utf-8", "surrogatepass")
    return "".join(f"\\x{b:02X}" for b in raw)


def _quoted(value: str | None) -> str:
    return "-" if not value else escape(value)


def _bare(value: str | None) -> str:
    """An unquoted field: '-' when empty; escaped, and no spaces, so it stays one field."""
    return "-" if not value else escape(value).replace(" ", "\\x20")


def _iso_time(at: float) -> str:
    millis = int((at % 1) * 1000)
    return f"{_iso_second(int(at))}.{millis:03d}Z"


def _clf_time(at: float) -> str:
    return _clf_second(int(at))


# A busy gateway logs many lines within one second: each second's text is made once.
@functools.lru_cache(maxsize=4)
def _iso_second(second: int) -> str:
    t = time.gmtime(second)
    return (
        f"{t.tm_year:04d}-{t.tm_mon:02d}-{t.tm_mday:02d}T"
        f"{t.tm_hour:02d}:{t.tm_min:02d}:{t.tm_sec:02d}"
    )


@functools.lru_cache(maxsize=4)
def _clf_second(second: int) -> str:
    t = time.gmtime(second)
    return (
        f"{t.tm_mday:02d}/{_MONTHS[t.tm_mon - 1]}/{t.tm_year:04d}:"
        f"{t.tm_hour:02d}:{t.tm_min:02d}:{t.tm_sec:02d} +0000"
    )


FORMATTERS: dict[str, Callable[[AccessRecord], str]] = {
    "json": json_line,
    "combined": combined_line,
}


def reply_fields(reply: Reply) -> tuple[str | None, bool]:
    """X-Cache and whether Cache-Status says `collapsed`, from the fields the gateway appended
    last (scanned from the end: two or three fields on a hit)."""
    x_cache: str | None = None
    status: str | None = None
    for name, value in reversed(reply.headers):
        if x_cache is None and name == "X-Cache":
            x_cache = value
        elif status is None and name == "Cache-Status":
            status = value
        if x_cache is not None and status is not None:
            break
    return x_cache, status is not None and "; collapsed" in status


class LineWriter:
    """Lines to stdout from a daemon thread, through a bounded queue (see the module's doc).

    Lines are handed to the thread in batches, at most every HANDOFF_SECONDS (or every
    HANDOFF_LINES lines): a hand-off per line woke the thread on every request, and its
    contention with the event loop for the GIL cost a hit about a third of its throughput."""

    def __init__(
        self,
        stream: Callable[[], TextIO | None] = lambda: sys.stdout,
        max_lines: int = QUEUE_LINES,
    ) -> None:
        self._stream = stream
        self._out: TextIO | None = None
        self._queue: queue.Queue[list[str] | None] = queue.Queue()  # bounded in lines, below
        self._max_lines = max_lines
        self._queued = 0  # lines handed over and not written yet
        self._lock = threading.Lock()  # for _queued, shared with the thread
        self._pending: list[str] = []  # lines of the event loop's thread, not handed off yet
        self._thread: threading.Thread | None = None
        self.dropped = 0  # lines not logged: the queue was full, or stdout refused them

    def put(self, line: str) -> None:
        """Queue one line (without its newline); never waits."""
        self._pending.append(line)
        if len(self._pending) >= HANDOFF_LINES:
            self._handoff()
        elif len(self._pending) == 1:
            try:
                asyncio.get_running_loop().call_later(HANDOFF_SECONDS, self._handoff)
            except RuntimeError:  # no loop (a direct call): hand it off now
                self._handoff()

    def _handoff(self) -> None:
        if not self._pending:
            return
        batch, self._pending = self._pending, []
        with self._lock:
            room = max(0, self._max_lines - self._queued)
            if len(batch) > room:
                self.dropped += len(batch) - room
                batch = batch[:room]
            self._queued += len(batch)
        if batch:
            self._queue.put_nowait(batch)

    def start(self) -> None:
        if self._thread is None:
            self._out = self._stream()
            self._thread = threading.Thread(target=self._run, name="access-log", daemon=True)
            self._thread.start()

    def flush(self, timeout: float = 1.0) -> bool:
        """Wait until every queued line is written (True), or `timeout` seconds (False)."""
        self._handoff()
        q = self._queue
        with q.all_tasks_done:
            return q.all_tasks_done.wait_for(lambda: not q.unfinished_tasks, timeout)

    def close(self, timeout: float = 1.0) -> None:
        """Write what is queued (for up to `timeout` seconds) and stop the thread."""
        self._handoff()
        thread, self._thread = self._thread, None
        if thread is None:
            return
        self._queue.put_nowait(None)
        thread.join(timeout)  # a stuck stdout: the daemon thread dies with the process

    def _run(self) -> None:
        q = self._queue
        while True:
            item = q.get()
            if item is None:
                q.task_done()
                return
            batch: list[str] = []
            size = 0
            for line in item:
                if batch and size + len(line) + 1 > BATCH_BYTES:
                    self._write(batch)
                    batch, size = [], 0
                batch.append(line)
                size += len(line) + 1  # the lines are ASCII: characters are bytes
            if batch:
                self._write(batch)
            with self._lock:
                self._queued -= len(item)
            q.task_done()

    def _write(self, batch: list[str]) -> None:
        stream = self._out
        try:
            if stream is None:
                raise ValueError("no stdout")
            stream.write("\n".join(batch) + "\n")
            stream.flush()
        except (OSError, ValueError):  # closed or gone: the log is lost, the gateway goes on
            self.dropped += len(batch)
