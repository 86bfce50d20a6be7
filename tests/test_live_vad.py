"""The live streams' online FSMN-VAD step (`vad_step`): alone, exactly FunASR's `generate` per
chunk; its encoder passes (and, with our fbank, its log-mels) batched across streams, the same
segments for every stream (real FSMN-VAD weights, espeak-ng speech)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import soundfile as sf

from gpu_worker.engines.live_vad import (
    FbankCall,
    VadCall,
    VadWork,
    run_vad_calls,
    speech_frontier_ms,
    use_fast_fbank,
    vad_step,
)
from tests.audio_fixtures import espeak_wav

pytestmark = pytest.mark.integration

CHUNK_MS = 200
TEXTS = ["hello world this is a live stream", "please call me back tomorrow",
         "numbers like forty two", "good morning everyone"]


def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()


# On the CPU and, where CUDA is (GPU tier: `pytest -m gpu`), with the VAD on cuda:0.
@pytest.fixture(scope="module", params=["cpu", pytest.param("cuda:0", marks=[
    pytest.mark.gpu, pytest.mark.skipif(not _cuda(), reason="needs a CUDA GPU")])])
def vad(models_dir: Path, request: pytest.FixtureRequest) -> Any:
    from funasr import AutoModel

    return AutoModel(model=str(models_dir / "fsmn-vad"), max_single_segment_time=30000,
                     disable_update=True, disable_pbar=True, disable_log=True,
                     device=request.param)


@pytest.fixture(scope="module")
def fast_vad(models_dir: Path) -> Any:
    """The VAD with our fbank in its streaming front-end (what the live workers run)."""
    from funasr import AutoModel

    vad = AutoModel(model=str(models_dir / "fsmn-vad"), max_single_segment_time=30000,
                    disable_update=True, disable_pbar=True, disable_log=True, device="cpu")
    assert use_fast_fbank(vad, "cpu")
    return vad


@pytest.fixture(scope="module")
def streams(tmp_path_factory: pytest.TempPathFactory) -> list[np.ndarray]:
    """Speech with pauses of different lengths, one recording per text."""
    d = tmp_path_factory.mktemp("livevad")
    out = []
    for k, text in enumerate(TEXTS):
        a, _ = sf.read(espeak_wav(text, d / f"v{k}.wav"), dtype="float32")
        gap = np.zeros(16000 * (1 + k % 3) // 2, np.float32)
        out.append(np.concatenate([gap, a, np.zeros(24000, np.float32), a[::-1].copy(), gap]))
    return out


def chunks(audio: np.ndarray, k: int) -> list[tuple[np.ndarray, bool]]:
    """60-450 ms pieces (some longer than one 200 ms VAD step), the last one final."""
    base = [960, 1600, 3200, 7200, 2400]
    sizes = base[k % 5:] + base[:k % 5]
    out, pos, j = [], 0, 0
    while pos < len(audio):
        n = sizes[j % len(sizes)]
        out.append((audio[pos:pos + n], pos + n >= len(audio)))
        pos, j = pos + n, j + 1
    return out


def drive_alone(vad: Any, cache: dict[str, Any], audio: np.ndarray, is_final: bool,
                end_silence_ms: int = 0) -> Any:
    run = vad_step(vad, audio, cache, is_final, CHUNK_MS, end_silence_ms)
    try:
        call = next(run)
        while True:
            assert isinstance(call, VadCall | FbankCall)
            call = run.send(call.run())
    except StopIteration as stop:
        return stop.value


def test_a_step_alone_is_funasr_generate(vad: Any, streams: list[np.ndarray]) -> None:
    found = 0
    for k, audio in enumerate(streams):
        ours: dict[str, Any] = {}
        theirs: dict[str, Any] = {}
        for piece, last in chunks(audio, k):
            want = vad.generate(input=piece, cache=theirs, is_final=last,
                                chunk_size=CHUNK_MS)[0]["value"]
            assert drive_alone(vad, ours, piece, last) == want
            found += sum(1 for _, end in want if end >= 0)
    assert found >= 2 * len(streams)  # every stream's utterances were closed


@pytest.mark.parametrize("fbank", ["kaldi", "torch"])
@pytest.mark.parametrize("n", [2, 4, 12])
def test_batched_vad_work_gives_each_stream_its_own_segments(
        vad: Any, fast_vad: Any, streams: list[np.ndarray], n: int, fbank: str) -> None:
    """N streams stepping together, their VAD work run as one batched call per kind and round
    (encoder passes; with our fbank also the log-mels; streams start at different times, some
    rounds have streams with fresh caches): every step's segments equal the stream stepped
    alone."""
    if fbank == "torch":
        vad = fast_vad
    audios = [streams[k % len(streams)][(k // len(streams)) * 800:] for k in range(n)]
    plans = [[(None, False)] * (k % 3) + chunks(a, k) for k, a in enumerate(audios)]
    alone: list[dict[str, Any]] = [{} for _ in range(n)]
    together: list[dict[str, Any]] = [{} for _ in range(n)]
    largest: dict[type, int] = {FbankCall: 0, VadCall: 0}
    for t in range(max(len(p) for p in plans)):
        runs, want = {}, {}
        for k in range(n):
            if t < len(plans[k]) and plans[k][t][0] is not None:
                piece, last = plans[k][t]
                want[k] = drive_alone(vad, alone[k], piece, last)
                runs[k] = vad_step(vad, piece, together[k], last, CHUNK_MS)
        got: dict[int, Any] = {}
        waiting = {}
        for k, run in runs.items():
            try:
                waiting[k] = next(run)
            except StopIteration as stop:
                got[k] = stop.value
        while waiting:
            ids = list(waiting)
            for kind in largest:
                largest[kind] = max(largest[kind], sum(isinstance(waiting[k], kind) for k in ids))
            scores = run_vad_calls([waiting.pop(k) for k in ids])
            for k, s in zip(ids, scores, strict=True):
                try:
                    waiting[k] = runs[k].send(s)
                except StopIteration as stop:
                    got[k] = stop.value
        assert got == want, t
    assert largest[VadCall] == n
    assert largest[FbankCall] == (n if fbank == "torch" else 0)


def test_batched_log_mels_equal_each_streams_own(fast_vad: Any,
                                                 streams: list[np.ndarray]) -> None:
    """One `run_vad_calls` of several streams' log-mels (different lengths: steps of 200-270
    ms) gives each stream, bit for bit, what its call alone gives."""
    calls: list[VadWork] = []
    for k, audio in enumerate(streams * 2):
        step_ms = CHUNK_MS + 10 * k
        run = vad_step(fast_vad, audio[k * 160:k * 160 + 16 * step_ms], {}, False, step_ms)
        calls.append(next(run))
        run.close()
    assert all(isinstance(c, FbankCall) for c in calls)
    assert len({c.wave.shape[1] for c in calls}) > 1  # type: ignore[attr-defined]
    for call, mel in zip(calls, run_vad_calls(calls), strict=True):
        import torch

        assert torch.equal(mel, call.run())


def test_fixed_end_silence_is_funasr_max_end_silence_time(vad: Any,
                                                          streams: list[np.ndarray]) -> None:
    """`end_silence_ms` gives FunASR's segments for `max_end_silence_time`, without writing it
    into the shared model; a shorter silence closes utterances sooner; while a segment is open
    its speech frontier never passes the end the VAD then reports."""
    opts = vad.model.vad_opts
    default = opts.max_end_silence_time
    closed_at: dict[int, list[int]] = {}
    try:
        for silence in (0, 300, 800):
            closed_at[silence] = []
            for k, audio in enumerate(streams):
                ours: dict[str, Any] = {}
                theirs: dict[str, Any] = {}
                fed, frontiers = 0, []
                fixed = {"max_end_silence_time": silence} if silence else {}
                for piece, last in chunks(audio, k):
                    opts.max_end_silence_time = default
                    got = drive_alone(vad, ours, piece, last, silence)
                    assert opts.max_end_silence_time == default  # not written into the model
                    fed += len(piece)
                    want = vad.generate(input=piece, cache=theirs, is_final=last,
                                        chunk_size=CHUNK_MS, **fixed)[0]["value"]
                    assert got == want, (silence, k)
                    for _, end in got:
                        if end >= 0 and not last:  # the last chunk closes what is open
                            closed_at[silence].append(fed // 16 - end)
                            assert all(f <= end + 10 for f in frontiers), (frontiers, end)
                            frontiers = []
                    frontier = speech_frontier_ms(ours)
                    if frontier is not None:
                        frontiers.append(frontier)
                        assert frontier <= fed // 16
    finally:
        opts.max_end_silence_time = default
    # how much audio had arrived past each end when it was reported (the last chunk's size
    # adds up to 450 ms): the dynamic schedule waits ~2 s early in an utterance
    assert len(closed_at[0]) >= len(streams) and len(closed_at[300]) >= len(closed_at[0])
    assert min(closed_at[0]) > 1500
    assert max(closed_at[300]) < 150 + 450 + 200
    assert max(closed_at[300]) < min(closed_at[800]) + 450
