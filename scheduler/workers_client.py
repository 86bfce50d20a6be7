"""The module that speaks the worker API (worker.proto): builds its requests, makes its
calls, and turns its answers and status codes into the scheduler's plain types and errors.
(`work_stream.py` holds the one long-lived `Work` call per worker that carries units.)

Status codes from a worker mean:
- UNAVAILABLE / CANCELLED / UNKNOWN: the worker died, hung or declared itself unhealthy while
  holding the unit -> `WorkerLost` (the dispatcher runs the unit again elsewhere);
- RESOURCE_EXHAUSTED: the unit ran out of GPU memory even alone -> `GpuOutOfMemory`;
- DEADLINE_EXCEEDED -> `DeadlineExceeded`; INVALID_ARGUMENT -> `InvalidAudio`;
- anything else: the model failed on this unit alone -> `InferenceFailed` (INTERNAL).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

import grpc
import numpy as np

from protos.asr.worker.v1 import worker_pb2 as wpb
from protos.asr.worker.v1 import worker_pb2_grpc as wpb_grpc
from protos.common.capabilities import Capabilities
from protos.common.pcm_arena import PcmArena, PcmBlock
from protos.common.wire import encode_pcm
from scheduler.errors import (
    DeadlineExceeded,
    GpuOutOfMemory,
    InferenceFailed,
    InvalidAudio,
    InvalidRequest,
    WorkerLost,
)
from scheduler.tagged_call import TaggedCall, answer_code

_LOST_CODES = (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.CANCELLED, grpc.StatusCode.UNKNOWN)
# A worker's live streams share one LiveLink call, as frames over its live socket pair (sent
# at the end of the event loop's turn: the chunks relayed in one turn share a frame). Only on
# the gRPC fallback do chunks (100 ms of audio each,
# from streams at staggered moments) wait this long to share a message: at 128 streams per
# worker, ~6 chunks a message instead of one.
LIVE_LINGER_S = 0.005

LiveLink = TaggedCall[wpb.LiveLinkRequest, wpb.TaggedLiveResponse]


def live_link(open_call: Callable[[], Any], worker_id: str) -> LiveLink:
    """The LiveLink call of one worker connection, opened (`open_call`: a gRPC LiveLink call
    or a framed stream of its messages) at its first stream."""
    return TaggedCall(f"the live link of worker {worker_id}", open_call, wpb.LiveLinkRequest,
                      linger_s=LIVE_LINGER_S)


@dataclass(frozen=True)
class WorkerInfo:
    """A worker's answer to the ready handshake / heartbeat."""

    pid: int
    allocated_bytes: int = 0
    reserved_bytes: int = 0
    # "oom", "clear:<trigger>", "live_calls", "live_rows"
    counters: dict[str, int] = field(default_factory=dict)
    capabilities: Capabilities | None = None  # None: an old worker that does not report them
    consecutive_failed_batches: int = 0


@dataclass(frozen=True)
class UnitRequest:
    """One unit of recognition work: 16 kHz mono samples and the options for the model."""

    request_id: str
    samples: np.ndarray
    language: str = "auto"
    enable_itn: bool = False
    hotwords: tuple[str, ...] = ()
    max_new_tokens: int = 0  # LLM decoders: cap on generated tokens (0: the worker's)


@dataclass(frozen=True)
class UnitResult:
    text: str
    language: str
    device: str
    inference_time_s: float
    batch_wait_s: float
    batch_size: int
    batch_id: int
    hotwords_ignored: bool
    tokens_generated: int = 0  # LLM decoders only
    decode_steps: int = 0  # of the unit's batch; LLM decoders only


def _stub(worker_stub: wpb_grpc.WorkerStub | None, worker_id: str) -> wpb_grpc.WorkerStub:
    if worker_stub is None:
        raise WorkerLost(f"worker {worker_id} is not connected")
    return worker_stub


async def get_info(stub: wpb_grpc.WorkerStub, timeout_s: float) -> WorkerInfo:
    """The ready handshake / heartbeat; raises grpc.aio.AioRpcError when unanswered."""
    info = await stub.GetInfo(wpb.InfoRequest(), timeout=timeout_s)
    counters = {"oom": int(info.oom_events),
                **{f"clear:{k}": int(v) for k, v in info.cache_clears.items()},
                "live_calls": int(info.live_model_calls),
                "live_rows": int(info.live_model_rows)}
    caps = Capabilities.from_proto(info.capabilities) if info.HasField("capabilities") else None
    return WorkerInfo(pid=info.pid, allocated_bytes=info.allocated_bytes,
                      reserved_bytes=info.reserved_bytes, counters=counters, capabilities=caps,
                      consecutive_failed_batches=info.consecutive_failed_batches)


