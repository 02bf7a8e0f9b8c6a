"""One pooled aiohttp client per origin, with timeouts, budgets, a breaker and safe retries.

Origin failures become `OriginError`s with the status the client should see (502, 503, 504), so
the handlers never show a traceback and the cache can decide to serve stale instead.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterable, Callable
from dataclasses import dataclass, field

import aiohttp
from multidict import CIMultiDict
from yarl import URL

from gateway.breaker import Breaker
from gateway.config import OriginConfig

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


class OriginInvalid(OriginError):
    """The origin answered something that is not HTTP (e.g. more body than Content-Length)."""

    status = 502
    reason = "invalid response from origin"


class BodyStalled(Exception):
    """Raised inside a client's request body stream when the client stops sending it."""


class ClientStalled(OriginError):
    """The client's request body stalled mid-upload: a 408, and no fault of the origin's."""

    status = 408
    reason = "request body timed out"


class OriginUnavailable(OriginError):
    """Breaker open or budget exhausted: answered at once instead of queueing."""

    status = 503
    reason = "origin unavailable"


class Budget:
    """A concurrency cap with a bounded queue and a bounded wait: excess load fails fast."""

    def __init__(self, limit: int, max_queue: int, max_wait: float) -> None:
        self.limit = limit
        self.max_queue = max_queue
        self.max_wait = max_wait
        self.in_use = 0
        self.in_use_max = 0
        self.rejected = 0
        self._sem = asyncio.Semaphore(limit)
        self._queued = 0

    async def acquire(self) -> bool:
        """Take a slot: at once when one is free, else queue for at most `max_wait`, unless
        `max_queue` callers already wait, in which case refuse at once."""
        if not self._sem.locked():
            await self._sem.acquire()  # a free slot is taken without yielding to the loop
        else:
            if self._queued >= self.max_queue:
                self.rejected += 1
                return False
            self._queued += 1
            try:
                async with asyncio.timeout(self.max_wait):
                    await self._sem.acquire()
            except TimeoutError:
                self.rejected += 1
                return False
            finally:
                self._queued -= 1
        self.in_use += 1
        self.in_use_max = max(self.in_use_max, self.in_use)
        return True

    def release(self) -> None:
        self.in_use -= 1
        self._sem.release()


@dataclass(eq=False)
class OriginResponse:
    """An origin response whose headers are read; holds a budget slot until `close()`."""

    resp: aiohttp.ClientResponse
    budget: Budget
    request_time: float
    response_time: float
    _closed: bool = field(default=False)

    @property
    def status(self) -> int:
        return self.resp.status

    @property
    def headers(self) -> CIMultiDict[str]:
        return CIMultiDict(self.resp.headers)

    def close(self) -> None:
        """Idempotent: returns the connection (or drops it mid-body) and the budget slot."""
        if not self._closed:
            self._closed = True
            self.resp.release()
            self.budget.release()


class Upstream:
    """The client side of one origin."""

    def __init__(
        self, name: str, cfg: OriginConfig, clock: Callable[[], float] = time.time
    ) -> None:
        self.name = name
        self.cfg = cfg
        self.clock = clock  # wall clock of request and response times (RFC 9111 4.2.3)
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
        self._session: aiohttp.ClientSession | None = None

    def open(self) -> None:
        """Create the client session (inside a running loop)."""
        connector = aiohttp.TCPConnector(
            limit=self.cfg.max_connections,
            limit_per_host=self.cfg.max_connections,
            keepalive_timeout=15.0,
        )
        self._session = aiohttp.ClientSession(
            connector=connector,
            auto_decompress=False,
            skip_auto_headers={"Accept-Encoding", "User-Agent", "Content-Type"},
            timeout=aiohttp.ClientTimeout(
                total=None, connect=self.cfg.connect_timeout, sock_read=self.cfg.read_timeout
            ),
            cookie_jar=aiohttp.DummyCookieJar(),
        )

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()

    def url(self, raw_path_qs: str) -> URL:
        return URL(self._origin + self._base_path + raw_path_qs, encoded=True)

    async def request(
        self,
        method: str,
        raw_path_qs: str,
        headers: CIMultiDict[str],
        body: AsyncIterable[bytes] | None = None,
        *,
        background: bool = False,
    ) -> OriginResponse:
        """Send one request; the caller must `close()` the result. Raises OriginError."""
        assert self._session is not None, "Upstream.start() not called"
        now = time.monotonic()
        if not self.breaker.allow(now):
            raise OriginUnavailable(self.name, "circuit open", self.breaker.retry_after(now))
        budget = self.background if background else self.foreground
        if not await budget.acquire():
            self.breaker.release_probe()
            raise OriginUnavailable(self.name, "over concurrency budget", 1.0)
        attempts = 1 + (self.cfg.retries if body is None and method in IDEMPOTENT else 0)
        try:
            resp, request_time = await self._send(method, raw_path_qs, headers, body, attempts)
        except OriginError:
            budget.release()  # the breaker has counted it
            raise
        except BaseException:
            budget.release()
            self.breaker.release_probe()  # cancelled: no verdict on the origin
            raise
        if resp.status in FAILURE_STATUSES:
            self.failures += 1
        if resp.status in UNAVAILABLE_STATUSES:
            self.breaker.failure(time.monotonic())
        else:
            self.breaker.success(time.monotonic())
        return OriginResponse(resp, budget, request_time, self.clock())

    async def _send(
        self,
        method: str,
        raw_path_qs: str,
        headers: CIMultiDict[str],
        body: AsyncIterable[bytes] | None,
        attempts: int,
    ) -> tuple[aiohttp.ClientResponse, float]:
        assert self._session is not None
        url = self.url(raw_path_qs)
        for attempt in range(attempts):
            request_time = self.clock()
            self.fetches += 1
            try:
                resp = await self._session.request(
                    method,
                    url,
                    headers=headers,
                    data=body,
                    allow_redirects=False,
                )
                return resp, request_time
            except aiohttp.ClientConnectorError as exc:
                # Only a failed connect is retried here: the origin never saw the request.
                # aiohttp itself resends an idempotent request once when a kept-alive
                # connection drops (RFC 9112 9.3.1); retrying that too would double it.
                if attempt + 1 < attempts:
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
                self._failed()
                raise OriginUnreachable(self.name, type(exc).__name__) from exc
        raise AssertionError("unreachable")

    def _failed(self) -> None:
        self.failures += 1
        self.breaker.failure(time.monotonic())

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
        }
