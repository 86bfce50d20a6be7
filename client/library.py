"""`AsrClient`: the synchronous Python client of the service.

    from client import AsrClient
    with AsrClient("localhost:50051") as asr:
        t = asr.transcribe("talk.wav", language="en")
        print(t.text, t.device, t.timings.rtfx)

Audio of any size is streamed in chunks over `StreamingRecognize`. Calls that fail with
UNAVAILABLE, RESOURCE_EXHAUSTED or a server-side CANCELLED are retried with backoff and jitter
(`RetryPolicy`), waiting at least what the server's `retry-after-s` trailer asks; the whole
file is sent again, which is why the retries are ours and not gRPC's (its transparent retries
neither re-send a large upload nor read that trailer). Every failure raises `AsrError` with
the gRPC code.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, TypeVar

import grpc

from client.errors import AsrError, from_rpc_error
from client.options import (
    CHUNK_BYTES,
    LOAD_BALANCING,
    ChannelOptions,
    RetryPolicy,
    TranscribeOptions,
    service_config,
)
from client.sources import AudioSource, Chunked, chunked
from client.types import CacheClearReport, ServiceStatus, StreamResult, Transcript
from protos.asr.v1 import asr_pb2 as pb
from protos.asr.v1 import asr_pb2_grpc as pb_grpc

__all__ = ["CHUNK_BYTES", "LOAD_BALANCING", "AsrClient", "BatchItem", "TranscribeOptions",
           "default_server", "service_config"]

log = logging.getLogger(__name__)
T = TypeVar("T")
_END: Any = object()


def default_server() -> str:
    """The address in `ASR_SERVER`, else localhost:50051."""
    return os.environ.get("ASR_SERVER", "localhost:50051")


@dataclass(frozen=True)
class BatchItem:
    """The outcome of one source of `transcribe_many`: a transcript or an error."""

    source: Any
    transcript: Transcript | None
    error: BaseException | None

    @property
    def ok(self) -> bool:
        """True when the source was transcribed."""
        return self.error is None


def config_requests(config: pb.RecognitionConfig, chunks: Iterable[bytes],
                    interim_results: bool = False, live: bool = False,
                    final_model: str = "", end_silence_ms: int = 0
                    ) -> Iterator[pb.StreamingRecognizeRequest]:
    """The request messages of a stream: the config first, then the audio chunks."""
    yield pb.StreamingRecognizeRequest(streaming_config=pb.StreamingRecognitionConfig(
        config=config, interim_results=interim_results, live=live, final_model=final_model,
        end_silence_ms=end_silence_ms))
    for chunk in chunks:
        yield pb.StreamingRecognizeRequest(audio_content=chunk)


def stream_result(resp: pb.StreamingRecognizeResponse, file: str = "",
                  wall_time_s: float = 0.0) -> StreamResult:
    """A `StreamResult` from one stream response."""
    return StreamResult(Transcript.from_proto(resp.result, file=file, wall_time_s=wall_time_s),
                        resp.is_final, resp.is_last, resp.audio_processed_s,
                        stability=resp.stability, utterance_start_ms=resp.utterance_start_ms,
                        utterance_end_ms=resp.utterance_end_ms, resumed=resp.resumed)


class AsrClient:
    """Synchronous client of one service endpoint (thread-safe; one channel, many calls).

    Args:
        server: "HOST:PORT" of the service (default: env ASR_SERVER or localhost:50051).
        options: default `TranscribeOptions` for every transcription.
        retry: the `RetryPolicy` (default: 5 attempts on UNAVAILABLE, RESOURCE_EXHAUSTED or
            CANCELLED).
        channel_options: a full `ChannelOptions`; the keyword arguments below override it.
        **channel_kw: fields of `ChannelOptions` (token, tls, tls_ca, tls_cert, tls_key,
            tls_server_name, keepalive_s, max_message_bytes, load_balancing).
    """

    def __init__(self, server: str | None = None, *, options: TranscribeOptions | None = None,
                 retry: RetryPolicy | None = None,
                 channel_options: ChannelOptions | None = None, **channel_kw: Any) -> None:
        base = channel_options or ChannelOptions(server=server or default_server())
        self.channel_options = replace(base, server=server or base.server, **channel_kw)
        self.options = options or TranscribeOptions()
        self.retry = retry or RetryPolicy()
        self.channel: grpc.Channel = self.channel_options.open_channel()
        self.metadata = list(self.channel_options.metadata())
        self.recognizer = pb_grpc.RecognizerStub(self.channel)
        self.admin = pb_grpc.AdminStub(self.channel)

    def close(self) -> None:
        """Close the channel (calls in progress are cancelled)."""
        self.channel.close()

    def __enter__(self) -> AsrClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- retries --------------------------------------------------------------------------

    def _retrying(self, call: Callable[[float | None], T], timeout: float | None,
                  replayable: bool = True, what: str = "call") -> T:
        """Run `call(attempt_timeout)` with the retry policy inside an overall deadline."""
        deadline = None if timeout is None else time.monotonic() + timeout
        attempt = 0
        while True:
            attempt += 1
            remaining = None if deadline is None else deadline - time.monotonic()
            try:
                if remaining is not None and remaining <= 0:
                    raise AsrError(grpc.StatusCode.DEADLINE_EXCEEDED,
                                   f"{what}: deadline of {timeout:g} s passed", attempts=attempt)
                return call(remaining)
            except grpc.RpcError as exc:
                err = from_rpc_error(exc)
                err.attempts = attempt
                delay = self.retry.next_delay(err.code(), attempt, err.retry_after_s, deadline,
                                              time.monotonic(), replayable)
                if delay is None:
                    raise err from None
                log.info("%s: %s; retry %d/%d in %.2f s", what, err, attempt,
                         self.retry.max_attempts - 1, delay)
                time.sleep(delay)

    # -- transcription --------------------------------------------------------------------

    def _options(self, options: TranscribeOptions | None, overrides: dict[str, Any]
                 ) -> TranscribeOptions:
        return replace(options or self.options, **overrides)

    def _final_result(self, src: Chunked, config: pb.RecognitionConfig,
                      timeout: float | None) -> tuple[pb.RecognitionResult, float]:
        """One attempt: stream the source, return the last (whole) result and the wall time."""
        started = time.monotonic()
        last = None
        for resp in self.recognizer.StreamingRecognize(
                config_requests(config, src.chunks()), timeout=timeout, metadata=self.metadata):
            if resp.is_last:
                last = resp.result
        if last is None:
            raise AsrError(grpc.StatusCode.UNKNOWN,
                           f"{src.name or 'audio'}: the stream ended without a final result")
        return last, time.monotonic() - started

    def _transcribe_chunked(self, src: Chunked, opts: TranscribeOptions,
                            timeout: float | None) -> Transcript:
        config = opts.to_config(src.name)

        def attempt(remaining: float | None) -> Transcript:
            result, wall = self._final_result(src, config, remaining)
            return Transcript.from_proto(result, file=src.name, wall_time_s=wall)

        return self._retrying(attempt, timeout, src.replayable, src.name or "transcribe")

    def transcribe(self, source: AudioSource, options: TranscribeOptions | None = None, *,
                   timeout: float | None = None, **overrides: Any) -> Transcript:
        """Transcribe a path, bytes or binary file object; returns its `Transcript`.

        Keyword arguments override fields of `options` (see `TranscribeOptions`: language,
        enable_itn, hotwords, model, raw_pcm, sample_rate, channels, vad_mode, ...).
        `timeout` is the deadline in seconds over all attempts. Raises `AsrError`.
        """
        return self._transcribe_chunked(chunked(source), self._options(options, overrides),
                                        timeout)

    def transcribe_many(self, sources: Iterable[AudioSource],
                        options: TranscribeOptions | None = None, *, concurrency: int = 4,
                        timeout: float | None = None, **overrides: Any) -> Iterator[BatchItem]:
        """Transcribe many sources, at most `concurrency` at once; yields a `BatchItem` per
        source as each finishes (completion order). Failures are yielded, not raised."""
        opts = self._options(options, overrides)

        def one(source: AudioSource) -> Transcript:
            return self._transcribe_chunked(chunked(source), opts, timeout)

        pending: dict[Future[Transcript], AudioSource] = {}
        it = iter(sources)
        width = max(1, concurrency)
        pool = ThreadPoolExecutor(max_workers=width, thread_name_prefix="asr-client")
        try:
            exhausted = False
            while pending or not exhausted:
                while not exhausted and len(pending) < width:
                    source = next(it, _END)
                    if source is _END:
                        exhausted = True
                    else:
                        pending[pool.submit(one, source)] = source
                if not pending:
                    break
                done, _ = wait(pending, return_when=FIRST_COMPLETED)
                for fut in done:
                    source = pending.pop(fut)
                    exc = fut.exception()
                    yield BatchItem(source, None if exc else fut.result(), exc)
        finally:
            # Stopped early (an error, Ctrl-C, the caller broke off): do not wait for the
            # calls in flight; closing the client cancels them.
            pool.shutdown(wait=False, cancel_futures=True)

    def stream(self, chunks: Iterable[bytes], options: TranscribeOptions | None = None, *,
               interim_results: bool = True, timeout: float | None = None,
               live: bool = False, final_model: str = "", end_silence_ms: int = 0,
               **overrides: Any) -> Iterator[StreamResult]:
        """Stream audio chunks as they come (e.g. from a microphone) and yield results.

        Each `StreamResult` is interim (`is_final` false, may change) or final; the last one
        (`is_last`) holds the whole transcript. Not retried: the chunks are consumed once.
        `live`: live mode (a streaming model recognises as the audio arrives; interim results
        while someone speaks, a final one per utterance); `final_model`: two-pass, the served
        offline model that writes each utterance's final text; `end_silence_ms`: live mode,
        the silence after speech that ends an utterance (200-6000 ms; 0: the VAD's own
        schedule, up to 2 s).
        """
        config = self._options(options, overrides).to_config()
        started = time.monotonic()
        try:
            for resp in self.recognizer.StreamingRecognize(
                    config_requests(config, chunks, interim_results, live, final_model,
                                    end_silence_ms),
                    timeout=timeout,
                    metadata=self.metadata):
                yield stream_result(resp, wall_time_s=time.monotonic() - started)
        except grpc.RpcError as exc:
            raise from_rpc_error(exc) from None

    # -- admin ----------------------------------------------------------------------------

    def status(self, timeout: float = 10.0) -> ServiceStatus:
        """Devices, workers, models, queue and fallbacks (`Admin.GetStatus`)."""
        return ServiceStatus.from_proto(self._retrying(
            lambda t: self.admin.GetStatus(pb.GetStatusRequest(), timeout=t,
                                           metadata=self.metadata), timeout, what="status"))

    def clear_cache(self, device: str = "", timeout: float = 60.0) -> CacheClearReport:
        """Free cached allocator memory on `device` ("cuda:0") or every device ("")."""
        return CacheClearReport.from_proto(self._retrying(
            lambda t: self.admin.ClearCache(pb.ClearCacheRequest(device=device), timeout=t,
                                            metadata=self.metadata), timeout,
            what="clear-cache"))

    # -- protobuf-level helpers (used by tests and benchmarks) ----------------------------

    def recognize_bytes(self, audio: bytes, config: pb.RecognitionConfig | None = None,
                        timeout: float | None = None) -> pb.RecognitionResult:
        """Unary `Recognize` of audio held in memory; the raw `RecognitionResult`."""
        req = pb.RecognizeRequest(config=config or pb.RecognitionConfig(), audio_content=audio)
        return self._retrying(lambda t: self.recognizer.Recognize(
            req, timeout=t, metadata=self.metadata).result, timeout, what="recognize")

    def stream_file(self, path: Path, opts: TranscribeOptions | None = None,
                    timeout: float | None = None) -> Iterator[pb.StreamingRecognizeResponse]:
        """Every raw response of a file's stream (per-segment finals, then the last)."""
        src = chunked(path)
        config = (opts or self.options).to_config(src.name)
        try:
            yield from self.recognizer.StreamingRecognize(
                config_requests(config, src.chunks()), timeout=timeout, metadata=self.metadata)
        except grpc.RpcError as exc:
            raise from_rpc_error(exc) from None

    def transcribe_file(self, path: Path, opts: TranscribeOptions | None = None,
                        timeout: float | None = None) -> pb.RecognitionResult:
        """The raw whole-file `RecognitionResult` of one file (retried like `transcribe`)."""
        src = chunked(path)
        config = (opts or self.options).to_config(src.name)
        return self._retrying(lambda t: self._final_result(src, config, t)[0], timeout,
                              what=str(path))
