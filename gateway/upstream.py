"""One pooled aiohttp client per origin, with timeouts, budgets, a breaker and safe retries.

Origin failures become `OriginError`s with the status the client should see (502, 503, 504), so
the handlers never show a traceback and the cache can decide to serve stale instead.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import AsyncIterable, AsyncIterator, Callable
from dataclasses import dataclass, field
from types import SimpleNamespace

import aiohttp
from multidict import CIMultiDict
from yarl import URL

from gateway.breaker import Breaker
from gateway.budget import Budget
from gateway.config import OriginConfig
from gateway.metrics import Meter
from gateway.transfer import TransferDeadline, idle_limit, keep_alive_timeout

log = logging.getLogger("gateway.origin")

FETCHES = "gateway_origin_fetches_total"
FETCH_TIME = "gateway_origin_fetch_duration_seconds"
REJECTED = "gateway_origin_rejected_total"
CIRCUIT_OPEN = "circuit_open"  # a rejection's reason, beside the budget's
LOGGED_PATH = 200  # characters of a request target an event log line shows at most
IDEMPOTENT = frozenset({"GET", "HEAD", "OPTIONS", "PUT", "DELETE", "TRACE"})
# Statuses a stale entry may stand in for (RFC 5861 4).
FAILURE_STATUSES = frozenset({500, 502, 503, 504})
# Statuses that say the origin itself is down or overloaded, which the breaker counts; a 500 is
# one resource's bug, and the origin that sent it is up.
UNAVAILABLE_STATUSES = frozenset({502, 503, 504})
# Background revalidations may queue long (a soft bust of a big tenant), but not without bound.
BACKGROUND_QUEUE = 10_000
BACKGROUND_WAIT = 3600.0


class OriginError(Exception):
    """A failure to get a response from the origin; `status` is what the client gets."""

    status = 502
    reason = "origin unreachable"
    kind = "unreachable"  # the `status` label of gateway_origin_fetches_total

    def __init__(self, origin: str, detail: str = "", retry_after: float | None = None) -> None:
        super().__init__(f"{origin}: {self.reason}{': ' + detail if detail else ''}")
        self.origin = origin
        self.detail = detail
        self.retry_after = retry_after


class OriginUnreachable(OriginError):
    status = 502
    reason = "origin unreachable"


class OriginTimeout(OriginError):
    status = 504
    reason = "origin timed out"
    kind = "timeout"


class OriginInvalid(OriginError):
    """The origin answered something that is not HTTP (e.g. more body than Content-Length)."""

    status = 502
    reason = "invalid response from origin"
    kind = "invalid"


class BodyStalled(Exception):
    """Raised inside a client's request body stream when the client stops sending it."""


class ClientStalled(OriginError):
    """The client's request body stalled mid-upload: a 408, and no fault of the origin's."""

    status = 408
    reason = "request body timed out"
    kind = "client_stalled"


class OriginUnavailable(OriginError):
    """Breaker open or budget exhausted: answered at once instead of queueing."""

    status = 503
    reason = "origin unavailable"


