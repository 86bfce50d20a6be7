"""Thin gRPC servicers: protos in, plain dataclasses to the logic, protos out."""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator

import grpc

from protos.asr.v1 import asr_pb2 as pb
from protos.asr.v1 import asr_pb2_grpc as pb_grpc
from scheduler.audio import Encoding
from scheduler.errors import InvalidAudio, InvalidRequest
from scheduler.interceptor import REQUEST_ID
from scheduler.metrics import Metrics
from scheduler.recognition import RecognitionOutcome, RecognitionRequest, Recognizer
from scheduler.status import StatusReporter

log = logging.getLogger(__name__)


def to_request(config: pb.RecognitionConfig, audio: bytes,
               context: grpc.aio.ServicerContext) -> RecognitionRequest:
    """Validate a RecognitionConfig and pair it with its audio."""
    if config.encoding == pb.LINEAR16:
        if config.sample_rate_hertz <= 0:
            raise InvalidAudio("sample_rate_hertz is required for LINEAR16 raw PCM")
        encoding = Encoding.LINEAR16
    elif config.encoding in (pb.AUDIO_ENCODING_UNSPECIFIED, pb.CONTAINER):
        encoding = Encoding.CONTAINER
    else:
        raise InvalidAudio(f"unsupported audio encoding {config.encoding}")
    if not audio:
        raise InvalidAudio("audio is empty")
    remaining = context.time_remaining()
    return RecognitionRequest(
        audio=audio, encoding=encoding, sample_rate=config.sample_rate_hertz,
        channels=config.audio_channel_count or 1, language=config.language or "auto",
        enable_itn=config.enable_itn, hotwords=tuple(h for h in config.hotwords if h.strip()),
        segment_timestamps=True, request_id=config.request_id or REQUEST_ID.get(),
        timeout_s=remaining)


def to_result(outcome: RecognitionOutcome) -> pb.RecognitionResult:
    return pb.RecognitionResult(
        text=outcome.text, language=outcome.language, device=outcome.device,
        segments=[pb.Segment(start_ms=s.start_ms, end_ms=s.end_ms, text=s.text)
                  for s in outcome.segments],
        fallback_reason=outcome.fallback_reason, audio_duration_s=outcome.audio_duration_s,
        queue_time_s=outcome.queue_time_s, inference_time_s=outcome.inference_time_s,
        hotwords_ignored=outcome.hotwords_ignored, model=outcome.model,
        request_id=outcome.request_id)


class RecognizerServicer(pb_grpc.RecognizerServicer):
    def __init__(self, recognizer: Recognizer, max_unary_bytes: int,
                 max_stream_bytes: int) -> None:
        self.recognizer = recognizer
        self.metrics: Metrics = recognizer.metrics
        self.max_unary_bytes = max_unary_bytes
        self.max_stream_bytes = max_stream_bytes

    async def Recognize(self, request: pb.RecognizeRequest,
                        context: grpc.aio.ServicerContext) -> pb.RecognizeResponse:
        if len(request.audio_content) > self.max_unary_bytes:
            raise InvalidAudio(f"audio of {len(request.audio_content)} bytes is over the "
                               f"{self.max_unary_bytes}-byte limit of Recognize; send it with "
                               "StreamingRecognize instead")
        req = to_request(request.config, request.audio_content, context)
        return pb.RecognizeResponse(result=to_result(await self.recognizer.recognize(req)))

    async def StreamingRecognize(
        self, request_iterator: AsyncIterator[pb.StreamingRecognizeRequest],
        context: grpc.aio.ServicerContext,
    ) -> AsyncIterator[pb.StreamingRecognizeResponse]:
        self.metrics.live_streams.inc()
        try:
            async for response in self._stream(request_iterator, context):
                yield response
        finally:
            self.metrics.live_streams.dec()

    async def _stream(
        self, request_iterator: AsyncIterator[pb.StreamingRecognizeRequest],
        context: grpc.aio.ServicerContext,
    ) -> AsyncIterator[pb.StreamingRecognizeResponse]:
        config: pb.StreamingRecognitionConfig | None = None
        chunks: list[bytes] = []
        size = 0
        async for message in request_iterator:
            kind = message.WhichOneof("streaming_request")
            if config is None:
                if kind != "streaming_config":
                    raise InvalidRequest("the first message of a stream must carry "
                                         "streaming_config (got "
                                         f"{kind or 'an empty message'})")
                config = message.streaming_config
                continue
            if kind == "streaming_config":
                raise InvalidRequest("streaming_config may only be sent once, first")
            size += len(message.audio_content)
            if size > self.max_stream_bytes:
                raise InvalidAudio(f"stream is over the {self.max_stream_bytes}-byte limit")
            chunks.append(message.audio_content)
        if config is None:
            raise InvalidRequest("the stream ended without a streaming_config message")
        req = to_request(config.config, b"".join(chunks), context)
        chunks.clear()
        audio_ended = time.monotonic()
        outcome = await self.recognizer.recognize(req)
        self.metrics.stream_final_latency.observe(time.monotonic() - audio_ended)
        yield pb.StreamingRecognizeResponse(result=to_result(outcome), is_final=True,
                                            is_last=True,
                                            audio_processed_s=outcome.audio_duration_s)


class AdminServicer(pb_grpc.AdminServicer):
    def __init__(self, reporter: StatusReporter) -> None:
        self.reporter = reporter

    async def GetStatus(self, request: pb.GetStatusRequest,
                        context: grpc.aio.ServicerContext) -> pb.GetStatusResponse:
        return self.reporter.status()

    async def ClearCache(self, request: pb.ClearCacheRequest,
                         context: grpc.aio.ServicerContext) -> pb.ClearCacheResponse:
        return await self.reporter.clear_cache(request.device)

