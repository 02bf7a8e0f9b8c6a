"""The native client-facing layer (`server: native`): an asyncio.Protocol on httptools (llhttp).

aiohttp's web server costs 55-75 µs of CPU per cache hit here, a bare protocol on httptools
16-25 µs (nginx 29-35 µs), and the gateway's hit costs 65-82 µs less on this layer than on
aiohttp's (docs/architecture.md, "Choosing the client-facing server layer"): no request object
beyond what the gateway reads, no response object, the head rendered once and written with the
body in one `writelines`. It keeps every promise of gateway/listener.py, with the same limits,
raw answers and log lines, and adds what aiohttp lacks (head size limits, 505, pipelined
answers before a refusal):

- requests on a connection are answered strictly in order, one handler task at a time; at most
  `MAX_PIPELINED` parsed requests wait, then reading pauses;
- a request body is streamed to the handler (`http1.BodyStream`); reading pauses while more than
  `BODY_BUFFER` bytes of it wait to be read, and `100 Continue` goes out on the first read;
- a streamed answer waits for the client to take what was written (`pause_writing`), so a slow
  client holds back its origin or fill reader, not the gateway's memory;
- the head deadline (`client_header_timeout`, from the accept or the head's first byte), the
  idle deadline (`keepalive_timeout`) and the lingering close share one timer per connection;
- a connection that ends with something the client may still be sending (an unread body, a
  refused request) is closed gently: our side is shut, and what arrives is read and dropped for
  up to `lingering_time` seconds, so that the client reads the answer instead of a reset.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from collections.abc import Awaitable, Callable

import httptools

from gateway.canonical import BadRequest
from gateway.exchange import Reply
from gateway.http1 import (
    CONTINUE,
    HTTP11,
    MAX_HEAD,
    HeadBuilder,
    NativeRequest,
    Refused,
    render_head,
)
from gateway.listener import REFUSED, TIMED_OUT, ClientLimits, RefusalLog, parser_complaint
from gateway.proxy import NO_BODY_STATUSES, stream_body

log = logging.getLogger("gateway.listener")

MAX_PIPELINED = 16  # parsed requests waiting for their turn before reading pauses
BODY_BUFFER = 64 * 1024  # request body bytes waiting to be read before reading pauses

Send = Callable[[NativeRequest, Reply], Awaitable[None]]
Handler = Callable[[NativeRequest, Send], Awaitable[None]]


class NativeServer:
    """The listener: a `ClientProtocol` per accepted connection, the connection limit (the
    oldest idle connection makes room, else a 503) and the graceful drain."""

    def __init__(self, handler: Handler, limits: ClientLimits, *, lingering_time: float) -> None:
        self.handler = handler  # Gateway.serve
        self.limits = limits
        self.lingering_time = lingering_time
        self.refusals = RefusalLog(limits.max_connections)
        self.connections: dict[ClientProtocol, None] = {}  # oldest first
        self.draining = False  # every answer from now on closes its connection
        self._settled = asyncio.Event()  # set when a connection goes or starts lingering
        self._listeners: list[asyncio.AbstractServer] = []

    def __call__(self) -> ClientProtocol:
        return ClientProtocol(self)

    async def listen(
        self, host: str, port: int, *, reuse_port: bool | None = None, backlog: int = 100
    ) -> asyncio.AbstractServer:
        server = await asyncio.get_running_loop().create_server(
            self, host, port, reuse_address=True, reuse_port=reuse_port, backlog=backlog
        )
        self._listeners.append(server)
        return server

    def admit(self, conn: ClientProtocol) -> bool:
        """Take a new connection, unless `max_connections` are open and none is idle."""
        if len(self.connections) >= self.limits.max_connections:
            idle = next((c for c in self.connections if c.idle()), None)
            if idle is None:
                self.refusals.refused()
                return False
            idle.close()  # as nginx does: the oldest idle keep-alive connection makes room
        self.connections[conn] = None
        return True

    def forget(self, conn: ClientProtocol) -> None:
        self.connections.pop(conn, None)
        self._settled.set()

    def lingers(self, conn: ClientProtocol) -> None:
        """`conn` has sent its last answer (a drain need not wait for it any more)."""
        self._settled.set()

    def stop_listening(self) -> None:
        for listener in self._listeners:
            listener.close()

    async def drain(self, within: float) -> int:
        """Stop accepting, close idle connections now, let answers in flight finish for up to
        `within` seconds (each closing its connection), then cut what is left (its handler is
        cancelled: a 499). Returns the number of connections cut."""
        self.stop_listening()
        self.draining = True
        for conn in list(self.connections):
            if conn.idle():
                conn.close()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(within):
                while any(not conn.lingering for conn in self.connections):
                    self._settled.clear()
                    await self._settled.wait()
        busy = [conn for conn in self.connections if not conn.lingering]
        for conn in list(self.connections):
            conn.close()
        return len(busy)


class ClientProtocol(asyncio.Protocol):
    """One client connection: llhttp's callbacks build requests; a task per request answers
    them in order through `Gateway.serve`, which hands its reply back to `send`."""

    def __init__(self, server: NativeServer) -> None:
        self._server = server
        self._loop = asyncio.get_running_loop()
        self._parser = httptools.HttpRequestParser(self)
        self._transport: asyncio.Transport | None = None
        self._remote: str | None = None
        self._head: HeadBuilder | None = None  # the head being parsed
        self._trailers = 0  # bytes of the current chunked body's trailer fields (dropped)
        self._body: NativeRequest | None = None  # the request whose body is being parsed
        self._queue: deque[NativeRequest | Refused] = deque()  # the first one is answered
        self._task: asyncio.Task[None] | None = None
        self._accepting = True  # false after a last request, a refusal or an Upgrade
        self._closing = False  # the answer being sent is the connection's last
        self.lingering = False  # answered for good: what comes is read and dropped
        self._progress = False  # the parser called back during this read
        self._stalled = 0  # bytes read since the parser last called back
        self._reading_paused = False
        self._drain_waiter: asyncio.Future[None] | None = None
        self._writing_paused = False
        # One timer for the head, idle and lingering deadlines: moving a deadline later only
        # changes `_deadline`, and the timer re-arms itself when it fires early.
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at = 0.0
        self._deadline = 0.0
        self._on_deadline: Callable[[], None] | None = None

    # The connection

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.Transport subclasses: no isinstance check.
        self._transport = transport  # type: ignore[assignment]
        if not self._server.admit(self):
            self._accepting = False
            self.lingering = True  # anything the client sends is dropped
            transport.write(REFUSED)  # type: ignore[attr-defined]
            transport.close()
            return
        peer = transport.get_extra_info("peername")
        self._remote = peer[0] if isinstance(peer, tuple) else None
        self._expect(self._server.limits.header_timeout, self._head_timed_out)

    def connection_lost(self, exc: BaseException | None) -> None:
        self._transport = None
        self._server.forget(self)
        self._on_deadline = None
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._task is not None:
            self._task.cancel()  # Gateway.serve logs a 499; a fill it led goes on
        if self._body is not None:
            self._body.content.fail(ConnectionResetError("client closed mid-body"))
        waiter = self._drain_waiter
        if waiter is not None and not waiter.done():
            waiter.set_exception(ConnectionResetError("client closed"))

    def eof_received(self) -> bool | None:
        return None  # the client is gone (as nginx and aiohttp take it): the transport closes

    def idle(self) -> bool:
        """Between requests, with nothing of the next one received."""
        return (
            self._transport is not None
            and self._task is None
            and not self._queue
            and self._head is None
            and not self.lingering
        )

    def close(self) -> None:
        if self._transport is not None:
            self._transport.close()

    def pause_writing(self) -> None:
        self._writing_paused = True

    def resume_writing(self) -> None:
        self._writing_paused = False
        waiter = self._drain_waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def writer(self) -> asyncio.Transport:
        """The transport an answer is written on; ConnectionResetError once the client left."""
        if self._transport is None:
            raise ConnectionResetError("client closed")
        return self._transport

    def end_after_answer(self) -> None:
        """The answer being sent is the connection's last (it cannot be framed otherwise)."""
        self._closing = True

    async def drain(self) -> None:
        """Wait while the transport holds more than its high-water mark of unsent bytes."""
        if self._transport is None:
            raise ConnectionResetError("client closed")
        if self._writing_paused:
            self._drain_waiter = self._loop.create_future()
            try:
                await self._drain_waiter
            finally:
                self._drain_waiter = None

    # Reading and parsing

    def _parsing(self) -> bool:
        """Still reading requests, or the body of the last one."""
        return self._accepting or self._body is not None

    def data_received(self, data: bytes) -> None:
        if self.lingering or not self._parsing():
            return  # nothing more to parse: dropped (until the client closes, when lingering)
        self._progress = False
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self._accepting = False  # the request is answered, then the connection closes
        except httptools.HttpParserError as exc:
            if self._parsing():
                self._refuse(_refusal(exc))
            # else: bytes after the connection's last request, dropped
        if self._progress:
            self._stalled = 0
        else:
            # httptools holds a field whole before handing it over: bound what it holds.
            self._stalled += len(data)
            if self._stalled > MAX_HEAD and self._parsing():
                too_large = self._head is not None
                self._refuse(
                    Refused(431, "request header fields too large") if too_large
                    else Refused(400, "malformed request: framing line too long")
                )
        self._dispatch()
        self._flow()

    def _refuse(self, refused: Refused) -> None:
        """Stop reading requests; answer those before the bad one, then `refused`, and close.
        A body whose framing broke fails its reader instead (its request gets one answer)."""
        log.debug("refused request from %s: %s %s", self._remote, refused.status, refused.reason)
        self._accepting = False
        self._head = None
        if self._body is not None:
            self._body.content.fail(BadRequest(refused.reason))
            self._body = None
        else:
            self._queue.append(refused)

    def on_message_begin(self) -> None:
        self._progress = True
        if not self._accepting:
            raise _Ignored
        self._head = HeadBuilder()
        self._trailers = 0
        if self._task is None and not self._queue:
            self._expect(self._server.limits.header_timeout, self._head_timed_out)

    def on_url(self, url: bytes) -> None:
        self._progress = True
        assert self._head is not None
        self._head.add_url(url)

    def on_header(self, name: bytes, value: bytes) -> None:
        self._progress = True
        if self._head is not None:
            self._head.add_field(name, value)
        else:  # a trailer field of a chunked body: counted, then dropped
            self._trailers += len(name) + len(value) + 4
            if self._trailers > MAX_HEAD:
                raise Refused(431, "request trailer fields too large")

    def on_headers_complete(self) -> None:
        self._progress = True
        head, self._head = self._head, None
        assert head is not None
        parser = self._parser
        request = head.request(
            parser.get_method(), parser.get_http_version(), parser.should_keep_alive(),
            self._remote,
        )
        if request.body_exists:
            # A bound method, not a closure over the request: no cycle outlives its answer.
            request.content.on_read = self._body_read
            self._body = request
        if not request.keep_alive:
            self._accepting = False
        self._queue.append(request)
        if self._task is None and len(self._queue) == 1:
            self._on_deadline = None  # the head is in: its answer has no deadline here

    def on_body(self, body: bytes) -> None:
        self._progress = True
        if self._body is not None:
            self._body.content.feed(body)

    def on_message_complete(self) -> None:
        self._progress = True
        if self._body is not None:
            self._body.content.end()
            self._body = None

    def _body_read(self) -> None:
        """The handler of the first request waiting reads its body: a client waiting for
        `100 Continue` may send it, and reading may resume."""
        request = self._queue[0] if self._queue else None
        if isinstance(request, NativeRequest) and request.continue_expected:
            request.continue_expected = False
            if self._transport is not None and not self._closing:
                self._transport.write(CONTINUE)
        self._flow()

    def _flow(self) -> None:
        """Pause reading while too much waits to be handled; resume when it has been."""
        transport = self._transport
        if transport is None or self.lingering:
            return
        body = self._body
        full = len(self._queue) > MAX_PIPELINED or (
            body is not None and body.content.buffered > BODY_BUFFER
        )
        if full != self._reading_paused:
            self._reading_paused = full
            if full:
                transport.pause_reading()
            else:
                transport.resume_reading()

    # Answering

    def _dispatch(self) -> None:
        """Start answering the first request waiting, or send the refusal that is next."""
        if self._task is not None or self._transport is None or not self._queue:
            return
        first = self._queue[0]
        if isinstance(first, Refused):
            self._queue.popleft()
            self._transport.write(first.response())
            self._linger()
        else:
            self._on_deadline = None
            self._task = self._loop.create_task(self._answer(first))

    def _await_next(self) -> None:
        """All asked is answered: wait for the next head (or the rest of one), or close."""
        if not self._accepting or self._server.draining:
            self._linger()
        elif self._head is not None:
            self._expect(self._server.limits.header_timeout, self._head_timed_out)
        else:
            self._expect(self._server.limits.keepalive_timeout, self.close)

    async def _answer(self, request: NativeRequest) -> None:
        try:
            await self._server.handler(request, self.send)
        except Exception:  # Gateway.serve answers errors itself: this is one sending that
            log.exception("unexpected error answering %s %s", request.method, request.raw_path)
            self._closing = True
        self._task = None
        self._queue.popleft()
        if self._closing:
            self._linger()
            return
        self._dispatch()
        if self._task is None and not self._queue:
            self._await_next()
        self._flow()

    def _last_answer(self, request: NativeRequest, reply: Reply) -> bool:
        """Does the connection end with this answer? (Then the answer says so.)"""
        last = (
            reply.close
            or not request.keep_alive
            or not request.content.complete  # an unread body: it is not read as requests
            or self._server.draining
            or (not self._accepting and request is self._queue[-1])
        )
        self._closing = self._closing or last
        return self._closing

    async def send(self, request: NativeRequest, reply: Reply) -> None:
        """Write `reply` (the `send` of Gateway.serve): a body in memory with one writelines,
        a streamed one through `StreamSink`."""
        transport = self.writer()
        close = self._last_answer(request, reply)
        body = reply.body
        if not isinstance(body, bytes):
            await stream_body(request, reply, body, StreamSink(self, request, reply, close))
            return
        bodyless = reply.status in NO_BODY_STATUSES
        head = render_head(
            reply.status, reply.headers, request.version,
            length=None if bodyless else len(body), chunked=False, close=close,
        )
        if bodyless or not body or request.method == "HEAD":
            transport.write(head)
        else:
            transport.writelines((head, body))
        if self._writing_paused:
            await self.drain()

    # Deadlines and closing

    def _expect(self, seconds: float, action: Callable[[], None]) -> None:
        self._deadline = self._loop.time() + seconds
        self._on_deadline = action
        if self._timer is None or self._deadline < self._timer_at:
            if self._timer is not None:
                self._timer.cancel()
            self._timer_at = self._deadline
            self._timer = self._loop.call_at(self._deadline, self._tick)

    def _tick(self) -> None:
        self._timer = None
        action = self._on_deadline
        if action is None:
            return
        if self._loop.time() < self._deadline:  # moved later since the timer was set
            self._timer_at = self._deadline
            self._timer = self._loop.call_at(self._deadline, self._tick)
            return
        self._on_deadline = None
        action()

    def _head_timed_out(self) -> None:
        if self._transport is None:
            return
        if self._head is not None:  # part of a head came: say why; nothing came: just close
            self._transport.write(TIMED_OUT)
        log.debug("client %s: request head not complete in time, closing", self._remote)
        self._transport.close()

    def _linger(self) -> None:
        """Close after what was written, reading and dropping what the client still sends for
        up to `lingering_time` seconds (nginx's lingering close)."""
        transport = self._transport
        if transport is None or self.lingering:
            return
        self.lingering = True
        self._accepting = False
        self._server.lingers(self)
        if not transport.can_write_eof():
            transport.close()
            return
        transport.write_eof()
        if self._reading_paused:
            transport.resume_reading()
        self._expect(self._server.lingering_time, self.close)


