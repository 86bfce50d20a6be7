"""Integration tests for gpu_worker.make_models: the local model directories load and are stable."""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from gpu_worker import make_models
from gpu_worker.make_models import DEFAULT_SET, MODEL_NAMES, build_models

pytestmark = pytest.mark.integration

ASR_MODELS = ("sensevoice-tiny", "paraformer-tiny", "paraformer-streaming-tiny")
# A whole clip through the streaming model: is_final flushes the tail kept in the cache.
GENERATE_KWARGS: dict[str, dict[str, Any]] = {
    "paraformer-streaming-tiny": {
        "is_final": True, "chunk_size": [0, 10, 5],
        "encoder_chunk_look_back": 4, "decoder_chunk_look_back": 1,
    },
}


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _load(model_dir: Path) -> Any:
    from funasr import AutoModel

    return AutoModel(model=str(model_dir), disable_update=True, device="cpu")


@pytest.fixture(scope="session")
def models_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("models")
    built = build_models(out, DEFAULT_SET)
    assert set(built) == set(DEFAULT_SET)
    return out


@pytest.fixture(scope="session")
def speech(tmp_path_factory: pytest.TempPathFactory) -> np.ndarray:
    """About 2.5 s of synthetic English speech, 16 kHz mono float32."""
    import soundfile as sf

    if shutil.which("espeak-ng") is None or shutil.which("sox") is None:
        pytest.skip("espeak-ng and sox are needed to synthesise speech")
    tmp = tmp_path_factory.mktemp("audio")
    raw, wav = tmp / "raw.wav", tmp / "speech16k.wav"
    subprocess.run(["espeak-ng", "-w", str(raw), "hello world, testing one two three"],
                   check=True, capture_output=True)
    subprocess.run(["sox", str(raw), "-r", "16000", "-c", "1", str(wav)],
                   check=True, capture_output=True)
    audio, rate = sf.read(wav, dtype="float32")
    assert rate == 16000 and audio.ndim == 1
    return audio


def test_directories_are_complete(models_dir: Path) -> None:
    import yaml

    assert sorted(p.name for p in models_dir.iterdir()) == sorted(DEFAULT_SET)  # no temp dirs
    for name in DEFAULT_SET:
        model_dir = models_dir / name
        assert (model_dir / make_models.COMPLETE_MARKER).is_file()
        assert (model_dir / "model.pt").stat().st_size > 0
        cfg = yaml.safe_load((model_dir / "config.yaml").read_text(encoding="utf-8"))
        assert cfg["frontend_conf"]["dither"] == 0.0
        if name in ASR_MODELS:
            assert isinstance(cfg["tokenizer_conf"], dict)


@pytest.mark.parametrize("name", ASR_MODELS)
def test_two_loads_give_the_same_text(models_dir: Path, speech: np.ndarray, name: str) -> None:
    kwargs = GENERATE_KWARGS.get(name, {})
    texts = []
    for _ in range(2):
        result = _load(models_dir / name).generate(input=speech, **kwargs)
        assert len(result) == 1
        texts.append(result[0]["text"])
    assert texts[0], "random weights should still emit some tokens"
    assert texts[0] == texts[1]


def test_vad_finds_speech(models_dir: Path, speech: np.ndarray) -> None:
    silence = np.zeros(16000, dtype=np.float32)
    audio = np.concatenate([silence, speech, silence])
    result = _load(models_dir / "fsmn-vad").generate(input=audio)
    segments = result[0]["value"]
    assert len(segments) >= 1
    duration_ms = len(audio) * 1000 // 16000
    for start_ms, end_ms in segments:
        assert 0 <= start_ms < end_ms <= duration_ms
    assert _load(models_dir / "fsmn-vad").generate(input=silence)[0]["value"] == []


def test_sensevoice_tiny_parameter_count(models_dir: Path) -> None:
    model = _load(models_dir / "sensevoice-tiny").model
    count = sum(p.numel() for p in model.parameters())
    assert 0.8e6 < count < 1.1e6, count


def test_rebuild_is_byte_identical(models_dir: Path, tmp_path: Path) -> None:
    again = build_models(tmp_path, DEFAULT_SET)
    for name in DEFAULT_SET:
        assert _sha256(again[name] / "model.pt") == _sha256(models_dir / name / "model.pt"), name


def test_complete_directory_is_kept_unless_forced(tmp_path: Path) -> None:
    marker = build_models(tmp_path, ["paraformer-tiny"])["paraformer-tiny"] / ".complete"
    first = marker.stat().st_mtime_ns
    build_models(tmp_path, ["paraformer-tiny"])
    assert marker.stat().st_mtime_ns == first
    digest = _sha256(marker.parent / "model.pt")
    build_models(tmp_path, ["paraformer-tiny"], force=True)
    assert marker.stat().st_mtime_ns != first
    assert _sha256(marker.parent / "model.pt") == digest


def test_incomplete_directory_is_rebuilt(tmp_path: Path) -> None:
    stale = tmp_path / "paraformer-tiny"
    stale.mkdir()
    (stale / "model.pt").write_bytes(b"half written")
    path = build_models(tmp_path, ["paraformer-tiny"])["paraformer-tiny"]
    assert (path / ".complete").is_file()
    assert (path / "model.pt").read_bytes() != b"half written"


def test_unknown_name_raises(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="sensevoice-tiny"):
        build_models(tmp_path / "out", ["sensevoice-tiny", "whisper-huge"])
    assert not (tmp_path / "out" / "sensevoice-tiny").exists()


def test_cli_builds_only_the_named_models(tmp_path: Path) -> None:
    assert make_models.main([str(tmp_path), "--only", "fsmn-vad"]) == 0
    assert [p.name for p in tmp_path.iterdir()] == ["fsmn-vad"]
    with pytest.raises(SystemExit):
        make_models.main([str(tmp_path), "--only", "nope"])
    assert set(MODEL_NAMES) > set(DEFAULT_SET)


@pytest.mark.slow
@pytest.mark.skipif(os.environ.get("ASR_SLOW_TESTS") != "1", reason="set ASR_SLOW_TESTS=1")
def test_sensevoice_small_full_size(tmp_path: Path, speech: np.ndarray) -> None:
    path = build_models(tmp_path, ["sensevoice-small"])["sensevoice-small"]
    auto_model = _load(path)
    count = sum(p.numel() for p in auto_model.model.parameters())
    assert abs(count - 234.0e6) < 0.5e6, count
    assert auto_model.generate(input=speech)[0]["text"]


@pytest.mark.slow
@pytest.mark.skipif(os.environ.get("ASR_SLOW_TESTS") != "1", reason="set ASR_SLOW_TESTS=1")
def test_paraformer_streaming_full_size(tmp_path: Path, speech: np.ndarray) -> None:
    """paraformer-zh-streaming's size (220M: 50 encoder blocks, 16 decoder blocks, 8404
    tokens), the model of the live-streaming GPU target; FunASR's streaming loop runs it."""
    path = build_models(tmp_path, ["paraformer-streaming"])["paraformer-streaming"]
    auto_model = _load(path)
    count = sum(p.numel() for p in auto_model.model.parameters())
    assert abs(count - 220.0e6) < 0.5e6, count
    kwargs = dict(GENERATE_KWARGS["paraformer-streaming-tiny"], is_final=False)
    cache: dict[str, Any] = {}
    step = 960 * 10  # chunk_size[1] x 60 ms
    for i in range(0, len(speech), step):
        last = i + step >= len(speech)
        auto_model.generate(input=speech[i:i + step], cache=cache,
                            **dict(kwargs, is_final=last))
    assert cache, "the streaming loop keeps its state in the cache"
