"""The decoded-audio budget: takers within it pass at once, over it they wait first come first
served, a lone taker always passes, a waiter times out with RESOURCE_EXHAUSTED, and nothing
leaks when a waiter goes away."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from scheduler.errors import QueueFull
from scheduler.limits import AudioBudget


async def test_within_budget_passes_at_once_and_over_it_waits_in_order() -> None:
    b = AudioBudget(100, wait_s=5)
    await b.take(60)
    await b.take(40)
    assert b.held == 100
    order: list[str] = []

    async def taker(name: str, n: int) -> None:
        await b.take(n)
        order.append(name)

    big = asyncio.create_task(taker("big", 80))
    await asyncio.sleep(0.01)
    small = asyncio.create_task(taker("small", 10))  # fits after one give, but queues behind
    await asyncio.sleep(0.01)
    assert order == []
    b.give(40)  # 60 held: big (80) does not fit, small waits behind it
    await asyncio.sleep(0.01)
    assert order == []
    b.give(60)  # 0 held: big passes, then small fits beside it (90)
    await asyncio.gather(big, small)
    assert order == ["big", "small"] and b.held == 90 and b.peak == 100


async def test_a_lone_taker_passes_even_over_the_limit() -> None:
    b = AudioBudget(100, wait_s=5)
    await b.take(500)
    assert b.held == 500
    b.give(500)
    assert b.held == 0


async def test_waiter_times_out_and_a_cancelled_one_leaves_nothing_behind() -> None:
    b = AudioBudget(100, wait_s=0.2)
    await b.take(90)
    with pytest.raises(QueueFull, match="max-decoded-audio-mib"):
        await b.take(20)
    gone = asyncio.create_task(b.take(50))
    await asyncio.sleep(0.01)
    gone.cancel()
    with pytest.raises(asyncio.CancelledError):
        await gone
    behind = asyncio.create_task(b.take(10))  # not stuck behind the cancelled one
    await asyncio.wait_for(behind, 1)
    b.give(90)
    b.give(10)
    assert b.held == 0 and not b._waiters


async def test_hold_gives_back() -> None:
    b = AudioBudget(100)
    async with b.hold(70):
        assert b.held == 70
    assert b.held == 0


async def test_stream_idle_timeout_between_messages() -> None:
    """A stream's `IdleWatch`: messages that come in time pass; a gap longer than the
    idle timeout ends the stream (StreamIdle, DEADLINE_EXCEEDED); the iterator is not lost."""
    from scheduler.limits import StreamIdle, StreamLimits

    limits = StreamLimits(10, 10, idle_timeout_s=0.2)

    async def messages() -> AsyncIterator[int]:
        yield 1
        await asyncio.sleep(0.05)
        yield 2
        await asyncio.sleep(1.0)
        yield 3

    it = messages().__aiter__()
    watch = limits.idle_watch()
    assert await watch.next(it) == 1
    assert await watch.next(it) == 2
    started = asyncio.get_running_loop().time()
    with pytest.raises(StreamIdle) as idle:
        await watch.next(it)
    assert 0.15 < asyncio.get_running_loop().time() - started < 0.6
    assert idle.value.code.name == "DEADLINE_EXCEEDED"
    with pytest.raises(StopAsyncIteration):  # what was cut off is not given out later
        await watch.next(it)
    watch.close()


async def test_idle_watch_one_timer_per_stream() -> None:
    """`IdleWatch`: messages spaced just under the idle timeout pass however long the stream
    lasts (its one timer re-arms), time spent between reads does not count, a gap longer than
    the timeout ends the stream with StreamIdle, and the reading task is not left cancelled."""
    from scheduler.limits import StreamIdle, StreamLimits

    limits = StreamLimits(10, 10, idle_timeout_s=0.2)

    async def messages() -> AsyncIterator[int]:
        for i in range(8):
            await asyncio.sleep(0.12)
            yield i
        await asyncio.sleep(1.0)
        yield 99

    watch = limits.idle_watch()
    it = messages().__aiter__()
    got = []
    for _ in range(8):
        got.append(await watch.next(it))
        await asyncio.sleep(0.15)  # busy with the message: not idle time
    assert got == list(range(8))
    started = asyncio.get_running_loop().time()
    with pytest.raises(StreamIdle):
        await watch.next(it)
    assert 0.15 < asyncio.get_running_loop().time() - started < 0.6
    task = asyncio.current_task()
    assert task is not None and task.cancelling() == 0
    await asyncio.sleep(0.01)
    watch.close()