@dataclass(eq=False)
class OriginResponse:
    """An origin response whose head is read; holds a budget slot until `close()`.

    `status` and `headers` (the gateway's own mutable copy) are read once; the body is an async
    iterator of chunks (a `gateway.exchange.Body`) that raises only the gateway's own
    OriginErrors. aiohttp's response object stays inside this module."""

    _resp: aiohttp.ClientResponse
    budget: Budget
    request_time: float
    response_time: float
    origin: str = "origin"
    deadline: TransferDeadline = field(default_factory=lambda: TransferDeadline(None))
    waited: float = 0.0  # seconds (event loop clock) from sending the request to its head
    status: int = field(init=False)
    headers: CIMultiDict[str] = field(init=False)
    _closed: bool = field(default=False)

    def __post_init__(self) -> None:
        self.status = self._resp.status
        self.headers = CIMultiDict(self._resp.headers)

    def __aiter__(self) -> AsyncIterator[bytes]:
        return self.chunks()

    async def chunks(self) -> AsyncIterator[bytes]:
        """The body as it arrives. OriginTimeout past `fetch_timeout` or below the minimum
        rate (see `gateway.transfer`), OriginUnreachable if the origin goes away mid-body.

        What is already buffered is taken at once: a timer is armed only when the gateway
        actually has to wait for the origin (a small body usually came with the headers)."""
        content = self._resp.content
        while True:
            try:
                chunk = content.read_nowait()
                if not chunk and not content.at_eof():
                    chunk = await self._wait_for_more()
            except (aiohttp.ClientError, OSError) as exc:
                raise self._cut_short(exc) from exc
            if not chunk:
                return
            self.deadline.spent(0.0, len(chunk))
            yield chunk

    async def _wait_for_more(self) -> bytes:
        """The next bytes of the body (b"" at its end), within the deadline's bounds."""
        wait, why = self.deadline.next_wait()
        if wait <= 0:
            raise OriginTimeout(self.origin, why)
        loop = asyncio.get_running_loop()
        started = loop.time()
        try:
            async with asyncio.timeout(None if wait == math.inf else wait):
                chunk = await self._resp.content.readany()
        except TimeoutError as exc:
            raise OriginTimeout(self.origin, why or "read_timeout") from exc
        self.deadline.spent(loop.time() - started, 0)
        return chunk

    def _cut_short(self, exc: BaseException) -> OriginError:
        if isinstance(exc, aiohttp.ClientPayloadError):
            return OriginUnreachable(self.origin, f"body cut short: {exc}")
        return OriginUnreachable(self.origin, f"reading body: {type(exc).__name__}")

    def close(self) -> None:
        """Idempotent: returns the connection (or drops it mid-body) and the budget slot."""
        if not self._closed:
            self._closed = True
            self._resp.release()
            self.budget.release()


