"""Fun-ASR-Nano end to end: the service's text equals FunASR's own `generate` on the same clips.

Real scheduler, real worker process, real gRPC, both RPCs; one clip at a time and in batches
across concurrent requests; with and without hotwords, zh/en, ITN on and off; the token cap
(server's and per request); languages the model lacks refused with INVALID_ARGUMENT. Each runs on
both Nano engines: step-wise decoding (the default) and static batches (`--engine generate`); the
long file runs on the default.
"""

from __future__ import annotations

import functools
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import grpc
import pytest

from client.library import AsrClient
from client.options import TranscribeOptions
from protos.asr.v1 import asr_pb2 as pb
from tests.audio_fixtures import reference_16k_mono

pytestmark = pytest.mark.integration

SERVER_CAP = 24  # --max-new-tokens of the served model (random weights never stop earlier)
KINDS = ("wav16k", "wav44k_stereo", "flac", "mp3")
LANGUAGE_WORDS = {"zh": "中文", "en": "英文"}


@functools.lru_cache(maxsize=1)
def _reference_model(model_dir: str) -> Any:
    from funasr import AutoModel

    return AutoModel(model=model_dir, disable_update=True, device="cpu", disable_pbar=True,
                     ncpu=1)


def funasr_texts(model_dir: Path, paths: list[Path], *, max_length: int = SERVER_CAP,
                 language: str = "auto", itn: bool = False, hotwords: tuple[str, ...] = (),
                 batched: bool = False) -> list[str]:
    """FunASR's own Nano texts for the files (16 kHz mono float32 tensors), one at a time or
    in one batched `generate` call."""
    import torch

    model = _reference_model(str(model_dir))
    kwargs: dict[str, Any] = {"max_length": max_length, "itn": itn, "hotwords": list(hotwords)}
    if language != "auto":
        kwargs["language"] = LANGUAGE_WORDS[language]
    clips = [torch.from_numpy(reference_16k_mono(p)) for p in paths]
    if batched:
        return [r["text"] for r in model.generate(input=clips, batch_size=len(clips),
                                                  **kwargs)]
    return [model.generate(input=c, **kwargs)[0]["text"] for c in clips]


@pytest.fixture(scope="module", params=["stepwise", "generate"])
def nano(models_dir: Path, request: pytest.FixtureRequest):  # type: ignore[no-untyped-def]
    """The service on each Nano engine: step-wise decoding (the default) and FunASR's static
    batches (`--engine generate`)."""
    from tests.conftest import RunningService, make_config

    model_dir = models_dir / "funasr-nano-tiny"
    # A queue delay lets concurrent requests meet in one batch (static batches).
    svc = RunningService(make_config(model_dir, max_new_tokens=SERVER_CAP,
                                     max_queue_delay_ms=300.0, cpu_max_batch_size=8,
                                     engine=request.param))
    svc.wait_all_ready()
    with AsrClient(svc.address) as client:
        yield model_dir, client, svc
    svc.stop()


def _config(language: str = "auto", itn: bool = False, hotwords: tuple[str, ...] = (),
            max_new_tokens: int = 0) -> pb.RecognitionConfig:
    return TranscribeOptions(language=language, enable_itn=itn, hotwords=hotwords,
                             max_new_tokens=max_new_tokens).to_config()


def _batch_sizes(svc: Any) -> tuple[float, float]:
    """(sum, count) of the service's asr_batch_size histogram."""
    reg = svc.service.metrics.registry
    return (reg.get_sample_value("asr_batch_size_sum", {"device": "cpu",
                                                        "model": "funasr-nano-tiny"}) or 0.0,
            reg.get_sample_value("asr_batch_size_count", {"device": "cpu",
                                                          "model": "funasr-nano-tiny"}) or 0.0)


def test_clips_give_different_text(nano, speech: dict[str, Path]) -> None:  # type: ignore[no-untyped-def]
    model_dir, _, _ = nano
    texts = funasr_texts(model_dir, [speech[k] for k in KINDS])
    assert all(t for t in texts)
    assert len(set(texts)) == len(texts), texts


OPTIONS = [
    pytest.param({}, id="plain"),
    pytest.param({"hotwords": ("阿里巴巴", "speech recognition")}, id="hotwords"),
    pytest.param({"language": "zh"}, id="zh"),
    pytest.param({"language": "en", "itn": True}, id="en-itn"),
    pytest.param({"language": "zh", "itn": True, "hotwords": ("通义",)}, id="zh-itn-hotwords"),
]


@pytest.mark.parametrize("opts", OPTIONS)
def test_one_at_a_time_both_rpcs_match_funasr(nano, speech: dict[str, Path],  # type: ignore[no-untyped-def]
                                              opts: dict[str, Any]) -> None:
    model_dir, client, _ = nano
    paths = [speech["wav16k"], speech["flac"]]
    expected = funasr_texts(model_dir, paths, **opts)
    for path, want in zip(paths, expected, strict=True):
        unary = client.recognize_bytes(path.read_bytes(), _config(**opts))
        options = TranscribeOptions(language=opts.get("language", "auto"),
                                    enable_itn=opts.get("itn", False),
                                    hotwords=opts.get("hotwords", ()))
        streamed = client.transcribe_file(path, options)
        assert unary.text == want
        assert streamed.text == want
        assert not unary.hotwords_ignored and not streamed.hotwords_ignored
        assert unary.device == "cpu"


