"""The recognition pipeline as plain Python: decode, dispatch to a worker, assemble the result.

The gRPC servicers translate protos to `RecognitionRequest` and `RecognitionOutcome` and call
`Recognizer.recognize`; everything here is testable without a gRPC server.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from dataclasses import dataclass, field

import grpc

from protos.asr.worker.v1 import worker_pb2 as wpb
from scheduler.audio import DecodedAudio, Encoding, decode_audio, pcm_bytes
from scheduler.dispatch import Dispatcher, GpuOutOfMemory
from scheduler.errors import DeadlineExceeded, InvalidAudio, RequestError, WorkerLost
from scheduler.metrics import Metrics
from scheduler.workers import WorkerHandle

log = logging.getLogger(__name__)

MIN_AUDIO_S = 0.01  # shorter audio cannot fill one 25 ms analysis frame
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


@dataclass(frozen=True)
class Segment:
    start_ms: int
    end_ms: int
    text: str


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
                 model_label: str = "") -> None:
        self.dispatcher = dispatcher
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

    async def recognize(self, req: RecognitionRequest) -> RecognitionOutcome:
        request_id = req.request_id or uuid.uuid4().hex[:16]
        audio = await self.decode(req)
        pcm, fmt = pcm_bytes(audio)
        wreq = wpb.TranscribeRequest(
            request_id=request_id, pcm=pcm,
            sample_format=wpb.S16LE if fmt == "s16le" else wpb.F32LE,
            language=req.language, enable_itn=req.enable_itn, hotwords=list(req.hotwords))
        accepted = time.monotonic()
        deadline = None if req.timeout_s is None else accepted + req.timeout_s

        async def call(worker: WorkerHandle) -> tuple[wpb.TranscribeResponse, float]:
            sent = time.monotonic()
            resp = await _call_worker(worker, wreq, deadline)
            self.metrics.observe_batch(worker.spec.worker_id, resp.batch_id, resp.device,
                                       self.model_label, resp.batch_size, resp.inference_time_s)
            return resp, sent - accepted

        (resp, waited), placement = await self.dispatcher.run(audio.duration_s, call)
        duration_ms = round(audio.duration_s * 1000)
        outcome = RecognitionOutcome(
            text=resp.text, language=resp.language, device=resp.device,
            segments=[Segment(0, duration_ms, resp.text)] if req.segment_timestamps else [],
            fallback_reason=placement.fallback_reason, audio_duration_s=audio.duration_s,
            queue_time_s=waited + resp.batch_wait_s, inference_time_s=resp.inference_time_s,
            hotwords_ignored=resp.hotwords_ignored, model=self.model, request_id=request_id)
        self.metrics.observe_result(resp.device, self.model_label, audio.duration_s,
                                    outcome.queue_time_s, time.monotonic() - accepted,
                                    placement.fallback_reason)
        log.info("request %s: %.2f s audio on %s%s, queue %.3f s, inference %.3f s (batch %d)",
                 request_id, audio.duration_s, resp.device,
                 f" (fallback: {placement.fallback_reason})" if placement.fallback_reason else "",
                 outcome.queue_time_s, resp.inference_time_s, resp.batch_size,
                 extra={"request_id": request_id, "device": resp.device,
                        "audio_s": round(audio.duration_s, 3),
                        "queue_s": round(outcome.queue_time_s, 4),
                        "inference_s": round(resp.inference_time_s, 4),
                        "batch_size": resp.batch_size,
                        "fallback_reason": placement.fallback_reason})
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
