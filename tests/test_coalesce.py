"""Single flight per key (gateway/coalesce.py): one fill, every joiner gets its answer."""

from __future__ import annotations

import asyncio

import pytest

from gateway.coalesce import Flight, SingleFlight


async def test_the_first_caller_leads_and_later_ones_join_the_same_fill() -> None:
    flights: SingleFlight[str] = SingleFlight()
    runs: list[str] = []
    gate = asyncio.Event()

    async def fill(flight: Flight[str]) -> str:
        runs.append(flight.key)
        await gate.wait()
        return "answer"

    first, leads = flights.start("k", fill)
    second, joins = flights.start("k", fill)
    assert (leads, joins) == (True, False) and first is second and flights.in_flight("k")
    gate.set()
    assert await asyncio.gather(first.wait(), second.wait()) == ["answer", "answer"]
    assert runs == ["k"]
    await asyncio.sleep(0)
    assert not flights.in_flight("k")  # forgotten once done: the next caller leads again


async def test_joiners_get_the_announced_head_before_the_fill_ends_then_its_final_state() -> None:
    flights: SingleFlight[str] = SingleFlight()
    gate = asyncio.Event()

    async def fill(flight: Flight[str]) -> str:
        flight.announce("head")
        await gate.wait()
        return "whole"

    flight, _ = flights.start("k", fill)
    assert await flight.wait() == "head"
    gate.set()
    assert flight.task is not None
    await flight.task
    assert await flight.wait() == "whole"


async def test_a_joiner_that_gives_up_or_is_cancelled_does_not_cancel_the_fill() -> None:
    flights: SingleFlight[str] = SingleFlight()
    gate = asyncio.Event()

    async def fill(flight: Flight[str]) -> str:
        await gate.wait()
        return "answer"

    flight, _ = flights.start("k", fill)
    with pytest.raises(TimeoutError):
        await flight.wait(0.01)
    waiter = asyncio.create_task(flight.wait())
    await asyncio.sleep(0)
    waiter.cancel()
    await asyncio.gather(waiter, return_exceptions=True)
    assert flight.waiting == 0  # those who left no longer count as waiting
    gate.set()
    assert await flight.wait() == "answer"


async def test_a_failed_fill_raises_its_error_in_every_joiner() -> None:
    flights: SingleFlight[str] = SingleFlight()

    async def fill(flight: Flight[str]) -> str:
        await asyncio.sleep(0)
        raise LookupError("origin said no")

    flight, _ = flights.start("k", fill)
    joined, _ = flights.start("k", fill)
    for waiter in (flight, joined):
        with pytest.raises(LookupError):
            await waiter.wait()


async def test_a_fill_run_alone_is_not_joinable() -> None:
    flights: SingleFlight[str] = SingleFlight()

    async def fill(flight: Flight[str]) -> str:
        return "mine"

    alone = flights.run_alone("k", fill)
    assert not flights.in_flight("k")
    assert await alone.wait() == "mine"
