"""Live recognition for streaming models: a session engine beside the batched one.

A worker serving a streaming model (paraformer-streaming) runs this engine: whole utterances
still go through the dynamic batcher (`transcribe`), and each live stream (`live`) is a
`LiveSession` holding its own VAD and decoding caches. Chunk steps of all open streams are
collected into ticks: every tick takes the next waiting chunk of each stream and runs them
together on the model thread, between the batcher's batches.

Inside a tick each stream's VAD runs on its own (small, per stream), and the decoder work of
all streams is fused: the model chunk of every stream that is decoding goes into one batched
pass of the streaming Paraformer (features, SANM chunk encoder with each stream's look-back
cache, streaming CIF, decoder; `gpu_worker/fast/streaming.py`, driven by
`gpu_worker/engines/live_batch.py`). Streams whose caches differ in shape (an utterance in its
first chunks has a shorter look-back) run as separate groups, one model call each. Every
stream's text equals its serial FunASR `generate` loop. `tick_streams` in an update is the
number of streams in the model call that decoded its chunk (0: the chunk needed no decoder
call, e.g. silence). Models the fused path does not serve (another front-end, beam search)
fall back to serial steps, one FunASR `generate` call per stream.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from gpu_worker.device import TorchDevice
from gpu_worker.engines.base import Capabilities, EngineStats, Unsupported
from gpu_worker.engines.batched import BatchedEngine
from gpu_worker.engines.live_batch import TickItem, TickStats, run_tick_fused, run_tick_serial
from gpu_worker.engines.live_session import LiveOptions, LiveSession, LiveUpdate
from gpu_worker.engines.live_vad import use_fast_fbank
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
    largest: int = 0  # most streams in one tick
    sessions: int = 0
    sizes: list[int] = field(default_factory=list)  # recent tick sizes (for tests)
    model_calls: int = 0  # fused (batched) model calls; serial mode: generate calls
    model_rows: int = 0  # stream chunks decoded by them
    largest_call: int = 0  # most streams in one model call
    model_s: float = 0.0  # model-thread seconds spent in ticks

    def add(self, stats: TickStats, seconds: float) -> None:
        self.model_calls += stats.model_calls
        self.model_rows += stats.rows
        self.largest_call = max(self.largest_call, stats.largest)
        self.model_s += seconds


class LiveTicker:
    """Collects chunk steps of all streams and runs them in ticks on the model thread."""

    def __init__(self, run_in_model_thread: Any, fused: Any = None,
                 interval_s: float = 0.0) -> None:
        """`fused`: a `StreamingBatch` for batched decoder calls (None: serial steps).
        `interval_s`: a tick starts at least this long after the one before it, so that the
        chunks of streams arriving meanwhile share it (a tick's cost is mostly per tick, not
        per stream); a step that finds the ticker idle that long runs at once."""
        self._run = run_in_model_thread
        self._fused = fused
        self._interval_s = interval_s
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
        loop = asyncio.get_running_loop()
        last = -self._interval_s
        while True:
            await self._wake.wait()
            wait = last + self._interval_s - loop.time()
            if wait > 0:
                await asyncio.sleep(wait)
            last = loop.time()
            self._wake.clear()
            tick = [q.pop(0) for q in self._queues.values() if q]
            for key in [k for k, q in self._queues.items() if not q]:
                del self._queues[key]
            if not tick:
                continue
            items = [TickItem(s.session, s.audio, s.is_final) for s in tick]
            try:
                outcomes, stats, seconds = await self._run(
                    functools.partial(_run_tick, items, self._fused))
                self.counters.add(stats, seconds)
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
                    step.done.set_result(outcome)
            if any(self._queues.values()):
                self._wake.set()


def _run_tick(items: list[TickItem], fused: Any
              ) -> tuple[list[LiveUpdate | BaseException], TickStats, float]:
    """On the model thread: the tick's steps, decoder calls fused when `fused` is set."""
    import torch

    started = time.perf_counter()
    with torch.inference_mode():
        if fused is not None:
            outcomes, stats = run_tick_fused(fused, items)
        else:
            outcomes, stats = run_tick_serial(items)
    return outcomes, stats, time.perf_counter() - started


@dataclass(frozen=True)
class LiveChunk:
    """One chunk of a live stream (float32 16 kHz)."""

    audio: np.ndarray
    is_final: bool = False


SAFE_STEP_MS = 1000  # a chunk without other news is answered once the safe point moved this far


@dataclass
class LiveNews:
    """Which of a live stream's updates its caller needs: one that finished an utterance,
    changed the interim text or its start, ran a model call (the caller's live batch size
    histogram counts those), moved the safe point `SAFE_STEP_MS` past the last one sent (the
    caller keeps the audio after it, for a resume), or answers the final chunk. The rest (most
    chunks of silence, and those between the model's 600 ms chunk steps) carry nothing the
    caller acts on: a worker that answered them all cost the scheduler a message per chunk."""

    interim: tuple[str, int] | None = None
    safe_ms: int | None = None

    def worth_sending(self, u: LiveUpdate, last: bool) -> bool:
        interim = (u.interim_text, u.interim_start_ms)
        send = (last or bool(u.finals) or u.tick_streams > 0 or interim != self.interim
                or self.safe_ms is None or u.safe_ms - self.safe_ms >= SAFE_STEP_MS)
        if send:
            self.interim, self.safe_ms = interim, u.safe_ms
        return send


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
            if cfg.vad_fbank == "torch":  # our log-mel: ~20 % less per 200 ms step
                use_fast_fbank(self._vad_model, "cpu")
        self.ticker = LiveTicker(self.batcher.run_in_model_thread,
                                 _fused_steps(runner, cfg.live_fbank == "torch"),
                                 cfg.live_tick_ms / 1000)

    def start(self) -> None:
        super().start()
        self.ticker.start()

    def stats(self) -> EngineStats:
        stats = super().stats()
        stats.live_model_calls = self.ticker.counters.model_calls
        stats.live_model_rows = self.ticker.counters.model_rows
        return stats

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


def _fused_steps(runner: Any, device_frontend: bool) -> Any:
    """A `StreamingBatch` for the runner's model (`device_frontend`: full chunks' features by
    our batched fbank, `--live-fbank torch`), or None (serial steps) with the reason
    logged."""
    from gpu_worker.fast.streaming import StreamingBatch, unsupported_reason

    automodel = getattr(runner, "automodel", None)
    reason = "no FunASR model" if automodel is None else unsupported_reason(automodel)
    if reason is not None:
        log.info("live chunk steps run one stream per model call: %s", reason)
        return None
    return StreamingBatch(automodel, device_frontend=device_frontend)
