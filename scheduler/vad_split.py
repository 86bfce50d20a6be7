"""Parallel VAD of one long file: pieces segmented on several VAD workers at once, joined so
that the segments equal one VAD pass over the whole file.

FSMN-VAD is stateful, so a session that starts in the middle of a file may segment its first
seconds differently from the one-pass run. The join therefore never trusts a piece from where
it starts; it trusts it from where its state provably equals the one-pass state:

* Cut points are fixed: piece k starts at k * `piece_s`, a multiple of the 60 s VAD chunk, and
  every session is fed the same 60 s chunks as the one-pass run (the same sample ranges, the
  same chunk numbers). FunASR computes features and FSMN scores chunk by chunk with a cache of
  under a second of left context (4 FSMN layers of 20 frames, LFR of 5 frames); once a session
  has seen that much audio, its scores for a chunk are computed from the same inputs with the
  same tensor shapes as in the one-pass run, so they are the same numbers.
* After FSMN-VAD completes a segment it resets its detector (state machine, smoothing window,
  silence counters); what survives the reset is the absolute frame where the next segment may
  start (the end of the one just completed), the score and feature caches (equal, see above),
  the noise level (inert: it only feeds an SNR test whose threshold, -100 dB, every 25 ms frame
  passes) and FunASR's per-chunk end-silence schedule, which restarts at zero after any chunk
  that completed a segment; within the chunk it only decides where a segment ends.
* So when the session trusted so far (the one-pass run or a piece already joined to it) and
  the next piece both complete segments in the same chunk and the last of them ends at the
  same frame in both, at least `WARMUP_MS` after the piece's session began, both are in the
  same state at the end of that chunk: both reset there, saw the same frames after it, and
  neither ended another segment before the chunk's end, so the end-silence schedule (the one
  thing that may differ within the chunk, and only decides where a segment ends) changed
  nothing; both restart the schedule at zero. Where earlier segments of that chunk differ
  does not matter: the trusted session's are the ones kept. From the next chunk on the piece
  computes what the one-pass run would, so whichever of the two is further ahead goes on as
  the trusted session and the other is closed (agreement is checked whenever both have
  results for a chunk the trusted session's segments were already taken from, in whatever
  order they arrive).
* A piece that never agrees is simply overtaken: the trusted session runs on through it (and
  compares with the pieces after it), which is the one-pass run itself. The result is
  identical to one pass in every case; the speed comes from pieces that agree early, which in
  speech with pauses happens within a chunk or two after the cut. Chunks without any
  segment prove nothing, so in long silence a piece only duplicates the trusted session's
  work until speech returns.

At most as many pieces as VAD workers run at once; a piece not yet trusted stops a couple of
chunks past where the trusted session is or its own piece ends, so memory stays bounded by the
pieces in flight. Short files never start a second piece (one more than `piece_s` plus a chunk
is needed), so they are segmented exactly as by `Segmenter`. A lost VAD worker is survived: an
untrusted piece starts again with a fresh session at its current chunk; the trusted session
starts again at the chunk holding the last cut and its segments are clipped to after that cut
(as `Segmenter` restarts from the last cut): no audio is lost, though segments near the loss
may then differ from one pass.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import numpy as np

from protos.common.wire import SAMPLE_RATE, SAMPLES_PER_MS, VAD_CHUNK_MS, VAD_CHUNK_SAMPLES
from scheduler.errors import Unavailable, WorkerLost
from scheduler.limits import AudioBudget
from scheduler.longform import MAX_VAD_RESTARTS, WINDOW_SLACK_MS, Cut, _Retained
from scheduler.vad import VadPool, VadSession
from scheduler.workers import LostWorkers, Stalls

log = logging.getLogger(__name__)

C = VAD_CHUNK_SAMPLES
WARMUP_MS = 2000  # a piece's segments are compared only this long after its session began
AHEAD_CHUNKS = 2  # an untrusted piece runs this many chunks past its end or the trusted one


@dataclass
class _Piece:
    """One VAD session over the audio from `begin` (a multiple of the chunk) onwards."""

    begin: int
    pos: int = 0  # absolute sample of the next chunk to push
    reach: int = 0  # where the piece will be once the chunk it is pushing returns
    fresh_from: int = 0  # where the current session began (moves on a restart)
    records: dict[int, list[tuple[int, int]]] = field(default_factory=dict)  # chunk -> segs
    trusted: bool = False
    finished: bool = False
    session: VadSession | None = None
    task: asyncio.Task[None] | None = None
    wake: asyncio.Event = field(default_factory=asyncio.Event)
    stalls: Stalls = field(default_factory=lambda: Stalls(MAX_VAD_RESTARTS))

    def __post_init__(self) -> None:
        self.pos = self.fresh_from = self.reach = self.begin


class _Source:
    """The input blocks, read into the retained audio by one reader task (never cancelled
    mid-read, so a stopped piece cannot break the input) only as far as some piece needs."""

    def __init__(self, blocks: AsyncIterator[np.ndarray], retained: _Retained,
                 changed: asyncio.Event) -> None:
        self.blocks = blocks
        self.retained = retained
        self.changed = changed
        self.exhausted = False
        self._want = 0
        self._cond = asyncio.Condition()

    async def until(self, end: int) -> None:
        """Wait until the audio reaches sample `end` or the input ends."""
        async with self._cond:
            if end > self._want:
                self._want = end
                self._cond.notify_all()
            await self._cond.wait_for(lambda: self.exhausted or self.retained.end >= end)

    async def read(self) -> None:
        """The reader task: blocks in while some piece wants more."""
        try:
            while True:
                async with self._cond:
                    await self._cond.wait_for(lambda: self.retained.end < self._want)
                try:
                    block = await anext(self.blocks)
                except StopAsyncIteration:
                    return
                await self.retained.append(block)
                async with self._cond:
                    self._cond.notify_all()
        finally:
            self.exhausted = True
            self.changed.set()
            async with self._cond:
                self._cond.notify_all()


class ParallelSegmenter:
    """Cuts one request's audio into speech segments with VAD sessions on several workers;
    the same interface and the same segments as `Segmenter`."""

    def __init__(self, vad: VadPool, max_segment_ms: int, piece_s: int,
                 budget: AudioBudget | None = None) -> None:
        if piece_s <= 0 or piece_s * 1000 % VAD_CHUNK_MS:
            raise ValueError(f"piece length {piece_s} s is not a positive multiple of the "
                             f"{VAD_CHUNK_MS // 1000} s VAD chunk")
        self.vad = vad
        self.max_segment_ms = max_segment_ms
        self.piece = piece_s * 1000 * SAMPLES_PER_MS
        self.width = max(1, len(vad.workers))
        self._retained = _Retained(budget)
        self._source: _Source | None = None
        self._reader: asyncio.Task[None] | None = None
        self._pieces: list[_Piece] = []  # live pieces in order of `begin`, the trusted first
        self._changed = asyncio.Event()
        self._lost = LostWorkers()
        self.restarts = 0
        self._cut = 0  # absolute sample after the last cut
        self._cut_ms = 0
        self._next_emit = 0  # next chunk number of the trusted piece to emit
        self._restart_at = 0  # only moves forwards (see `_restart_point`)
        self.segments = 0
        self.handovers = 0  # pieces that took over from the trusted session (for tests, logs)

    @property
    def total_samples(self) -> int:
        return self._retained.end

    async def cuts(self, blocks: AsyncIterator[np.ndarray]) -> AsyncIterator[Cut]:
        """Consume all audio, yielding each segment (in time order) once it is trusted."""
        self._source = _Source(blocks, self._retained, self._changed)
        self._reader = asyncio.get_running_loop().create_task(self._source.read())
        self._launch(_Piece(0, trusted=True))
        try:
            while True:
                if self._reader.done():
                    self._reader.result()  # input that fails to decode fails the request
                for piece in self._pieces:
                    if piece.task is not None and piece.task.done():
                        piece.task.result()  # a piece that failed fails the request
                for cut in self._emit():
                    yield cut
                trusted = self._pieces[0]
                if trusted.finished and self._next_emit not in trusted.records:
                    return
                self._drop_overtaken()
                self._top_up()
                self._forget_old_audio()
                await self._changed.wait()
                self._changed.clear()
        finally:
            self.close()
            self._retained.release()

    # -- the join ------------------------------------------------------------------------------

    def _emit(self) -> list[Cut]:
        """The trusted session's completed chunks as cuts, joining pieces as they agree."""
        cuts: list[Cut] = []
        while True:
            self._join()
            segments = self._pieces[0].records.get(self._next_emit)
            if segments is None:
                return cuts
            for s_ms, e_ms in segments:
                if e_ms > self._cut_ms:
                    cuts.append(self._cut_out(max(s_ms, self._cut_ms), e_ms))
            self._next_emit += 1

    def _agree(self, trusted: _Piece, piece: _Piece, chunk: int) -> bool:
        """Whether both sessions are in the same state after `chunk` (see the module doc)."""
        mine, theirs = trusted.records.get(chunk), piece.records.get(chunk)
        return bool(mine and theirs and mine[-1][1] == theirs[-1][1]
                    and mine[-1][1] >= piece.fresh_from // SAMPLES_PER_MS + WARMUP_MS)

    def _join(self) -> None:
        """Once the trusted session and a later piece agree after some chunk, they compute the
        same from there on: keep whichever is further ahead (and drop the pieces between)."""
        trusted = self._pieces[0]
        for i in range(len(self._pieces) - 1, 0, -1):
            piece = self._pieces[i]
            # Only after chunks the trusted session's own segments were taken from.
            if not any(self._agree(trusted, piece, c) for c in list(piece.records)
                       if c < self._next_emit):
                continue
            if piece.reach >= trusted.reach:  # on a tie either will do
                log.debug("VAD piece from %d s takes over at %d s", piece.begin
                          // (1000 * SAMPLES_PER_MS), piece.pos // (1000 * SAMPLES_PER_MS))
                for old in self._pieces[:i]:
                    self._stop(old)
                self._pieces = self._pieces[i:]
                piece.trusted = True
                piece.wake.set()
                self.handovers += 1
            else:  # the trusted session is ahead on the same path: the piece is redundant
                for old in self._pieces[1:i + 1]:
                    self._stop(old)
                self._pieces = [trusted, *self._pieces[i + 1:]]
            return

    def _drop_overtaken(self) -> None:
        """Forget untrusted pieces that ended with nothing to compare (no audio for them)."""
        keep = [self._pieces[0]]
        for piece in self._pieces[1:]:
            if piece.finished and not piece.records:
                self._stop(piece)
            else:
                keep.append(piece)
        self._pieces = keep

    def _top_up(self) -> None:
        """Start pieces at the next cut points while fewer than one per VAD worker run."""
        assert self._source is not None
        while len(self._pieces) < self.width:
            last = self._pieces[-1]
            begin = (max(last.begin, last.pos if last.trusted else 0) // self.piece + 1) \
                * self.piece
            if self._source.exhausted and begin + C >= self._retained.end:
                return
            self._launch(_Piece(begin))

    def _limit(self, piece: _Piece) -> int:
        """How far an untrusted piece may run ahead."""
        trusted = self._pieces[0] if self._pieces else piece
        return max(piece.begin + self.piece, trusted.pos) + AHEAD_CHUNKS * C

    def _forget_old_audio(self) -> None:
        """Keep what a restart, a push or a segment still open in any piece may need."""
        window = self._window()
        keep = min([self._restart_point(), *(p.pos - window for p in self._pieces)])
        self._retained.drop_before(max(0, keep))

    def _window(self) -> int:
        return (self.max_segment_ms + WINDOW_SLACK_MS) * SAMPLES_PER_MS + C

    def _restart_point(self) -> int:
        """Where the trusted session starts again if lost: the chunk holding the last cut, or
        (after long silence) one holding the oldest audio an open segment may reach. It only
        moves forwards, so the audio it needs is always kept."""
        here = max(self._cut, self._pieces[0].pos - self._window(), 0) // C * C
        self._restart_at = max(self._restart_at, here)
        return self._restart_at

    def _cut_out(self, s_ms: int, e_ms: int) -> Cut:
        a = s_ms * SAMPLES_PER_MS
        b = min(e_ms * SAMPLES_PER_MS, self._retained.end)
        samples = self._retained.slice(a, b)
        self._cut, self._cut_ms = max(self._cut, b), max(self._cut_ms, e_ms)
        index = self.segments
        self.segments += 1
        return Cut(index, s_ms, e_ms, samples)

    # -- the pieces ----------------------------------------------------------------------------

    def _launch(self, piece: _Piece) -> None:
        self._pieces.append(piece)
        piece.task = asyncio.get_running_loop().create_task(self._run(piece))

    async def _run(self, piece: _Piece) -> None:
        """Feed one piece's session chunk by chunk until it ends, is stopped or overtaken."""
        assert self._source is not None
        try:
            # A piece after the first needs more than a chunk of audio, else the trusted
            # session covers the tail alone.
            await self._source.until(piece.begin + (C + 1 if piece.begin else 1))
            if piece.begin and self._retained.end <= piece.begin + C:
                piece.finished = True
                return
            while True:
                while not piece.trusted and piece.pos >= self._limit(piece):
                    piece.wake.clear()
                    await piece.wake.wait()
                await self._source.until(piece.pos + C + 1)
                final = self._retained.end <= piece.pos + C
                end = self._retained.end if final else piece.pos + C
                if end <= piece.pos:  # no audio at all
                    piece.finished = True
                    return
                await self._push(piece, self._retained.slice(piece.pos, end), final)
                if piece.finished:
                    return
        finally:
            self._changed.set()

    async def _push(self, piece: _Piece, chunk: np.ndarray, final: bool) -> None:
        """One chunk through the piece's session; a lost session starts again fresh."""
        piece.reach = piece.pos + len(chunk)
        while True:
            if piece.session is None:
                piece.session = await self.vad.open(self.max_segment_ms, self._lost)
            try:
                segments = await piece.session.push(chunk, final)
                break
            except WorkerLost as exc:
                self._restart(piece, exc)
                return  # the caller pushes again from the piece's (new) position
        offset_ms = piece.fresh_from // SAMPLES_PER_MS
        piece.records[piece.pos // C] = [(s + offset_ms, e + offset_ms) for s, e in segments]
        piece.pos += len(chunk)
        if final:
            piece.finished = True
        for other in self._pieces:
            other.wake.set()  # the trusted session moved: untrusted ones may run further
        self._changed.set()

    def _restart(self, piece: _Piece, exc: Exception) -> None:
        """A fresh session: an untrusted piece at its current chunk; the trusted one at the
        chunk holding the last cut (its segments are clipped to after the cut)."""
        self.restarts += 1
        if piece.session is not None:
            self._lost.add(piece.session.worker)
            piece.session.close()
            piece.session = None
        if piece.stalls.lost(piece.reach):
            raise Unavailable(f"voice activity detection lost its worker "
                              f"{piece.stalls.in_a_row} times at "
                              f"{piece.reach / SAMPLE_RATE:.1f} s without progress; retry "
                              "later") from exc
        if piece.trusted:
            piece.pos = min(piece.pos, self._restart_point())
            self._next_emit = piece.pos // C
        piece.fresh_from = piece.reach = piece.pos
        piece.records.clear()
        log.warning("VAD session lost (%s); piece at %.0f s starts again at %.1f s", exc,
                    piece.begin / (1000 * SAMPLES_PER_MS), piece.pos / (1000 * SAMPLES_PER_MS))

    def _stop(self, piece: _Piece) -> None:
        if piece.task is not None:
            piece.task.cancel()
        if piece.session is not None:
            piece.session.close()
            piece.session = None

    def close(self) -> None:
        if self._reader is not None:
            self._reader.cancel()
        for piece in self._pieces:
            self._stop(piece)
