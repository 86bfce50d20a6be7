"""The public gRPC servicers (Recognizer, Admin): protos in, plain dataclasses to the logic
(`scheduler.pipeline`, `scheduler.status`), protos out. Nothing else lives here."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import time
from collections.abc import AsyncGenerator, AsyncIterator
from typing import Any

import grpc

from protos.asr.v1 import asr_pb2 as pb
from protos.asr.v1 import asr_pb2_grpc as pb_grpc
from protos.common.wire import END_SILENCE_RANGE_MS, MAX_SEGMENT_MS_RANGE, end_silence_ok
from scheduler.audio import DecodedAudio, Encoding
from scheduler.errors import InvalidAudio, InvalidRequest
from scheduler.interceptor import REQUEST_ID, check_request_id
from scheduler.limits import RELAYED_PEER_KEY, IdleWatch, StreamLimits, client_key
from scheduler.live import LiveEvent, LiveRecognizer, LiveRequest
from scheduler.metrics import Metrics
from scheduler.pipeline import Pipeline, RecognitionRequest
from scheduler.request_views import RecognizeView
from scheduler.results import RecognitionOutcome, Segment
from scheduler.status import StatusReporter
from scheduler.workers_client import LiveSettings

log = logging.getLogger(__name__)


VAD_MODES = {pb.VAD_AUTO: "auto", pb.VAD_ALWAYS: "always", pb.VAD_NEVER: "never"}



def to_request(config: pb.RecognitionConfig, audio: bytes | memoryview,
               timeout_s: float | None) -> RecognitionRequest:
    """Validate a RecognitionConfig and pair it with its audio (b"" for a stream);
    `timeout_s`: what is left of the call's deadline (None: none)."""
    if config.encoding == pb.LINEAR16:
        if config.sample_rate_hertz <= 0:
            raise InvalidAudio("sample_rate_hertz is required for LINEAR16 raw PCM")
        encoding = Encoding.LINEAR16
    elif config.encoding in (pb.AUDIO_ENCODING_UNSPECIFIED, pb.CONTAINER):
        encoding = Encoding.CONTAINER
    else:
        raise InvalidAudio(f"unsupported audio encoding {config.encoding}")
    if config.vad_mode not in VAD_MODES:
        raise InvalidRequest(f"unsupported vad_mode {config.vad_mode}")
    lo, hi = MAX_SEGMENT_MS_RANGE
    if config.max_segment_ms and not lo <= config.max_segment_ms <= hi:
        raise InvalidRequest(f"max_segment_ms {config.max_segment_ms} is out of range "
                             f"({lo}-{hi}, or 0 for the default)")
    if config.max_new_tokens < 0:
        raise InvalidRequest(f"max_new_tokens {config.max_new_tokens} is negative (0: the "
                             "server's cap)")
    return RecognitionRequest(
        audio=audio, encoding=encoding, sample_rate=config.sample_rate_hertz,
        channels=config.audio_channel_count or 1, language=config.language or "auto",
        enable_itn=config.enable_itn, hotwords=tuple(h for h in config.hotwords if h.strip()),
        segment_timestamps=True, request_id=check_request_id(config.request_id) if config.request_id
        else REQUEST_ID.get(),
        timeout_s=timeout_s, vad_mode=VAD_MODES[config.vad_mode],
        max_segment_ms=config.max_segment_ms, model=config.model,
        max_new_tokens=config.max_new_tokens)


def segment_result(seg: Segment, model: str, request_id: str) -> pb.RecognitionResult:
    """A per-segment final result of a stream (absolute times)."""
    return pb.RecognitionResult(
        text=seg.text, language=seg.language, device=seg.device,
        segments=[pb.Segment(start_ms=seg.start_ms, end_ms=seg.end_ms, text=seg.text,
                             device=seg.device)],
        fallback_reason=seg.fallback_reason,
        audio_duration_s=(seg.end_ms - seg.start_ms) / 1000, queue_time_s=seg.queue_time_s,
        inference_time_s=seg.inference_time_s, hotwords_ignored=seg.hotwords_ignored,
        model=model, request_id=request_id)


def to_result(outcome: RecognitionOutcome) -> pb.RecognitionResult:
    return pb.RecognitionResult(
        text=outcome.text, language=outcome.language, device=outcome.device,
        segments=[pb.Segment(start_ms=s.start_ms, end_ms=s.end_ms, text=s.text, device=s.device)
                  for s in outcome.segments],
        fallback_reason=outcome.fallback_reason, audio_duration_s=outcome.audio_duration_s,
        queue_time_s=outcome.queue_time_s, inference_time_s=outcome.inference_time_s,
        hotwords_ignored=outcome.hotwords_ignored, model=outcome.model,
        request_id=outcome.request_id)


