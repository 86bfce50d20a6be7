"""Step-wise (continuous) decoding of Fun-ASR-Nano: `StepDecoder`, the "stepwise" engine, and
the service with `--engine stepwise`, against FunASR's own one-clip `generate` on the tiny model.

Random weights never emit end-of-sequence, so per-request token caps give the sequences their
different lengths: short ones must leave the running set at once, later clips must join it
mid-decode, and every clip's text must still equal FunASR's for its own options and cap.
"""

from __future__ import annotations

import asyncio
import functools
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from client.library import AsrClient
from client.options import TranscribeOptions
from gpu_worker.engines.base import StartupError, Utterance
from gpu_worker.families.funasr_nano import generate_kwargs
from tests.audio_fixtures import reference_16k_mono

pytestmark = pytest.mark.integration

# (language, itn, hotwords, cap) per clip: options and caps differ inside one running set.
CASES = [
    ("auto", False, (), 12),
    ("zh", True, ("通义",), 30),
    ("en", False, (), 3),
    ("auto", True, ("阿里巴巴", "FunASR"), 20),
    ("zh", False, (), 7),
    ("en", True, ("speech",), 1),
]


@pytest.fixture(scope="module")
def nano_dir(models_dir: Path) -> Path:
    return models_dir / "funasr-nano-tiny"


@pytest.fixture(scope="module")
def clips() -> list[np.ndarray]:
    rng = np.random.default_rng(11)
    return [(rng.standard_normal(int(16000 * s)) * 0.1).astype(np.float32)
            for s in (1.3, 2.0, 3.7, 0.8, 2.6, 1.7)]


@functools.lru_cache(maxsize=1)
def _runner(model_dir: str) -> Any:
    from gpu_worker.engines.generate import load_runner

    return load_runner(model_dir)


def funasr_text(model_dir: Path, clip: np.ndarray, language: str, itn: bool,
                hotwords: tuple[str, ...], cap: int) -> tuple[str, int]:
    """FunASR's own one-clip text and generated-token count for these options."""
    import torch

    from gpu_worker.families.funasr_nano import count_tokens

    model = _runner(str(model_dir)).automodel
    with count_tokens(model.model.llm) as counts:
        text = model.generate(input=torch.from_numpy(clip),
                              **generate_kwargs(language, itn, hotwords, cap))[0]["text"]
    return text, counts[0][0][0]


def test_sequences_join_mid_decode_and_leave_at_their_cap(nano_dir: Path,
                                                          clips: list[np.ndarray]) -> None:
    import torch

    from gpu_worker.engines.nano_decoder import StepDecoder

    decoder = StepDecoder(_runner(str(nano_dir)).automodel)
    finished: dict[int, tuple[str, int, int]] = {}  # clip -> (text, tokens, step it left)
    sizes = []
    pending = list(range(len(CASES)))
    with torch.inference_mode():
        for step in range(200):
            if pending and (step % 4 == 0):  # a clip joins every 4 steps, mid-decode
                i = pending.pop(0)
                lang, itn, hot, cap = CASES[i]
                done = decoder.join(i, decoder.prompt_embeds(clips[i], lang, itn, hot), cap)
                if done is not None:
                    finished[i] = (decoder.text(done), len(done.tokens), step)
            for seq in decoder.step():
                finished[seq.tag] = (decoder.text(seq), len(seq.tokens), step)
            sizes.append(decoder.size)
            if not pending and not decoder.size:
                break
    assert sorted(finished) == list(range(len(CASES)))
    assert max(sizes) >= 3, sizes  # several sequences really ran together
    for i, (lang, itn, hot, cap) in enumerate(CASES):
        want, want_tokens = funasr_text(nano_dir, clips[i], lang, itn, hot, cap)
        text, tokens, _ = finished[i]
        assert text == want, (i, text, want)
        assert tokens == want_tokens and 1 <= tokens <= cap
    # A sequence leaves at once: clip 2 (cap 3, joined at step 8) is done long before clip 1
    # (cap 30, joined at step 4): its prefill at step 8 gives its first token, steps 8 and 9
    # the other two. Clip 5 (cap 1) finishes at its prefill.
    assert finished[2][2] < finished[1][2]
    assert finished[2][2] == 8 + CASES[2][3] - 2
    assert finished[5][1] == 1 and finished[5][2] == 20
    assert not decoder.running and decoder._cache is None


