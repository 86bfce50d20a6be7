"""Long audio cut into speech segments by VAD as it arrives.

Audio blocks (16 kHz mono float32) come in; full 60 s chunks go to a VAD session; each segment
the VAD completes comes out at once as a `Cut` (its samples and absolute times), so the caller
can recognise it while later audio is still arriving. Memory stays bounded whatever the length:
only audio after the last cut that a future segment can still reach is kept (at most a VAD
chunk plus the longest segment, however long a silence lasts), and the
next block is read only when the caller asks for the next cut (backpressure reaches the client
through gRPC flow control). A VAD worker lost mid-file is replaced by a new session that
restarts from the last cut, so no audio is lost.
"""

from __future__ import annotations

import collections
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass

import numpy as np

from protos.common.wire import SAMPLE_RATE, SAMPLES_PER_MS, VAD_CHUNK_SAMPLES
from scheduler.errors import Unavailable, WorkerLost
from scheduler.limits import AudioBudget
from scheduler.vad import VadPool, VadSession
from scheduler.workers import LostWorkers

log = logging.getLogger(__name__)

MAX_VAD_RESTARTS = 6
WINDOW_SLACK_MS = 10_000  # audio kept beyond the longest segment before what the VAD has seen


@dataclass(frozen=True)
class Cut:
    """One speech segment of the audio: its samples and ms from the start of the audio."""

    index: int
    start_ms: int
    end_ms: int
    samples: np.ndarray


class _Retained:
    """Audio from the last cut onwards, as a deque of blocks (counted in `budget`)."""

    def __init__(self, budget: AudioBudget | None = None) -> None:
        self.blocks: collections.deque[np.ndarray] = collections.deque()
        self.start = 0  # absolute sample index of the first retained sample
        self.end = 0  # absolute sample index after the last retained sample
        self.budget = budget

    async def append(self, block: np.ndarray) -> None:
        if self.budget is not None:
            await self.budget.take(block.nbytes)
        self.blocks.append(block)
        self.end += len(block)

    def release(self) -> None:
        """Give every kept block back to the budget (the request is over)."""
        while self.blocks:
            self._give(self.blocks.popleft())

    def _give(self, block: np.ndarray) -> None:
        if self.budget is not None:
            self.budget.give(block.nbytes)

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
            block = self.blocks.popleft()
            self.start += len(block)
            self._give(block)


class Segmenter:
    """Cuts one request's audio into speech segments with a VAD session."""

    def __init__(self, vad: VadPool, max_segment_ms: int,
                 budget: AudioBudget | None = None) -> None:
        self.vad = vad
        self.max_segment_ms = max_segment_ms
        self._retained = _Retained(budget)
        self._session: VadSession | None = None
        self._session_offset = 0  # absolute sample index where the current session began
        self._pushed = 0  # samples pushed to the current session
        self._cut = 0  # absolute sample index of the last segment end
        self._restarts = 0
        self._lost = LostWorkers()
        self.segments = 0
        self.total_samples = 0

    async def cuts(self, blocks: AsyncIterator[np.ndarray]) -> AsyncIterator[Cut]:
        """Consume all audio, yielding each segment as soon as the VAD completes it."""
        try:
            async for block in blocks:
                await self._retained.append(block)
                self.total_samples += len(block)
                # Strictly more than a chunk: the final push must never be empty (FunASR
                # returns at once on empty input without closing the last segment).
                while self._retained.end - (self._session_offset + self._pushed) \
                        > VAD_CHUNK_SAMPLES:
                    for cut in await self._push(final=False):
                        yield cut
            for cut in await self._push(final=True):
                yield cut
        finally:
            self.close()
            self._retained.release()

    async def _push(self, final: bool) -> list[Cut]:
        """Push the next chunk (or the final remainder) to the VAD, restarting it if lost."""
        while True:
            if self._session is None:
                self._session = await self.vad.open(self.max_segment_ms, self._lost)
            start = self._session_offset + self._pushed
            end = self._retained.end if final else start + VAD_CHUNK_SAMPLES
            chunk = self._retained.slice(start, end)
            try:
                segments = await self._session.push(chunk, final)
            except WorkerLost as exc:
                self._restart_vad(exc)
                continue
            self._pushed += len(chunk)
            cuts = [self._cut_out(s_ms, e_ms) for s_ms, e_ms in segments]
            self._forget_old_audio()
            if final:
                self.close()
            return cuts

    def _forget_old_audio(self) -> None:
        """Drop audio no future segment can reach: a segment still open began at most the
        longest segment (plus slack for the detector's look-back) before what was pushed, so
        long silence is not kept in memory."""
        pushed_end = self._session_offset + self._pushed
        window = (self.max_segment_ms + WINDOW_SLACK_MS) * SAMPLES_PER_MS
        self._retained.drop_before(max(self._cut, pushed_end - window))

    def _restart_vad(self, exc: Exception) -> None:
        """Open a fresh session later, starting at the last cut; no audio is lost."""
        self._restarts += 1
        log.warning("VAD session lost (%s); restarting from %.1f s", exc,
                    self._cut / SAMPLE_RATE)
        if self._session is not None:
            self._lost.add(self._session.worker)
        self.close()
        if self._restarts > MAX_VAD_RESTARTS:
            raise Unavailable(f"voice activity detection lost its worker {self._restarts} "
                              "times; retry later") from exc
        # From the last cut, or from the oldest audio still kept when long silence was dropped.
        self._session_offset, self._pushed = max(self._cut, self._retained.start), 0

    def _cut_out(self, s_ms: int, e_ms: int) -> Cut:
        """One segment (ms relative to the session) as absolute samples and times."""
        offset_ms = self._session_offset * 1000 // SAMPLE_RATE
        a = self._session_offset + int(s_ms * SAMPLES_PER_MS)  # FunASR cuts segments the same way
        b = min(self._session_offset + int(e_ms * SAMPLES_PER_MS), self._retained.end)
        samples = self._retained.slice(a, b)
        self._cut = max(self._cut, b)
        self._retained.drop_before(self._cut)
        index = self.segments
        self.segments += 1
        return Cut(index, s_ms + offset_ms, e_ms + offset_ms, samples)

    def close(self) -> None:
        if self._session is not None:
            self._session.close()
            self._session = None
