"""Resuming a lost VAD session so that it segments exactly as one VAD pass would.

FSMN-VAD is stateful: a fresh session started at the last cut may segment what follows slightly
differently from the session it replaces. A replacement is therefore started earlier, at a chunk
boundary of the same 60 s grid the `Segmenter` feeds from sample 0, and is fed the same chunks
again without emitting anything until it provably reaches the state of the lost session:

* Sessions fed the same chunks on the same grid compute the same FSMN scores once they have seen
  about a second of audio (FunASR's left-context caches are shorter than that).
* After FSMN-VAD completes a segment it resets its detector. So when the replacement completes
  segments in a chunk where the lost session did too, and the last of them ends at the same
  frame (at least `WARMUP_MS` after the replacement began), both sessions are in the same state
  at the end of that chunk: the replacement has "synced", and from the next chunk on it
  computes what the lost session would have.

For that the `Segmenter` records, per chunk pushed, where the last segment the session completed
in it ended (`ChunkLog`). A replacement starts `RESUME_CHUNKS` chunks before the chunk in which
the last emitted segment was completed, so that much more audio is kept (about RESUME_CHUNKS + 1
chunks of 3.84 MB per request; none in long silence, where no replacement could sync). If it
never syncs within the replayed chunks, what it found there is emitted clipped to after the last
cut, as a restart from the last cut would (no audio is lost, nothing is emitted twice), and that
is logged.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from protos.common.wire import VAD_CHUNK_SAMPLES

C = VAD_CHUNK_SAMPLES
WARMUP_MS = 2000  # a replacement's segments are trusted for syncing only this long after it began
# How many chunks before the one where the last emitted segment was completed a replacement
# starts. A fresh FSMN-VAD session runs its first chunk with another end-silence threshold than
# FunASR's per-chunk schedule gives a running one, so it typically syncs 0-3 chunks after it
# began (measured on speech with 0.3-2 s pauses); each chunk kept costs 3.84 MB per request.
RESUME_CHUNKS = 3

Segment = tuple[int, int]  # start and end, ms from the start of the audio


class ChunkLog:
    """Per chunk index on the one-pass grid: where the last segment the emitting session
    completed in that chunk ends (absolute ms), or None when it completed none."""

    def __init__(self, resume_chunks: int = RESUME_CHUNKS) -> None:
        self.resume_chunks = resume_chunks
        self.last_end: dict[int, int | None] = {}
        self.done_chunk = -1  # the chunk in which the last emitted segment was completed

    def record(self, chunk: int, done: list[Segment]) -> None:
        self.last_end[chunk] = done[-1][1] if done else None

    def resume_point(self, horizon: int) -> int:
        """The grid sample a replacement session starts at, given `horizon`: the first sample
        a restart from the last cut would need (audio before it is never needed again). It is
        `resume_chunks` chunks before the chunk of the last emitted completion, never after the
        grid point at or before `horizon`; when nothing was completed within a chunk of the
        horizon (long silence), a replacement cannot sync, so it starts at that grid point."""
        grid = horizon // C * C
        if self.done_chunk < 0 or self.done_chunk * C < grid - C:
            return grid
        return max(0, min(grid, (self.done_chunk - self.resume_chunks) * C))

    def forget_before(self, sample: int) -> None:
        """Drop records of chunks that start before `sample` (their audio is gone)."""
        for chunk in [k for k in self.last_end if k * C < sample]:
            del self.last_end[chunk]

    def syncs(self, chunk: int, done: list[Segment], begin_ms: int) -> bool:
        """Whether a replacement that began at `begin_ms` and completed `done` in `chunk` is
        now in the state of the session that recorded the chunk."""
        if not done or self.last_end.get(chunk) is None:
            return False
        return done[-1][1] == self.last_end[chunk] and done[-1][1] >= begin_ms + WARMUP_MS


@dataclass
class Replay:
    """A replacement session replaying chunks [begin, until) before it may emit."""

    begin: int  # sample where the replacement session began (on the grid)
    until: int  # sample of the first chunk the lost session never completed
    synced: bool = False
    held: list[tuple[int, int, int]] = field(default_factory=list)  # (chunk, start, end) ms
    own: dict[int, int | None] = field(default_factory=dict)  # its records, before syncing

    def hold(self, chunk: int, done: list[Segment]) -> None:
        """Keep what an unsynced replacement completed in a replayed chunk."""
        self.held += [(chunk, s, e) for s, e in done]
        self.own[chunk] = done[-1][1] if done else None
