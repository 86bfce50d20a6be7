"""Long audio: VAD segmentation as the audio arrives, segments spread over every device.

Audio blocks (16 kHz mono float32) come in; full 60 s chunks go to a VAD session; each
segment the VAD completes becomes an independent recognition unit dispatched like any request
(so the segments of one file run on several devices and batch with other work). Results are
reported per segment as they finish, then once for the whole file in time order.

Memory stays bounded whatever the length: only audio after the last cut is kept (at most a VAD
chunk plus the longest segment), and at most `max_in_flight` segments per request are in
flight; beyond that, reading the input waits (backpressure reaches the client through gRPC
flow control). A VAD worker lost mid-file is replaced by a new session that restarts from the
last cut, so no audio is lost.
"""

from __future__ import annotations

import asyncio
import collections
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass

import numpy as np

from scheduler.errors import WorkerLost
from scheduler.vad import VAD_CHUNK_SAMPLES, VadPool, VadSession

log = logging.getLogger(__name__)

RATE = 16000
MAX_VAD_RESTARTS = 3


@dataclass(frozen=True)
class SegmentResult:
    """One recognised segment; times in ms from the start of the audio."""

    index: int
    start_ms: int
    end_ms: int
    text: str
    device: str
    fallback_reason: str
    language: str
    queue_time_s: float
    inference_time_s: float
    hotwords_ignored: bool


# Runs one unit of audio: (samples, start_ms, end_ms, index) -> its result.
RunUnit = Callable[[np.ndarray, int, int, int], Awaitable[SegmentResult]]


class _Retained:
    """Audio from the last cut onwards, as a deque of blocks."""

    def __init__(self) -> None:
        self.blocks: collections.deque[np.ndarray] = collections.deque()
        self.start = 0  # absolute sample index of the first retained sample
        self.end = 0  # absolute sample index after the last retained sample

    def append(self, block: np.ndarray) -> None:
        self.blocks.append(block)
        self.end += len(block)

    def slice(self, a: int, b: int) -> np.ndarray:
        """Samples [a, b) (absolute); a must not be before `start`."""
        a, b = max(a, self.start), min(b, self.end)
        out, pos = [], self.start
        for blk in self.blocks:
            lo, hi = max(a, pos), min(b, pos + len(blk))
            if lo < hi:
                out.append(blk[lo - pos:hi - pos])
            pos += len(blk)
            if pos >= b:
                break
        return np.concatenate(out) if out else np.zeros(0, dtype=np.float32)

    def drop_before(self, cut: int) -> None:
        while self.blocks and self.start + len(self.blocks[0]) <= cut:
            self.start += len(self.blocks.popleft())


class LongformRun:
    """Segments one request's audio and runs its segments."""

    def __init__(self, vad: VadPool, run_unit: RunUnit, max_segment_ms: int,
                 max_in_flight: int = 32) -> None:
        self.vad = vad
        self.run_unit = run_unit
        self.max_segment_ms = max_segment_ms
        self.results: asyncio.Queue[SegmentResult | BaseException] = asyncio.Queue()
        self._slots = asyncio.Semaphore(max_in_flight)
        self._tasks: set[asyncio.Task[None]] = set()
        self._retained = _Retained()
        self._session: VadSession | None = None
        self._session_offset = 0  # absolute sample index where the current session began
        self._pushed = 0  # samples pushed to the current session
        self._cut = 0  # absolute sample index of the last segment end
        self._restarts = 0
        self.segments = 0
        self.total_samples = 0

    async def feed(self, blocks: AsyncIterator[np.ndarray]) -> None:
        """Consume all audio; segments are dispatched as the VAD finds them."""
        try:
            async for block in blocks:
                self._retained.append(block)
                self.total_samples += len(block)
                # Strictly more than a chunk: the final push must never be empty (FunASR
                # returns at once on empty input without closing the last segment).
                while self._retained.end - (self._session_offset + self._pushed) \
                        > VAD_CHUNK_SAMPLES:
                    await self._push(final=False)
            await self._push(final=True)
        finally:
            if self._session is not None:
                self._session.close()

    async def _push(self, final: bool) -> None:
        """Push the next chunk (or the final remainder) to the VAD, restarting it if lost."""
        while True:
            if self._session is None:
                self._session = await self.vad.open(self.max_segment_ms)
            start = self._session_offset + self._pushed
            end = self._retained.end if final else start + VAD_CHUNK_SAMPLES
            chunk = self._retained.slice(start, end)
            try:
                segments = await self._session.push(chunk, final)
            except WorkerLost as exc:
                self._restart_vad(exc)
                continue
            self._pushed += len(chunk)
            for s_ms, e_ms in segments:
                await self._dispatch(s_ms, e_ms)
            if final:
                self._session.close()
                self._session = None
            return

    def _restart_vad(self, exc: Exception) -> None:
        """Open a fresh session later, starting at the last cut; no audio is lost."""
        assert self._session is not None
        self._restarts += 1
        log.warning("VAD session lost (%s); restarting from %.1f s", exc, self._cut / RATE)
        self._session.close()
        self._session = None
        if self._restarts > MAX_VAD_RESTARTS:
            raise exc
        self._session_offset, self._pushed = self._cut, 0

    async def _dispatch(self, s_ms: int, e_ms: int) -> None:
        """Cut one segment (ms relative to the session) and run it in the background."""
        offset_ms = self._session_offset * 1000 // RATE
        a = self._session_offset + int(s_ms * 16)  # FunASR cuts segments the same way
        b = min(self._session_offset + int(e_ms * 16), self._retained.end)
        samples = self._retained.slice(a, b)
        self._cut = max(self._cut, b)
        self._retained.drop_before(self._cut)
        index = self.segments
        self.segments += 1
        await self._slots.acquire()

        async def run() -> None:
            try:
                await self.results.put(await self.run_unit(samples, s_ms + offset_ms,
                                                           e_ms + offset_ms, index))
            except BaseException as exc:  # reported to the consumer, which fails the request
                await self.results.put(exc)
            finally:
                self._slots.release()

        task = asyncio.get_running_loop().create_task(run())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def wait(self) -> None:
        """Until every dispatched segment has finished."""
        while self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)

    def cancel(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        if self._session is not None:
            self._session.close()
            self._session = None


async def run_longform(blocks: AsyncIterator[np.ndarray], vad: VadPool, run_unit: RunUnit,
                       max_segment_ms: int, on_segment: Callable[[SegmentResult], Awaitable[None]],
                       max_in_flight: int = 32) -> tuple[list[SegmentResult], int]:
    """Segment and recognise; `on_segment` sees each result as it finishes. Returns the
    results in time order and the number of samples read."""
    run = LongformRun(vad, run_unit, max_segment_ms, max_in_flight)
    done: list[SegmentResult] = []

    async def drain() -> None:
        while True:
            item = await run.results.get()
            if isinstance(item, BaseException):
                raise item
            done.append(item)
            await on_segment(item)

    drainer = asyncio.get_running_loop().create_task(drain())
    try:
        await run.feed(blocks)
        await run.wait()
        while len(done) < run.segments and not drainer.done():
            await asyncio.sleep(0.005)
        if drainer.done():
            drainer.result()  # a failed segment fails the request
    finally:
        run.cancel()
        drainer.cancel()
    return sorted(done, key=lambda r: r.index), run.total_samples
