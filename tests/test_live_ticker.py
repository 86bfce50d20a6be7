"""`LiveTicker`'s pace (`--live-tick-ms`): a tick starts at least the interval after the one
before it, so that the chunks of streams arriving meanwhile share it; a step that finds the
ticker idle that long runs at once. The model thread is a stand-in that records each tick."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import numpy as np

from gpu_worker.engines.live import LiveTicker
from gpu_worker.engines.live_batch import TickStats
from gpu_worker.engines.live_session import LiveUpdate


class ModelThread:
    """Records the streams of each tick and when it started; answers each step at once."""

    def __init__(self) -> None:
        self.ticks: list[tuple[float, list[object]]] = []

    async def __call__(self, fn: Any) -> tuple[list[LiveUpdate], TickStats, float]:
        items = fn.args[0]
        self.ticks.append((time.monotonic(), [i.session for i in items]))
        return [LiveUpdate(processed_ms=len(i.audio)) for i in items], TickStats(), 0.0


async def _steps(ticker: LiveTicker, sessions: list[object], gap_s: float) -> list[LiveUpdate]:
    async def one(k: int, session: object) -> LiveUpdate:
        await asyncio.sleep(k * gap_s)
        return await ticker.step(session, np.zeros(1600 + k, np.float32), False)  # type: ignore[arg-type]
    return await asyncio.gather(*(one(k, s) for k, s in enumerate(sessions)))


async def test_steps_arriving_within_the_interval_share_the_next_tick() -> None:
    model = ModelThread()
    ticker = LiveTicker(model, None, interval_s=0.1)
    ticker.start()
    try:
        sessions = [object() for _ in range(6)]
        started = time.monotonic()
        updates = await _steps(ticker, sessions, 0.01)  # 6 streams over 50 ms
        assert [u.processed_ms for u in updates] == [1600 + k for k in range(6)]
        # The first step found the ticker idle: a tick at once; the other five came within the
        # interval after it and share the next tick, which waits for the interval to pass.
        assert [len(s) for _, s in model.ticks] == [1, 5]
        assert model.ticks[0][0] - started < 0.05
        assert model.ticks[1][0] - model.ticks[0][0] >= 0.095
        # Idle for longer than the interval: the next step runs at once.
        await asyncio.sleep(0.15)
        before = time.monotonic()
        await ticker.step(sessions[0], np.zeros(10, np.float32), False)  # type: ignore[arg-type]
        assert model.ticks[-1][0] - before < 0.05
    finally:
        await ticker.stop()


async def test_without_an_interval_each_waiting_step_ticks_at_once() -> None:
    model = ModelThread()
    ticker = LiveTicker(model, None)
    ticker.start()
    try:
        await _steps(ticker, [object() for _ in range(6)], 0.01)
        assert [len(s) for _, s in model.ticks] == [1] * 6
    finally:
        await ticker.stop()
