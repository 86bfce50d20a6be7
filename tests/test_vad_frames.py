"""`vad_frames.detect_frames` (FSMN-VAD's frame rules in plain Python) against FunASR's own
`DetectCommonFrames` / `DetectLastFrames`: one stream fed through FunASR's `generate` and one
through `vad_step` (which uses `detect_frames`) must return the same segments and leave the
same cache after every chunk (state machine, window detector, counters, noise level, segment
buffer, dropped frames), offline in 60 s chunks and live in 200 ms chunks, with segments cut
at the maximum length, fixed end silences and FunASR's dynamic schedule (real FSMN-VAD
weights, espeak-ng speech with pauses, with and without noise)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import soundfile as sf

from gpu_worker.engines.live_vad import run_alone, use_fast_fbank, vad_step
from gpu_worker.engines.vad_frames import supports
from tests.audio_fixtures import espeak_wav

pytestmark = pytest.mark.integration

TEXTS = ["hello world this is a long recording", "please call me back tomorrow morning",
         "numbers like forty two and seventeen", "good morning everyone and welcome",
         "the meeting starts at nine"]
_STATS = ["data_buf_start_frame", "frm_cnt", "latest_confirmed_speech_frame",
          "lastest_confirmed_silence_frame", "continous_silence_frame_count",
          "vad_state_machine", "confirmed_start_frame", "confirmed_end_frame",
          "number_end_time_detected", "sil_frame", "noise_average_decibel",
          "pre_end_silence_detected", "next_seg", "output_data_buf_offset",
          "max_end_sil_frame_cnt_thresh", "speech_noise_thres", "max_time_out",
          "last_drop_frames"]


def _vad(models_dir: Path, max_segment_ms: int) -> Any:
    from funasr import AutoModel

    return AutoModel(model=str(models_dir / "fsmn-vad"), device="cpu", disable_update=True,
                     disable_pbar=True, disable_log=True,
                     max_single_segment_time=max_segment_ms)


@pytest.fixture(scope="module")
def recording(tmp_path_factory: pytest.TempPathFactory) -> np.ndarray:
    """~130 s: the phrases, forwards and reversed, with pauses of 0.2-2.5 s, one long run of
    speech (five phrases without a pause), and 8 s of silence in the middle."""
    d = tmp_path_factory.mktemp("vadframes")
    phrases = [sf.read(espeak_wav(t, d / f"p{k}.wav"), dtype="float32")[0]
               for k, t in enumerate(TEXTS)]
    rng = np.random.default_rng(7)
    parts: list[np.ndarray] = []
    for k in range(40):
        p = phrases[k % len(phrases)]
        parts.append(p if k % 3 else p[::-1].copy())
        if k == 20:
            parts.append(np.zeros(16000 * 8, np.float32))
        elif k < 10 or k > 14:  # phrases 10-14 run on without a pause
            parts.append(np.zeros(int(16000 * rng.uniform(0.2, 2.5)), np.float32))
    return np.concatenate(parts)


def _snapshot(cache: dict[str, Any]) -> dict[str, Any]:
    s, w = cache["stats"], cache["windows_detector"]
    snap = {name: getattr(s, name) for name in _STATS}
    snap["segments"] = [(b.start_ms, b.end_ms, b.contain_seg_start_point,
                         b.contain_seg_end_point) for b in s.output_data_buf]
    snap["frames kept"] = (len(s.decibel), tuple(s.scores.shape))
    snap["audio kept"] = (len(s.data_buf_all), len(s.data_buf))
    snap["window"] = (w.win_sum, list(w.win_state), w.cur_win_pos, w.pre_frame_state,
                      w.cur_frame_state)
    return snap


def _compare(vad: Any, audio: np.ndarray, chunk_ms: int, end_silence_ms: int = 0) -> int:
    """Feed both streams chunk by chunk; the number of segments (all equal)."""
    funasr_cache: dict[str, Any] = {}
    ours: dict[str, Any] = {}
    step, found = chunk_ms * 16, 0
    extra = {"max_end_silence_time": end_silence_ms} if end_silence_ms else {}
    for n, pos in enumerate(range(0, len(audio), step)):
        piece, final = audio[pos:pos + step], pos + step >= len(audio)
        out = vad.generate(input=piece, cache=funasr_cache, is_final=final,
                           chunk_size=chunk_ms, **extra)
        expected = [list(seg) for seg in out[0]["value"]] if out else []
        got = run_alone(vad_step(vad, piece, ours, final, chunk_ms, end_silence_ms))
        assert got == expected, f"chunk {n}"
        if final:  # both caches were reset for the next stream
            assert set(ours) == set(funasr_cache)
        else:
            a, b = _snapshot(funasr_cache), _snapshot(ours)
            assert b == a, f"chunk {n}: " + ", ".join(k for k in a if a[k] != b[k])
        found += len(got)
    return found


def test_offline_chunks_equal_funasr_state_for_state(models_dir: Path,
                                                      recording: np.ndarray) -> None:
    counts = {}
    for max_segment_ms in (30000, 3000):
        vad = _vad(models_dir, max_segment_ms)
        assert supports(vad.model)
        counts[max_segment_ms] = _compare(vad, recording, 60000)
    assert counts[30000] >= 20  # one per pause at least
    assert counts[3000] > counts[30000]  # the run without pauses was cut at 3 s


def test_noisy_audio_equals_funasr(models_dir: Path, recording: np.ndarray) -> None:
    rng = np.random.default_rng(3)
    noisy = (recording + rng.normal(0, 0.03, len(recording))).astype(np.float32)
    assert _compare(_vad(models_dir, 30000), noisy, 60000) >= 1


@pytest.mark.parametrize("end_silence_ms", [0, 300])
def test_live_chunks_equal_funasr_state_for_state(models_dir: Path, recording: np.ndarray,
                                                   end_silence_ms: int) -> None:
    found = _compare(_vad(models_dir, 30000), recording[:16000 * 45], 200, end_silence_ms)
    assert found >= 8  # a start and an end per utterance


def test_silence_only_and_unsupported_options(models_dir: Path,
                                              recording: np.ndarray) -> None:
    assert _compare(_vad(models_dir, 30000), np.zeros(16000 * 3, np.float32), 60000) == 0
    single = _vad(models_dir, 30000)
    single.model.vad_opts.detect_mode = 0  # single-utterance mode: FunASR's own rules run
    assert not supports(single.model)
    assert _compare(single, recording[:16000 * 20], 60000) >= 1


def _front_state(cache: dict[str, Any]) -> tuple[Any, ...]:
    f = cache["frontend"]
    return (tuple(f["input_cache"].shape), tuple(f["reserve_waveforms"].shape),
            [tuple(t.shape) for t in f["lfr_splice_cache"]], f.get("emitted_lfr_frames"))


def _compare_fbank(reference: Any, ours: Any, audio: np.ndarray, chunk_ms: int) -> int:
    """FunASR's calls on `reference`, `vad_step` on `ours` (our fbank in its front-end): the
    same segments after every chunk, the same frame and sample bookkeeping, scores within
    float rounding; the number of segments."""
    theirs: dict[str, Any] = {}
    mine: dict[str, Any] = {}
    step, found, worst = chunk_ms * 16, 0, 0.0
    for n, pos in enumerate(range(0, len(audio), step)):
        piece, final = audio[pos:pos + step], pos + step >= len(audio)
        out = reference.generate(input=piece, cache=theirs, is_final=final, chunk_size=chunk_ms)
        expected = [list(seg) for seg in out[0]["value"]] if out else []
        got = run_alone(vad_step(ours, piece, mine, final, chunk_ms))
        assert got == expected, f"chunk {n}"
        if not final:
            assert _front_state(mine) == _front_state(theirs), f"chunk {n}"
            a, b = theirs["stats"].scores, mine["stats"].scores
            assert a.shape == b.shape, f"chunk {n}"
            if a.numel():
                worst = max(worst, float((a - b).abs().max()))
            sa, sb = _snapshot(theirs), _snapshot(mine)
            for k in ("noise_average_decibel",):  # float sums of the features' energies
                assert sb.pop(k) == pytest.approx(sa.pop(k), rel=1e-4), f"chunk {n}"
            assert sb == sa, f"chunk {n}: " + ", ".join(k for k in sa if sa[k] != sb[k])
        found += len(got)
    assert worst < 1e-3, worst  # speech probabilities: rounding, not another computation
    return found


def test_our_fbank_in_the_front_end_keeps_funasr_segments(models_dir: Path,
                                                          recording: np.ndarray) -> None:
    """The VAD workers' features (`install_online_fbank`: torch's FFT instead of
    kaldi-native-fbank) leave FunASR's segments and state as they are: offline 60 s chunks
    with 30 s and 3 s maximum segments, noisy audio, live 200 ms chunks."""
    rng = np.random.default_rng(3)
    noisy = (recording + rng.normal(0, 0.03, len(recording))).astype(np.float32)
    for max_segment_ms, audio, chunk_ms, least in ((30000, recording, 60000, 20),
                                                   (3000, recording, 60000, 25),
                                                   (30000, noisy, 60000, 1),
                                                   (30000, recording[:16000 * 45], 200, 8)):
        ours = _vad(models_dir, max_segment_ms)
        assert use_fast_fbank(ours, "cpu")
        assert _compare_fbank(_vad(models_dir, max_segment_ms), ours, audio,
                              chunk_ms) >= least, (max_segment_ms, chunk_ms)


def test_our_fbank_equals_kaldi_within_rounding(models_dir: Path,
                                                recording: np.ndarray) -> None:
    import torch

    from gpu_worker.fast.features import install_online_fbank

    front = _vad(models_dir, 30000).kwargs["frontend"]
    wave = torch.from_numpy(recording[:16000 * 60]).unsqueeze(0)
    theirs = front.forward_fbank(wave, torch.tensor([wave.size(1)]), cache={
        "input_cache": torch.empty(0)})
    assert install_online_fbank(front, "cpu")
    mine = front.forward_fbank(wave, torch.tensor([wave.size(1)]), cache={
        "input_cache": torch.empty(0)})
    assert torch.equal(mine[0], theirs[0]) and torch.equal(mine[2], theirs[2])
    assert mine[1].shape == theirs[1].shape == (1, 5998, 80)
    # Rounding differs with the CPU's vector code: largest difference 2.2e-3 on an Intel Xeon
    # (a log of a bin with little energy), under 2e-3 on an AMD EPYC; log-mels span ~0-25.
    torch.testing.assert_close(mine[1], theirs[1], rtol=1e-4, atol=5e-3)
    assert (mine[1] - theirs[1]).abs().mean() < 1e-4
    assert not install_online_fbank(object(), "cpu")  # not a WavFrontendOnline: untouched


def test_broadcast_cmvn_is_funasrs_bit_for_bit(models_dir: Path) -> None:
    import torch

    from gpu_worker.fast.features import broadcast_cmvn, install_online_fbank

    front = _vad(models_dir, 30000).kwargs["frontend"]
    theirs = type(front).apply_cmvn  # FunASR's (a staticmethod)
    assert install_online_fbank(front, "cpu") and front.apply_cmvn is broadcast_cmvn
    torch.manual_seed(3)
    for frames in (1, 7, 60):
        x = torch.randn(frames, front.cmvn.shape[1]) * 8
        assert torch.equal(broadcast_cmvn(x.clone(), front.cmvn), theirs(x.clone(), front.cmvn))


def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()


@pytest.mark.gpu
@pytest.mark.skipif(not _cuda(), reason="needs a CUDA GPU")
def test_network_on_cuda_equals_funasr_there_and_the_cpu(models_dir: Path,
                                                         recording: np.ndarray) -> None:
    """`--vad-device gpu`: the FSMN on cuda:0, the rules on the CPU from its scores."""
    from funasr import AutoModel

    vad = AutoModel(model=str(models_dir / "fsmn-vad"), device="cuda:0", disable_update=True,
                    disable_pbar=True, disable_log=True, max_single_segment_time=30000)
    assert _compare(vad, recording, 60000) >= 20
    on_cpu, on_cuda = ({}, {})  # type: ignore[var-annotated]
    cpu = _vad(models_dir, 30000)
    step = 60000 * 16
    for pos in range(0, len(recording), step):
        piece, final = recording[pos:pos + step], pos + step >= len(recording)
        a = run_alone(vad_step(cpu, piece, on_cpu, final, 60000))
        b = run_alone(vad_step(vad, piece, on_cuda, final, 60000))
        assert a == b


@pytest.mark.gpu
@pytest.mark.skipif(not _cuda(), reason="needs a CUDA GPU")
def test_fbank_and_network_on_cuda_keep_funasr_segments(models_dir: Path,
                                                        recording: np.ndarray) -> None:
    """A VAD worker with `--vad-device gpu`: our fbank and the FSMN on cuda:0, LFR, CMVN and
    the rules on the CPU; FunASR's segments on the CPU."""
    from funasr import AutoModel

    vad = AutoModel(model=str(models_dir / "fsmn-vad"), device="cuda:0", disable_update=True,
                    disable_pbar=True, disable_log=True, max_single_segment_time=30000)
    assert use_fast_fbank(vad, "cuda:0")
    assert _compare_fbank(_vad(models_dir, 30000), vad, recording, 60000) >= 20


