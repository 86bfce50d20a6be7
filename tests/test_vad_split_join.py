"""The join of parallel VAD pieces with a simulated FSMN-VAD (no processes, seconds): pieces
take over where they agree, a piece that never agrees is overtaken (still one-pass output),
and a VAD worker lost in the trusted or in an untrusted piece loses no speech."""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import AsyncIterator

import grpc
import numpy as np
import pytest

from protos.asr.worker.v1 import worker_pb2 as wpb
from protos.common.wire import SAMPLES_PER_MS, decode_pcm
from scheduler.longform import Segmenter
from scheduler.vad import VadPool
from scheduler.vad_split import ParallelSegmenter
from tests.fakes import ready_worker, rpc_error

SECONDS = 600
PIECE_S = 60


def truth_segments(seconds: int = SECONDS) -> list[tuple[int, int]]:
    """Speech of 1-40 s with pauses; a segment crosses many chunk boundaries."""
    rng = np.random.default_rng(5)
    out, t = [], 500
    while True:
        length = int(rng.integers(1000, 40000))
        if t + length > seconds * 1000 - 500:
            return out
        out.append((t, t + length))
        t += length + int(rng.integers(200, 3000))


class _Call:
    def __init__(self, gen: AsyncIterator[wpb.VadResponse]) -> None:
        self._gen = gen

    def __aiter__(self) -> AsyncIterator[wpb.VadResponse]:
        return self._gen

    def cancel(self) -> None:
        return None


class SimVadStub:
    """A stand-in for FSMN-VAD. The audio holds each sample's own index, so a session knows
    where in the file it began. A session from the start reports `truth` (each segment in
    the chunk where it ends). One begun mid-file reports its first chunk wrongly (one segment
    ending 10 ms late, as a real fresh session cuts differently) and in its second the
    first segment wrongly (a real one agrees from its first segment end on), or with `skew_ms` every
    end shifted, so that it never agrees. `fail_at`: the push (counted on this stub) whose
    stream breaks, as when the worker dies."""

    def __init__(self, truth: list[tuple[int, int]], skew_ms: int = 0,
                 fail_at: int | None = None) -> None:
        self.truth = truth
        self.skew_ms = skew_ms
        self.fail_at = fail_at
        self.pushes = 0

    def Segment(self, requests: AsyncIterator[wpb.VadRequest]) -> _Call:
        return _Call(self._run(requests))

    async def _run(self, requests: AsyncIterator[wpb.VadRequest]
                   ) -> AsyncIterator[wpb.VadResponse]:
        first: int | None = None
        pos = 0
        async for req in requests:
            x = decode_pcm(req.pcm, req.sample_format)
            self.pushes += 1
            if self.pushes == self.fail_at:
                raise rpc_error(grpc.StatusCode.UNAVAILABLE, "worker died")
            await asyncio.sleep(0.02)  # a chunk takes time, as on a real worker
            if first is None:
                first = int(x[0])
            a_ms, b_ms = (first + pos) // SAMPLES_PER_MS, (first + pos + len(x)) // SAMPLES_PER_MS
            done = [(s, e) for s, e in self.truth
                    if e > first // SAMPLES_PER_MS and (a_ms <= e < b_ms or
                                                        (req.is_final and e >= b_ms))]
            done = [(max(s, first // SAMPLES_PER_MS), min(e, b_ms)) for s, e in done]
            if first and done and pos == 0:
                done = [(done[0][0], done[-1][1] + 10)]
            elif first and len(done) > 1 and pos == len(x):  # the second chunk: only the
                done[0] = (done[0][0] - 5, done[0][1])  # last segment is right already
            if first and self.skew_ms:
                done = [(s, e + self.skew_ms) for s, e in done]
            pos += len(x)
            off = first // SAMPLES_PER_MS
            yield wpb.VadResponse(segments=[wpb.VadSegment(start_ms=s - off, end_ms=e - off)
                                            for s, e in done])


def pool(*stubs: SimVadStub) -> VadPool:
    return VadPool([ready_worker(f"vad#{i}", "vad", s, model="", is_cpu=True, role="vad")
                    for i, s in enumerate(stubs)])


async def segments(segmenter: Segmenter | ParallelSegmenter) -> list[tuple[int, int]]:
    samples = np.arange(SECONDS * 16000, dtype=np.float32)

    async def blocks() -> AsyncIterator[np.ndarray]:
        for i in range(0, len(samples), 48000):
            yield samples[i:i + 48000]
    out = []
    async for cut in segmenter.cuts(blocks()):
        assert np.array_equal(cut.samples[:1], [cut.start_ms * SAMPLES_PER_MS])  # its audio
        out.append((cut.start_ms, cut.end_ms))
    return out


async def test_pieces_take_over_and_join_to_the_one_pass_segments() -> None:
    truth = truth_segments()
    vad = pool(SimVadStub(truth), SimVadStub(truth))
    assert await segments(Segmenter(vad, 30000)) == truth
    parallel = ParallelSegmenter(vad, 30000, PIECE_S)
    assert await segments(parallel) == truth
    assert parallel.handovers >= 3
    assert all(w.in_flight == 0 for w in vad.workers)


async def test_a_piece_that_never_agrees_is_overtaken() -> None:
    truth = truth_segments()
    vad = pool(SimVadStub(truth, skew_ms=30), SimVadStub(truth, skew_ms=30))
    parallel = ParallelSegmenter(vad, 30000, PIECE_S)
    assert await segments(parallel) == truth
    assert parallel.handovers == 0


@pytest.mark.parametrize("failing", [0, 1])
async def test_a_lost_vad_worker_loses_no_speech(failing: int) -> None:
    """Worker 0 holds the trusted session (lost at its second chunk), worker 1 the first
    piece after it (lost at its first chunk, so before it can take over)."""
    truth = truth_segments()
    stubs = [SimVadStub(truth), SimVadStub(truth)]
    stubs[failing].fail_at = 2 if failing == 0 else 1
    parallel = ParallelSegmenter(pool(*stubs), 30000, PIECE_S)
    got = await segments(parallel)
    assert all(e1 <= s2 for (_, e1), (s2, _) in itertools.pairwise(got))  # in order
    for s, e in truth:  # every bit of speech is in some segment
        covered = sorted((max(s, a), min(e, b)) for a, b in got if a < e and b > s)
        assert covered and covered[0][0] == s and covered[-1][1] == e
        assert all(x[1] == y[0] for x, y in itertools.pairwise(covered))
    assert got[-3:] == truth[-3:]  # agreed again after the loss
    assert parallel.restarts == 1 and parallel.handovers >= 1
    if failing:  # an untrusted piece lost: the trusted output is untouched
        assert got == truth


def test_piece_length_is_whole_chunks() -> None:
    with pytest.raises(ValueError, match="multiple"):
        ParallelSegmenter(pool(), 30000, 90)
