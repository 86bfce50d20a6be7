"""A lost VAD session is resumed so that the segments equal one VAD pass exactly: real FSMN-VAD
worker processes, sessions made to fail after N pushes (and one real kill -9 through the
service, whose text must equal the idle text)."""

from __future__ import annotations

import itertools
import logging
import os
import signal
import threading
import time
from collections.abc import AsyncIterator
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from scheduler.errors import WorkerLost
from scheduler.longform import Segmenter
from scheduler.vad import VadPool, VadSession
from scheduler.workers import LostWorkers
from tests.long_audio import speech_clips, write_recording
from tests.test_worker_loss import transcribe

pytestmark = pytest.mark.integration

MAX_SEGMENT_MS = 30000


class FailingSession:
    """A real VAD session that raises WorkerLost on the pushes its pool was told to fail."""

    def __init__(self, real: VadSession, pool: FailingVad) -> None:
        self.real, self.pool, self.worker = real, pool, real.worker

    async def push(self, chunk: np.ndarray, is_final: bool) -> list[tuple[int, int]]:
        self.pool.pushes += 1
        if self.pool.pushes in self.pool.fail_at:
            raise WorkerLost(f"test: push {self.pool.pushes} lost")
        return await self.real.push(chunk, is_final)

    def close(self) -> None:
        self.real.close()


class FailingVad:
    """The real VAD pool, whose sessions fail at the given push numbers (counted over all
    sessions of one request, replays included)."""

    def __init__(self, real: VadPool, fail_at: tuple[int, ...]) -> None:
        self.real, self.fail_at, self.pushes, self.opened = real, fail_at, 0, 0

    async def open(self, max_segment_ms: int, avoid: LostWorkers | None = None
                   ) -> FailingSession:
        self.opened += 1
        # The loss is simulated, so the worker need not be avoided (it is not restarting).
        return FailingSession(await self.real.open(max_segment_ms), self)


async def segments_of(vad: VadPool | FailingVad, samples: np.ndarray, resume_chunks: int = 3
                      ) -> list[tuple[int, int]]:
    async def blocks() -> AsyncIterator[np.ndarray]:
        for i in range(0, len(samples), 16000 * 7):  # 7 s blocks: off the 60 s grid
            yield samples[i:i + 16000 * 7]

    seg = Segmenter(vad, MAX_SEGMENT_MS, resume_chunks=resume_chunks)  # type: ignore[arg-type]
    out = []
    async for cut in seg.cuts(blocks()):
        assert len(cut.samples) == (min(cut.end_ms * 16, len(samples)) - cut.start_ms * 16)
        out.append((cut.start_ms, cut.end_ms))
    return out


def run_with_losses(svc, pool: VadPool, samples: np.ndarray, fail_at: tuple[int, ...],  # type: ignore[no-untyped-def]
                    caplog, resume_chunks: int = 3) -> list[tuple[int, int]]:
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="scheduler.longform"):
        failing = FailingVad(pool, fail_at)
        got: list[tuple[int, int]] = svc.call(segments_of(failing, samples, resume_chunks))
    assert failing.opened == len(fail_at) + 1
    return got