def test_options_change_the_prompt_and_the_text(nano, speech: dict[str, Path]) -> None:  # type: ignore[no-untyped-def]
    model_dir, _, _ = nano
    path = [speech["wav16k"]]
    variants = [funasr_texts(model_dir, path, **o.values[0])[0] for o in OPTIONS]  # type: ignore[attr-defined]
    assert len(set(variants)) >= 4, variants  # the options really reach the prompt


@pytest.mark.parametrize("opts", [OPTIONS[0], OPTIONS[4]])
def test_concurrent_requests_batch_and_match_funasr(nano, speech: dict[str, Path],  # type: ignore[no-untyped-def]
                                                    opts: dict[str, Any]) -> None:
    model_dir, client, svc = nano
    paths = [speech[k] for k in KINDS]
    single = funasr_texts(model_dir, paths, **opts)
    batched = funasr_texts(model_dir, paths, batched=True, **opts)
    assert batched == single  # FunASR's batched path is padding invariant for Nano
    total_before, count_before = _batch_sizes(svc)
    cfg = _config(**opts)
    with ThreadPoolExecutor(len(paths)) as pool:
        results = list(pool.map(lambda p: client.recognize_bytes(p.read_bytes(), cfg), paths))
    assert [r.text for r in results] == single
    total, count = _batch_sizes(svc)
    # Static batches: one observation per batch; step-wise: one per sequence, its size the
    # largest running set it decoded in. Either way the mean batch size shows the sharing.
    assert count - count_before <= len(paths)
    assert total - total_before > count - count_before, "concurrent requests should share a batch"


def test_request_token_cap_holds(nano, speech: dict[str, Path]) -> None:  # type: ignore[no-untyped-def]
    model_dir, client, svc = nano
    path = speech["mp3"]
    reg = svc.service.metrics.registry
    labels = {"device": "cpu", "model": "funasr-nano-tiny"}
    before = reg.get_sample_value("asr_generated_tokens_total", labels) or 0.0
    short = client.recognize_bytes(path.read_bytes(), _config(max_new_tokens=5))
    assert short.text == funasr_texts(model_dir, [path], max_length=5)[0]
    tokens = (reg.get_sample_value("asr_generated_tokens_total", labels) or 0.0) - before
    assert 1 <= tokens <= 5
    full = client.recognize_bytes(path.read_bytes(), _config())
    assert len(full.text) > len(short.text)
    # A request may lower the cap, never raise it above the server's.
    above = client.recognize_bytes(path.read_bytes(), _config(max_new_tokens=10 * SERVER_CAP))
    assert above.text == full.text == funasr_texts(model_dir, [path])[0]
    assert reg.get_sample_value("asr_decode_steps_count", labels)
    assert reg.get_sample_value("asr_time_per_output_token_seconds_count", labels)


@pytest.mark.parametrize("language", ["fr", "ko", "yue"])
def test_unknown_language_is_invalid_argument(nano, speech: dict[str, Path],  # type: ignore[no-untyped-def]
                                              language: str) -> None:
    _, client, _ = nano
    with pytest.raises(grpc.RpcError) as err:
        client.recognize_bytes(speech["wav16k"].read_bytes(), _config(language=language))
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "zh" in (err.value.details() or "")


def test_negative_token_cap_is_invalid_argument(nano, speech: dict[str, Path]) -> None:  # type: ignore[no-untyped-def]
    _, client, _ = nano
    with pytest.raises(grpc.RpcError) as err:
        client.recognize_bytes(speech["wav16k"].read_bytes(), _config(max_new_tokens=-1))
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT


def test_status_lists_nano_capabilities(nano) -> None:  # type: ignore[no-untyped-def]
    _, client, svc = nano
    (model,) = client.status().models
    assert model.family == "funasr-nano"
    assert model.engine == svc.service.config.engine
    assert model.languages == ["zh", "en", "ja"]
    assert model.hotwords


def test_long_file_segments_go_through_the_batched_decoder(start_service, models_dir: Path,  # type: ignore[no-untyped-def]
                                                           tmp_path: Path) -> None:
    import soundfile as sf
    import torch

    from tests.long_audio import speech_clips, write_recording

    wav = write_recording(tmp_path / "60s.wav", 60.0, speech_clips(tmp_path))
    model_dir = models_dir / "funasr-nano-tiny"
    svc = start_service(model_dir, vad_model=str(models_dir / "fsmn-vad"),
                        max_new_tokens=SERVER_CAP, max_queue_delay_ms=300.0,
                        cpu_max_batch_size=8)
    with AsrClient(svc.address) as client:
        result = client.recognize_bytes(wav.read_bytes(),
                                        pb.RecognitionConfig(vad_mode=pb.VAD_ALWAYS),
                                        timeout=300)
    assert len(result.segments) > 5
    samples = sf.read(wav, dtype="float32")[0]
    model = _reference_model(str(model_dir))
    for seg in result.segments:  # each segment's text is FunASR's on the same samples
        piece = torch.from_numpy(samples[seg.start_ms * 16:seg.end_ms * 16])
        want = model.generate(input=piece, max_length=SERVER_CAP, itn=False)[0]["text"]
        assert seg.text == want
    total, count = _batch_sizes(svc)
    assert count <= len(result.segments)
    assert total > count, "segments of one file should share batches (or a running set)"
