"""Long audio cut into speech segments by VAD as it arrives.

Audio blocks (16 kHz mono float32) come in; full 60 s chunks go to a VAD session; each segment
the VAD completes comes out at once as a `Cut` (its samples and absolute times), so the caller
can recognise it while later audio is still arriving. Memory stays bounded whatever the length:
only audio after the last cut that a future segment can still reach is kept (at most a VAD
chunk plus the longest segment, however long a silence lasts), plus a few chunks before it for
a replacement VAD session to replay, and the next block is read only when the caller asks for
the next cut (backpressure reaches the client through gRPC flow control). A VAD worker lost
mid-file is replaced by a new session that replays chunks before the last cut until it is in
step with the lost one (see `scheduler.vad_resume`), so no audio is lost, nothing is emitted
twice and the segments are those of one VAD pass.
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
from scheduler.vad_resume import RESUME_CHUNKS, ChunkLog, Replay
from scheduler.workers import LostWorkers, Stalls

log = logging.getLogger(__name__)

MAX_VAD_RESTARTS = 6  # VAD worker losses in a row, without progress, one request survives
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

    def __init__(self, vad: VadPool, max_segment_ms: int, budget: AudioBudget | None = None,
                 resume_chunks: int = RESUME_CHUNKS) -> None:
        self.vad = vad
        self.max_segment_ms = max_segment_ms
        self._retained = _Retained(budget)
        self._session: VadSession | None = None
        self._session_offset = 0  # absolute sample where the current session began (on the grid)
        self._pos = 0  # absolute sample of the next chunk to push
        self._cut = 0  # absolute sample index of the last segment end
        self._log = ChunkLog(resume_chunks)
        self._replay: Replay | None = None  # a replacement session not yet past the loss
        self._stalls = Stalls(MAX_VAD_RESTARTS)
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
                while self._retained.end - self._pos > VAD_CHUNK_SAMPLES:
                    for cut in await self._push(final=False):
                        yield cut
            for cut in await self._push(final=True):
                yield cut
        finally:
            self.close()
            self._retained.release()

    async def _push(self, final: bool) -> list[Cut]:
        """Push the next chunk (or the final remainder) to the VAD, restarting it if lost
        (a replacement first replays the chunks the lost session had seen)."""
        cuts: list[Cut] = []
        while True:
            if self._session is None:
                self._session = await self.vad.open(self.max_segment_ms, self._lost)
            start = self._pos
            replay = self._replay if self._replay and start < self._replay.until else None
            last = final and replay is None
            chunk = self._retained.slice(
                start, self._retained.end if last else start + VAD_CHUNK_SAMPLES)
            try:
                segments = await self._session.push(chunk, last)
            except WorkerLost as exc:
                self._restart_vad(exc)
                continue
            self._pos += len(chunk)
            begin_ms = self._session_offset // SAMPLES_PER_MS
            done = [(s + begin_ms, e + begin_ms) for s, e in segments]
            k = start // VAD_CHUNK_SAMPLES
            log.debug("VAD chunk %d pushed%s: %d segments completed", k,
                      " (replay)" if replay else "", len(done))
            if replay is not None:
                cuts += self._replayed(replay, k, done)
                continue
            self._log.record(k, done)
            cuts += [c for s, e in done if (c := self._cut_out(k, s, e)) is not None]
            self._forget_old_audio()
            if last:
                self.close()
            return cuts

    def _replayed(self, replay: Replay, k: int, done: list[tuple[int, int]]) -> list[Cut]:
        """What a replacement completed in a chunk the lost session had already seen: nothing
        is emitted until it syncs; if it never does, its segments are clipped to the last cut."""
        if replay.synced:  # equal to what the lost session completed: all before the cut
            return [c for s, e in done if (c := self._cut_out(k, s, e)) is not None]
        if self._log.syncs(k, done, replay.begin // SAMPLES_PER_MS):
            replay.synced, replay.held = True, []
            log.info("VAD replacement session in step from %.1f s", self._pos / SAMPLE_RATE)
            return []
        replay.hold(k, done)
        return self._fall_back(replay) if self._pos >= replay.until else []

    def _fall_back(self, replay: Replay) -> list[Cut]:
        """The replacement never synced: go on with it, clipping at the last cut."""
        log.warning("VAD replacement session from %.1f s did not sync by %.1f s; its segments "
                    "are clipped at the last cut (%.1f s)", replay.begin / SAMPLE_RATE,
                    replay.until / SAMPLE_RATE, self._cut / SAMPLE_RATE)
        self._log.last_end.update(replay.own)
        held, replay.held = replay.held, []
        return [c for k, s, e in held if (c := self._cut_out(k, s, e)) is not None]

    def _horizon(self) -> int:
        """The oldest sample a restart from the last cut could need: a segment still open
        began at most the longest segment (plus slack for the detector's look-back) before
        what was pushed, so long silence is not kept in memory."""
        pushed_end = max(self._pos, self._replay.until if self._replay else 0)
        window = (self.max_segment_ms + WINDOW_SLACK_MS) * SAMPLES_PER_MS
        return max(self._cut, pushed_end - window)

    def _forget_old_audio(self) -> None:
        """Drop audio neither a future segment nor a replacement session can reach."""
        keep = self._log.resume_point(self._horizon())
        self._retained.drop_before(keep)
        self._log.forget_before(keep)

    def _restart_vad(self, exc: Exception) -> None:
        """Open a fresh session later, on the chunk grid before the last cut; no audio is
        lost and, once it syncs, it segments as the lost session would have."""
        if self._session is not None:
            self._lost.add(self._session.worker)
        self.close()
        until = max(self._pos, self._replay.until if self._replay else 0)
        if self._stalls.lost(until):
            raise Unavailable(f"voice activity detection lost its worker "
                              f"{self._stalls.in_a_row} times at {until / SAMPLE_RATE:.1f} s "
                              "without progress; retry later") from exc
        begin = self._log.resume_point(self._horizon())
        if begin < self._retained.start:  # cannot happen: _forget_old_audio keeps it
            log.error("VAD resume point %d is no longer kept (from %d)", begin,
                      self._retained.start)
        if begin >= until:
            log.warning("VAD session lost (%s); nothing to replay, so segments from %.1f s are "
                        "clipped at the last cut (%.1f s)", exc, begin / SAMPLE_RATE,
                        self._cut / SAMPLE_RATE)
        log.warning("VAD session lost (%s); replaying from %.1f s to %.1f s (last cut %.1f s)",
                    exc, begin / SAMPLE_RATE, until / SAMPLE_RATE, self._cut / SAMPLE_RATE)
        self._replay = Replay(begin, until)
        self._session_offset = self._pos = begin

    def _cut_out(self, chunk: int, s_ms: int, e_ms: int) -> Cut | None:
        """One segment (absolute ms) completed in `chunk`, as samples after the last cut;
        None when it ends at or before the last cut (it was emitted already)."""
        a = max(int(s_ms * SAMPLES_PER_MS), self._cut)  # FunASR cuts segments the same way
        b = min(int(e_ms * SAMPLES_PER_MS), self._retained.end)
        if b <= self._cut:
            return None
        samples = self._retained.slice(a, b)
        self._cut = b
        self._log.done_chunk = chunk
        self._forget_old_audio()
        index = self.segments
        self.segments += 1
        return Cut(index, max(s_ms, a // SAMPLES_PER_MS), e_ms, samples)

    def close(self) -> None:
        if self._session is not None:
            self._session.close()
            self._session = None
