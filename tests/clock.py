"""A clock tests move by hand: the gateway's one clock (`Gateway(config, clock=...)`), and the
`Date` an origin in the same test stamps its responses with."""

from __future__ import annotations

import time
from collections.abc import Callable
from email.utils import formatdate

from aiohttp import web


class SettableClock:
    """Starts at the real time (so Date fields an origin sends still make sense) and moves only
    when a test says so: TTLs pass without sleeping.

    It starts on a whole second: a `Date` has one-second resolution, so an origin stamping its
    responses from this clock (`create_echo_app(clock)`, `stamp_dates`) agrees with the gateway
    exactly while tests advance it by whole seconds, and ages and TTLs come out exact."""

    def __init__(self, start: float | None = None) -> None:
        self.now = float(int(time.time())) if start is None else start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def http_date(clock: Callable[[], float]) -> str:
    """`clock`'s time as an HTTP-date (RFC 9110 5.6.7)."""
    return formatdate(clock(), usegmt=True)


def stamp_dates(app: web.Application, clock: Callable[[], float]) -> None:
    """Every response of `app` says `Date:` from `clock` instead of the real time, as an origin
    whose clock agrees with a gateway on the same SettableClock. Without it, once a test has
    advanced the gateway's clock, a fresh response looks old (RFC 9111 4.2.3: apparent age is
    response_time - Date). For an origin that is not the tests' own (the demo loader): it
    replaces whatever `Date` the origin set, just before the head is written."""

    async def stamp(_request: web.Request, response: web.StreamResponse) -> None:
        response.headers["Date"] = http_date(clock)

    app.on_response_prepare.append(stamp)
