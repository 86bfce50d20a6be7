"""The `direct` engine, stage by stage against FunASR (CPU, the small models).

1. Features: our batched fbank + LFR + CMVN equal FunASR's `WavFrontend` within float
   tolerance, for every clip of a padded batch of mixed lengths.
2. Network: given FunASR's own features, our batched encoder + decoding give exactly the token
   ids FunASR's `inference` decodes for each clip alone.
3. End to end: text equals FunASR `generate`, for each clip alone and in mixed-length batches
   of 1-16 (Paraformer included), on espeak-ng speech in several languages and lengths.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from torch.nn.utils.rnn import pad_sequence

from gpu_worker.engines.base import Utterance
from tests.audio_fixtures import espeak_wav, reference_16k_mono

VOICES = {
    "en": "the quick brown fox jumps over the lazy dog and runs into the forest",
    "de": "guten morgen, wie geht es dir heute an diesem schönen tag",
    "fr": "bonjour tout le monde, ceci est un essai de reconnaissance",
    "es": "hola, me llamo pedro y vivo en madrid desde hace diez años",
    "cmn": "你好世界，今天天气很好，我们去公园散步吧",
    "ru": "привет мир, это проверка распознавания речи",
    "it": "buongiorno a tutti",
}
MODELS = ("sensevoice-tiny", "paraformer-tiny")


@pytest.fixture(scope="module")
def clips(tmp_path_factory: pytest.TempPathFactory) -> list[np.ndarray]:
    """16 clips: 7 languages, whole and cut to other lengths (down to shorter than one
    25 ms window and to exactly one window)."""
    d = tmp_path_factory.mktemp("direct")
    whole = [reference_16k_mono(espeak_wav(text, d / f"{v}.wav", voice=v)).astype(np.float32)
             for v, text in VOICES.items()]
    cuts = [whole[0][:len(whole[0]) // 3], whole[1][4000:4000 + 16000], whole[2][:8123],
            whole[3][-20000:], whole[4][:len(whole[4]) // 2], whole[5][:3201],
            whole[6][:400], whole[0][:300], whole[1][:160 * 97 + 400]]
    out = whole + cuts
    assert len(out) == 16 and len({len(c) for c in out}) == 16
    return out


@pytest.fixture(scope="module")
def runners(models_dir: Path) -> dict[str, tuple[Any, Any]]:
    """(FunASR generate runner, direct runner) per model, CPU."""
    from gpu_worker.engines.generate import load_runner
    from gpu_worker.fast.runner import load_direct_runner

    return {m: (load_runner(str(models_dir / m)), load_direct_runner(str(models_dir / m)))
            for m in MODELS}


@pytest.mark.parametrize("model", MODELS)
def test_features_equal_funasr_wavfrontend(runners: dict[str, tuple[Any, Any]],
                                           clips: list[np.ndarray], model: str) -> None:
    direct = runners[model][1]
    feats, lens = direct.features(clips)  # one padded batch of 16 mixed lengths
    for i, clip in enumerate(clips):
        ref, ref_lens = direct.frontend(torch.from_numpy(clip)[None, :], [len(clip)])
        n = int(ref_lens[0])
        assert int(lens[i]) == n == direct.fbank.num_frames(len(clip))
        torch.testing.assert_close(feats[i, :n], ref[0, :n], atol=1e-3, rtol=1e-4)
        assert not feats[i, n:].any(), "features past a clip's end must be zero"


@pytest.mark.parametrize("model", MODELS)
def test_features_stay_fp32_under_autocast(runners: dict[str, tuple[Any, Any]],
                                           clips: list[np.ndarray], model: str) -> None:
    """`--dtype bf16` runs the model under autocast; the features must not be computed in
    bf16 with it (a bf16 mel product and log lose ~2-3 digits), as FunASR's own features,
    computed on the CPU, are not. CPU autocast stands in for CUDA's here: the same rule
    (matmul in bf16) and the same code path."""
    direct = runners[model][1]
    want, want_lens = direct.features(clips)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got, got_lens = direct.features(clips)
        many = direct.fbank.log_mel_many([torch.from_numpy(c[None, :4000]) * 32768
                                          for c in clips[:3]])
    assert got.dtype == torch.float32 and torch.equal(got_lens, want_lens)
    torch.testing.assert_close(got, want, atol=0, rtol=0)
    for m, c in zip(many, clips[:3], strict=True):
        assert m.dtype == torch.float32
        torch.testing.assert_close(m, direct.fbank.log_mel(torch.from_numpy(c[None, :4000])
                                                           * 32768).cpu(), atol=0, rtol=0)


def test_exact_argmax_is_fp32s_argmax_under_autocast(runners: dict[str, tuple[Any, Any]],
                                                      clips: list[np.ndarray]) -> None:
    """The output layer wrapped by `exact_argmax` gives, under bf16 autocast, every row's fp32
    argmax; the layer as autocast runs it does not (the random-weight model's logits are
    nearly flat), so the check can fail."""
    from gpu_worker.fast.exact_argmax import ExactArgmaxLinear

    direct = runners["sensevoice-tiny"][1]
    feats, lens = direct.features(clips)
    model = direct.model
    queries = model.embed(torch.tensor([direct.net.query_ids("auto", True)]))
    with torch.inference_mode():
        x, _ = model.encoder(torch.cat((queries.expand(len(clips), -1, -1), feats), 1),
                             lens.to(torch.int32) + 4)
        layer = model.ctc.ctc_lo
        want = layer(x).argmax(-1)
        wrapped = ExactArgmaxLinear(layer)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            plain, exact = layer(x).argmax(-1), wrapped(x).argmax(-1)
    assert (plain != want).sum() > 0
    assert torch.equal(exact, want)
    assert wrapped.rows == want.numel() and 0 < wrapped.recomputed <= wrapped.rows


@pytest.mark.parametrize(("model", "dtype", "least"), [
    ("sensevoice-tiny", torch.bfloat16, 0.98), ("paraformer-tiny", torch.bfloat16, 0.95),
    ("sensevoice-tiny", torch.float16, 0.995), ("paraformer-tiny", torch.float16, 0.97)])
def test_low_precision_tokens_agree_with_fp32(models_dir: Path, clips: list[np.ndarray],
                                              model: str, dtype: torch.dtype,
                                              least: float) -> None:
    """The whole direct path under bf16/fp16 autocast (CPU's standing in for CUDA's, which
    `tests/test_gpu.py` checks on a GPU) against fp32: with the exact argmax the tokens agree
    on >= `least`. Measured on these 16 clips, bf16: 98.9 % (7 of 616 tokens) and 96.5 % (11
    of 312), without the exact argmax 85.6 % and 93.6 % (these random-weight models' logits
    are nearly flat); fp16 (3 more bits): 100 % and 98.4 %, without it 98.2 % and 98.7 %.
    What still differs comes from the rounding before the output layer (encoder; for
    Paraformer mostly its decoder: its floor here checks the whole low-precision path, not the
    exact argmax); token counts stay fp32's (Paraformer's predictor runs in fp32)."""
    import rapidfuzz.distance.Levenshtein as lev

    from gpu_worker.fast import exact_argmax
    from gpu_worker.fast.runner import load_direct_runner

    direct = load_direct_runner(str(models_dir / model))
    utts = [Utterance(c) for c in clips]
    want = direct.token_ids(utts)
    exact_argmax.install(direct.model, direct.family.name)
    with torch.autocast("cpu", dtype=dtype):
        got = direct.token_ids(utts)
    total = sum(max(len(w), 1) for w in want)
    errors = sum(lev.distance(w, g) for w, g in zip(want, got, strict=True))
    assert total > 100 and 1 - errors / total >= least, (errors, total)


class _IdsTokenizer:
    """Stands in for FunASR's tokenizer: the 'text' FunASR returns is the token ids."""

    def decode(self, ids: list[int]) -> str:
        return json.dumps([int(t) for t in ids])