@pytest.mark.parametrize("fbank", ["torch", "kaldi"])
def test_vad_workers_take_the_fbank_they_are_told(models_dir: Path, recording: np.ndarray,
                                                  fbank: str) -> None:
    """`--vad-fbank`: `torch` puts our log-mel into the VAD session engine's front-end,
    `kaldi` leaves FunASR's; both segment like FunASR."""
    import asyncio
    from collections.abc import AsyncIterator

    from gpu_worker.engines.base import SessionChunk
    from gpu_worker.engines.session import VadSessionEngine
    from protos.common.worker_config import WorkerConfig

    engine = VadSessionEngine(WorkerConfig(model=str(models_dir / "fsmn-vad"), engine="vad",
                                           vad_fbank=fbank))
    vad = engine.model(30000)
    front = vad.kwargs["frontend"]
    assert ("forward_fbank" in vars(front)) == (fbank == "torch")
    audio = recording[:16000 * 120]

    async def segments() -> list[tuple[int, int]]:
        async def chunks() -> AsyncIterator[SessionChunk]:
            for pos in range(0, len(audio), 16000 * 60):
                yield SessionChunk(audio=audio[pos:pos + 16000 * 60], max_segment_ms=30000,
                                   is_final=pos + 16000 * 60 >= len(audio))
        return [s for found in [f async for f in engine.segment(chunks())] for s in found]

    got = asyncio.run(segments())
    reference = _vad(models_dir, 30000).generate(input=audio)[0]["value"]
    assert [list(s) for s in got] == [list(s) for s in reference] and len(got) >= 10