class StreamAudio:
    """The audio bytes of a stream's later messages, each read within the idle timeout;
    `ended_at`: when the input ended (0 before). A plain iterator, not an async generator:
    this is on every message's path."""

    __slots__ = ("_idle", "_messages", "ended_at")

    def __init__(self, messages: AsyncIterator[Any], idle: IdleWatch) -> None:
        self._messages, self._idle = messages, idle
        self.ended_at = 0.0

    def __aiter__(self) -> StreamAudio:
        return self

    async def __anext__(self) -> bytes:
        idle = self._idle  # IdleWatch.next, inlined: this frame is resumed on every read
        task = idle.waiting()
        try:
            message = await self._messages.__anext__()
        except StopAsyncIteration:
            self.ended_at = self.ended_at or time.monotonic()
            raise
        except asyncio.CancelledError:
            error = idle.timed_out(task)
            if error is None:
                raise
            raise error from None
        finally:
            idle.done()
        if message.WhichOneof("streaming_request") == "streaming_config":
            raise InvalidRequest("streaming_config may only be sent once, first")
        return message.audio_content


class RecognizerServicer(pb_grpc.RecognizerServicer):
    def __init__(self, pipeline: Pipeline, max_unary_bytes: int,
                 limits: StreamLimits | None = None,
                 live: LiveRecognizer | None = None, relayed: bool = False) -> None:
        self.pipeline = pipeline
        self.metrics: Metrics = pipeline.metrics
        self.max_unary_bytes = max_unary_bytes
        self.limits = limits or StreamLimits(1000, 100, 60.0)
        self.live = live
        self.relayed = relayed  # behind front-end processes: they name the client's address

    async def Recognize(self, request: pb.RecognizeRequest | RecognizeView,
                        context: grpc.aio.ServicerContext) -> pb.RecognizeResponse:
        return await self.recognize(request, context.time_remaining())

    async def recognize(self, request: pb.RecognizeRequest | RecognizeView,
                        timeout_s: float | None, decoded: DecodedAudio | None = None,
                        decode_error: str = "") -> pb.RecognizeResponse:
        """Recognize, for a direct call or one relayed by a front-end process (which may have
        decoded the audio already, or found it undecodable)."""
        audio = request.audio_content  # read once: a protobuf message copies it on each read
        if len(audio) > self.max_unary_bytes:
            raise InvalidAudio(f"audio of {len(audio)} bytes is over the "
                               f"{self.max_unary_bytes}-byte limit of Recognize; send it with "
                               "StreamingRecognize instead")
        req = to_request(request.config, audio, timeout_s)
        if decoded is not None or decode_error:
            req = dataclasses.replace(req, decoded=decoded, decode_error=decode_error)
        return pb.RecognizeResponse(result=to_result(await self.pipeline.recognize(req)))

    async def StreamingRecognize(
        self, request_iterator: AsyncIterator[pb.StreamingRecognizeRequest],
        context: grpc.aio.ServicerContext,
    ) -> AsyncIterator[pb.StreamingRecognizeResponse]:
        meta = dict(context.invocation_metadata() or ())
        peer = str(meta.get(RELAYED_PEER_KEY, "")) if self.relayed else ""
        client = client_key(peer or context.peer() or "", str(meta.get("authorization", "")))
        messages = request_iterator.__aiter__()
        with self.limits.admit(client):
            self.metrics.live_streams.inc()
            idle = self.limits.idle_watch()
            try:
                try:
                    first = await idle.next(messages)
                except StopAsyncIteration:
                    raise InvalidRequest("the stream ended without a streaming_config "
                                         "message") from None
                kind = first.WhichOneof("streaming_request")
                if kind != "streaming_config":
                    raise InvalidRequest("the first message of a stream must carry "
                                         f"streaming_config (got {kind or 'an empty message'})")
                sc = first.streaming_config
                if sc.live:
                    responses = self.live_responses(sc, messages, idle,
                                                    context.time_remaining())
                    async with contextlib.aclosing(responses):
                        async for response in responses:
                            yield response
                    return
                # An upload: each segment's final result as it finishes, then the whole file's.
                # The loop is here, not in a generator of its own: an async generator layer on
                # a stream's path is resumed on every message (bench/instructions.py: one
                # such layer less with its coroutine was 2.9 % of the scheduler's instructions
                # per stream).
                req = to_request(sc.config, b"", context.time_remaining())
                audio = StreamAudio(messages, idle)
                processed_ms = 0
                results = self.pipeline.recognize_stream(req, audio)
                async with contextlib.aclosing(results):
                    async for item in results:
                        response, processed_ms = self._upload_response(
                            req, item, processed_ms, audio.ended_at)
                        yield response
            finally:
                idle.close()
                self.metrics.live_streams.dec()

    async def relayed_upload(self, request: pb.RecognizeRequest | RecognizeView,
                             timeout_s: float | None, decoded: DecodedAudio | None = None,
                             decode_error: str = ""
                             ) -> AsyncGenerator[pb.StreamingRecognizeResponse, None]:
        """A StreamingRecognize upload a front-end process read whole (its config and joined
        audio as a RecognizeRequest; the audio maybe decoded there): the stream's responses."""
        received = time.monotonic()
        req = to_request(request.config, request.audio_content, timeout_s)
        if decoded is not None or decode_error:
            req = dataclasses.replace(req, decoded=decoded, decode_error=decode_error)
        processed_ms = 0
        results = self.pipeline.recognize_upload(req)
        async with contextlib.aclosing(results):
            async for item in results:
                response, processed_ms = self._upload_response(req, item, processed_ms,
                                                               received)
                yield response

    def _upload_response(self, req: RecognitionRequest, item: Segment | RecognitionOutcome,
                         processed_ms: int, ended_at: float
                         ) -> tuple[pb.StreamingRecognizeResponse, int]:
        """An upload's result as a response (a segment's as it finishes, or the whole
        file's), and the audio processed so far in ms; `ended_at`: when its input ended
        (0: not yet), for the final-latency metric."""
        if isinstance(item, Segment):
            processed_ms = max(processed_ms, item.end_ms)
            return pb.StreamingRecognizeResponse(
                result=segment_result(item, self.pipeline.catalog.get(req.model).name,
                                      req.request_id),
                is_final=True, audio_processed_s=processed_ms / 1000), processed_ms
        now = time.monotonic()
        self.metrics.stream_final_latency.observe(now - (ended_at or now))
        return pb.StreamingRecognizeResponse(result=to_result(item), is_final=True, is_last=True,
                                             audio_processed_s=item.audio_duration_s
                                             ), processed_ms

    async def live_responses(self, sc: pb.StreamingRecognitionConfig,
                             messages: AsyncIterator[Any], idle: IdleWatch,
                             timeout_s: float | None
                             ) -> AsyncGenerator[pb.StreamingRecognizeResponse, None]:
        """A live stream after its config message: `messages` are the client's next ones
        (`StreamingRecognizeRequest`s, or anything with their `WhichOneof` and
        `audio_content`: a front end's relayed inputs)."""
        if self.live is None:
            raise InvalidRequest("live mode is not available on this service")
        req = to_request(sc.config, b"", timeout_s)
        live_req = to_live_request(sc, req)
        async for ev in self.live.run(live_req, StreamAudio(messages, idle)):
            yield live_response(ev, req.request_id)


