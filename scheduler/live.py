"""Live mode of StreamingRecognize: audio in as it is captured, interim and final results out
as people speak.

A live stream's state (VAD and decoding caches) lives on one worker serving a streaming model
(`workers_client.LiveCall`). This module places the stream (`Dispatcher.place_live`, at most
`--max-live-streams` per device), pumps the client's audio to the worker, turns the worker's
answers into events in order, and keeps only the audio after the worker's last safe point
(the open utterance, or a short look-back in silence). If the worker is lost, the stream is
placed on another worker and the kept audio is sent again from that safe point: no final
result is lost (an utterance not yet final is recognised again) or repeated (finals end
before the safe point). In two-pass mode each finished utterance is recognised again by an
offline model served beside it, and that text is the final one.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import dataclasses
import logging
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import numpy as np

from protos.common.wire import MIN_AUDIO_S, SAMPLE_RATE, SAMPLES_PER_MS
from scheduler.audio import Encoding
from scheduler.catalog import ModelCatalog, ServedModel
from scheduler.dispatch import Dispatcher
from scheduler.errors import InvalidRequest, Unavailable, WorkerLost
from scheduler.live_audio import live_blocks
from scheduler.live_metrics import LiveMetrics
from scheduler.workers import LostWorkers, Stalls, WorkerHandle
from scheduler.workers_client import LiveCall, LiveSettings, LiveStep, UnitRequest, transcribe

log = logging.getLogger(__name__)

MAX_RESUMES = 8  # worker losses in a row, its safe point not moving between, one stream survives
RESEND_SAMPLES = SAMPLE_RATE  # kept audio goes to a new worker in 1 s pieces
SINGLE_PASS_STABILITY = 1.0  # the streaming model never revises text it has emitted
TWO_PASS_STABILITY = 0.5  # another model writes the final text


@dataclass(frozen=True)
class LiveRequest:
    request_id: str
    model: str = ""
    final_model: str = ""
    settings: LiveSettings = field(default_factory=LiveSettings)
    encoding: Encoding = Encoding.LINEAR16
    sample_rate: int = SAMPLE_RATE
    channels: int = 1
    language: str = "auto"
    enable_itn: bool = False
    hotwords: tuple[str, ...] = ()


@dataclass(frozen=True)
class LiveEvent:
    """One result of a live stream (ms from the stream start)."""

    is_final: bool
    text: str
    start_ms: int
    end_ms: int  # 0 on interim results
    processed_ms: int
    model: str
    device: str = ""
    stability: float = 1.0
    resumed: bool = False
    is_last: bool = False


class _Kept:
    """Audio from the last safe point on, with the time each block arrived."""

    def __init__(self) -> None:
        self.blocks: collections.deque[tuple[int, np.ndarray, float]] = collections.deque()
        self.start = 0  # absolute sample of the first kept sample
        self.end = 0

    def append(self, block: np.ndarray, at: float) -> None:
        self.blocks.append((self.end, block, at))
        self.end += len(block)

    def drop_before(self, sample: int) -> None:
        while self.blocks and self.blocks[0][0] + len(self.blocks[0][1]) <= sample:
            self.blocks.popleft()
        if self.blocks and sample > self.blocks[0][0]:
            pos, blk, at = self.blocks.popleft()
            self.blocks.appendleft((sample, blk[sample - pos:], at))
        self.start = max(self.start, min(sample, self.end))

    def slice(self, a: int, b: int) -> np.ndarray:
        parts = [blk[max(a - pos, 0):max(min(b - pos, len(blk)), 0)]
                 for pos, blk, _ in self.blocks if pos < b and pos + len(blk) > a]
        return np.concatenate(parts) if parts else np.zeros(0, np.float32)

    def arrived(self, sample: int) -> float:
        """When the block holding `sample` arrived (now when it is not kept)."""
        for pos, blk, at in self.blocks:
            if pos <= sample < pos + len(blk):
                return at
        return self.blocks[-1][2] if self.blocks and sample >= self.end else time.monotonic()


@dataclass
class _Stream:
    """One live stream's scheduler-side state."""

    req: LiveRequest
    model: ServedModel
    final_model: ServedModel | None
    kept: _Kept = field(default_factory=_Kept)
    worker: WorkerHandle | None = None
    call: LiveCall | None = None
    input_done: bool = False
    stalls: Stalls = field(default_factory=lambda: Stalls(MAX_RESUMES))
    resumed: bool = False
    last_final_end: int = -1
    interim: str = ""
    interim_start: int = -1
    finals: list[asyncio.Future[LiveEvent]] = field(default_factory=list)
    avoid: LostWorkers = field(default_factory=LostWorkers)