def _funasr_tokens(direct: Any, feats: torch.Tensor, language: str,
                   use_itn: bool) -> list[int]:
    """FunASR's own `inference` on one clip's features: its token ids."""
    model = direct.model
    kwargs: dict[str, Any] = {"device": "cpu", "data_type": "fbank", "language": language,
                              "use_itn": use_itn}
    with torch.no_grad():
        if direct.family.name == "sensevoice":
            res, _ = model.inference(feats[None], torch.tensor([feats.size(0)]), key=["k"],
                                     tokenizer=_IdsTokenizer(), frontend=None, **kwargs)
            return list(json.loads(res[0]["text"]))
        out = model.inference(feats[None], torch.tensor([[feats.size(0)]]), key=["k"],
                              tokenizer=None, frontend=None, **kwargs)
    if not out:  # FunASR returns [] when the predictor counts no token
        return []
    return list(out[0][0]["token_int"])


@pytest.mark.parametrize(("model", "language", "use_itn"),
                         [("sensevoice-tiny", "auto", False), ("sensevoice-tiny", "en", True),
                          ("sensevoice-tiny", "zh", False), ("paraformer-tiny", "auto", False)])
def test_tokens_equal_funasr_given_its_features(runners: dict[str, tuple[Any, Any]],
                                                clips: list[np.ndarray], model: str,
                                                language: str, use_itn: bool) -> None:
    direct = runners[model][1]
    feats = [direct.frontend(torch.from_numpy(c)[None, :], [len(c)])[0][0] for c in clips]
    lens = torch.tensor([f.size(0) for f in feats])
    with torch.inference_mode():
        ours = direct.net.tokens(pad_sequence(feats, batch_first=True), lens, language, use_itn)
    theirs = [_funasr_tokens(direct, f, language, use_itn) for f in feats]
    assert ours == theirs
    assert sum(len(t) for t in theirs) > 16, "the models must emit tokens for this to mean much"