def to_live_request(sc: pb.StreamingRecognitionConfig, req: RecognitionRequest) -> LiveRequest:
    """A live-mode request from the stream's config (already checked by `to_request`)."""
    if sc.chunk_size and (len(sc.chunk_size) != 3 or min(sc.chunk_size) < 0
                          or sc.chunk_size[1] < 1):
        raise InvalidRequest("chunk_size must be 3 values [left, chunk >= 1, right] (60 ms "
                             "frames), e.g. [0, 10, 5]")
    look_back = (sc.encoder_chunk_look_back, sc.decoder_chunk_look_back)
    if min(look_back) < 0:
        raise InvalidRequest("chunk look-back values must not be negative")
    if not end_silence_ok(sc.end_silence_ms):
        low, high = END_SILENCE_RANGE_MS
        raise InvalidRequest(f"end_silence_ms must be 0 (the VAD's own schedule) or {low}-{high} "
                             f"ms, not {sc.end_silence_ms}")
    settings = LiveSettings(tuple(sc.chunk_size), *look_back) if sc.chunk_size else (
        LiveSettings((0, 10, 5), look_back[0] or 4, look_back[1] or 1))
    settings = dataclasses.replace(settings, end_silence_ms=sc.end_silence_ms)
    return LiveRequest(
        request_id=req.request_id, model=req.model, final_model=sc.final_model,
        settings=settings, encoding=req.encoding, sample_rate=req.sample_rate or 16000,
        channels=req.channels, language=req.language, enable_itn=req.enable_itn,
        hotwords=req.hotwords)


def live_response(ev: LiveEvent, request_id: str) -> pb.StreamingRecognizeResponse:
    end = ev.end_ms if ev.is_final else ev.processed_ms
    result = pb.RecognitionResult(
        text=ev.text, device=ev.device, model=ev.model, request_id=request_id,
        segments=[] if ev.is_last else [pb.Segment(start_ms=ev.start_ms, end_ms=end,
                                                   text=ev.text, device=ev.device)],
        audio_duration_s=(end - ev.start_ms) / 1000)
    return pb.StreamingRecognizeResponse(
        result=result, is_final=ev.is_final, is_last=ev.is_last,
        audio_processed_s=ev.processed_ms / 1000, stability=0.0 if ev.is_final else ev.stability,
        utterance_start_ms=ev.start_ms, utterance_end_ms=ev.end_ms if ev.is_final else 0,
        resumed=ev.resumed)


class AdminServicer(pb_grpc.AdminServicer):
    def __init__(self, reporter: StatusReporter) -> None:
        self.reporter = reporter

    async def GetStatus(self, request: pb.GetStatusRequest,
                        context: grpc.aio.ServicerContext) -> pb.GetStatusResponse:
        return self.reporter.status()

    async def ClearCache(self, request: pb.ClearCacheRequest,
                         context: grpc.aio.ServicerContext) -> pb.ClearCacheResponse:
        return await self.reporter.clear_cache(request.device)

