"""The scheduler's heap tuning: applied on glibc, and the idle trimmer trims after activity."""

from __future__ import annotations

import asyncio
import platform

import pytest

from protos.common import memory

GLIBC = platform.libc_ver()[0] == "glibc"


@pytest.mark.skipif(not GLIBC, reason="mallopt/malloc_trim are glibc's")
def test_tune_and_trim_reach_glibc() -> None:
    assert memory.tune_malloc() is True
    blocks = [bytearray(64 * 1024) for _ in range(2000)]  # ~128 MB of heap-sized blocks
    del blocks
    assert isinstance(memory.trim(), bool)


@pytest.mark.skipif(not GLIBC, reason="the trimmer is a no-op without glibc")
async def test_trimmer_waits_for_idle_after_activity(monkeypatch: pytest.MonkeyPatch) -> None:
    trims: list[int] = []
    state = {"admitted": 0, "active": 0}
    hooks: list[int] = []
    monkeypatch.setattr(memory, "trim", lambda: trims.append(state["admitted"]) or True)
    task = asyncio.create_task(memory.trim_when_idle(
        lambda: state["admitted"], lambda: state["active"],
        lambda: hooks.append(state["admitted"]), check_s=0.01, busy_every_s=0.4))
    try:
        await asyncio.sleep(0.05)
        assert trims == [], "no activity, no trim"
        state.update(admitted=3, active=2)
        await asyncio.sleep(0.1)
        assert trims == [], "busy and the busy interval has not passed"
        state["active"] = 0
        await asyncio.sleep(0.1)
        assert trims == [3], "trimmed once the calls ended"
        await asyncio.sleep(0.1)
        assert trims == [3], "nothing new, no second trim"
        state.update(admitted=9, active=1)
        await asyncio.sleep(0.5)
        assert trims[1:] == [9], "still busy after busy_every_s: trimmed anyway, once"
        state["active"] = 0  # the calls running at that trim end; none started since
        await asyncio.sleep(0.1)
        assert trims[1:] == [9, 9], "trimmed again once idle"
        await asyncio.sleep(0.1)
        assert trims[1:] == [9, 9], "and then left alone"
        assert hooks == trims, "the caller's hook runs with every trim"
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


@pytest.mark.skipif(not GLIBC, reason="the trimmer is a no-op without glibc")
async def test_trimmer_leaves_steady_load_alone(monkeypatch: pytest.MonkeyPatch) -> None:
    """One call at a time, back to back: no call is in progress at most checks, but calls
    start in every interval, so it is not idle: only the busy-interval trim runs."""
    trims: list[int] = []
    started = {"n": 0}

    def activity() -> int:  # a new call started before every check
        started["n"] += 1
        return started["n"]

    monkeypatch.setattr(memory, "trim", lambda: trims.append(started["n"]) or True)
    task = asyncio.create_task(memory.trim_when_idle(
        activity, lambda: 0, check_s=0.01, busy_every_s=10.0))
    try:
        await asyncio.sleep(0.3)
        assert started["n"] > 5, "the trimmer checked"
        assert trims == [], "calls kept starting: never idle, busy interval not reached"
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
