"""Voice activity detection sessions on the pool of CPU VAD workers.

One session per long request, pinned to the least busy ready VAD worker, fed 60 s chunks of
16 kHz audio in lockstep (one response per chunk, holding the segments that chunk completed).
Segment times are relative to the session's first sample; the caller adds its offset.
"""

from __future__ import annotations

import asyncio
import logging

import numpy as np

from scheduler.errors import Unavailable
from scheduler.workers import LostWorkers, WorkerHandle
from scheduler.workers_client import SegmentStream

log = logging.getLogger(__name__)

READY_WAIT_S = 90.0  # longer than the longest restart backoff plus a model load


class VadSession:
    """One open segmentation stream to one VAD worker (counted in its `in_flight`)."""

    def __init__(self, worker: WorkerHandle, max_segment_ms: int) -> None:
        self.worker = worker
        arena = worker.link.arena if worker.link is not None else None
        self._stream = SegmentStream(worker.stub, worker.spec.worker_id, max_segment_ms, arena)
        worker.in_flight += 1
        self._open = True

    async def push(self, chunk: np.ndarray, is_final: bool) -> list[tuple[int, int]]:
        """Send one chunk (float32 16 kHz); the segments it completed, in ms."""
        return await self._stream.push(chunk, is_final)

    def close(self) -> None:
        if self._open:
            self._open = False
            self.worker.in_flight -= 1
            self._stream.close()


class VadPool:
    """The VAD workers and how sessions are placed on them."""

    def __init__(self, workers: list[WorkerHandle]) -> None:
        self.workers = workers

    @property
    def enabled(self) -> bool:
        return bool(self.workers)

    async def open(self, max_segment_ms: int, avoid: LostWorkers | None = None) -> VadSession:
        """A session on the least busy ready VAD worker not just lost (waits for one to start
        or restart)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + READY_WAIT_S
        while True:
            preferred = [w for w in self.workers if w.ready and w.stub is not None
                         and (avoid is None or not avoid.avoids(w))]
            if preferred:
                return VadSession(min(preferred, key=lambda w: w.in_flight), max_segment_ms)
            if loop.time() > deadline:
                raise Unavailable("no VAD worker is ready to segment long audio")
            await asyncio.sleep(0.1)
