"""A circuit breaker per origin, as plain state and a clock: closed -> open -> half-open."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(slots=True)
class Breaker:
    """Opens after `failures` consecutive failures; after `reset` seconds one probe may pass
    (half-open); its success closes the breaker, its failure opens it for another `reset`."""

    failures: int = 5
    reset: float = 10.0
    consecutive: int = 0
    opened_at: float | None = None
    probing: bool = False

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

    def retry_after(self, now: float) -> float:
        """Seconds until a probe may pass, for a 503's Retry-After."""
        if self.opened_at is None:
            return 0.0
        return max(0.0, self.reset - (now - self.opened_at))

    def success(self) -> None:
        self.consecutive = 0
        self.opened_at = None
        self.probing = False

    def failure(self, now: float) -> None:
        self.consecutive += 1
        if self.probing or self.consecutive >= self.failures:
            self.opened_at = now
            self.probing = False