@pytest.fixture(scope="module")
def recording(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("resume")
    return write_recording(d / "300s.wav", 300.0, speech_clips(d), seed=16)


def test_lost_vad_sessions_resume_to_the_one_pass_segments(  # type: ignore[no-untyped-def]
        start_service, models_dir: Path, recording: Path, caplog) -> None:
    svc = start_service(models_dir / "sensevoice-tiny", vad_model=str(models_dir / "fsmn-vad"),
                        vad_workers=2, devices="sim:1")
    pool = VadPool(svc.service.vad_workers)
    samples = sf.read(recording, dtype="float32")[0]
    one_pass = svc.call(segments_of(pool, samples))
    assert len(one_pass) > 40 and one_pass[-1][1] > 290_000
    # 300 s is pushed as 4 chunks of 60 s and a final one; replays count as pushes. Losses on
    # chunks 2 and 3, on the final push, on a replayed push, and several in one request.
    for fail_at in [(3,), (4,), (5,), (2, 4, 7)]:
        got = run_with_losses(svc, pool, samples, fail_at, caplog)
        assert got == one_pass, f"losses at pushes {fail_at}"
        assert "replaying from" in caplog.text and "did not sync" not in caplog.text
        assert "in step" in caplog.text, fail_at


def test_replacement_started_mid_file_syncs_or_clips(  # type: ignore[no-untyped-def]
        start_service, models_dir: Path, recording: Path, caplog) -> None:
    """One chunk of replay: a replacement from 120 s syncs at once; one from 60 s does not
    within the replayed chunks (FunASR's first-chunk end-silence threshold differs) and falls
    back to clipping at the last cut: nothing lost, nothing twice."""
    svc = start_service(models_dir / "sensevoice-tiny", vad_model=str(models_dir / "fsmn-vad"),
                        vad_workers=2, devices="sim:1")
    pool = VadPool(svc.service.vad_workers)
    samples = sf.read(recording, dtype="float32")[0]
    one_pass = svc.call(segments_of(pool, samples))
    synced = 0
    for fail_at in [(4,), (5,)]:
        got = run_with_losses(svc, pool, samples, fail_at, caplog, resume_chunks=1)
        assert "replaying from 0.0 s" not in caplog.text  # a replay from mid-file
        if "did not sync" in caplog.text:
            cut = int(caplog.text.split("clipped at the last cut (")[1].split(" s)")[0]
                      .replace(".", "")) * 100
            kept = [s for s in one_pass if s[1] <= cut - 100]
            assert got[:len(kept)] == kept
            assert all(a <= b < c for (_, a), (b, c) in itertools.pairwise(got)), got
            assert got[len(kept)][0] >= kept[-1][1] and got[-1][1] == one_pass[-1][1]
        else:
            assert "in step" in caplog.text
            assert got == one_pass, f"losses at pushes {fail_at}"
            synced += 1
    assert synced >= 1


def test_kill_9_of_the_vad_worker_mid_file_keeps_the_idle_text(  # type: ignore[no-untyped-def]
        start_service, models_dir: Path, recording: Path, caplog) -> None:
    svc = start_service(models_dir / "sensevoice-tiny", vad_model=str(models_dir / "fsmn-vad"),
                        vad_workers=2, devices="sim:1", cpu_fallback="never")
    data = recording.read_bytes()
    idle_text = transcribe(svc.address, data)
    assert idle_text.strip()
    caplog.clear()
    victims: list[int] = []

    def killer() -> None:  # the busy VAD worker, once it has segmented two chunks
        deadline = time.monotonic() + 120
        while "VAD chunk 2 pushed:" not in caplog.text and time.monotonic() < deadline:
            time.sleep(0.02)
        busy = [w for w in svc.service.vad_workers if w.in_flight > 0]
        if busy:
            victims.append(busy[0].pid)
            os.kill(busy[0].pid, signal.SIGKILL)

    with caplog.at_level(logging.DEBUG, logger="scheduler.longform"):
        thread = threading.Thread(target=killer)
        thread.start()
        text = transcribe(svc.address, data, 0.05)  # paced: the kill lands mid-file
        thread.join()
    assert victims, "the VAD worker was not killed mid-file"
    assert "VAD session lost" in caplog.text and "in step" in caplog.text
    assert text == idle_text


def test_a_session_lost_again_and_again_at_one_point_gives_up(  # type: ignore[no-untyped-def]
        start_service, models_dir: Path, recording: Path) -> None:
    """A poison input (every session dies on the same chunk) ends in UNAVAILABLE after
    MAX_VAD_RESTARTS losses in a row; losses spread over a request's life do not add up
    (`Stalls`, below, and the slow fault-load test, where long requests outlive many kills)."""
    from scheduler.errors import Unavailable
    from scheduler.longform import MAX_VAD_RESTARTS

    svc = start_service(models_dir / "sensevoice-tiny", vad_model=str(models_dir / "fsmn-vad"),
                        vad_workers=2, devices="sim:1")
    samples = sf.read(recording, dtype="float32")[0]

    class Poison(FailingVad):  # a session dies once it has been given 120 s of audio (each
        # replacement replays from 0 s here, so every session dies at the same point)
        async def open(self, max_segment_ms: int, avoid: LostWorkers | None = None
                       ) -> FailingSession:
            session = await super().open(max_segment_ms, avoid)
            real_push = session.push

            async def push(chunk: np.ndarray, is_final: bool) -> list[tuple[int, int]]:
                if session.at >= 120 * 16000:
                    raise WorkerLost("test: poison chunk")
                got = await real_push(chunk, is_final)
                session.at += len(chunk)
                return got

            session.at = 0  # type: ignore[attr-defined]
            session.push = push  # type: ignore[method-assign]
            return session

    poison = Poison(VadPool(svc.service.vad_workers), ())
    with pytest.raises(Unavailable, match="without progress"):
        svc.call(segments_of(poison, samples))
    assert poison.opened == MAX_VAD_RESTARTS + 1


def test_stalls_count_losses_in_a_row_without_progress() -> None:
    from scheduler.workers import Stalls

    stalls = Stalls(2)
    assert not stalls.lost(100) and not stalls.lost(100)  # two in a row at one point
    assert stalls.lost(100), "a third without progress gives up"
    spread = Stalls(2)
    assert not any(spread.lost(reached) for reached in range(10, 1000, 10)), "progress resets"
    assert spread.in_a_row == 1
    back = Stalls(1)
    assert not back.lost(500)
    assert back.lost(300), "a loss behind the furthest point is no progress"