@pytest.mark.parametrize("model", MODELS)
def test_text_equals_generate_alone_and_in_mixed_batches(runners: dict[str, tuple[Any, Any]],
                                                         clips: list[np.ndarray],
                                                         model: str) -> None:
    generate, direct = runners[model]
    utts = [Utterance(c, request_id=str(i)) for i, c in enumerate(clips)]
    expected = [generate.transcribe([u])[0] for u in utts]
    assert len({t.text for t in expected}) >= 12, "random weights must still tell clips apart"
    alone = [direct.transcribe([u])[0] for u in utts]
    assert [t.text for t in alone] == [t.text for t in expected]
    assert [t.language for t in alone] == [t.language for t in expected]
    order = np.random.default_rng(7).permutation(len(utts))
    for size in (2, 3, 5, 16):
        for start in range(0, len(utts), size):
            idx = [int(i) for i in order[start:start + size]]
            got = direct.transcribe([utts[i] for i in idx])
            assert [t.text for t in got] == [expected[i].text for i in idx], (size, idx)


def test_sensevoice_options_reach_the_query_tokens(runners: dict[str, tuple[Any, Any]],
                                                  clips: list[np.ndarray]) -> None:
    generate, direct = runners["sensevoice-tiny"]
    for language, itn in (("en", True), ("zh", False), ("ja", True)):
        utts = [Utterance(c, language=language, use_itn=itn) for c in clips[:6]]
        expected = [generate.transcribe([u])[0].text for u in utts]
        assert [t.text for t in direct.transcribe(utts)] == expected


@pytest.mark.skipif(os.environ.get("ASR_SLOW_TESTS") != "1", reason="set ASR_SLOW_TESTS=1")
@pytest.mark.slow
def test_sensevoice_small_text_agrees_with_generate(models_dir: Path,
                                                    clips: list[np.ndarray]) -> None:
    """The full-size model: at least 95 % of clips identical, token agreement >= 99.9 %."""
    from gpu_worker.engines.generate import load_runner
    from gpu_worker.fast.runner import load_direct_runner
    from gpu_worker.make_models import build_models

    build_models(models_dir, ["sensevoice-small"])
    path = str(models_dir / "sensevoice-small")
    generate, direct = load_runner(path, threads=2), load_direct_runner(path, threads=2)
    utts = [Utterance(c) for c in clips]
    expected = [generate.transcribe([u])[0].text for u in utts]
    got = [t.text for t in direct.transcribe(utts)]
    same = sum(a == b for a, b in zip(expected, got, strict=True))
    assert same >= 0.95 * len(utts), list(zip(expected, got, strict=True))
    assert token_agreement(expected, got) >= 0.999


def token_agreement(expected: list[str], got: list[str]) -> float:
    """1 - (character edit distance / reference length), over all clips."""
    import rapidfuzz.distance.Levenshtein as lev

    total = sum(max(len(e), 1) for e in expected)
    errors = sum(lev.distance(e, g) for e, g in zip(expected, got, strict=True))
    return 1.0 - errors / total


def test_batched_cif_equals_funasr_per_clip_where_funasr_batched_fails() -> None:
    """A clip that fires nothing after one that fires breaks FunASR's batched CIF; ours gives
    every clip what FunASR's CIF gives it alone."""
    from funasr.models.paraformer.cif_predictor import cif_v1

    from gpu_worker.fast.cif import integrate

    gen = torch.Generator().manual_seed(3)
    hidden = torch.randn(3, 40, 8, generator=gen)
    alphas = torch.rand(3, 40, generator=gen) * 0.6
    alphas[1] = 0.01  # fires nothing
    alphas[2, 25:] = 0  # a shorter clip
    with pytest.raises(IndexError):
        cif_v1(hidden[:2], alphas[:2], 1.0)
    ours, counts = integrate(hidden, alphas, 1.0)
    for i in range(3):
        alone, _ = cif_v1(hidden[i:i + 1], alphas[i:i + 1], 1.0)
        n = alone.size(1)
        assert int(counts[i]) <= n
        torch.testing.assert_close(ours[i, :n], alone[0], atol=1e-5, rtol=1e-5)
        assert not ours[i, n:].any()


