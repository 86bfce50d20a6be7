"""Fused live chunk steps: the batched tick equals the serial steps, stream by stream, chunk by
chunk (paraformer-streaming-tiny, real FSMN-VAD, espeak-ng speech, in process)."""

from __future__ import annotations

import itertools
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import soundfile as sf
import torch

from gpu_worker.engines.live_batch import TickItem, run_tick_fused, run_tick_serial
from gpu_worker.engines.live_session import LiveOptions, LiveSession, LiveUpdate
from gpu_worker.fast.streaming import StreamingBatch, split_call, unsupported_reason
from tests.audio_fixtures import espeak_wav

pytestmark = pytest.mark.integration

WORDS = ["hello world this is stream", "the quick brown fox jumps", "please call me back",
         "numbers like forty two", "a live meeting feed", "seven hundred and twelve",
         "good morning everyone", "recognition on many channels"]
KW = {"disable_update": True, "disable_pbar": True, "disable_log": True}


def _cuda() -> bool:
    return torch.cuda.is_available()


# Each test runs on the CPU and, where CUDA is (GPU tier: `pytest -m gpu`), on cuda:0: the
# fused tick and the streaming batch against FunASR's own calls on the same device.
@pytest.fixture(scope="module", params=["cpu", pytest.param("cuda:0", marks=[
    pytest.mark.gpu, pytest.mark.skipif(not _cuda(), reason="needs a CUDA GPU")])])
def models(models_dir: Path, request: pytest.FixtureRequest) -> tuple[Any, Any]:
    from funasr import AutoModel

    device = request.param
    vad = AutoModel(model=str(models_dir / "fsmn-vad"), max_single_segment_time=30000,
                    device=device, **KW)
    asr = AutoModel(model=str(models_dir / "paraformer-streaming-tiny"), device=device, **KW)
    return vad, asr


@pytest.fixture(scope="module")
def clips(tmp_path_factory: pytest.TempPathFactory) -> list[np.ndarray]:
    d = tmp_path_factory.mktemp("livebatch")
    out = []
    for i, text in enumerate(WORDS):
        a, _ = sf.read(espeak_wav(text, d / f"w{i}.wav"), dtype="float32")
        out.append(a)
    return out


def stream_audio(clips: list[np.ndarray], k: int) -> np.ndarray:
    """Stream k: two different utterances with pauses whose lengths depend on k."""
    a, b = clips[k % len(clips)], clips[(3 * k + 1) % len(clips)]
    return np.concatenate([np.zeros(1600 * (1 + k % 5), np.float32), a,
                           np.zeros(32000 + 800 * (k % 4), np.float32), b,
                           np.zeros(8000, np.float32)])


def comparable(u: LiveUpdate) -> tuple[Any, ...]:
    return ([(f.start_ms, f.end_ms, f.text) for f in u.finals], u.interim_text,
            u.interim_start_ms, u.safe_ms, u.processed_ms)


@pytest.mark.parametrize("fbank", ["kaldi", "torch"])
@pytest.mark.parametrize("n", [1, 4, 16])
def test_fused_ticks_equal_serial_steps(models: tuple[Any, Any], clips: list[np.ndarray],
                                        n: int, fbank: str) -> None:
    """N streams with different audio, chunk lengths (60-200 ms) and start times: every
    update of every stream (finals, interim text, times) from the fused tick equals the serial
    step's (FunASR's `generate` per stream and call), chunk by chunk; steps of several streams
    share model calls. `torch`: the fused path's full chunks take our batched fbank (the live
    workers' default, `--live-fbank`), equal to FunASR's only within float rounding, yet the
    same updates here."""
    vad, asr = models
    batch = StreamingBatch(asr, device_frontend=fbank == "torch")
    audios = [stream_audio(clips, k) for k in range(n)]
    chunk = [960 * (1 + k % 3) + 320 * (k % 2) for k in range(n)]  # 60 .. 200 ms
    start = [(k * 3) % 11 for k in range(n)]  # ticks before the stream opens
    serial = [LiveSession(vad, asr, LiveOptions()) for _ in range(n)]
    fused = [LiveSession(vad, asr, LiveOptions()) for _ in range(n)]
    pos = [0] * n
    finals = [0] * n
    interims = 0
    largest = 0
    rows = calls = 0
    tick = 0
    with torch.inference_mode():
        while any(p < len(a) for p, a in zip(pos, audios, strict=True)):
            todo = [k for k in range(n) if tick >= start[k] and pos[k] < len(audios[k])]
            tick += 1
            if not todo:
                continue
            pieces = {k: audios[k][pos[k]:pos[k] + chunk[k]] for k in todo}
            last = {k: pos[k] + chunk[k] >= len(audios[k]) for k in todo}
            want, _ = run_tick_serial([TickItem(serial[k], pieces[k], last[k]) for k in todo])
            got, stats = run_tick_fused(batch, [TickItem(fused[k], pieces[k], last[k])
                                                for k in todo])
            for k, w, g in zip(todo, want, got, strict=True):
                assert isinstance(w, LiveUpdate) and isinstance(g, LiveUpdate), (w, g)
                assert comparable(g) == comparable(w), (k, pos[k])
                assert (g.tick_streams > 0) == (w.tick_streams > 0)
                finals[k] += len(g.finals)
                interims += bool(g.interim_text)
                pos[k] += chunk[k]
            largest = max(largest, stats.largest)
            rows += stats.rows
            calls += stats.model_calls
    assert all(f == 2 for f in finals), finals  # two utterances per stream, each one final
    assert interims > 0
    if n > 1:
        assert largest > 1 and calls < rows, (largest, calls, rows)


