"""One fill's body shared by its readers (gateway/broadcast.py), fed chunk by chunk."""

from __future__ import annotations

import asyncio

import pytest

from gateway.broadcast import Broadcast, BroadcastReader
from gateway.exchange import StreamCut
from gateway.upstream import OriginUnreachable


async def drain(reader: BroadcastReader) -> bytes:
    return b"".join([chunk async for chunk in reader])


async def test_every_reader_gets_the_whole_body_from_the_first_byte() -> None:
    broadcast = Broadcast(keep_all=True, window=1000)
    first = broadcast.reader()
    broadcast.append(b"ab")
    assert first is not None
    reading = asyncio.create_task(drain(first))
    await asyncio.sleep(0)
    broadcast.append(b"cd")
    late = broadcast.reader()  # joins mid-body
    assert late is not None
    broadcast.append(b"ef")
    broadcast.finish()
    assert await reading == b"abcdef"
    assert await drain(late) == b"abcdef"
    assert broadcast.body() == b"abcdef"


async def test_a_failed_fill_raises_its_error_in_every_reader() -> None:
    broadcast = Broadcast(keep_all=True, window=1000)
    reader = broadcast.reader()
    assert reader is not None
    broadcast.append(b"part")
    broadcast.finish(OriginUnreachable("o", "body cut short"))
    with pytest.raises(OriginUnreachable):
        await drain(reader)


async def test_an_unstored_body_holds_at_most_its_window_and_cuts_readers_far_behind() -> None:
    broadcast = Broadcast(keep_all=False, window=100)
    fast, slow = broadcast.reader(), broadcast.reader()
    assert fast is not None and slow is not None
    fast_chunks = aiter(fast)
    slow_chunks = aiter(slow)
    broadcast.append(b"x" * 40)
    assert await anext(fast_chunks) == b"x" * 40
    assert await anext(slow_chunks) == b"x" * 40  # then `slow` reads nothing more
    held_max = 0
    for _ in range(10):
        broadcast.append(b"y" * 40)
        held_max = max(held_max, broadcast.held)
        while broadcast.full():  # the fill would wait (make_room) for the fastest reader
            await anext(fast_chunks)
            async with asyncio.timeout(1):  # a fill that waited on `slow` would never return
                await broadcast.make_room(0.0)
    assert held_max <= 100 + 40
    assert slow.cut
    with pytest.raises(StreamCut):
        await anext(slow_chunks)


async def test_a_reader_that_comes_after_the_start_was_let_go_gets_none() -> None:
    broadcast = Broadcast(keep_all=False, window=10)
    reader = broadcast.reader()
    assert reader is not None
    chunks = aiter(reader)
    broadcast.append(b"a" * 8)
    assert broadcast.reader() is not None  # within the window: the start is still held
    await anext(chunks)
    broadcast.append(b"b" * 8)
    await anext(chunks)
    async with asyncio.timeout(1):
        await broadcast.make_room(0.0)
    assert broadcast.reader() is None


async def test_the_fill_is_told_when_nobody_reads_an_unstored_body_any_more() -> None:
    abandoned: list[bool] = []
    broadcast = Broadcast(keep_all=False, window=10)
    broadcast.on_abandoned = lambda: abandoned.append(True)
    reader = broadcast.reader()
    assert reader is not None
    broadcast.append(b"a" * 20)
    reader.close()
    assert abandoned == [True] and broadcast.done


async def test_a_stored_body_is_kept_whole_however_slow_its_readers() -> None:
    broadcast = Broadcast(keep_all=True, window=10)
    reader = broadcast.reader()
    assert reader is not None
    for _ in range(10):
        broadcast.append(b"z" * 10)
    assert not broadcast.full() and broadcast.held == 100
    reader.close()
    assert not broadcast.done  # a stored body's fill goes on without readers
    broadcast.finish()
    assert broadcast.body() == b"z" * 100


async def test_clients_that_joined_but_have_not_started_keep_the_start_for_a_moment() -> None:
    waiting = [1]
    broadcast = Broadcast(keep_all=False, window=10, pending=lambda: waiting[0])
    broadcast.append(b"a" * 20)
    assert broadcast.full()

    async def start_reading() -> bytes:
        await asyncio.sleep(0)
        waiting[0] = 0
        reader = broadcast.reader()
        assert reader is not None  # the start was kept for it
        return await drain(reader)

    starter = asyncio.create_task(start_reading())
    async with asyncio.timeout(1):  # once the waiting client has started and read on
        await broadcast.make_room(5.0)
    broadcast.finish()
    assert await starter == b"a" * 20
