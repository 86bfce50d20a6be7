"""Worker supervision details with stand-in worker programs (no models): why a worker failed
reaches `last_error`, and stopping workers never blocks the scheduler's event loop."""

from __future__ import annotations

import asyncio
import sys
import time
from pathlib import Path

from protos.common.worker_config import WorkerConfig
from scheduler.workers import WorkerHandle, WorkerLaunch, WorkerSpec, WorkerState


def handle(tmp_path: Path, program: str) -> WorkerHandle:
    launch = WorkerLaunch(WorkerConfig("m"), runtime_dir=str(tmp_path), initial_backoff_s=0.05,
                          command=[sys.executable, "-c", program])
    return WorkerHandle(WorkerSpec("sim:0#0", "sim:0", "cpu"), launch)


async def test_startup_error_reaches_last_error(tmp_path: Path) -> None:
    program = ("import sys; print('loading model /models/x', file=sys.stderr); "
               "print('FileNotFoundError: model directory /models/x does not exist', "
               "file=sys.stderr); sys.exit(3)")
    w = handle(tmp_path, program)
    task = asyncio.create_task(w.supervise())
    try:
        for _ in range(200):
            if w.restarts:
                break
            await asyncio.sleep(0.05)
        assert "exited with code 3" in w.last_error
        assert "model directory /models/x does not exist" in w.last_error
    finally:
        await w.stop(1.0)
        task.cancel()


class _SlowToDie:
    """A process that takes `die_s` to go away after SIGKILL (as a GPU process may)."""

    pid = 4242

    def __init__(self, die_s: float) -> None:
        self.die_s = die_s
        self.killed_at: float | None = None

    def poll(self) -> int | None:
        if self.killed_at is not None and time.monotonic() - self.killed_at >= self.die_s:
            return -9
        return None

    def terminate(self) -> None:  # ignores SIGTERM
        pass

    def kill(self) -> None:
        if self.killed_at is None:
            self.killed_at = time.monotonic()

    def wait(self, timeout: float | None = None) -> int:
        deadline = time.monotonic() + (timeout or 0)
        while self.poll() is None:
            if time.monotonic() > deadline:
                raise TimeoutError
            time.sleep(0.01)
        return -9


async def test_stopping_a_worker_does_not_block_the_event_loop(tmp_path: Path) -> None:
    w = handle(tmp_path, "pass")
    w.process = _SlowToDie(1.0)  # type: ignore[assignment]
    w.state = WorkerState.READY
    gaps: list[float] = []

    async def ticker() -> None:
        last = time.monotonic()
        while True:
            await asyncio.sleep(0.01)
            now = time.monotonic()
            gaps.append(now - last)
            last = now

    tick = asyncio.create_task(ticker())
    started = time.monotonic()
    await w.stop(grace_s=0.2)
    await asyncio.sleep(0.05)  # the ticker records the gap a blocking stop would leave
    tick.cancel()
    assert time.monotonic() - started >= 1.0  # it did wait for the process to go
    assert w.state == WorkerState.STOPPED
    assert max(gaps) < 0.25, f"event loop blocked for {max(gaps):.2f} s"
