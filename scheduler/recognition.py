"""The recognition pipeline as plain Python: decode, dispatch to a worker, assemble the result.

The gRPC servicers translate protos to `RecognitionRequest` and `RecognitionOutcome` and call
`Recognizer.recognize`; everything here is testable without a gRPC server.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field

import grpc
import numpy as np

from protos.asr.worker.v1 import worker_pb2 as wpb
from scheduler.audio import DecodedAudio, Encoding, decode_audio
from scheduler.dispatch import Dispatcher, GpuOutOfMemory
from scheduler.errors import DeadlineExceeded, InvalidAudio, RequestError, WorkerLost
from scheduler.longform import SegmentResult, run_longform
from scheduler.metrics import Metrics
from scheduler.vad import VadPool
from scheduler.workers import WorkerHandle

log = logging.getLogger(__name__)

MIN_AUDIO_S = 0.01  # shorter audio cannot fill one 25 ms analysis frame
BLOCK_SAMPLES = 16000  # 1 s blocks when long audio already in memory goes through VAD
LANGUAGES = ("auto", "zh", "en", "yue", "ja", "ko", "nospeech")


class InferenceFailed(RequestError):
    """The model raised on this request alone (a bug or a model limit): INTERNAL."""

    code = grpc.StatusCode.INTERNAL


@dataclass(frozen=True)
class RecognitionRequest:
    """One request, whatever RPC it came through."""

    audio: bytes
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


@dataclass(frozen=True)
class Segment:
    start_ms: int
    end_ms: int
    text: str
    device: str = ""


@dataclass
class RecognitionOutcome:
    text: str
    segments: list[Segment] = field(default_factory=list)
    language: str = ""
    device: str = ""
    fallback_reason: str = ""
    audio_duration_s: float = 0.0
    queue_time_s: float = 0.0
    inference_time_s: float = 0.0
    hotwords_ignored: bool = False
    model: str = ""
    request_id: str = ""


_LOST_CODES = (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.CANCELLED, grpc.StatusCode.UNKNOWN)


class Recognizer:
    """Turns requests into outcomes using the dispatcher's workers."""

    def __init__(self, dispatcher: Dispatcher, model: str, metrics: Metrics | None = None,
                 model_label: str = "", vad: VadPool | None = None,
                 default_max_segment_ms: int = 30000) -> None:
        self.dispatcher = dispatcher
        self.vad = vad or VadPool([])
        self.default_max_segment_ms = default_max_segment_ms
        self.model = model
        self.metrics = metrics or Metrics()
        self.model_label = model_label or model

    async def decode(self, req: RecognitionRequest) -> DecodedAudio:
        if req.language not in LANGUAGES:
            raise InvalidAudio(f"language {req.language!r} is not supported; use one of "
                               f"{', '.join(LANGUAGES)}")
        audio = await asyncio.to_thread(decode_audio, req.audio, req.encoding, req.sample_rate,
                                        req.channels)
        if audio.duration_s < MIN_AUDIO_S:
            raise InvalidAudio(f"the audio is {audio.duration_s * 1000:.1f} ms long; at least "
                               f"{MIN_AUDIO_S * 1000:.0f} ms is needed")
        return audio

    def wants_vad(self, req: RecognitionRequest, audio_s: float | None) -> bool:
        """Segment with VAD: always/never as asked; `auto` once audio exceeds the max segment
        (`audio_s` None: length unknown yet, as in a stream)."""
        if not self.vad.enabled or req.vad_mode == "never":
            return False
        if req.vad_mode == "always":
            return True
        return audio_s is None or audio_s * 1000 > self.max_segment_ms(req)

    def max_segment_ms(self, req: RecognitionRequest) -> int:
        return req.max_segment_ms or self.default_max_segment_ms

    async def recognize(self, req: RecognitionRequest) -> RecognitionOutcome:
        """Whole audio in memory (unary, or a short stream)."""
        audio = await self.decode(req)
        if self.wants_vad(req, audio.duration_s):
            samples = audio.as_float32()

            async def blocks() -> AsyncIterator[np.ndarray]:
                for i in range(0, len(samples), BLOCK_SAMPLES):
                    yield samples[i:i + BLOCK_SAMPLES]
            return await self.recognize_blocks(req, blocks())
        return await self.recognize_samples(req, audio.samples)

    async def recognize_samples(self, req: RecognitionRequest,
                                samples: np.ndarray) -> RecognitionOutcome:
        """Decoded 16 kHz mono audio as one piece."""
        accepted = time.monotonic()
        unit = await self.run_unit(req, samples, 0, round(len(samples) / 16), 0, accepted)
        return self.assemble(req, [unit], len(samples), accepted)

    async def recognize_blocks(self, req: RecognitionRequest, blocks: AsyncIterator[np.ndarray],
                               on_segment: Callable[[SegmentResult], Awaitable[None]]
                               | None = None) -> RecognitionOutcome:
        """Long audio as it arrives: VAD segments, run in parallel, assembled in order."""
        accepted = time.monotonic()

        async def run(samples: np.ndarray, start_ms: int, end_ms: int,
                      index: int) -> SegmentResult:
            return await self.run_unit(req, samples, start_ms, end_ms, index, accepted)

        async def ignore(_: SegmentResult) -> None:
            return None

        results, total = await run_longform(blocks, self.vad, run, self.max_segment_ms(req),
                                            on_segment or ignore)
        if total == 0:
            raise InvalidAudio("the audio decodes to zero samples")
        return self.assemble(req, results, total, accepted)

    async def run_unit(self, req: RecognitionRequest, samples: np.ndarray, start_ms: int,
                       end_ms: int, index: int, accepted: float) -> SegmentResult:
        """Recognise one piece of 16 kHz mono audio on some worker."""
        request_id = req.request_id
        fmt = wpb.S16LE if samples.dtype == np.int16 else wpb.F32LE
        wreq = wpb.TranscribeRequest(
            request_id=request_id if not index else f"{request_id}/{index}",
            pcm=samples.astype("<i2" if fmt == wpb.S16LE else "<f4", copy=False).tobytes(),
            sample_format=fmt, language=req.language, enable_itn=req.enable_itn,
            hotwords=list(req.hotwords))
        deadline = None if req.timeout_s is None else accepted + req.timeout_s
        audio_s = len(samples) / 16000
        started = time.monotonic()

        async def call(worker: WorkerHandle) -> tuple[wpb.TranscribeResponse, float]:
            sent = time.monotonic()
            resp = await _call_worker(worker, wreq, deadline)
            self.metrics.observe_batch(worker.spec.worker_id, resp.batch_id, resp.device,
                                       self.model_label, resp.batch_size, resp.inference_time_s)
            return resp, sent - started

        (resp, waited), placement = await self.dispatcher.run(audio_s, call)
        queue_s = waited + resp.batch_wait_s
        self.metrics.observe_result(resp.device, self.model_label, audio_s, queue_s,
                                    time.monotonic() - started, placement.fallback_reason)
        return SegmentResult(index=index, start_ms=start_ms, end_ms=end_ms, text=resp.text,
                             device=resp.device, fallback_reason=placement.fallback_reason,
                             language=resp.language, queue_time_s=queue_s,
                             inference_time_s=resp.inference_time_s,
                             hotwords_ignored=resp.hotwords_ignored)

    def assemble(self, req: RecognitionRequest, units: list[SegmentResult], samples: int,
                 accepted: float) -> RecognitionOutcome:
        """The whole-audio result from its units in time order (texts joined by a space,
        as FunASR joins VAD segments)."""
        def unique(values: list[str]) -> str:
            return ",".join(dict.fromkeys(v for v in values if v))

        languages = collections.Counter(u.language for u in units if u.language)
        outcome = RecognitionOutcome(
            text=" ".join(u.text for u in units),
            segments=[Segment(u.start_ms, u.end_ms, u.text, u.device) for u in units]
            if req.segment_timestamps else [],
            language=languages.most_common(1)[0][0] if languages else "",
            device=unique([u.device for u in units]),
            fallback_reason=unique([u.fallback_reason for u in units]),
            audio_duration_s=samples / 16000,
            queue_time_s=sum(u.queue_time_s for u in units),
            inference_time_s=sum(u.inference_time_s for u in units),
            hotwords_ignored=any(u.hotwords_ignored for u in units), model=self.model,
            request_id=req.request_id)
        log.info("request %s: %.2f s audio, %d segment(s) on %s%s, queue %.3f s, inference "
                 "%.3f s, total %.3f s", req.request_id, outcome.audio_duration_s, len(units),
                 outcome.device, f" (fallback: {outcome.fallback_reason})"
                 if outcome.fallback_reason else "", outcome.queue_time_s,
                 outcome.inference_time_s, time.monotonic() - accepted,
                 extra={"request_id": req.request_id, "device": outcome.device,
                        "audio_s": round(outcome.audio_duration_s, 3),
                        "segments": len(units), "queue_s": round(outcome.queue_time_s, 4),
                        "inference_s": round(outcome.inference_time_s, 4),
                        "fallback_reason": outcome.fallback_reason})
        return outcome


async def _call_worker(worker: WorkerHandle, wreq: wpb.TranscribeRequest,
                       deadline: float | None) -> wpb.TranscribeResponse:
    """One worker call, with its failures sorted into retry / reroute / per-request error."""
    stub = worker.stub
    if stub is None or not worker.ready:
        raise WorkerLost(f"worker {worker.spec.worker_id} is not connected")
    timeout = None if deadline is None else max(deadline - time.monotonic(), 0.001)
    try:
        return await stub.Transcribe(wreq, timeout=timeout)
    except grpc.aio.AioRpcError as exc:
        code = exc.code()
        if code in _LOST_CODES:
            raise WorkerLost(f"{code.name}: {exc.details()}") from exc
        if code == grpc.StatusCode.RESOURCE_EXHAUSTED:
            raise GpuOutOfMemory(exc.details()) from exc
        if code == grpc.StatusCode.DEADLINE_EXCEEDED:
            raise DeadlineExceeded("the request's deadline passed before its result") from exc
        if code == grpc.StatusCode.INVALID_ARGUMENT:
            raise InvalidAudio(exc.details() or "invalid audio") from exc
        raise InferenceFailed(f"recognition failed: {exc.details()}") from exc