class LiveRecognizer:
    """Runs live streams on the workers of streaming models."""

    def __init__(self, dispatcher: Dispatcher, catalog: ModelCatalog, metrics: LiveMetrics,
                 max_live_streams: int, spool_dir: str | None = None,
                 end_silence_ms: int = 0) -> None:
        self.dispatcher = dispatcher
        self.catalog = catalog
        self.metrics = metrics
        self.max_live_streams = max_live_streams
        self.spool_dir = spool_dir
        self.end_silence_ms = end_silence_ms  # for requests that do not set it (0: the VAD's)

    def models(self, req: LiveRequest) -> tuple[ServedModel, ServedModel | None]:
        """The streaming model and the optional two-pass model, checked."""
        model = self.catalog.get(req.model)
        caps = model.capabilities
        if caps is not None and not caps.streaming:
            streaming = [m.name for m in self.catalog.models
                         if m.capabilities is not None and m.capabilities.streaming]
            raise InvalidRequest(f"live mode needs a streaming model; {model.name!r} "
                                 f"({caps.family}) is not one; streaming models served: "
                                 f"{', '.join(streaming) or 'none'}")
        final = self.catalog.get(req.final_model) if req.final_model else None
        if final is not None:
            self.catalog.check(final, req.language)
        return model, final

    def with_defaults(self, req: LiveRequest) -> LiveRequest:
        """The request with the service's defaults for what it leaves unset."""
        if req.settings.end_silence_ms or not self.end_silence_ms:
            return req
        return dataclasses.replace(req, settings=dataclasses.replace(
            req.settings, end_silence_ms=self.end_silence_ms))

    async def run(self, req: LiveRequest, chunks: AsyncIterator[bytes]
                  ) -> AsyncIterator[LiveEvent]:
        model, final = self.models(req)
        s = _Stream(self.with_defaults(req), model, final)
        out: asyncio.Queue[asyncio.Future[LiveEvent] | None] = asyncio.Queue()
        await self._connect(s, resumed=False)
        self.metrics.sessions.inc()
        loop = asyncio.get_running_loop()
        pump = loop.create_task(self._pump(s, live_blocks(
            chunks, req.encoding, req.sample_rate, req.channels, self.spool_dir)))
        consume = loop.create_task(self._consume(s, out))
        try:
            while True:
                getter = asyncio.ensure_future(out.get())
                waits = {getter, consume} | (set() if pump.done() else {pump})
                await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
                if not getter.done():
                    getter.cancel()
                    if pump.done():
                        pump.result()  # a failed input fails the stream
                    if consume.done() and out.empty():
                        consume.result()
                        return
                    continue
                item = getter.result()
                if item is None:
                    return
                yield await item
        finally:
            self.metrics.sessions.dec()
            for t in (pump, consume):
                t.cancel()
            await asyncio.gather(pump, consume, return_exceptions=True)
            for f in s.finals:
                f.cancel()
            self._disconnect(s)

    # -- placement and resumption -------------------------------------------------------------

    async def _connect(self, s: _Stream, resumed: bool) -> None:
        w = await self.dispatcher.place_live(s.model.name, self.max_live_streams, s.avoid,
                                             resumed)
        s.worker = w
        s.call = LiveCall(w.live_link, w.spec.worker_id, s.req.settings,
                          s.kept.start // SAMPLES_PER_MS, s.req.request_id)
        for a in range(s.kept.start, s.kept.end, RESEND_SAMPLES):  # resend from the safe point
            s.call.send(s.kept.slice(a, min(a + RESEND_SAMPLES, s.kept.end)))
        if s.input_done:
            s.call.send(np.zeros(0, np.float32), is_final=True)
        log.info("live stream %s on %s%s", s.req.request_id, w.spec.worker_id,
                 f" (resumed at {s.kept.start / SAMPLE_RATE:.2f} s)" if resumed else "")

    def _disconnect(self, s: _Stream) -> None:
        if s.call is not None:
            s.call.close()
            s.call = None
        if s.worker is not None:
            self.dispatcher.release_live(s.worker)
            s.worker = None

    async def _resume(self, s: _Stream, exc: WorkerLost) -> None:
        log.warning("live stream %s lost its worker (%s); resuming from %.2f s",
                    s.req.request_id, exc, s.kept.start / SAMPLE_RATE)
        if s.worker is not None:
            s.avoid.add(s.worker)
        self._disconnect(s)
        if s.stalls.lost(s.kept.start):
            raise Unavailable(f"live stream lost its worker {s.stalls.in_a_row} times at "
                              f"{s.kept.start / SAMPLE_RATE:.2f} s without progress; retry "
                              "later")
        self.metrics.resumes.inc()
        s.resumed = True
        await self._connect(s, resumed=True)

    # -- audio in, answers out ----------------------------------------------------------------

    async def _pump(self, s: _Stream, blocks: AsyncIterator[np.ndarray]) -> None:
        async for block in blocks:
            s.kept.append(block, time.monotonic())
            if s.call is not None:
                s.call.send(block)
        s.input_done = True
        if s.call is not None:
            s.call.send(np.zeros(0, np.float32), is_final=True)

    async def _consume(self, s: _Stream,
                       out: asyncio.Queue[asyncio.Future[LiveEvent] | None]) -> None:
        while True:
            assert s.call is not None
            try:
                step = await s.call.receive()
            except WorkerLost as exc:
                await self._resume(s, exc)
                continue
            for fut in self._events(s, step):
                out.put_nowait(fut)
            s.kept.drop_before(step.safe_ms * SAMPLES_PER_MS)
            if step.is_last:
                out.put_nowait(asyncio.ensure_future(self._last(s, step.processed_ms)))
                out.put_nowait(None)
                return

    def _event(self, s: _Stream, **kw: object) -> LiveEvent:
        resumed, s.resumed = s.resumed, False
        device = s.worker.spec.device_name if s.worker is not None else ""
        return LiveEvent(model=s.model.name, device=device, resumed=resumed,
                         stability=TWO_PASS_STABILITY if s.final_model else SINGLE_PASS_STABILITY,
                         **kw)  # type: ignore[arg-type]

    def _events(self, s: _Stream, step: LiveStep) -> list[asyncio.Future[LiveEvent]]:
        now = time.monotonic()
        loop = asyncio.get_running_loop()
        futures: list[asyncio.Future[LiveEvent]] = []
        if step.tick_streams > 0:  # 0: the chunk needed no model call (VAD only)
            self.metrics.batch_size.observe(step.tick_streams)
        for f in step.finals:
            if f.end_ms <= s.last_final_end:  # already reported (cannot happen after a resume)
                continue
            s.last_final_end = f.end_ms
            s.interim, s.interim_start = "", -1
            ended = s.kept.arrived(f.end_ms * SAMPLES_PER_MS - 1)
            closed = s.kept.arrived(step.processed_ms * SAMPLES_PER_MS - 1)
            if s.final_model is not None:
                samples = s.kept.slice(f.start_ms * SAMPLES_PER_MS, f.end_ms * SAMPLES_PER_MS)
                fut: asyncio.Future[LiveEvent] = asyncio.ensure_future(self._second_pass(
                    s, f.start_ms, f.end_ms, f.text, samples, step.processed_ms, (ended, closed)))
            else:
                fut = loop.create_future()
                fut.set_result(self._event(s, is_final=True, text=f.text, start_ms=f.start_ms,
                                           end_ms=f.end_ms, processed_ms=step.processed_ms))
                self.metrics.final_latency.observe(now - ended)
                self.metrics.endpoint_latency.observe(now - closed)
            s.finals.append(fut)
            futures.append(fut)
        if step.interim_text and (step.interim_text != s.interim
                                  or step.interim_start_ms != s.interim_start):
            if step.interim_start_ms != s.interim_start:
                began = s.kept.arrived(step.interim_start_ms * SAMPLES_PER_MS)
                self.metrics.first_interim.observe(now - began)
            s.interim, s.interim_start = step.interim_text, step.interim_start_ms
            fut = loop.create_future()
            fut.set_result(self._event(s, is_final=False, text=step.interim_text,
                                       start_ms=step.interim_start_ms, end_ms=0,
                                       processed_ms=step.processed_ms))
            futures.append(fut)
        return futures

    async def _second_pass(self, s: _Stream, start_ms: int, end_ms: int, streaming_text: str,
                           samples: np.ndarray, processed_ms: int,
                           arrivals: tuple[float, float]) -> LiveEvent:
        """The final text of one utterance from the offline model."""
        assert s.final_model is not None
        text, device = streaming_text, ""
        if len(samples) / SAMPLE_RATE >= MIN_AUDIO_S:
            unit = UnitRequest(request_id=f"{s.req.request_id}/{start_ms}", samples=samples,
                               language=s.req.language, enable_itn=s.req.enable_itn,
                               hotwords=s.req.hotwords)

            async def call(w: WorkerHandle) -> object:
                return await transcribe(w.unit_target if w.ready else None, w.spec.worker_id, unit,
                                        None)

            r, _ = await self.dispatcher.run(len(samples) / SAMPLE_RATE, call,
                                             s.final_model.name)
            text, device = r.text, r.device  # type: ignore[attr-defined]
        now, (ended, closed) = time.monotonic(), arrivals  # of its end, of the closing chunk
        self.metrics.final_latency.observe(now - ended)
        self.metrics.endpoint_latency.observe(now - closed)
        event = self._event(s, is_final=True, text=text, start_ms=start_ms, end_ms=end_ms,
                            processed_ms=processed_ms)
        return LiveEvent(**{**event.__dict__, "model": s.final_model.name,
                            "device": device or event.device})

    async def _last(self, s: _Stream, processed_ms: int) -> LiveEvent:
        """The closing response: every final result joined."""
        texts = []
        for f in s.finals:
            with contextlib.suppress(asyncio.CancelledError):
                texts.append((await f).text)
        return LiveEvent(is_final=True, text=" ".join(t for t in texts if t), start_ms=0,
                         end_ms=processed_ms, processed_ms=processed_ms, is_last=True,
                         model=s.final_model.name if s.final_model else s.model.name)
