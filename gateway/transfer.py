"""How long the gateway may still wait on an origin, and how long it may keep a connection to
it idle. Pure: the upstream client feeds it the time it waited and the bytes it got.

An origin that drips a byte a second would otherwise hold a client, an origin connection and a
concurrency slot for as long as its read timeout keeps being reset. Two bounds stop it:

- `fetch_timeout`: the total time spent waiting on the origin for one fetch, headers and body;
- `min_rate`: after the first `grace` seconds of waiting for a body, it must have arrived at
  `min_rate` bytes per second on average.

Only time spent waiting *for the origin* counts: a fill reads as fast as the origin sends, and a
pass-through stream that waits for a slow client is not the origin's fault.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

KEEPALIVE_MARGIN = 1.0  # seconds an idle origin connection is dropped before the origin would
MIN_IDLE = 0.1  # the shortest idle reuse window (0 would make aiohttp's cleanup spin)

_TIMEOUT_PARAM = re.compile(r"(?:^|,)\s*timeout\s*=\s*(\d{1,9})\s*(?:,|$)", re.IGNORECASE)


@dataclass(slots=True)
class TransferDeadline:
    """The waiting an origin fetch has left (`total`: None for no bound; `min_rate`: bytes per
    second, 0 for no bound)."""

    total: float | None
    min_rate: float = 0.0
    grace: float = 5.0  # seconds of body wait before the minimum rate applies
    waited: float = 0.0  # seconds spent waiting on the body so far
    received: int = 0  # body bytes so far

    def next_wait(self) -> tuple[float, str]:
        """The longest the next read may wait, and what limits it; a wait of 0 or less means
        the fetch is already over its bounds."""
        wait, why = math.inf, ""
        if self.total is not None:
            wait, why = self.total - self.waited, "fetch_timeout"
        if self.min_rate > 0:
            rate_wait = self.grace + self.received / self.min_rate - self.waited
            if rate_wait < wait:
                wait, why = rate_wait, "below min_transfer_rate"
        return wait, why

    def spent(self, seconds: float, size: int) -> None:
        """Record one read: `seconds` waited, `size` bytes received."""
        self.waited += max(0.0, seconds)
        self.received += size


def keep_alive_timeout(value: str | None) -> float | None:
    """The `timeout=N` of a response's Keep-Alive field (RFC 2068 19.7.1.1, kept by common
    servers such as Node's): how long the origin keeps an idle connection; None if absent."""
    if not value:
        return None
    match = _TIMEOUT_PARAM.search(value)
    return float(match.group(1)) if match else None


def idle_limit(configured: float, announced: float | None) -> float:
    """How long an idle connection to the origin may be reused: the configured idle timeout, or
    less when the origin announces that it closes sooner (with a margin, so that the gateway
    never sends on a connection the origin is closing)."""
    if announced is None:
        return configured
    return max(MIN_IDLE, min(configured, announced - KEEPALIVE_MARGIN))
