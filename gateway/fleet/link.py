"""The gateway's connection to Redis: short timeouts, no retries, a bound, and a breaker.

Redis is a cache here, never a dependency a request may wait on: every data command has the
configured `timeout` (redis-py 8's defaults are a 5 s socket timeout and retries) and any
failure is `RedisUnavailable`, which callers treat as a miss. redis-py closes a connection whose
command timed out or was cancelled, so a Redis that hangs would turn every request into a
reconnect; the breaker stops that: after a few failures no command is sent for `BREAKER_RESET`
seconds, then one probe is, and the instance runs on its L1 meanwhile.

Concurrency is bounded here, by a semaphore of `max_connections`, rather than by the pools:
the asyncio pools (and the cluster client's) raise at once when exhausted, which under a
stampede would be an error per request instead of a short wait.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from redis.asyncio import ConnectionPool, Redis
from redis.asyncio.cluster import RedisCluster
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import RedisClusterException, RedisError

from gateway.breaker import Breaker
from gateway.config import RedisConfig
from gateway.metrics import Meter

log = logging.getLogger("gateway.redis")

T = TypeVar("T")
Client = Any  # Redis | RedisCluster: the same command methods

BREAKER_FAILURES = 5  # failed commands within the window that open the breaker
# Seconds of outcomes the breaker weighs: short, so that the successes from before a Redis hung
# stop counting within a second and the timeouts open it (a long window full of earlier
# successes would let every request pay `timeout` for many seconds).
BREAKER_WINDOW = 1.0
BREAKER_RESET = 1.0  # seconds without commands once open, before one probe goes
ERROR_LOG_INTERVAL = 10.0  # seconds between two "Redis unavailable" lines
ERRORS_METRIC = ("gateway_redis_errors_total",)  # failed, timed out, or no connection in time
DURATION_METRIC = ("gateway_redis_duration_seconds",)


# What a failed command raises. The cluster client raises RedisClusterException, which is not
# a RedisError, when no node answers its topology query (every node down or cut off: after a
# connection error it rediscovers the cluster before its next command) or no node holds a slot.
ERRORS: tuple[type[BaseException], ...] = (
    RedisError, RedisClusterException, OSError, TimeoutError
)


class RedisUnavailable(Exception):
    """Redis did not answer in time, refused, or the breaker is open: act as on a miss."""


def cancelling() -> bool:
    """Is the current task being cancelled? redis-py may turn a cancellation that lands in
    one of its own timeouts into a TimeoutError (an OSError): a retry loop that catches those
    must check this, or it would never stop."""
    task = asyncio.current_task()
    return task is not None and task.cancelling() > 0


def make_client(cfg: RedisConfig, *, socket_timeout: float, max_connections: int) -> Client:
    """A standalone or cluster client with the gateway's timeouts and no retries."""
    common: dict[str, Any] = {
        "socket_timeout": socket_timeout,
        "socket_connect_timeout": max(cfg.timeout, 0.5),
        "retry": Retry(NoBackoff(), 0),
    }
    if cfg.cluster:
        return RedisCluster.from_url(cfg.url, max_connections=max_connections, **common)
    pool = ConnectionPool.from_url(cfg.url, max_connections=max_connections, **common)
    return Redis(connection_pool=pool, retry=common["retry"])


class RedisLink:
    """The data client (short timeout) and a client for blocking reads (a socket timeout longer
    than the block, or redis-py raises TimeoutError on every idle XREAD: redis-py #2807)."""

    def __init__(
        self,
        cfg: RedisConfig,
        clock: Callable[[], float] = time.monotonic,
        meter: Meter | None = None,
    ) -> None:
        self.cfg = cfg
        self.meter = Meter() if meter is None else meter
        self.clock = clock  # a network timer: the loop's clock, not the cache's
        self.data = make_client(
            cfg, socket_timeout=cfg.timeout, max_connections=cfg.max_connections
        )
        self.blocking = make_client(cfg, socket_timeout=cfg.block + 2.0, max_connections=4)
        self.breaker = Breaker(
            failures=BREAKER_FAILURES, reset=BREAKER_RESET, window=BREAKER_WINDOW
        )
        self._slots = asyncio.Semaphore(cfg.max_connections)
        self.errors = 0
        self.busy = 0  # commands not sent: max_connections in flight for `timeout`
        self.calls = 0
        self.seconds = 0.0  # time spent in commands, for the mean latency
        self._logged_at = -ERROR_LOG_INTERVAL

    @property
    def available(self) -> bool:
        """False while the breaker is open (no command would be sent)."""
        return self.breaker.opened_at is None

    async def run(self, call: Callable[[Client], Awaitable[T]]) -> T:
        """`call(client)` under the bound, the timeout and the breaker."""
        started = self.clock()
        if not self.breaker.allow(started):
            raise RedisUnavailable("breaker open")
        try:
            async with asyncio.timeout(self.cfg.timeout):
                await self._slots.acquire()
        except TimeoutError:
            self.breaker.release_probe()
            self.busy += 1
            self.meter.count(ERRORS_METRIC)
            raise RedisUnavailable("no free connection within the timeout") from None
        except BaseException:  # cancelled while waiting: a held probe would never end
            self.breaker.release_probe()
            raise
        try:
            result = await call(self.data)
        except ERRORS as exc:
            self._failed(exc)
            raise RedisUnavailable(str(exc) or type(exc).__name__) from exc
        except BaseException:
            self.breaker.release_probe()
            raise
        finally:
            self._slots.release()
            self.calls += 1
            took = self.clock() - started
            self.seconds += took
            self.meter.observe(DURATION_METRIC, took)
        if not self.available:
            self.breaker.success(self.clock())
            if self.available:
                log.info("redis reachable again")
        else:
            self.breaker.success(self.clock())
        return result

    def _failed(self, exc: BaseException) -> None:
        now = self.clock()
        self.errors += 1
        self.meter.count(ERRORS_METRIC)
        was_closed = self.available
        self.breaker.failure(now)
        if was_closed and not self.available:
            log.error("redis unavailable (%s): serving from memory only, retrying every %.0f s",
                      exc or type(exc).__name__, BREAKER_RESET)
            self._logged_at = now
        elif now - self._logged_at >= ERROR_LOG_INTERVAL:
            log.warning("redis command failed: %s", exc or type(exc).__name__)
            self._logged_at = now

    def stats(self) -> dict[str, object]:
        return {
            "available": self.available,
            "errors": self.errors,
            "busy": self.busy,
            "calls": self.calls,
            "mean_ms": round(1000 * self.seconds / self.calls, 3) if self.calls else 0.0,
        }

    async def close(self) -> None:
        for client in (self.data, self.blocking):
            with contextlib.suppress(*ERRORS):
                await client.aclose()