def test_leaving_rows_trim_the_padded_cache(nano_dir: Path, clips: list[np.ndarray]) -> None:
    import torch

    from gpu_worker.engines.nano_decoder import StepDecoder

    decoder = StepDecoder(_runner(str(nano_dir)).automodel)
    with torch.inference_mode():
        long_clip = decoder.prompt_embeds(clips[2], "auto", False, ())
        short_clip = decoder.prompt_embeds(clips[3], "auto", False, ())
        decoder.join("long", long_clip, 50)
        decoder.join("short", short_clip, 50)
        width = decoder._mask.shape[1]
        assert width == long_clip.shape[1]  # the short prompt is left-padded
        assert int(decoder._mask[1].sum()) == short_clip.shape[1]
        decoder.step()
        decoder.remove([decoder.running[0]])  # the long one leaves
        assert decoder._mask.shape[1] == short_clip.shape[1] + 1  # padding columns cut
        assert int(decoder._mask.sum()) == decoder._mask.numel()
        layer = decoder._cache.layers[0]
        assert layer.keys.shape[0] == 1 and layer.keys.shape[2] == decoder._mask.shape[1]
        for _ in range(3):
            decoder.step()
        seq = decoder.running[0]
    text, _ = funasr_text(nano_dir, clips[3], "auto", False, (), len(seq.tokens))
    assert decoder.text(seq) == text


def test_sampling_generation_config_is_refused(nano_dir: Path) -> None:
    from gpu_worker.engines.nano_decoder import StepDecoder

    model = _runner(str(nano_dir)).automodel
    config = model.model.llm.generation_config
    config.do_sample = True
    try:
        with pytest.raises(StartupError, match="greedy"):
            StepDecoder(model)
    finally:
        config.do_sample = False


def test_engine_runs_requests_of_any_options_together(nano_dir: Path,
                                                      clips: list[np.ndarray]) -> None:
    from gpu_worker.engines.nano_step import load_engine

    long_cap = 300  # clip 1 decodes long; the others (caps <= 30) arrive while it runs
    caps = [long_cap if i == 1 else c for i, (*_, c) in enumerate(CASES)]
    engine = load_engine(str(nano_dir), max_batch_size=4, max_new_tokens=long_cap)
    order: list[int] = []

    async def one(i: int) -> tuple[Any, Any]:
        lang, itn, hot, _ = CASES[i]
        out = await engine.transcribe(Utterance(clips[i], language=lang, use_itn=itn,
                                                hotwords=hot, max_new_tokens=caps[i]))
        order.append(i)
        return out

    async def run() -> list[tuple[Any, Any]]:
        engine.start()
        try:
            first = asyncio.ensure_future(one(1))
            while not engine.decoder.size and not first.done():  # wait until it decodes
                await asyncio.sleep(0.001)
            assert not first.done()
            others = await asyncio.gather(*(one(i) for i in range(len(CASES)) if i != 1))
            assert not first.done()  # every short one left while the long one ran on
            return [*others[:1], await first, *others[1:]]
        finally:
            await engine.stop()

    results = asyncio.run(run())
    for i, (transcript, stats) in enumerate(results):
        lang, itn, hot, _ = CASES[i]
        want, tokens = funasr_text(nano_dir, clips[i], lang, itn, hot, caps[i])
        assert transcript.text == want, i
        assert transcript.tokens_generated == tokens == transcript.decode_steps
        assert stats.inference_s > 0 and stats.batch_id > 0
    assert len({s.batch_id for _, s in results}) == len(CASES)
    assert results[1][1].batch_size == 4  # the running set was full (max_batch_size 4)
    assert order[-1] == 1
    assert engine.stats().batches >= long_cap - 1  # decoding steps of the running set


