"""One request straight through: admit -> model -> decode -> (VAD, decided once) -> units on
workers -> assembled result. Plain Python over dataclasses: the gRPC servicers translate protos
to `RecognitionRequest` and `RecognitionOutcome` and call `recognize` / `recognize_stream`.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import time
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable
from typing import cast

import numpy as np

from protos.common.wire import MIN_AUDIO_S, SAMPLE_RATE
from scheduler.audio import (
    WHOLE_DECODE_LIMIT_S,
    DecodedAudio,
    Encoding,
    LongerThanWholeLimit,
    canonical_wav,
    decode_audio,
)
from scheduler.catalog import ModelCatalog, ServedModel
from scheduler.dispatch import Dispatcher
from scheduler.errors import InvalidAudio
from scheduler.ingest import decoded_stream, open_stream
from scheduler.limits import AudioBudget, ByteBudget
from scheduler.longform import Cut, Segmenter
from scheduler.metrics import Metrics
from scheduler.results import RecognitionOutcome, Segment, assemble
from scheduler.vad import VadPool
from scheduler.vad_split import ParallelSegmenter
from scheduler.workers import WorkerHandle
from scheduler.workers_client import UnitRequest, UnitResult, transcribe

log = logging.getLogger(__name__)

BLOCK_SAMPLES = SAMPLE_RATE  # 1 s blocks when long audio already in memory goes through VAD
MAX_IN_FLIGHT = 32  # segments of one request in flight at once (then reading input waits)

OnSegment = Callable[[Segment], Awaitable[None]]


@dataclasses.dataclass(frozen=True)
class RecognitionRequest:
    """One request, whatever RPC it came through."""

    audio: bytes | memoryview  # a view into the received message (scheduler.request_views)
    encoding: Encoding = Encoding.CONTAINER
    sample_rate: int = 0
    channels: int = 1
    language: str = "auto"
    enable_itn: bool = False
    hotwords: tuple[str, ...] = ()
    segment_timestamps: bool = True
    request_id: str = ""
    timeout_s: float | None = None
    vad_mode: str = "auto"  # auto | always | never
    max_segment_ms: int = 0  # 0: the service default
    model: str = ""  # "" for the default model
    max_new_tokens: int = 0  # LLM decoders: cap on generated tokens (0: the server's)
    # Decoded by a front-end process (`audio` is then b""), or why it could not be.
    decoded: DecodedAudio | None = None
    decode_error: str = ""


@dataclasses.dataclass(frozen=True)
class StreamSettings:
    """How streamed input is read."""

    buffer_bytes: int = 8 * 1024 * 1024
    max_bytes: int = 2 * 1024**3
    spool_dir: str | None = None
    buffers: ByteBudget | None = None  # memory all stream buffers may hold together


async def _ignore(_: Segment) -> None:
    return None


class Pipeline:
    """Turns requests into outcomes using the dispatcher's workers."""

    def __init__(self, dispatcher: Dispatcher, catalog: ModelCatalog,
                 metrics: Metrics | None = None, vad: VadPool | None = None,
                 default_max_segment_ms: int = 30000,
                 stream: StreamSettings | None = None,
                 budget: AudioBudget | None = None, vad_split_s: int = 0) -> None:
        self.dispatcher = dispatcher
        self.catalog = catalog
        self.metrics = metrics or Metrics()
        self.vad = vad or VadPool([])
        self.default_max_segment_ms = default_max_segment_ms
        self.stream = stream or StreamSettings()
        self.budget = budget or AudioBudget(4 * 1024**3)
        self.vad_split_s = vad_split_s  # 0: one VAD session per file

    # -- decisions, each made in one place --------------------------------------------------

    def model_for(self, req: RecognitionRequest) -> ServedModel:
        """The model the request names, with its options checked against its capabilities."""
        model = self.catalog.get(req.model)
        self.catalog.check(model, req.language)
        return model

    def wants_vad(self, req: RecognitionRequest, audio_s: float | None) -> bool:
        """Segment with VAD: always/never as asked; `auto` once audio exceeds the max segment
        (`audio_s` None: length unknown, as in a long stream)."""
        if not self.vad.enabled or req.vad_mode == "never":
            return False
        if req.vad_mode == "always":
            return True
        return audio_s is None or audio_s * 1000 > self.max_segment_ms(req)

    def max_segment_ms(self, req: RecognitionRequest) -> int:
        return req.max_segment_ms or self.default_max_segment_ms

    # -- entry points -------------------------------------------------------------------------

    async def recognize(self, req: RecognitionRequest) -> RecognitionOutcome:
        """Whole audio in one message."""
        model = self.model_for(req)
        with self.dispatcher.admit():
            audio = await self._prepare_bytes(req, req.audio)
            if isinstance(audio, np.ndarray):
                return await self._recognize_samples(req, model, audio)
            return await self._recognize_blocks(req, model, audio, _ignore)

    async def recognize_stream(self, req: RecognitionRequest, chunks: AsyncIterator[bytes]
                               ) -> AsyncGenerator[Segment | RecognitionOutcome, None]:
        """Audio as a stream of byte chunks: each VAD segment's result as it finishes (long
        streams), then the outcome, last. Audio that needs no VAD is recognised in the
        caller's task (no task or queue per stream); close the iterator when done with it
        (`contextlib.aclosing`)."""
        model = self.model_for(req)
        with self.dispatcher.admit():
            s = self.stream
            async with open_stream(chunks, req.encoding, req.sample_rate, req.channels,
                                   buffer_bytes=s.buffer_bytes, max_bytes=s.max_bytes,
                                   spool_dir=s.spool_dir, buffers=s.buffers) as source:
                if source.whole is not None:
                    audio = await self._prepare_bytes(req, source.whole)
                    if isinstance(audio, np.ndarray):
                        yield await self._recognize_samples(req, model, audio)
                        return
                    blocks = audio
                else:
                    assert source.blocks is not None
                    blocks = source.blocks
                    if not self.wants_vad(req, None):
                        yield await self._recognize_samples(req, model,
                                                            await self._gather(blocks))
                        return
                async with contextlib.aclosing(
                        self._segments_as_they_finish(req, model, blocks)) as segments:
                    async for item in segments:
                        yield item

    async def recognize_upload(self, req: RecognitionRequest
                               ) -> AsyncGenerator[Segment | RecognitionOutcome, None]:
        """A stream's audio that another process read whole (`req.audio`, or `req.decoded`
        by a front end): answered as `recognize_stream` answers a stream that ended within
        its buffer. Close the iterator when done with it."""
        model = self.model_for(req)
        with self.dispatcher.admit():
            audio = await self._prepare_bytes(req, req.audio)
            if isinstance(audio, np.ndarray):
                yield await self._recognize_samples(req, model, audio)
                return
            async with contextlib.aclosing(
                    self._segments_as_they_finish(req, model, audio)) as segments:
                async for item in segments:
                    yield item

    async def _segments_as_they_finish(self, req: RecognitionRequest, model: ServedModel,
                                       blocks: AsyncIterator[np.ndarray]
                                       ) -> AsyncGenerator[Segment | RecognitionOutcome, None]:
        """`_recognize_blocks` in a task of its own, its segments handed out as they finish."""
        out: asyncio.Queue[Segment | None] = asyncio.Queue()

        async def on_segment(seg: Segment) -> None:
            out.put_nowait(seg)

        task = asyncio.get_running_loop().create_task(
            self._recognize_blocks(req, model, blocks, on_segment))
        # The task's end follows its last segment in the queue (None marks it).
        task.add_done_callback(lambda _: out.put_nowait(None))
        try:
            while (seg := await out.get()) is not None:
                yield seg
            yield task.result()
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)

    # -- the paths ----------------------------------------------------------------------------

    async def _prepare_bytes(self, req: RecognitionRequest, data: bytes | memoryview
                             ) -> np.ndarray | AsyncIterator[np.ndarray]:
        """Whole audio in memory as 16 kHz mono samples for one unit, or as blocks for VAD.
        Decoded whole only up to a limit when VAD may cut it: a small compressed file can
        hold hours (of silence): that is decoded as a stream, so memory follows what VAD
        keeps, not the decoded length."""
        limit = WHOLE_DECODE_LIMIT_S if self.wants_vad(req, None) else None
        try:
            audio = await self._decode(req, data, limit)
        except LongerThanWholeLimit:
            return decoded_stream(data, req.encoding, req.sample_rate, req.channels,
                                  self.stream.spool_dir)
        if not self.wants_vad(req, audio.duration_s):
            return audio.samples
        samples = audio.as_float32()

        async def blocks() -> AsyncIterator[np.ndarray]:
            for i in range(0, len(samples), BLOCK_SAMPLES):
                yield samples[i:i + BLOCK_SAMPLES]
        return blocks()

    async def _gather(self, blocks: AsyncIterator[np.ndarray]) -> np.ndarray:
        """A whole stream's decoded audio as one array (no VAD to cut it), its growth
        counted in the decoded-audio budget."""
        parts: list[np.ndarray] = []
        taken = 0
        try:
            async for block in blocks:
                await self.budget.take(block.nbytes)
                taken += block.nbytes
                parts.append(block)
            if not parts:
                raise InvalidAudio("the audio decodes to zero samples")
            return np.concatenate(parts)
        finally:
            self.budget.give(taken)

    async def _decode(self, req: RecognitionRequest, data: bytes | memoryview,
                      whole_limit_s: float | None = None) -> DecodedAudio:
        if req.decode_error:  # a front end tried (`--frontends`)
            raise InvalidAudio(req.decode_error)
        # A plain 16 kHz mono PCM WAV needs no decoding: read it here, without a thread hop.
        audio = req.decoded or (canonical_wav(data) if req.encoding is Encoding.CONTAINER
                                else None)
        if audio is not None and whole_limit_s is not None \
                and audio.duration_s > whole_limit_s:
            raise LongerThanWholeLimit(f"over {whole_limit_s:g} s")
        if audio is None:
            audio = await asyncio.to_thread(decode_audio, data, req.encoding, req.sample_rate,
                                            req.channels, whole_limit_s)
        if audio.duration_s < MIN_AUDIO_S:
            raise InvalidAudio(f"the audio is {audio.duration_s * 1000:.1f} ms long; at least "
                               f"{MIN_AUDIO_S * 1000:.0f} ms is needed")
        return audio

    async def _recognize_samples(self, req: RecognitionRequest, model: ServedModel,
                                 samples: np.ndarray) -> RecognitionOutcome:
        """16 kHz mono audio as one unit."""
        accepted = time.monotonic()
        if len(samples) / SAMPLE_RATE < MIN_AUDIO_S:
            raise InvalidAudio("the audio decodes to (almost) zero samples")
        cut = Cut(0, 0, round(len(samples) * 1000 / SAMPLE_RATE), samples)
        unit = await self._run_unit(req, model, cut, accepted)
        return self._finish(req, model, [unit], len(samples), accepted)

    async def _recognize_blocks(self, req: RecognitionRequest, model: ServedModel,
                                blocks: AsyncIterator[np.ndarray],
                                on_segment: OnSegment) -> RecognitionOutcome:
        """Long audio as it arrives: VAD cuts, each run as soon as it is cut (at most
        MAX_IN_FLIGHT at once), reported as each finishes, assembled in time order."""
        accepted = time.monotonic()
        segmenter = self._segmenter(req)
        loop = asyncio.get_running_loop()
        slots = asyncio.Semaphore(MAX_IN_FLIGHT)
        tasks: list[asyncio.Task[Segment]] = []
        failed: asyncio.Future[None] = loop.create_future()

        async def run(cut: Cut) -> Segment:
            try:
                seg = await self._run_unit(req, model, cut, accepted)
                await on_segment(seg)
                return seg
            except Exception as exc:
                if not failed.done():
                    failed.set_exception(exc)
                raise
            finally:
                slots.release()

        async def feed() -> None:
            async for cut in segmenter.cuts(blocks):
                await slots.acquire()
                tasks.append(loop.create_task(run(cut)))

        feeder = loop.create_task(feed())
        try:
            await asyncio.wait({feeder, failed}, return_when=asyncio.FIRST_COMPLETED)
            if failed.done():
                failed.result()  # a failed segment fails the request
            feeder.result()
            units = await asyncio.gather(*tasks)
        finally:
            feeder.cancel()
            for t in tasks:
                t.cancel()
            await asyncio.gather(feeder, *tasks, return_exceptions=True)
            if failed.done() and not failed.cancelled():
                failed.exception()  # retrieved: no "never retrieved" warning
            segmenter.close()
        if segmenter.total_samples == 0:
            raise InvalidAudio("the audio decodes to zero samples")
        return self._finish(req, model, list(units), segmenter.total_samples, accepted)

    def _segmenter(self, req: RecognitionRequest) -> Segmenter | ParallelSegmenter:
        """One VAD session per file, or pieces on several VAD workers joined to equal it."""
        if self.vad_split_s and len(self.vad.workers) >= 2:
            return ParallelSegmenter(self.vad, self.max_segment_ms(req), self.vad_split_s,
                                     self.budget)
        return Segmenter(self.vad, self.max_segment_ms(req), self.budget)

    async def _run_unit(self, req: RecognitionRequest, model: ServedModel, cut: Cut,
                        accepted: float) -> Segment:
        """Recognise one piece of 16 kHz mono audio on some worker of `model`."""
        unit = UnitRequest(
            request_id=req.request_id if not cut.index else f"{req.request_id}/{cut.index}",
            samples=cut.samples, language=req.language, enable_itn=req.enable_itn,
            hotwords=req.hotwords, max_new_tokens=req.max_new_tokens)
        deadline = None if req.timeout_s is None else accepted + req.timeout_s
        audio_s = len(cut.samples) / SAMPLE_RATE
        started = time.monotonic()

        async def call(worker: WorkerHandle) -> tuple[UnitResult, float]:
            sent = time.monotonic()
            target = worker.unit_target if worker.ready else None
            r = await transcribe(target, worker.spec.worker_id, unit, deadline)
            self.metrics.observe_batch(worker.spec.worker_id, r.batch_id, r.device, model.name,
                                       r.batch_size, r.inference_time_s, r.decode_steps)
            self.metrics.observe_tokens(r.device, model.name, r.tokens_generated)
            return r, sent - started

        async with self.budget.hold(cut.samples.nbytes):
            outcome, placement = await self.dispatcher.run(audio_s, call, model.name)
        r, waited = cast(tuple[UnitResult, float], outcome)
        queue_s = waited + r.batch_wait_s
        self.metrics.observe_result(r.device, model.name, audio_s, queue_s,
                                    time.monotonic() - started, placement.fallback_reason)
        return Segment(start_ms=cut.start_ms, end_ms=cut.end_ms, text=r.text, device=r.device,
                       fallback_reason=placement.fallback_reason, language=r.language,
                       queue_time_s=queue_s, inference_time_s=r.inference_time_s,
                       hotwords_ignored=r.hotwords_ignored, index=cut.index)

    def _finish(self, req: RecognitionRequest, model: ServedModel, units: list[Segment],
                num_samples: int, accepted: float) -> RecognitionOutcome:
        outcome = assemble(units, num_samples, model.name, req.request_id,
                           req.segment_timestamps)
        log.info("request %s: %.2f s audio, %d segment(s) on %s%s, queue %.3f s, inference "
                 "%.3f s, total %.3f s", req.request_id, outcome.audio_duration_s, len(units),
                 outcome.device, f" (fallback: {outcome.fallback_reason})"
                 if outcome.fallback_reason else "", outcome.queue_time_s,
                 outcome.inference_time_s, time.monotonic() - accepted,
                 extra={"request_id": req.request_id, "device": outcome.device,
                        "model": model.name, "audio_s": round(outcome.audio_duration_s, 3),
                        "segments": len(units), "queue_s": round(outcome.queue_time_s, 4),
                        "inference_s": round(outcome.inference_time_s, 4),
                        "fallback_reason": outcome.fallback_reason})
        return outcome