class Upstream:
    """The client side of one origin."""

    def __init__(
        self,
        name: str,
        cfg: OriginConfig,
        clock: Callable[[], float] = time.time,
        meter: Meter | None = None,
    ) -> None:
        self.name = name
        self.meter = Meter() if meter is None else meter
        self.cfg = cfg
        # The gateway's one clock: request and response times (RFC 9111 4.2.3) and the breaker.
        # Timers that bound a wait on the network run on the event loop's own clock.
        self.clock = clock
        base = URL(str(cfg.url))
        self._origin = str(base.origin())
        self._base_path = base.raw_path.rstrip("/")
        self.host = base.raw_authority
        b = cfg.breaker
        self.breaker = Breaker(b.failures, b.reset, b.ratio, b.window)
        self.foreground = Budget(cfg.max_concurrency, cfg.max_queue, cfg.queue_timeout)
        self.background = Budget(cfg.background_concurrency, BACKGROUND_QUEUE, BACKGROUND_WAIT)
        self.fetches = 0
        self.failures = 0
        self.replays = 0  # buffered bodies sent again after a kept-alive connection dropped
        self._session: aiohttp.ClientSession | None = None
        self._traced: aiohttp.ClientSession | None = None
        self._connector: aiohttp.TCPConnector | None = None

    def open(self) -> None:
        """Create the client session (inside a running loop)."""
        self._connector = aiohttp.TCPConnector(
            limit=self.cfg.max_connections,
            limit_per_host=self.cfg.max_connections,
            keepalive_timeout=self.cfg.idle_timeout,
        )
        self._session = self._new_session()
        # Requests that may be sent again (a buffered body, a non-idempotent method) go through
        # a second session on the same connection pool that notes when a kept-alive connection
        # is reused: tracing costs every request it is on, so only those pay for it.
        tracing = aiohttp.TraceConfig()
        tracing.on_connection_reuseconn.append(_mark_reused)
        self._traced = self._new_session(tracing)

    def _new_session(self, tracing: aiohttp.TraceConfig | None = None) -> aiohttp.ClientSession:
        return aiohttp.ClientSession(
            connector=self._connector,
            connector_owner=tracing is None,
            auto_decompress=False,
            skip_auto_headers={"Accept-Encoding", "User-Agent", "Content-Type"},
            timeout=aiohttp.ClientTimeout(
                total=None, connect=self.cfg.connect_timeout, sock_read=self.cfg.read_timeout
            ),
            cookie_jar=aiohttp.DummyCookieJar(),
            trace_configs=[tracing] if tracing is not None else None,
        )

    async def close(self) -> None:
        if self._traced is not None:
            await self._traced.close()
        if self._session is not None:
            await self._session.close()

    def url(self, raw_path_qs: str) -> URL:
        return URL(self._origin + self._base_path + raw_path_qs, encoded=True)

    async def request(
        self,
        method: str,
        raw_path_qs: str,
        headers: CIMultiDict[str],
        body: bytes | AsyncIterable[bytes] | None = None,
        *,
        background: bool = False,
    ) -> OriginResponse:
        """Send one request; the caller must `close()` the result. Raises OriginError.

        A body given as bytes can be sent again: it is, once, when a kept-alive connection
        turns out closed as the request goes out (a streamed body cannot be)."""
        assert self._session is not None, "Upstream.start() not called"
        now = self.clock()
        was = self.breaker.state
        if not self.breaker.allow(now):
            self.meter.count((REJECTED, self.name, CIRCUIT_OPEN))
            raise OriginUnavailable(self.name, "circuit open", self.breaker.retry_after(now))
        self._breaker_moved(was)  # open -> half-open: this request is the probe
        budget = self.background if background else self.foreground
        if not await budget.acquire():
            self.breaker.release_probe()
            self.meter.count((REJECTED, self.name, budget.refusal))
            raise OriginUnavailable(self.name, "over concurrency budget", 1.0)
        try:
            resp, request_time, waited = await self._send(method, raw_path_qs, headers, body)
        except OriginError as exc:
            budget.release()  # the breaker has counted it
            self.meter.count((FETCHES, self.name, exc.kind))
            log.warning("origin %s: %s %s: %s", self.name, method,
                        raw_path_qs[:LOGGED_PATH], exc)
            raise
        except BaseException:
            budget.release()
            self.breaker.release_probe()  # cancelled: no verdict on the origin
            raise
        self.meter.count((FETCHES, self.name, str(resp.status)))
        self.meter.observe((FETCH_TIME, self.name), waited)
        if resp.status in FAILURE_STATUSES:
            self.failures += 1
            log.warning("origin %s answered %d to %s %s", self.name, resp.status, method,
                        raw_path_qs[:LOGGED_PATH])
        self._judge(failed=resp.status in UNAVAILABLE_STATUSES)
        self._learn_idle_limit(resp.headers.get("Keep-Alive"))
        total = self.cfg.fetch_timeout - waited if self.cfg.fetch_timeout else None
        deadline = TransferDeadline(
            total, float(self.cfg.min_transfer_rate), self.cfg.min_rate_grace
        )
        return OriginResponse(
            resp, budget, request_time, self.clock(), self.name, deadline, waited=waited
        )

    async def _send(
        self,
        method: str,
        raw_path_qs: str,
        headers: CIMultiDict[str],
        body: bytes | AsyncIterable[bytes] | None,
    ) -> tuple[aiohttp.ClientResponse, float, float]:
        """The response head, when the request went out, and how long it took to come."""
        connects = 1 + (self.cfg.retries if body is None and method in IDEMPOTENT else 0)
        replayable = isinstance(body, bytes) and method not in IDEMPOTENT
        session = self._traced if replayable else self._session
        assert session is not None
        url = self.url(raw_path_qs)
        loop = asyncio.get_running_loop()
        while True:
            request_time = self.clock()
            started = loop.time()
            self.fetches += 1
            tracking = SimpleNamespace(reused=False)
            try:
                async with asyncio.timeout(self.cfg.fetch_timeout or None):
                    resp = await session.request(
                        method,
                        url,
                        headers=headers,
                        data=body,
                        allow_redirects=False,
                        trace_request_ctx=tracking,
                    )
                return resp, request_time, loop.time() - started
            except aiohttp.ClientConnectorError as exc:
                # A failed connect: the origin never saw the request, any method may go again.
                # (aiohttp itself resends an idempotent request once when a kept-alive
                # connection drops, RFC 9112 9.3.1; retrying that too would double it.)
                connects -= 1
                if connects > 0:
                    continue
                self._failed()
                raise OriginUnreachable(self.name, type(exc).__name__) from exc
            except (TimeoutError, aiohttp.ServerTimeoutError) as exc:
                self._failed()
                raise OriginTimeout(self.name) from exc
            except aiohttp.ClientResponseError as exc:
                self._failed()
                raise OriginInvalid(self.name, exc.message.splitlines()[0]) from exc
            except aiohttp.ClientError as exc:
                if isinstance(exc.__cause__, BodyStalled):
                    raise ClientStalled(self.name) from exc  # not counted against the origin
                dropped = isinstance(exc, aiohttp.ServerDisconnectedError | aiohttp.ClientOSError)
                if dropped and tracking.reused and replayable:
                    # The origin closed a kept-alive connection as the request went out on it;
                    # aiohttp resends idempotent requests, this resends a buffered body once.
                    replayable = False
                    self.replays += 1
                    continue
                self._failed()
                raise OriginUnreachable(self.name, type(exc).__name__) from exc

    def _learn_idle_limit(self, keep_alive: str | None) -> None:
        """Honour an origin's `Keep-Alive: timeout=N`: never reuse a connection it has dropped.
        aiohttp's connector has one idle timeout for all its connections, and all of this
        connector's go to this one origin, so the shortest announcement wins."""
        limit = idle_limit(self.cfg.idle_timeout, keep_alive_timeout(keep_alive))
        connector = self._connector
        if connector is not None and limit < (connector._keepalive_timeout or math.inf):
            connector._keepalive_timeout = limit

    def _failed(self) -> None:
        self.failures += 1
        self._judge(failed=True)

    def _judge(self, *, failed: bool) -> None:
        """Tell the breaker how a request went, and log it when that opens or closes it."""
        was = self.breaker.state
        if failed:
            self.breaker.failure(self.clock())
        else:
            self.breaker.success(self.clock())
        self._breaker_moved(was)

    def _breaker_moved(self, was: str) -> None:
        state = self.breaker.state
        if state == was:
            return
        if state == "open":
            b = self.breaker
            log.error("origin %s: circuit breaker %s -> open: requests refused for %gs (at"
                      " least %d failures in %gs)", self.name, was, b.reset, b.failures, b.window)
        else:
            log.warning("origin %s: circuit breaker %s -> %s", self.name, was, state)

    def stats(self) -> dict[str, object]:
        return {
            "fetches": self.fetches,
            "failures": self.failures,
            "breaker": self.breaker.state,
            "in_flight": self.foreground.in_use,
            "in_flight_max": self.foreground.in_use_max,
            "background_in_flight": self.background.in_use,
            "background_in_flight_max": self.background.in_use_max,
            "rejected": self.foreground.rejected + self.background.rejected,
            "replays": self.replays,
        }


async def _mark_reused(
    session: aiohttp.ClientSession, context: SimpleNamespace, params: object
) -> None:
    """Trace hook: the request is going out on a kept-alive connection."""
    if isinstance(context.trace_request_ctx, SimpleNamespace):
        context.trace_request_ctx.reused = True