def unit_request(unit: UnitRequest, block: PcmBlock | None = None,
                 req: wpb.TranscribeRequest | None = None) -> wpb.TranscribeRequest:
    """The worker request for `unit` (filled into `req` when given): its samples inline, or
    where they lie in the arena."""
    req = wpb.TranscribeRequest() if req is None else req
    req.request_id, req.language = unit.request_id, unit.language
    req.enable_itn, req.max_new_tokens = unit.enable_itn, unit.max_new_tokens
    req.hotwords.extend(unit.hotwords)
    set_pcm(req, unit.samples, block)
    return req


def set_pcm(req: wpb.TranscribeRequest | wpb.VadRequest, samples: np.ndarray,
            block: PcmBlock | None) -> None:
    """A worker request's audio: where `block` lies in the arena, or `samples` inline."""
    if block is not None:
        req.pcm_ref.offset, req.pcm_ref.num_bytes = block.offset, block.num_bytes
        req.sample_format = block.sample_format  # type: ignore[assignment]
    else:
        req.pcm, req.sample_format = encode_pcm(samples)


def unit_error(worker_id: str, code: grpc.StatusCode, details: str) -> Exception:
    """The scheduler's error for a unit that ended with `code` on worker `worker_id`."""
    if code in _LOST_CODES:
        return WorkerLost(f"{worker_id}: {code.name}: {details}")
    if code == grpc.StatusCode.RESOURCE_EXHAUSTED:
        return GpuOutOfMemory(details)
    if code == grpc.StatusCode.DEADLINE_EXCEEDED:
        return DeadlineExceeded("the request's deadline passed before its result")
    if code == grpc.StatusCode.INVALID_ARGUMENT:
        return InvalidAudio(details or "invalid audio")
    return InferenceFailed(f"recognition failed: {details}")


def unit_result(r: wpb.TranscribeResponse) -> UnitResult:
    return UnitResult(text=r.text, language=r.language, device=r.device,
                      inference_time_s=r.inference_time_s, batch_wait_s=r.batch_wait_s,
                      batch_size=r.batch_size, batch_id=r.batch_id,
                      hotwords_ignored=r.hotwords_ignored, tokens_generated=r.tokens_generated,
                      decode_steps=r.decode_steps)


class UnitLink(Protocol):
    """A worker's hand-off for units (work_stream.WorkStream)."""

    async def transcribe(self, unit: UnitRequest, deadline: float | None) -> UnitResult: ...


async def transcribe(target: wpb_grpc.WorkerStub | UnitLink | None, worker_id: str,
                     unit: UnitRequest, deadline: float | None) -> UnitResult:
    """Run one unit on one worker (over its Work stream when `target` is one, else with a
    Transcribe call); failures sorted into retry / reroute / per-request error."""
    if target is None:
        raise WorkerLost(f"worker {worker_id} is not connected")
    if hasattr(target, "transcribe"):
        return await target.transcribe(unit, deadline)
    timeout = None if deadline is None else max(deadline - time.monotonic(), 0.001)
    try:
        r = await target.Transcribe(unit_request(unit), timeout=timeout)
    except grpc.aio.AioRpcError as exc:
        raise unit_error(worker_id, exc.code(), exc.details() or "") from exc
    return unit_result(r)


async def clear_cache(stub: wpb_grpc.WorkerStub, timeout_s: float = 30.0) -> tuple[int, int]:
    """Ask a worker to clear its allocator cache: (reserved before, reserved after) bytes."""
    r = await stub.ClearCache(wpb.WorkerClearCacheRequest(), timeout=timeout_s)
    return r.reserved_before_bytes, r.reserved_after_bytes


class SegmentStream:
    """One open VAD `Segment` stream to one worker, in lockstep: each pushed chunk answers with
    the segments it completed (ms from the stream's first sample)."""

    def __init__(self, stub: wpb_grpc.WorkerStub | None, worker_id: str,
                 max_segment_ms: int, arena: PcmArena | None = None) -> None:
        """`arena`: the worker's shared PCM arena (chunks go there, the request carries
        where; None or full: inline)."""
        self.worker_id = worker_id
        self.max_segment_ms = max_segment_ms
        self._arena = arena
        self._outbox: asyncio.Queue[wpb.VadRequest | None] = asyncio.Queue()
        self._first = True
        self._call = _stub(stub, worker_id).Segment(self._requests())
        self._responses = self._call.__aiter__()

    async def _requests(self) -> AsyncIterator[wpb.VadRequest]:
        while (req := await self._outbox.get()) is not None:
            yield req

    async def push(self, chunk: np.ndarray, is_final: bool) -> list[tuple[int, int]]:
        """Send one chunk (float32 16 kHz); the segments it completed, in ms."""
        chunk = chunk.astype("<f4", copy=False)
        req = wpb.VadRequest(is_final=is_final,
                             max_segment_ms=self.max_segment_ms if self._first else 0)
        self._first = False
        block = self._place(chunk)
        set_pcm(req, chunk, block)
        try:
            await self._outbox.put(req)
            resp = await self._responses.__anext__()
        except (grpc.aio.AioRpcError, StopAsyncIteration) as exc:
            raise WorkerLost(f"VAD worker {self.worker_id}: {exc}") from exc
        finally:  # answered, failed or abandoned: the worker reads the block no more
            if block is not None and self._arena is not None:
                self._arena.free(block)
        return [(int(s.start_ms), int(s.end_ms)) for s in resp.segments]

    def _place(self, chunk: np.ndarray) -> PcmBlock | None:
        """The chunk copied into the arena, or None (no arena, full, or closed with its
        worker's connection)."""
        if self._arena is None:
            return None
        try:
            return self._arena.put(chunk)
        except ValueError:  # the arena was closed: the call is about to fail, send inline
            return None

    def close(self) -> None:
        self._outbox.put_nowait(None)
        self._call.cancel()


