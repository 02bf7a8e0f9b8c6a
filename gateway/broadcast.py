"""One fill's body, shared with every client waiting on it as the bytes arrive.

The fill writes what the origin sends; each reader gets everything from the first byte, at its
own pace, and waits only when it has caught up. A body that will be stored is held whole anyway
(it becomes the entry), and the fill reads it at the origin's pace. A body too big to store is
held only from the slowest reader's position on, up to `window` bytes: past that, readers behind
the fastest are cut off, so a slow client never slows the others, and the fill waits for the
fastest (`make_room`), as a plain proxy would; a fill never holds much more than `window`.
While the body so far fits in the window its start is kept, so a client that joins mid-fill
reads it from the first byte; clients that have joined but not started reading yet (`pending`)
keep it a moment longer. One that arrives after the start has been let go fetches alone.
"""

from __future__ import annotations

import asyncio
from collections import Counter, deque
from collections.abc import AsyncIterator, Callable

from gateway.exchange import StreamCut


class Broadcast:
    def __init__(
        self, *, keep_all: bool, window: int, pending: Callable[[], int] = lambda: 0
    ) -> None:
        self.keep_all = keep_all  # the whole body is held (it will be stored)
        self.window = window
        self.pending = pending  # clients of the fill that have not started reading yet
        self.size = 0  # bytes received so far
        self.done = False
        self.error: BaseException | None = None
        # Called when nobody reads a body that will not be stored: the fill should stop.
        self.on_abandoned: Callable[[], object] | None = None
        self._chunks: deque[bytes] = deque()
        self._first = 0  # index (in the whole body) of _chunks[0]
        self._held = 0
        self._readers: set[BroadcastReader] = set()
        # Readers per position: few distinct positions, however many readers.
        self._at: Counter[int] = Counter()
        self._start_lost = False  # the first bytes were let go: nobody new can read
        self._changed: asyncio.Future[None] | None = None
        self._progress: asyncio.Future[None] | None = None  # the fill waits on readers
        self._wants_moves = False

    @property
    def held(self) -> int:
        """Bytes held right now: the memory this fill costs."""
        return self._held

    def body(self) -> bytes:
        """The whole body, for storing; only while it is all held."""
        assert self._first == 0, "the start of this body was let go"
        return b"".join(self._chunks)

    def append(self, chunk: bytes) -> None:
        self._chunks.append(chunk)
        self.size += len(chunk)
        self._held += len(chunk)
        if not self.keep_all:
            self._let_go()
        self._wake()

    def stop_keeping(self) -> None:
        """The body turned out too big to store: from now on, hold only what readers need."""
        self.keep_all = False
        self._let_go()

    def full(self) -> bool:
        """An unstored body over its window: the fill should `make_room` before reading on."""
        return not self.keep_all and not self.done and self._held > self.window

    async def make_room(self, starters_limit: float) -> None:
        """Wait until the body is back within its window: first (at most `starters_limit`
        seconds) for clients that joined but have not started reading, whose start is then
        let go (they are served some other way); then for the fastest readers to read on."""
        if self._waits_for_starters():
            try:
                async with asyncio.timeout(starters_limit):
                    while self._waits_for_starters():
                        await self._next(progress=False)
            except TimeoutError:
                self._start_lost = True
            self._let_go()
        self._let_go()
        while self.full() and self._readers:
            await self._next(progress=True)
            self._let_go()

    def _waits_for_starters(self) -> bool:
        return self.full() and self._first == 0 and not self._start_lost and self.pending() > 0

    async def _next(self, *, progress: bool) -> None:
        """Until a reader starts (or, with `progress`, moves on or leaves)."""
        if self._progress is None:
            self._progress = asyncio.get_running_loop().create_future()
        self._wants_moves = progress
        await asyncio.shield(self._progress)

    def finish(self, error: BaseException | None = None) -> None:
        self.done = True
        self.error = error
        self._wake()

    def reader(self) -> BroadcastReader | None:
        """A reader from the first byte, or None when the start is no longer held."""
        if self._first > 0 or self._start_lost:
            return None
        reader = BroadcastReader(self)
        self._readers.add(reader)
        self._at[0] += 1
        self._wake_fill()
        return reader

    def _wake_fill(self) -> None:
        if self._progress is not None:
            self._progress.set_result(None)
            self._progress = None

    def _moved(self, reader: BroadcastReader, was: int) -> None:
        if self._wants_moves:
            self._wake_fill()
        self._at[reader.position] += 1
        self._at[was] -= 1
        if not self._at[was]:
            del self._at[was]
            if not self.keep_all and was == self._first:
                self._let_go()  # the slowest reader moved on

    def _leave(self, reader: BroadcastReader) -> None:
        if reader not in self._readers:
            return
        self._readers.discard(reader)
        self._at[reader.position] -= 1
        if not self._at[reader.position]:
            del self._at[reader.position]
        if not self.keep_all:
            self._let_go()
        self._wake_fill()

    def _let_go(self) -> None:
        """Over the window, drop what every reader has read (within it the start stays, for
        clients that join later); give up first on the clients still to start, then on the
        readers behind the fastest."""
        while self._chunks and self._held > self.window:
            pinned = self._first == 0 and not self._start_lost and self.pending() > 0
            slowest = 0 if pinned else min(self._at, default=self._first + len(self._chunks))
            if slowest > self._first:
                self._held -= len(self._chunks.popleft())
                self._first += 1
            elif pinned or slowest == max(self._at):
                break  # the fill waits for them (see `make_room`)
            else:
                for reader in [r for r in self._readers if r.position == slowest]:
                    reader.cut = True
                    self._readers.discard(reader)
                del self._at[slowest]
        if not self._readers and (self._start_lost or self._first > 0 or not self.pending()):
            self._abandon()

    def _abandon(self) -> None:
        """Nobody reads a body that will not be stored: the fill should stop."""
        if not self.done:
            self.finish(StreamCut("nobody reads this fill any more"))
            if self.on_abandoned is not None:
                self.on_abandoned()

    def _wake(self) -> None:
        if self._changed is not None:
            self._changed.set_result(None)
            self._changed = None

    async def _wait(self) -> None:
        if self._changed is None:
            self._changed = asyncio.get_running_loop().create_future()
        await asyncio.shield(self._changed)


class BroadcastReader:
    """One client's view of a `Broadcast` (a `gateway.exchange.Body`)."""

    def __init__(self, broadcast: Broadcast) -> None:
        self._broadcast = broadcast
        self.position = 0  # index of the next chunk this reader gets
        self.cut = False
        self._closed = False

    async def __aiter__(self) -> AsyncIterator[bytes]:
        b = self._broadcast
        while True:
            if self.cut:
                raise StreamCut("fell too far behind a shared fill")
            index = self.position - b._first
            if index < len(b._chunks):
                chunk = b._chunks[index]
                self.position += 1
                b._moved(self, self.position - 1)
                yield chunk
            elif b.error is not None:
                raise b.error
            elif b.done:
                return
            else:
                await b._wait()

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self._broadcast._leave(self)
