"""Voice activity detection sessions on the pool of CPU VAD workers.

One session per long request, pinned to the least busy ready VAD worker, fed 60 s chunks of
16 kHz audio in lockstep (one response per chunk, holding the segments that chunk completed).
Segment times are relative to the session's first sample; the caller adds its offset.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator

import grpc
import numpy as np

from protos.asr.worker.v1 import worker_pb2 as wpb
from scheduler.errors import Unavailable, WorkerLost
from scheduler.workers import WorkerHandle

log = logging.getLogger(__name__)

VAD_CHUNK_SAMPLES = 60 * 16000  # FSMN-VAD's own chunk size: results equal offline VAD
READY_WAIT_S = 30.0


class VadSession:
    """One open Segment stream to one VAD worker."""

    def __init__(self, worker: WorkerHandle, max_segment_ms: int) -> None:
        self.worker = worker
        self.max_segment_ms = max_segment_ms
        self._outbox: asyncio.Queue[wpb.VadRequest | None] = asyncio.Queue()
        self._first = True
        assert worker.stub is not None
        self._call = worker.stub.Segment(self._requests())
        self._responses = self._call.__aiter__()
        worker.in_flight += 1
        self._open = True

    async def _requests(self) -> AsyncIterator[wpb.VadRequest]:
        while (req := await self._outbox.get()) is not None:
            yield req

    async def push(self, chunk: np.ndarray, is_final: bool) -> list[tuple[int, int]]:
        """Send one chunk (float32 16 kHz); the segments it completed, in ms."""
        req = wpb.VadRequest(pcm=chunk.astype("<f4", copy=False).tobytes(),
                             sample_format=wpb.F32LE, is_final=is_final,
                             max_segment_ms=self.max_segment_ms if self._first else 0)
        self._first = False
        await self._outbox.put(req)
        try:
            resp = await self._responses.__anext__()
        except (grpc.aio.AioRpcError, StopAsyncIteration) as exc:
            raise WorkerLost(f"VAD worker {self.worker.spec.worker_id}: {exc}") from exc
        return [(int(s.start_ms), int(s.end_ms)) for s in resp.segments]

    def close(self) -> None:
        if self._open:
            self._open = False
            self.worker.in_flight -= 1
            self._outbox.put_nowait(None)
            self._call.cancel()


class VadPool:
    """The VAD workers and how sessions are placed on them."""

    def __init__(self, workers: list[WorkerHandle]) -> None:
        self.workers = workers

    @property
    def enabled(self) -> bool:
        return bool(self.workers)

    async def open(self, max_segment_ms: int, avoid: frozenset[str] = frozenset()
                   ) -> VadSession:
        """A session on the least busy ready VAD worker (waits a while for one to start)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + READY_WAIT_S
        while True:
            ready = [w for w in self.workers if w.ready and w.stub is not None]
            preferred = [w for w in ready if w.spec.worker_id not in avoid] or ready
            if preferred:
                return VadSession(min(preferred, key=lambda w: w.in_flight), max_segment_ms)
            if loop.time() > deadline:
                raise Unavailable("no VAD worker is ready to segment long audio")
            await asyncio.sleep(0.1)