@dataclass(frozen=True)
class LiveUtterance:
    """An utterance a live worker finished (ms in the stream's timeline)."""

    start_ms: int
    end_ms: int
    text: str


@dataclass(frozen=True)
class LiveStep:
    """A live worker's answer to a chunk (it answers only chunks with news: `LiveResponse`)."""

    finals: tuple[LiveUtterance, ...]
    interim_text: str
    interim_start_ms: int
    safe_ms: int
    processed_ms: int
    tick_streams: int
    step_s: float
    is_last: bool  # the answer to the stream's final chunk


@dataclass(frozen=True)
class LiveSettings:
    """Decoding settings of a live stream (empty chunk size: the worker's defaults)."""

    chunk_size: tuple[int, ...] = ()
    encoder_look_back: int = 0
    decoder_look_back: int = 0
    end_silence_ms: int = 0  # silence that ends an utterance; 0: the VAD's own schedule


class LiveCall:
    """One live stream on a worker's LiveLink call (`link`: the worker's `TaggedCall`,
    None when not connected). `send` never waits; `receive` gives the answers in order and
    raises `WorkerLost` when the worker goes away before the last one."""

    def __init__(self, link: LiveLink | None, worker_id: str, settings: LiveSettings,
                 offset_ms: int, request_id: str) -> None:
        if link is None:
            raise WorkerLost(f"worker {worker_id} is not connected")
        self.worker_id = worker_id
        self._link = link
        self._config: wpb.LiveConfig | None = wpb.LiveConfig(
            chunk_size=list(settings.chunk_size),
            encoder_chunk_look_back=settings.encoder_look_back,
            decoder_chunk_look_back=settings.decoder_look_back, offset_ms=offset_ms,
            request_id=request_id, end_silence_ms=settings.end_silence_ms)
        self._last_answered = False  # the worker answered the final chunk
        self._tag = 0
        self._answers: AsyncIterator[wpb.TaggedLiveResponse | str] | None = None
        self._opened = asyncio.Event()  # the first chunk went out: answers may come

    @property
    def finished(self) -> bool:
        return self._last_answered

    def send(self, samples: np.ndarray, is_final: bool = False) -> None:
        """Queue one chunk (16 kHz: int16 goes as S16LE, anything else as F32LE)."""
        pcm, fmt = encode_pcm(samples)
        req = wpb.LiveRequest(pcm=pcm, sample_format=fmt, is_final=is_final)
        if self._config is not None:
            req.config.CopyFrom(self._config)
            self._config = None
        if self._answers is None:
            self._tag, self._answers = self._link.open_stream(
                lambda out, tag: out.requests.add(tag=tag, request=req))
            self._opened.set()
        else:  # False once the stream is over or the call broke: `receive` says why
            self._link.send_input(self._tag, lambda out: out.requests.add(tag=self._tag,
                                                                          request=req))

    async def receive(self) -> LiveStep:
        await self._opened.wait()
        assert self._answers is not None
        try:
            answer = await self._answers.__anext__()
        except StopAsyncIteration:
            answer = ""
        if isinstance(answer, str):
            raise WorkerLost(f"live worker {self.worker_id}: {answer or 'the stream ended'}")
        if not answer.more:
            code = answer_code(answer.code)
            if code == grpc.StatusCode.OK:
                raise WorkerLost(f"live worker {self.worker_id} ended the stream early")
            if code in _LOST_CODES:
                raise WorkerLost(f"live worker {self.worker_id}: {code.name}: "
                                 f"{answer.details}")
            if code == grpc.StatusCode.UNIMPLEMENTED:
                raise InvalidRequest(answer.details or "live mode is not supported")
            raise InferenceFailed(f"live recognition failed: {answer.details}")
        r = answer.response
        self._last_answered = r.last
        return LiveStep(
            finals=tuple(LiveUtterance(f.start_ms, f.end_ms, f.text) for f in r.finals),
            interim_text=r.interim_text, interim_start_ms=r.interim_start_ms, safe_ms=r.safe_ms,
            processed_ms=r.processed_ms, tick_streams=r.tick_streams, step_s=r.step_s,
            is_last=r.last)

    def close(self) -> None:
        if self._answers is not None:  # a stream that got its last answer needs no cancel
            self._link.cancel_stream(self._tag, tell=not self.finished)
