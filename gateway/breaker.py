"""A circuit breaker per origin, as plain state and a clock: closed -> open -> half-open.

It opens on a failure *rate*, not a streak: `failures` failures within `window` that are also at
least `ratio` of all outcomes there. A few URLs that fail while the rest of the origin answers
do not cut the whole origin off; an origin that fails everything is cut off after `failures`.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field


@dataclass(slots=True)
class _Second:
    at: int
    ok: int = 0
    failed: int = 0


@dataclass(slots=True)
class Breaker:
    """After opening, `reset` seconds pass before one probe may go (half-open); the probe's
    success closes the breaker, its failure opens it for another `reset`."""

    failures: int = 5
    reset: float = 10.0
    ratio: float = 0.5
    window: float = 10.0
    opened_at: float | None = None
    probing: bool = False
    _seconds: deque[_Second] = field(default_factory=deque)
    _ok: int = 0
    _failed: int = 0

    @property
    def state(self) -> str:
        if self.opened_at is None:
            return "closed"
        return "half-open" if self.probing else "open"

    def allow(self, now: float) -> bool:
        """May a request go to the origin now? Claims the single probe when half-open."""
        if self.opened_at is None:
            return True
        if self.probing or now - self.opened_at < self.reset:
            return False
        self.probing = True
        return True

    def refusing(self, now: float) -> bool:
        """Would a request be refused now? Open within `reset`, or half-open with its probe
        out. An open breaker that nothing has asked since `reset` passed is not refusing: the
        next request will be its probe (so a worker that no longer sees traffic for the origin
        does not report it cut off forever)."""
        return self.opened_at is not None and (self.probing or now - self.opened_at < self.reset)

    def release_probe(self) -> None:
        """The probe never got an answer (refused by a budget, cancelled): let another try."""
        self.probing = False

    def retry_after(self, now: float) -> float:
        """Seconds until a probe may pass, for a 503's Retry-After."""
        if self.opened_at is None:
            return 0.0
        return max(0.0, self.reset - (now - self.opened_at))

    def success(self, now: float) -> None:
        if self.probing:
            self._close()
        elif self.opened_at is None:
            self._record(now, failed=False)

    def failure(self, now: float) -> None:
        if self.probing:
            self._open(now)
        elif self.opened_at is None:
            self._record(now, failed=True)
            total = self._ok + self._failed
            if self._failed >= self.failures and self._failed >= self.ratio * total:
                self._open(now)

    def _record(self, now: float, *, failed: bool) -> None:
        second = int(now)
        if not self._seconds or self._seconds[-1].at != second:
            self._seconds.append(_Second(second))
        bucket = self._seconds[-1]
        if failed:
            bucket.failed += 1
            self._failed += 1
        else:
            bucket.ok += 1
            self._ok += 1
        while self._seconds[0].at < now - self.window:
            old = self._seconds.popleft()
            self._ok -= old.ok
            self._failed -= old.failed

    def _open(self, now: float) -> None:
        self.opened_at = now
        self.probing = False
        self._forget()

    def _close(self) -> None:
        self.opened_at = None
        self.probing = False
        self._forget()

    def _forget(self) -> None:
        self._seconds.clear()
        self._ok = self._failed = 0
