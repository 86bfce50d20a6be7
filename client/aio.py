"""`AsyncAsrClient`: the asyncio client (grpc.aio), same API as `AsrClient` with `await`.

    async with AsyncAsrClient("localhost:50051") as asr:
        t = await asr.transcribe("talk.wav")
        async for item in asr.transcribe_many(paths, concurrency=32):
            print(item.source, item.transcript.text if item.ok else item.error)
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterable, AsyncIterator, Awaitable, Callable, Iterable
from dataclasses import replace
from typing import Any, TypeVar

import grpc
import grpc.aio

from client.errors import AsrError, from_rpc_error
from client.library import BatchItem, default_server, stream_result
from client.options import ChannelOptions, RetryPolicy, TranscribeOptions
from client.sources import AudioSource, Chunked, chunked
from client.types import CacheClearReport, ServiceStatus, StreamResult, Transcript
from protos.asr.v1 import asr_pb2 as pb
from protos.asr.v1 import asr_pb2_grpc as pb_grpc

__all__ = ["AsyncAsrClient"]

log = logging.getLogger(__name__)
T = TypeVar("T")


async def _requests(config: pb.RecognitionConfig, chunks: Iterable[bytes] | AsyncIterable[bytes],
                    interim_results: bool = False, live: bool = False, final_model: str = "",
                    end_silence_ms: int = 0) -> AsyncIterator[pb.StreamingRecognizeRequest]:
    yield pb.StreamingRecognizeRequest(streaming_config=pb.StreamingRecognitionConfig(
        config=config, interim_results=interim_results, live=live, final_model=final_model,
        end_silence_ms=end_silence_ms))
    if isinstance(chunks, AsyncIterable):
        async for chunk in chunks:
            yield pb.StreamingRecognizeRequest(audio_content=chunk)
    else:  # file reads off the event loop: a slow disk must not stall other calls
        it = iter(chunks)
        while (piece := await asyncio.to_thread(next, it, None)) is not None:
            yield pb.StreamingRecognizeRequest(audio_content=piece)


class AsyncAsrClient:
    """Asyncio client of one service endpoint; arguments as for `AsrClient`.

    Create and use it inside a running event loop (`async with AsyncAsrClient(...)`).
    """

    def __init__(self, server: str | None = None, *, options: TranscribeOptions | None = None,
                 retry: RetryPolicy | None = None,
                 channel_options: ChannelOptions | None = None, **channel_kw: Any) -> None:
        base = channel_options or ChannelOptions(server=server or default_server())
        self.channel_options = replace(base, server=server or base.server, **channel_kw)
        self.options = options or TranscribeOptions()
        self.retry = retry or RetryPolicy()
        self.channel: grpc.aio.Channel = self.channel_options.open_channel(aio=True)
        self.metadata = tuple(self.channel_options.metadata())
        self.recognizer = pb_grpc.RecognizerStub(self.channel)
        self.admin = pb_grpc.AdminStub(self.channel)

    async def close(self) -> None:
        """Close the channel (calls in progress are cancelled)."""
        await self.channel.close()

    async def __aenter__(self) -> AsyncAsrClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def _retrying(self, call: Callable[[float | None], Awaitable[T]],
                        timeout: float | None, replayable: bool = True,
                        what: str = "call") -> T:
        deadline = None if timeout is None else time.monotonic() + timeout
        attempt = 0
        while True:
            attempt += 1
            remaining = None if deadline is None else deadline - time.monotonic()
            try:
                if remaining is not None and remaining <= 0:
                    raise AsrError(grpc.StatusCode.DEADLINE_EXCEEDED,
                                   f"{what}: deadline of {timeout:g} s passed", attempts=attempt)
                return await call(remaining)
            except grpc.RpcError as exc:
                err = from_rpc_error(exc)
                err.attempts = attempt
                delay = self.retry.next_delay(err.code(), attempt, err.retry_after_s, deadline,
                                              time.monotonic(), replayable)
                if delay is None:
                    raise err from None
                log.info("%s: %s; retry %d/%d in %.2f s", what, err, attempt,
                         self.retry.max_attempts - 1, delay)
                await asyncio.sleep(delay)

    async def _transcribe_chunked(self, src: Chunked, opts: TranscribeOptions,
                                  timeout: float | None) -> Transcript:
        config = opts.to_config(src.name)

        async def attempt(remaining: float | None) -> Transcript:
            started = time.monotonic()
            last = None
            call = self.recognizer.StreamingRecognize(
                _requests(config, src.chunks()), timeout=remaining, metadata=self.metadata)
            async for resp in call:
                if resp.is_last:
                    last = resp.result
            if last is None:
                raise AsrError(grpc.StatusCode.UNKNOWN,
                               "the stream ended without a final result")
            return Transcript.from_proto(last, file=src.name,
                                         wall_time_s=time.monotonic() - started)

        return await self._retrying(attempt, timeout, src.replayable, src.name or "transcribe")

    async def transcribe(self, source: AudioSource, options: TranscribeOptions | None = None,
                         *, timeout: float | None = None, **overrides: Any) -> Transcript:
        """Transcribe a path, bytes or binary file object (see `AsrClient.transcribe`)."""
        return await self._transcribe_chunked(
            chunked(source), replace(options or self.options, **overrides), timeout)

    async def transcribe_many(self, sources: Iterable[AudioSource],
                              options: TranscribeOptions | None = None, *,
                              concurrency: int = 4, timeout: float | None = None,
                              **overrides: Any) -> AsyncIterator[BatchItem]:
        """Transcribe many sources, at most `concurrency` at once; yields a `BatchItem` per
        source in completion order. Failures are yielded, not raised."""
        opts = replace(options or self.options, **overrides)
        it = iter(sources)
        results: asyncio.Queue[BatchItem | None] = asyncio.Queue()

        async def worker() -> None:
            for source in it:  # the workers share one iterator: each source runs once
                try:
                    t = await self._transcribe_chunked(chunked(source), opts, timeout)
                    await results.put(BatchItem(source, t, None))
                except Exception as exc:  # yielded to the caller, like the sync client
                    await results.put(BatchItem(source, None, exc))
            await results.put(None)

        workers = [asyncio.create_task(worker()) for _ in range(max(1, concurrency))]
        try:
            running = len(workers)
            while running:
                item = await results.get()
                if item is None:
                    running -= 1
                else:
                    yield item
        finally:
            for task in workers:
                task.cancel()
            await asyncio.gather(*workers, return_exceptions=True)

    async def stream(self, chunks: Iterable[bytes] | AsyncIterable[bytes],
                     options: TranscribeOptions | None = None, *, interim_results: bool = True,
                     timeout: float | None = None, live: bool = False, final_model: str = "",
                     end_silence_ms: int = 0, **overrides: Any
                     ) -> AsyncIterator[StreamResult]:
        """Stream audio chunks and yield interim/final results (see `AsrClient.stream`, live
        mode and its `final_model` and `end_silence_ms` included)."""
        config = replace(options or self.options, **overrides).to_config()
        started = time.monotonic()
        try:
            async for resp in self.recognizer.StreamingRecognize(
                    _requests(config, chunks, interim_results, live, final_model,
                              end_silence_ms), timeout=timeout, metadata=self.metadata):
                yield stream_result(resp, wall_time_s=time.monotonic() - started)
        except grpc.RpcError as exc:
            raise from_rpc_error(exc) from None

    async def status(self, timeout: float = 10.0) -> ServiceStatus:
        """Devices, workers, models, queue and fallbacks (`Admin.GetStatus`)."""
        resp = await self._retrying(
            lambda t: self.admin.GetStatus(pb.GetStatusRequest(), timeout=t,
                                           metadata=self.metadata), timeout, what="status")
        return ServiceStatus.from_proto(resp)

    async def clear_cache(self, device: str = "", timeout: float = 60.0) -> CacheClearReport:
        """Free cached allocator memory on `device` or every device ("")."""
        resp = await self._retrying(
            lambda t: self.admin.ClearCache(pb.ClearCacheRequest(device=device), timeout=t,
                                            metadata=self.metadata), timeout,
            what="clear-cache")
        return CacheClearReport.from_proto(resp)
