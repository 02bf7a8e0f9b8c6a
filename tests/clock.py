"""A clock tests move by hand: the gateway's one clock (`Gateway(config, clock=...)`)."""

from __future__ import annotations

import time


class SettableClock:
    """Starts at the real time (so Date fields an origin sends still make sense) and moves only
    when a test says so: TTLs pass without sleeping."""

    def __init__(self, start: float | None = None) -> None:
        self.now = time.time() if start is None else start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds
