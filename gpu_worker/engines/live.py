"""Live recognition for streaming models: a session engine beside the batched one.

A worker serving a streaming model (paraformer-streaming) runs this engine: whole utterances
still go through the dynamic batcher (`transcribe`), and each live stream (`live`) is a
`LiveSession` holding its own VAD and decoding caches. Chunk steps of all open streams are
collected into ticks: every tick takes the next waiting chunk of each stream and runs them
together on the model thread, between the batcher's batches.

What a tick is today: the steps of one tick run one after another inside one call on the model
thread (one thread hop and one scheduling decision per tick, not per stream); they are not
fused into one batched forward pass of the model. `tick_streams` in every update says how
many streams shared the tick.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from gpu_worker.device import TorchDevice
from gpu_worker.engines.base import Capabilities, Unsupported
from gpu_worker.engines.batched import BatchedEngine
from gpu_worker.engines.live_session import LiveOptions, LiveSession, LiveUpdate
from protos.common.wire import DEFAULT_MAX_SEGMENT_MS
from protos.common.worker_config import WorkerConfig

log = logging.getLogger(__name__)


@dataclass
class _Step:
    session: LiveSession
    audio: np.ndarray
    is_final: bool
    done: asyncio.Future[LiveUpdate]


@dataclass
class TickCounters:
    ticks: int = 0
    steps: int = 0
    largest: int = 0
    sessions: int = 0
    sizes: list[int] = field(default_factory=list)  # recent tick sizes (for tests)


class LiveTicker:
    """Collects chunk steps of all streams and runs them in ticks on the model thread."""

    def __init__(self, run_in_model_thread: Any) -> None:
        self._run = run_in_model_thread
        self._queues: dict[int, list[_Step]] = {}
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self.counters = TickCounters()

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._loop(), name="live-ticks")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)

    async def step(self, session: LiveSession, audio: np.ndarray, is_final: bool) -> LiveUpdate:
        fut: asyncio.Future[LiveUpdate] = asyncio.get_running_loop().create_future()
        self._queues.setdefault(id(session), []).append(_Step(session, audio, is_final, fut))
        self._wake.set()
        return await fut

    def forget(self, session: LiveSession) -> None:
        for s in self._queues.pop(id(session), []):
            if not s.done.done():
                s.done.cancel()

    async def _loop(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            tick = [q.pop(0) for q in self._queues.values() if q]
            for key in [k for k, q in self._queues.items() if not q]:
                del self._queues[key]
            if not tick:
                continue
            try:
                outcomes = await self._run(functools.partial(_run_tick, tick))
            except Exception as exc:  # the thread itself failed: every step of the tick fails
                outcomes = [exc] * len(tick)
            c = self.counters
            c.ticks += 1
            c.steps += len(tick)
            c.largest = max(c.largest, len(tick))
            c.sizes = [*c.sizes[-255:], len(tick)]
            for step, outcome in zip(tick, outcomes, strict=True):
                if step.done.done():
                    continue
                if isinstance(outcome, BaseException):
                    step.done.set_exception(outcome)
                else:
                    outcome.tick_streams = len(tick)
                    step.done.set_result(outcome)
            if any(self._queues.values()):
                self._wake.set()


def _run_tick(tick: list[_Step]) -> list[LiveUpdate | BaseException]:
    """On the model thread: each stream's step; one stream's failure fails that stream only."""
    import torch

    out: list[LiveUpdate | BaseException] = []
    with torch.inference_mode():
        for s in tick:
            try:
                out.append(s.session.step(s.audio, s.is_final))
            except Exception as exc:
                log.exception("live step failed")
                out.append(exc)
    return out


@dataclass(frozen=True)
class LiveChunk:
    """One chunk of a live stream (float32 16 kHz)."""

    audio: np.ndarray
    is_final: bool = False


class LiveEngine(BatchedEngine):
    """Batched utterances plus live sessions, for a streaming model."""

    def __init__(self, name: str, runner: Any, device: TorchDevice, capabilities: Capabilities,
                 cfg: WorkerConfig) -> None:
        super().__init__(name, runner, device, capabilities, cfg.model, cfg)
        self._asr_model = runner.automodel
        self._vad_model: Any = None
        if cfg.vad_model:
            from funasr import AutoModel

            self._vad_model = AutoModel(model=cfg.vad_model, device="cpu", disable_update=True,
                                        disable_pbar=True, disable_log=True, ncpu=1,
                                        max_single_segment_time=DEFAULT_MAX_SEGMENT_MS)
        self.ticker = LiveTicker(self.batcher.run_in_model_thread)

    def start(self) -> None:
        super().start()
        self.ticker.start()

    async def stop(self) -> None:
        await self.ticker.stop()
        await super().stop()

    async def live(self, options: LiveOptions,
                   chunks: AsyncIterator[LiveChunk]) -> AsyncIterator[LiveUpdate]:
        if self._vad_model is None:
            raise Unsupported("this worker has no VAD model for live streams (serve with a "
                              "VAD model: --vad-model)")
        session = LiveSession(self._vad_model, self._asr_model, options)
        self.ticker.counters.sessions += 1
        try:
            async for chunk in chunks:
                yield await self.ticker.step(session, chunk.audio, chunk.is_final)
                if chunk.is_final:
                    break
        finally:
            self.ticker.counters.sessions -= 1
            self.ticker.forget(session)