@pytest.mark.parametrize("model", MODELS)
def test_audio_funasr_refuses_is_refused(runners: dict[str, tuple[Any, Any]],
                                         model: str) -> None:
    """Empty and non-finite audio fail like under `generate` (the batcher then isolates the
    bad utterance); silence and clipping give generate's text."""
    generate, direct = runners[model]
    for bad in (np.zeros(0, np.float32), np.full(8000, np.nan, np.float32)):
        for runner in (generate, direct):
            with pytest.raises((ValueError, RuntimeError)):
                runner.transcribe([Utterance(bad)])
    for odd in (np.zeros(16000, np.float32), np.ones(8000, np.float32)):
        assert direct.transcribe([Utterance(odd)]) == generate.transcribe([Utterance(odd)])


def test_bf16_runner_logs_the_share_it_recomputed(models_dir: Path, clips: list[np.ndarray],
                                                  tmp_path: Path,
                                                  caplog: pytest.LogCaptureFixture) -> None:
    """Under bf16 the direct runner logs, after 1, 2, 4, ... batches, how many output-layer
    rows it recomputed in fp32, in the words `bench/throughput.py` reads back from the
    service's log for its report."""
    import logging

    from bench.throughput import exact_argmax_note
    from gpu_worker.fast import exact_argmax
    from gpu_worker.fast.runner import load_direct_runner

    direct = load_direct_runner(str(models_dir / "sensevoice-tiny"))
    direct.exact = exact_argmax.install(direct.model, direct.family.name)  # as bf16 on CUDA
    with caplog.at_level(logging.INFO, logger="gpu_worker.fast.runner"), \
            torch.autocast("cpu", dtype=torch.bfloat16):
        for _ in range(5):
            direct.token_ids([Utterance(c) for c in clips[:3]])
    lines = [r.getMessage() for r in caplog.records if "output-layer rows" in r.getMessage()]
    assert [line.rsplit(", ", 1)[1] for line in lines] == ["1 batches", "2 batches",
                                                           "4 batches"]
    log_file = tmp_path / "service.log"
    log_file.write_text("\n".join(lines) + "\n")
    done, rows = direct.exact.recomputed, direct.exact.rows
    assert 0 < done <= rows
    assert exact_argmax_note(log_file).startswith(f"{done * 4 // 5} of {rows * 4 // 5} rows")
    assert exact_argmax_note(tmp_path / "missing.log") == "no count in the service log"


@pytest.mark.parametrize("setting", [True, False])
def test_exact_argmax_is_a_setting_of_low_precision_runners(models_dir: Path,
                                                            setting: bool) -> None:
    """`--exact-argmax on|off` decides whether a bf16 direct runner wraps its output layer;
    an fp32 runner never does."""
    from gpu_worker.device import TorchDevice
    from gpu_worker.families import family_for
    from gpu_worker.fast.exact_argmax import ExactArgmaxLinear
    from gpu_worker.fast.runner import DirectRunner
    from protos.common.worker_config import WorkerConfig

    path = str(models_dir / "sensevoice-tiny")
    cfg = WorkerConfig(model=path, exact_argmax=setting)
    low = TorchDevice("cpu")
    low.dtype = "bf16"  # as on CUDA: the runner's choice depends on the device's precision
    runner = DirectRunner(path, family_for(path, "direct"), low, cfg)
    assert (runner.exact is not None) == setting
    assert isinstance(runner.model.ctc.ctc_lo, ExactArgmaxLinear) == setting
    fp32 = DirectRunner(path, family_for(path, "direct"), TorchDevice("cpu"), cfg)
    assert fp32.exact is None


def test_batch_padding_is_zero_whatever_the_memory_held(runners: dict[str, tuple[Any, Any]],
                                                        clips: list[np.ndarray]) -> None:
    """The host buffer is not cleared before the clips are written (that would double the
    writes), so each row's padding is zeroed on its own: NaN left in reused memory must not
    reach the features (masked by a product, NaN * 0 is NaN)."""
    direct = runners["sensevoice-tiny"][1]
    utts = [Utterance(c) for c in clips[:6]]
    for _ in range(3):  # freed memory full of NaN, the size of the next batch's buffer
        junk = torch.full((len(utts), max(len(c) for c in clips[:6])), float("nan"))
        del junk
        p = direct.prepare(utts)
        for i, c in enumerate(clips[:6]):
            assert torch.equal(p.host[i, :len(c)], torch.from_numpy(c))
            assert not p.host[i, len(c):].any() and not p.host[i].isnan().any()
