"""The worker's internal gRPC servicer: thin translation between protos and its engine.

Every RPC goes to the engine's method of the same shape; an engine that lacks it raises
`Unsupported` (UNIMPLEMENTED). Error mapping: a request that ran out of GPU memory alone gets
RESOURCE_EXHAUSTED "gpu_oom" (the scheduler reroutes it, possibly to the CPU); an unhealthy
worker answers UNAVAILABLE "worker_unhealthy: <why>" (the scheduler requeues the request on
another worker); any other failure of one request is INTERNAL for that request only.
`Work` carries the same per-unit codes inside its answers, one per tagged unit.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import os
from collections.abc import AsyncIterator

import grpc
import numpy as np

from gpu_worker.device import is_oom
from gpu_worker.engines.base import Engine, SessionChunk, Unsupported, Utterance, WorkerUnhealthy
from gpu_worker.engines.live import LiveChunk, LiveNews
from gpu_worker.engines.live_session import LiveOptions
from protos.asr.worker.v1 import worker_pb2 as pb
from protos.asr.worker.v1 import worker_pb2_grpc as pb_grpc
from protos.common.answer_pump import AnswerPump
from protos.common.pcm_arena import PcmArena, PcmBlock
from protos.common.wire import END_SILENCE_RANGE_MS, decode_pcm, end_silence_ok

log = logging.getLogger(__name__)

# Detail string the scheduler reads to reroute a request that ran out of GPU memory alone.
GPU_OOM_DETAIL = "gpu_oom"
# Prefix of the UNAVAILABLE detail of a worker that can no longer serve.
UNHEALTHY_DETAIL = "worker_unhealthy"


class Failed(Exception):
    """A unit's or a live stream's failure, with the status code its answer (or call)
    ends with."""

    def __init__(self, code: grpc.StatusCode, details: str) -> None:
        super().__init__(details)
        self.code, self.details = code, details


class WorkerServicer(pb_grpc.WorkerServicer):
    """Routes the Worker RPCs to one engine."""

    def __init__(self, engine: Engine, device_name: str, arena: PcmArena | None = None) -> None:
        self.engine = engine
        self.device_name = device_name
        self.arena = arena  # the scheduler's shared PCM arena (None: audio comes inline)
        self.served = 0
        self.active = 0  # units and VAD/live sessions in progress

    async def GetInfo(self, request: pb.InfoRequest,
                      context: grpc.aio.ServicerContext) -> pb.InfoResponse:
        stats = self.engine.stats()
        caps = self.engine.capabilities
        return pb.InfoResponse(
            device=self.device_name, model=stats.model, pid=os.getpid(),
            allocated_bytes=stats.allocated_bytes, reserved_bytes=stats.reserved_bytes,
            supports_hotwords=caps.hotwords, served=self.served, batches=stats.batches,
            oom_events=stats.oom_events, cache_clears=stats.cache_clears,
            capabilities=caps.to_proto(),
            consecutive_failed_batches=stats.consecutive_failed_batches,
            live_model_calls=stats.live_model_calls, live_model_rows=stats.live_model_rows)

    async def Transcribe(self, request: pb.TranscribeRequest,
                         context: grpc.aio.ServicerContext) -> pb.TranscribeResponse:
        try:
            return await self._unit(request)
        except Failed as exc:
            await context.abort(exc.code, exc.details)
            raise  # not reached: abort raises

    async def Work(self, request_iterator: AsyncIterator[pb.WorkRequest],
                   context: grpc.aio.ServicerContext) -> AsyncIterator[pb.WorkResponse]:
        """Many tagged units over one call; the answers ready at the same moment (a batch)
        go back together in one message."""
        ready: list[pb.WorkAnswer] = []
        wake = asyncio.Event()
        running: dict[int, asyncio.Task[None]] = {}
        reading = True

        async def run(tag: int, request: pb.TranscribeRequest) -> None:
            try:
                answer = pb.WorkAnswer(tag=tag, result=await self._unit(request))
            except Failed as exc:
                answer = pb.WorkAnswer(tag=tag, code=exc.code.value[0], details=exc.details)
            except asyncio.CancelledError:
                answer = pb.WorkAnswer(tag=tag, code=grpc.StatusCode.CANCELLED.value[0],
                                       details="cancelled by the scheduler")
            finally:
                running.pop(tag, None)
            ready.append(answer)
            wake.set()

        async def read() -> None:
            nonlocal reading
            try:
                async for req in request_iterator:
                    for unit in req.units:
                        running[unit.tag] = asyncio.create_task(run(unit.tag, unit.request))
                    for tag in req.cancel:  # no answer is awaited for a cancelled unit
                        task = running.pop(tag, None)
                        if task is not None:  # (one not started yet never runs its finally)
                            task.cancel()
            finally:
                reading = False  # the scheduler closed its side (or the call broke)
                wake.set()

        reader = asyncio.create_task(read())
        try:
            while reading or running or ready:
                await wake.wait()
                wake.clear()
                if ready:
                    answers, ready[:] = list(ready), []
                    yield pb.WorkResponse(answers=answers)
        finally:
            reader.cancel()
            for task in list(running.values()):
                task.cancel()

    def _audio(self, request: pb.TranscribeRequest | pb.VadRequest) -> np.ndarray:
        """A unit's or VAD chunk's samples: inline, or a copy from the PCM arena."""
        if not request.HasField("pcm_ref"):
            return decode_pcm(request.pcm, request.sample_format)
        if self.arena is None:
            raise Failed(grpc.StatusCode.INVALID_ARGUMENT, "this worker has no PCM arena")
        ref = request.pcm_ref
        try:
            return self.arena.read(PcmBlock(ref.offset, ref.num_bytes, request.sample_format))
        except ValueError as exc:
            raise Failed(grpc.StatusCode.INVALID_ARGUMENT, str(exc)) from exc

    async def _unit(self, request: pb.TranscribeRequest) -> pb.TranscribeResponse:
        """One unit through the engine; failures as `Failed` with their status code."""
        self.active += 1
        try:
            return await self._run_unit(request)
        finally:
            self.active -= 1

    async def _run_unit(self, request: pb.TranscribeRequest) -> pb.TranscribeResponse:
        audio = self._audio(request)
        if audio.size == 0:
            raise Failed(grpc.StatusCode.INVALID_ARGUMENT, "no audio samples")
        utt = Utterance(audio=audio, language=request.language or "auto",
                        use_itn=request.enable_itn, hotwords=tuple(request.hotwords),
                        request_id=request.request_id,
                        max_new_tokens=max(0, request.max_new_tokens))
        try:
            transcript, stats = await self.engine.transcribe(utt)
        except Unsupported as exc:
            raise Failed(grpc.StatusCode.UNIMPLEMENTED, str(exc)) from exc
        except WorkerUnhealthy as exc:
            raise Failed(grpc.StatusCode.UNAVAILABLE,
                         f"{UNHEALTHY_DETAIL}: {exc.reason}") from exc
        except Exception as exc:  # one utterance failed alone: report it, keep serving
            if is_oom(exc):
                raise Failed(grpc.StatusCode.RESOURCE_EXHAUSTED, GPU_OOM_DETAIL) from exc
            log.exception("request %s failed", request.request_id,
                          extra={"request_id": request.request_id})
            raise Failed(grpc.StatusCode.INTERNAL, f"{type(exc).__name__}: {exc}") from exc
        self.served += 1
        return pb.TranscribeResponse(
            text=transcript.text, language=transcript.language, device=self.device_name,
            inference_time_s=stats.inference_s, batch_wait_s=stats.wait_s,
            batch_size=stats.batch_size, hotwords_ignored=transcript.hotwords_ignored,
            batch_id=stats.batch_id, tokens_generated=transcript.tokens_generated,
            decode_steps=transcript.decode_steps)

    async def Segment(self, request_iterator: AsyncIterator[pb.VadRequest],
                      context: grpc.aio.ServicerContext) -> AsyncIterator[pb.VadResponse]:
        async def chunks() -> AsyncIterator[SessionChunk]:
            async for req in request_iterator:
                yield SessionChunk(audio=self._audio(req), is_final=req.is_final,
                                   max_segment_ms=req.max_segment_ms)

        self.active += 1
        try:
            async for segments in self.engine.segment(chunks()):
                self.served += 1
                yield pb.VadResponse(segments=[pb.VadSegment(start_ms=s, end_ms=e)
                                               for s, e in segments])
        except Unsupported as exc:
            await context.abort(grpc.StatusCode.UNIMPLEMENTED, str(exc))
        except Failed as exc:  # a chunk's audio could not be read
            await context.abort(exc.code, exc.details)
        finally:
            self.active -= 1

    async def Live(self, request_iterator: AsyncIterator[pb.LiveRequest],
                   context: grpc.aio.ServicerContext) -> AsyncIterator[pb.LiveResponse]:
        try:
            async for response in self.live_stream(request_iterator.__aiter__()):
                yield response
        except Failed as exc:
            await context.abort(exc.code, exc.details)

    async def live_stream(self, messages: AsyncIterator[pb.LiveRequest]
                          ) -> AsyncIterator[pb.LiveResponse]:
        """One live stream: answers to the chunks with news (`LiveNews`), the final chunk's
        marked `last`; `Failed` with the status it ends with."""
        try:
            first = await messages.__anext__()
        except StopAsyncIteration:
            return
        cfg = first.config
        if not end_silence_ok(cfg.end_silence_ms):
            low, high = END_SILENCE_RANGE_MS
            raise Failed(grpc.StatusCode.INVALID_ARGUMENT,
                         f"end_silence_ms must be 0 or {low}-{high}")
        options = LiveOptions(offset_ms=cfg.offset_ms, end_silence_ms=cfg.end_silence_ms)
        if cfg.chunk_size:
            if len(cfg.chunk_size) != 3 or min(cfg.chunk_size) < 0 or cfg.chunk_size[1] < 1:
                raise Failed(grpc.StatusCode.INVALID_ARGUMENT,
                             "chunk_size must be 3 values [left, chunk >= 1, right]")
            options = LiveOptions(chunk_size=tuple(cfg.chunk_size),  # type: ignore[arg-type]
                                  encoder_look_back=cfg.encoder_chunk_look_back,
                                  decoder_look_back=cfg.decoder_chunk_look_back,
                                  offset_ms=cfg.offset_ms, end_silence_ms=cfg.end_silence_ms)

        final_read = False  # the engine answers each chunk before it reads the next

        async def chunks() -> AsyncIterator[LiveChunk]:
            nonlocal final_read
            final_read = first.is_final
            yield LiveChunk(decode_pcm(first.pcm, first.sample_format), first.is_final)
            async for req in messages:
                final_read = req.is_final
                yield LiveChunk(decode_pcm(req.pcm, req.sample_format), req.is_final)

        news = LiveNews()
        self.active += 1
        try:
            async for u in self.engine.live(options, chunks()):
                if not news.worth_sending(u, final_read):
                    continue
                yield pb.LiveResponse(
                    finals=[pb.LiveUtterance(start_ms=f.start_ms, end_ms=f.end_ms, text=f.text)
                            for f in u.finals],
                    interim_text=u.interim_text, interim_start_ms=u.interim_start_ms,
                    safe_ms=u.safe_ms, processed_ms=u.processed_ms,
                    tick_streams=u.tick_streams, step_s=u.step_s, last=final_read)
                self.served += len(u.finals)
        except Unsupported as exc:
            raise Failed(grpc.StatusCode.UNIMPLEMENTED, str(exc)) from None
        except Exception as exc:  # this stream failed alone (INTERNAL, not a lost worker)
            log.exception("live stream %s failed", cfg.request_id,
                          extra={"request_id": cfg.request_id})
            raise Failed(grpc.StatusCode.INTERNAL, f"{type(exc).__name__}: {exc}") from None
        finally:
            self.active -= 1

    async def LiveLink(self, request_iterator: AsyncIterator[pb.LiveLinkRequest],
                       context: grpc.aio.ServicerContext) -> AsyncIterator[pb.LiveLinkResponse]:
        async for message in _LiveLink(self).run(request_iterator):
            yield message

    async def ClearCache(self, request: pb.WorkerClearCacheRequest,
                         context: grpc.aio.ServicerContext) -> pb.WorkerClearCacheResponse:
        try:
            before, after = await self.engine.clear_cache()
        except Unsupported as exc:
            await context.abort(grpc.StatusCode.UNIMPLEMENTED, str(exc))
        return pb.WorkerClearCacheResponse(reserved_before_bytes=before,
                                           reserved_after_bytes=after)


class _LiveLink(AnswerPump[pb.LiveLinkResponse]):
    """One LiveLink call: a task per tagged stream fed from its queue, answers batched back
    (a tick answers all its streams at once: one message)."""

    def __init__(self, servicer: WorkerServicer) -> None:
        super().__init__(pb.LiveLinkResponse)
        self.servicer = servicer
        self.streams: dict[int, tuple[asyncio.Queue[pb.LiveRequest | None],
                                      asyncio.Task[None]]] = {}
        self.newest = 0  # the highest tag started: tags only grow, so a lower one is over

    def tasks(self) -> list[asyncio.Task[None]]:
        return [task for _, task in self.streams.values()]

    def finished(self, reader: asyncio.Task[None]) -> bool:
        if self.streams:
            return False
        reader.result()  # the call broke: raise it
        return True

    async def read(self, requests: AsyncIterator[pb.LiveLinkRequest]) -> None:
        loop = asyncio.get_running_loop()
        try:
            async for message in requests:
                for item in message.requests:
                    stream = self.streams.get(item.tag)
                    if stream is None:
                        if item.tag <= self.newest:
                            continue  # a chunk for a stream that ended (e.g. refused)
                        self.newest = item.tag
                        queue: asyncio.Queue[pb.LiveRequest | None] = asyncio.Queue()
                        task = loop.create_task(self._stream(item.tag, queue))
                        stream = self.streams[item.tag] = queue, task
                        # A stream cancelled in the message that opened it never runs: its
                        # own cleanup would not either.
                        task.add_done_callback(functools.partial(self._ended, item.tag))
                    stream[0].put_nowait(item.request)
                for tag in message.cancel:
                    stream = self.streams.get(tag)
                    if stream is not None:
                        stream[1].cancel()
        finally:
            for queue, _ in self.streams.values():
                queue.put_nowait(None)  # no more input: a stream waiting for some ends
            self.wake.set()

    async def _stream(self, tag: int, queue: asyncio.Queue[pb.LiveRequest | None]) -> None:
        async def requests() -> AsyncIterator[pb.LiveRequest]:
            while (req := await queue.get()) is not None:
                yield req
                if req.is_final:
                    return

        end = pb.TaggedLiveResponse(tag=tag)
        try:
            async for response in self.servicer.live_stream(requests()):
                self.outbox.answers.add(tag=tag, response=response, more=True)
                self.wake.set()
        except Failed as exc:
            end.code, end.details = exc.code.value[0], exc.details
        self.outbox.answers.append(end)  # (a cancelled stream gets no answer)

    def _ended(self, tag: int, task: asyncio.Task[None]) -> None:
        stream = self.streams.get(tag)
        if stream is not None and stream[1] is task:
            del self.streams[tag]
        self.wake.set()
