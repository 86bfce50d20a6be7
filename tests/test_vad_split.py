"""Parallel VAD of one long file on real FSMN-VAD workers: the pieces, joined, give exactly the
segments of one VAD pass (and of FunASR's own offline VAD), with speech across the cut points;
the text through the service is unchanged."""

from __future__ import annotations

import functools
import os
import signal
import threading
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from client.library import AsrClient
from protos.asr.v1 import asr_pb2 as pb
from protos.common.wire import SAMPLE_RATE
from scheduler.longform import Segmenter
from scheduler.vad import VadPool
from scheduler.vad_split import ParallelSegmenter
from tests.conftest import RunningService, make_config
from tests.long_audio import speech_clips, write_recording

pytestmark = pytest.mark.integration

PIECE_S = 60  # the shortest piece: a cut point every VAD chunk, the hardest case
SECONDS = 260.0


@pytest.fixture(scope="module")
def recording(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("split")
    return write_recording(d / "260s.wav", SECONDS, speech_clips(d), seed=11)


@pytest.fixture(scope="module")
def service(models_dir: Path) -> Iterator[RunningService]:
    """Sensevoice-tiny and two real FSMN-VAD workers, pieces of a minute."""
    svc = RunningService(make_config(models_dir / "sensevoice-tiny",
                                     vad_model=str(models_dir / "fsmn-vad"), vad_workers=2,
                                     vad_split_s=PIECE_S))
    try:
        svc.wait_all_ready()
        yield svc
    finally:
        svc.stop()


@functools.lru_cache(maxsize=2)
def funasr_offline_vad(vad_dir: str, wav: str) -> list[tuple[int, int]]:
    """FunASR's own offline FSMN-VAD over the whole file, in this process."""
    from funasr import AutoModel

    model = AutoModel(model=vad_dir, disable_update=True, device="cpu", disable_pbar=True,
                      disable_log=True, ncpu=1, max_single_segment_time=30000)
    samples = sf.read(wav, dtype="float32")[0]
    return [(int(s), int(e)) for s, e in model.generate(input=samples)[0]["value"]]


async def _blocks(samples: np.ndarray) -> AsyncIterator[np.ndarray]:
    for i in range(0, len(samples), SAMPLE_RATE):
        yield samples[i:i + SAMPLE_RATE]


async def _warm(pool: VadPool) -> None:
    """A first call on each VAD worker (its one-off start-up cost is not what is compared)."""
    sessions = [await pool.open(30000) for _ in pool.workers]
    for session in sessions:
        await session.push(np.zeros(SAMPLE_RATE, dtype=np.float32), True)
        session.close()


async def _segment(segmenter: Segmenter | ParallelSegmenter,
                   samples: np.ndarray) -> list[tuple[int, int, int]]:
    """(start_ms, end_ms, number of samples) of every cut, in order."""
    return [(c.start_ms, c.end_ms, len(c.samples))
            async for c in segmenter.cuts(_blocks(samples))]


def test_parallel_vad_equals_one_pass_vad(service: RunningService, models_dir: Path,
                                          recording: Path) -> None:
    vad_dir = str(models_dir / "fsmn-vad")
    svc = service
    pool = svc.service.pipeline.vad
    assert len(pool.workers) == 2
    samples = sf.read(str(recording), dtype="float32")[0]
    svc.call(_warm(pool))
    assert {w.spec.worker_id for w in pool.workers if w.in_flight == 0} == {"vad#0", "vad#1"}

    # Chunks go to the VAD workers through their shared PCM arenas (counted here), and a
    # chunk's block is free again once its answer is back.
    arenas = [w.link.arena for w in pool.workers if w.link is not None]
    assert len(arenas) == 2 and all(a is not None for a in arenas)
    placed: list[int] = []
    for arena in arenas:
        put = arena.put

        def counted(chunk: np.ndarray, put=put) -> object:  # type: ignore[no-untyped-def]
            block = put(chunk)
            placed.append(0 if block is None else block.num_bytes)
            return block

        arena.put = counted  # type: ignore[method-assign]
    one_pass = svc.call(_segment(Segmenter(pool, 30000), samples))
    parallel = ParallelSegmenter(pool, 30000, PIECE_S)
    joined = svc.call(_segment(parallel, samples))
    assert len(placed) >= SECONDS // 60 and all(n > 0 for n in placed)
    assert all(a.in_use == 0 for a in arenas)  # type: ignore[union-attr]
    for w in pool.workers:  # and inline, without the arenas: the same segments
        assert w.link is not None
        w.link.arena = None
    try:
        inline = svc.call(_segment(Segmenter(pool, 30000), samples))
    finally:
        for w, arena in zip(pool.workers, arenas, strict=True):
            assert w.link is not None
            w.link.arena = arena
    assert [(s, e) for s, e, _ in one_pass] == funasr_offline_vad(vad_dir, str(recording))
    assert joined == one_pass == inline
    assert len(one_pass) > 30
    # Speech runs across cut points, and pieces really took over (not one session through).
    crossing = [k for k in range(1, int(SECONDS) // PIECE_S + 1)
                if any(s < k * PIECE_S * 1000 < e for s, e, _ in one_pass)]
    assert len(crossing) >= 2, crossing
    assert parallel.handovers >= 1
    assert all(w.in_flight == 0 for w in pool.workers)


def test_the_text_through_the_service_is_unchanged(service: RunningService,
                                                   recording: Path) -> None:
    svc = service
    data = recording.read_bytes()
    config = pb.RecognitionConfig(vad_mode=pb.VAD_ALWAYS)
    with AsrClient(svc.address) as client:
        split = client.recognize_bytes(data, config, timeout=300)
        svc.service.pipeline.vad_split_s = 0
        try:
            whole = client.recognize_bytes(data, config, timeout=300)
        finally:
            svc.service.pipeline.vad_split_s = PIECE_S
    assert split.text == whole.text and split.text.strip()
    assert [(s.start_ms, s.end_ms) for s in split.segments] == \
        [(s.start_ms, s.end_ms) for s in whole.segments]
    assert len(split.segments) > 30


def test_a_vad_worker_killed_during_parallel_vad_is_survived(
        service: RunningService, recording: Path, caplog: pytest.LogCaptureFixture) -> None:
    """SIGKILL one VAD worker while both hold a session of the same file: the request still
    answers (the lost piece starts again on a worker that is up), nothing stays in flight."""
    svc = service
    pool = svc.service.pipeline.vad
    victim = pool.workers[1]
    pid, restarts = victim.pid, victim.restarts
    config = pb.RecognitionConfig(vad_mode=pb.VAD_ALWAYS)
    killed = threading.Event()

    def killer() -> None:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            if all(w.in_flight >= 1 for w in pool.workers):  # pieces on both workers
                os.kill(pid, signal.SIGKILL)
                killed.set()
                return
            time.sleep(0.005)

    thread = threading.Thread(target=killer)
    thread.start()
    with AsrClient(svc.address) as client:
        result = client.recognize_bytes(recording.read_bytes(), config, timeout=300)
    thread.join()
    assert killed.is_set()
    assert any("VAD session lost" in r.getMessage() for r in caplog.records
               if r.name == "scheduler.vad_split")  # the kill hit a piece of this request
    assert result.text.strip() and len(result.segments) > 30
    assert result.segments[-1].end_ms > (SECONDS - 5) * 1000  # to the end of the file
    deadline = time.monotonic() + 120
    while victim.restarts == restarts and time.monotonic() < deadline:
        time.sleep(0.1)
    assert victim.restarts > restarts
    assert all(w.in_flight == 0 for w in pool.workers)
    assert svc.service.dispatcher.unfinished == 0