def test_engine_rejects_unknown_language(nano_dir: Path, clips: list[np.ndarray]) -> None:
    from gpu_worker.engines.nano_step import load_engine

    engine = load_engine(str(nano_dir), max_new_tokens=4)

    async def run() -> None:
        engine.start()
        try:
            with pytest.raises(ValueError, match="zh"):
                await engine.transcribe(Utterance(clips[0], language="fr"))
            transcript, _ = await engine.transcribe(Utterance(clips[0]))
            assert transcript.tokens_generated == 4
        finally:
            await engine.stop()

    asyncio.run(run())


def test_static_runner_cap_is_per_request(nano_dir: Path, clips: list[np.ndarray]) -> None:
    """Regression: FunASR leaves a call's `max_length` in the model's kwargs; a later
    request's larger cap must not be lowered to it."""
    from gpu_worker.engines.generate import load_runner

    runner = load_runner(str(nano_dir))
    assert runner.transcribe([Utterance(clips[0], max_new_tokens=4)])[0].tokens_generated == 4
    assert runner.transcribe([Utterance(clips[0], max_new_tokens=9)])[0].tokens_generated == 9


def test_service_with_stepwise_engine_matches_funasr_and_reports_metrics(  # type: ignore[no-untyped-def]
        start_service, nano_dir: Path, clips: list[np.ndarray], tmp_path: Path) -> None:
    import soundfile as sf

    from protos.asr.v1 import asr_pb2 as pb

    svc = start_service(nano_dir, engine="stepwise", max_new_tokens=16, cpu_max_batch_size=8)
    paths = []
    for i, clip in enumerate(clips):
        paths.append(tmp_path / f"c{i}.wav")
        sf.write(paths[-1], clip, 16000, subtype="FLOAT")
    reg = svc.service.metrics.registry
    labels = {"device": "cpu", "model": "funasr-nano-tiny"}

    def value(name: str) -> float:
        return reg.get_sample_value(name, labels) or 0.0

    def config(i: int) -> pb.RecognitionConfig:
        lang, itn, hot, cap = CASES[i]
        return TranscribeOptions(language=lang, enable_itn=itn, hotwords=hot,
                                 max_new_tokens=cap).to_config()

    with AsrClient(svc.address) as client:
        (model,) = client.status().models
        assert model.engine == "stepwise" and model.hotwords
        with ThreadPoolExecutor(len(paths)) as pool:
            unary = list(pool.map(lambda i: client.recognize_bytes(paths[i].read_bytes(),
                                                                   config(i)),
                                  range(len(paths))))
        lang, itn, hot, cap = CASES[1]
        streamed = client.transcribe_file(paths[1], TranscribeOptions(
            language=lang, enable_itn=itn, hotwords=hot, max_new_tokens=cap))
    wants = [funasr_text(nano_dir, reference_16k_mono(paths[i]), *CASES[i][:3],
                         min(CASES[i][3], 16)) for i in range(len(clips))]
    assert [r.text for r in unary] == [w for w, _ in wants]
    assert streamed.text == wants[1][0]
    sent = sum(n for _, n in wants) + wants[1][1]
    assert value("asr_generated_tokens_total") == sent
    assert value("asr_decode_steps_count") == len(clips) + 1  # one per sequence
    assert value("asr_decode_steps_sum") == sent  # each sequence's forwards = its tokens
    assert value("asr_time_per_output_token_seconds_count") == len(clips) + 1
    assert 0 < value("asr_time_per_output_token_seconds_sum") < 60


def test_stepwise_is_the_nano_default_and_static_stays_selectable(nano_dir: Path) -> None:
    from gpu_worker.engines.base import resolve_engine
    from gpu_worker.families import family_for
    from protos.common.worker_config import WorkerConfig

    assert resolve_engine(WorkerConfig(model=str(nano_dir), engine="auto")) == "stepwise"
    assert resolve_engine(WorkerConfig(model=str(nano_dir), engine="generate")) == "generate"
    assert {"stepwise", "generate"} <= set(family_for(str(nano_dir), "generate").engines)
    with pytest.raises(StartupError, match="stepwise"):  # no other family runs it
        family_for(str(nano_dir.parent / "sensevoice-tiny"), "stepwise")