def test_a_new_maximum_segment_length_loads_off_the_event_loop(models_dir: Path,
                                                               recording: np.ndarray) -> None:
    """A stream asking for a maximum segment length the VAD worker has no model for yet gets
    one loaded on the engine's VAD thread, not on the event loop (a load takes ~1 s there:
    every other stream of the worker would wait), and its segments are FunASR's for it."""
    import asyncio
    import threading
    from collections.abc import AsyncIterator

    from gpu_worker.engines.base import SessionChunk
    from gpu_worker.engines.session import VadSessionEngine
    from protos.common.worker_config import WorkerConfig

    engine = VadSessionEngine(WorkerConfig(model=str(models_dir / "fsmn-vad"), engine="vad"))
    loads: list[tuple[int, str]] = []
    load = engine.model

    def traced(max_segment_ms: int) -> Any:
        loads.append((max_segment_ms, threading.current_thread().name))
        return load(max_segment_ms)

    engine.model = traced  # type: ignore[method-assign]
    audio = recording[:16000 * 50]

    async def segments() -> list[tuple[int, int]]:
        async def chunks() -> AsyncIterator[SessionChunk]:
            yield SessionChunk(audio=audio, max_segment_ms=3000, is_final=True)
        return [s for found in [f async for f in engine.segment(chunks())] for s in found]

    got = asyncio.run(segments())
    assert loads and all(ms == 3000 and name.startswith("vad") for ms, name in loads), loads
    reference = _vad(models_dir, 3000).generate(input=audio)[0]["value"]
    assert [list(s) for s in got] == [list(s) for s in reference]
    assert max(e - s for s, e in got) < 3100 and len(got) >= 8  # cut near 3 s (3,010 seen)