def test_streaming_batch_tokens_equal_funasr_generate(models: tuple[Any, Any],
                                                      clips: list[np.ndarray]) -> None:
    """Chunk level, beside FunASR's `generate` per stream: calls of one or several chunks,
    remainders carried between calls, a last chunk shorter than 60 ms (the cached look-ahead
    only), other chunk sizes and look-backs in the same batch."""
    from funasr.utils.postprocess_utils import sentence_postprocess

    _, asr = models
    batch = StreamingBatch(asr)
    settings = [((0, 10, 5), 4, 1), ((0, 10, 5), 4, 1), ((0, 8, 4), 2, 2), ((0, 10, 5), 0, 0),
                ((0, 10, 5), 4, 1), ((0, 10, 5), 4, 1)]
    rng = np.random.default_rng(7)
    streams = []
    for k, (size, enc_lb, dec_lb) in enumerate(settings):
        audio = np.concatenate([clips[k], clips[k + 1]])
        stride = size[1] * 960
        cut = len(audio) // stride * stride + (500 if k == 0 else 7000 if k == 1 else 0)
        audio = audio[:min(cut, len(audio))]
        bounds = [0]
        while bounds[-1] < len(audio):
            bounds.append(bounds[-1] + int(rng.integers(1, 12)) * 1600)  # not chunk-aligned
        calls = [(audio[a:b], b >= len(audio)) for a, b in itertools.pairwise(bounds)]
        kw = {"chunk_size": list(size), "encoder_chunk_look_back": enc_lb,
              "decoder_chunk_look_back": dec_lb}
        streams.append((calls, kw, batch.new_cache(size, enc_lb, dec_lb)))
    want = []
    for calls, kw, _ in streams:
        cache: dict[str, Any] = {}
        want.append([asr.generate(input=a, cache=cache, is_final=f, **kw)[0]["text"]
                     for a, f in calls])
    got: list[list[str]] = [[] for _ in streams]
    with torch.inference_mode():
        for j in range(max(len(c) for c, _, _ in streams)):
            pending = {}
            for k, (calls, _, state) in enumerate(streams):
                if j < len(calls):
                    a, f = calls[j]
                    pending[k] = (split_call(state, torch.from_numpy(a), f), [])
            while any(jobs for jobs, _ in pending.values()):
                ks = [k for k, (jobs, _) in pending.items() if jobs]
                tokens, _ = batch.run([pending[k][0].pop(0) for k in ks])
                for k, t in zip(ks, tokens, strict=True):
                    pending[k][1].extend(t)
            for k, (_, toks) in pending.items():
                got[k].append(sentence_postprocess(toks)[0])
    assert got == want
    assert sum(len("".join(w)) for w in want) > 20  # the streams did decode text


def test_device_frontend_features_match_funasr(models: tuple[Any, Any],
                                               clips: list[np.ndarray]) -> None:
    """The batched front-end (`device_frontend=True`, `--live-fbank torch`): one call for all
    full chunks, features equal FunASR's per-chunk front-end within float rounding (not bit
    for bit, so its texts are not guaranteed to equal the serial loop's, though they did on
    every test recording), tails still through FunASR."""
    from funasr.utils.load_utils import extract_fbank

    _, asr = models
    batch = StreamingBatch(asr, device_frontend=True)
    audio = torch.from_numpy(np.concatenate(clips[:3]))
    state = batch.new_cache((0, 10, 5), 4, 1)
    jobs = split_call(state, audio, True)
    assert len(jobs) > 3 and jobs[-1].audio is not None and len(jobs[-1].audio) < 9600
    rest = batch._batch_features(jobs)
    assert rest == [jobs[-1]]
    for job in jobs[:-1]:
        ref, _ = extract_fbank([job.audio], data_type="sound", frontend=asr.kwargs["frontend"])
        assert job.feats is not None and job.feats.shape == ref.shape
        torch.testing.assert_close(job.feats.cpu(), ref.cpu(), atol=1e-3, rtol=1e-4)


def test_unsupported_models_fall_back(models_dir: Path) -> None:
    from funasr import AutoModel

    offline = AutoModel(model=str(models_dir / "paraformer-tiny"), **KW)
    assert "not ParaformerStreaming" in (unsupported_reason(offline) or "")
    with pytest.raises(ValueError):
        StreamingBatch(offline)


@pytest.mark.parametrize("fbank", ["torch", "kaldi"])
def test_live_workers_take_the_fbank_they_are_told(models_dir: Path, fbank: str) -> None:
    """`--live-fbank`: `torch` gives the live engine's fused steps our batched fbank for full
    chunks, `kaldi` leaves FunASR's front-end per chunk (the test above checks both paths'
    updates equal the serial steps')."""
    from gpu_worker.engines.base import create_engine
    from protos.common.worker_config import WorkerConfig

    engine = create_engine(WorkerConfig(model=str(models_dir / "paraformer-streaming-tiny"),
                                        vad_model=str(models_dir / "fsmn-vad"),
                                        live_fbank=fbank))
    fused = engine.ticker._fused  # type: ignore[attr-defined]
    assert isinstance(fused, StreamingBatch)
    assert (fused.fbank is not None) == (fbank == "torch")
    assert engine.ticker._interval_s == 0  # type: ignore[attr-defined]  # the config's default
    paced = create_engine(WorkerConfig(model=str(models_dir / "paraformer-streaming-tiny"),
                                       vad_model=str(models_dir / "fsmn-vad"), live_tick_ms=20))
    assert paced.ticker._interval_s == 0.02  # type: ignore[attr-defined]  # --live-tick-ms