class StreamSink:
    """`proxy.BodySink` for the native layer: framing chosen when the head goes out (the
    origin's Content-Length; else chunked for HTTP/1.1, or the connection's end for 1.0)."""

    __slots__ = ("chunked", "close", "conn", "reply", "request")

    def __init__(
        self, conn: ClientProtocol, request: NativeRequest, reply: Reply, close: bool
    ) -> None:
        self.conn = conn
        self.request = request
        self.reply = reply
        self.close = close
        self.chunked = False

    async def start(self) -> None:
        request, reply, conn = self.request, self.reply, self.conn
        bodyless = request.method == "HEAD" or reply.status in NO_BODY_STATUSES
        declared = any(n.lower() == "content-length" for n, _ in reply.headers)
        if not bodyless and not declared:
            if request.version is HTTP11:
                self.chunked = True
            else:  # the body ends with the connection
                self.close = True
                conn.end_after_answer()
        head = render_head(
            reply.status, reply.headers, request.version,
            length=None, chunked=self.chunked, close=self.close,
        )
        conn.writer().write(head)

    async def write(self, chunk: bytes) -> None:
        if not chunk:
            return  # an empty chunk would end a chunked body
        transport = self.conn.writer()
        if self.chunked:
            transport.writelines((b"%x\r\n" % len(chunk), chunk, b"\r\n"))
        else:
            transport.write(chunk)
        await self.conn.drain()

    async def finish(self) -> None:
        if self.chunked:
            self.conn.writer().write(b"0\r\n\r\n")

    def abort(self) -> None:
        self.conn.end_after_answer()
        self.conn.close()


class _Ignored(Exception):
    """Raised in a callback for bytes after the connection's last request: dropped."""


def _refusal(exc: httptools.HttpParserError) -> Refused:
    """What to answer a request llhttp (or one of our callbacks) refused."""
    cause = exc.__context__
    if isinstance(cause, Refused):
        return cause
    if cause is not None and not isinstance(cause, _Ignored):
        log.error("error parsing a request", exc_info=cause)
        return Refused(500, "internal gateway error")
    message = str(exc)
    if "HTTP version" in message:
        return Refused(505, "HTTP version not supported")
    return Refused(400, f"malformed request: {parser_complaint(message)}")
