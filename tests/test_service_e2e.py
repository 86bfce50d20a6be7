"""End to end: real scheduler, real worker process, real gRPC; text equals FunASR's own."""

from __future__ import annotations

import functools
from pathlib import Path

import grpc
import pytest

from client.library import AsrClient
from protos.asr.v1 import asr_pb2 as pb
from tests.audio_fixtures import reference_16k_mono

pytestmark = pytest.mark.integration

MODELS = ("sensevoice-tiny", "paraformer-tiny")


@functools.lru_cache(maxsize=4)
def _reference_model(model_dir: str):  # type: ignore[no-untyped-def]
    from funasr import AutoModel

    return AutoModel(model=model_dir, disable_update=True, device="cpu", disable_pbar=True,
                     ncpu=1)


def funasr_text(model_dir: Path, audio_path: Path) -> str:
    """FunASR's own answer for the file after resampling to 16 kHz mono."""
    model = _reference_model(str(model_dir))
    raw = model.generate(input=reference_16k_mono(audio_path))[0]["text"]
    if type(model.model).__name__.startswith("SenseVoice"):
        from funasr.utils.postprocess_utils import rich_transcription_postprocess

        return rich_transcription_postprocess(raw)
    return raw


@pytest.fixture(scope="module", params=MODELS)
def served(request: pytest.FixtureRequest, models_dir: Path):  # type: ignore[no-untyped-def]
    from tests.conftest import RunningService, make_config

    model_dir = models_dir / request.param
    svc = RunningService(make_config(model_dir))
    svc.wait_all_ready()
    with AsrClient(svc.address) as client:
        yield model_dir, client
    svc.stop()


@pytest.mark.parametrize("kind", ["wav16k", "wav44k_stereo", "flac", "mp3"])
def test_both_rpcs_match_funasr(served, speech: dict[str, Path], kind: str) -> None:  # type: ignore[no-untyped-def]
    model_dir, client = served
    path = speech[kind]
    expected = funasr_text(model_dir, path)
    assert expected.strip(), "the reference transcript should not be empty"
    unary = client.recognize_bytes(path.read_bytes())
    streamed = client.transcribe_file(path)
    assert unary.text == expected
    assert streamed.text == expected
    for result in (unary, streamed):
        assert result.device == "cpu"
        assert result.fallback_reason == ""
        assert result.audio_duration_s == pytest.approx(len(reference_16k_mono(path)) / 16000)
        assert [s.text for s in result.segments] == [expected]
        assert result.segments[0].end_ms == round(result.audio_duration_s * 1000)


def test_raw_pcm_matches_wav(served, speech: dict[str, Path]) -> None:  # type: ignore[no-untyped-def]
    import soundfile as sf

    _, client = served
    samples, rate = sf.read(speech["wav16k"], dtype="int16")
    cfg = pb.RecognitionConfig(encoding=pb.LINEAR16, sample_rate_hertz=rate)
    raw = client.recognize_bytes(samples.tobytes(), cfg)
    assert raw.text == client.recognize_bytes(speech["wav16k"].read_bytes()).text


def _stream(client: AsrClient, messages: list[pb.StreamingRecognizeRequest]) -> list[object]:
    return list(client.recognizer.StreamingRecognize(iter(messages), timeout=60))


BAD_UNARY = {
    "empty audio": (pb.RecognitionConfig(), b""),
    "non-audio bytes": (pb.RecognitionConfig(), b"this is not audio at all, just text" * 20),
    "unsupported encoding": (pb.RecognitionConfig(encoding=99), b"\x00\x01" * 8000),
    "raw PCM without sample rate": (pb.RecognitionConfig(encoding=pb.LINEAR16),
                                    b"\x00\x01" * 8000),
    "unsupported language": (pb.RecognitionConfig(encoding=pb.LINEAR16, sample_rate_hertz=16000,
                                                  language="klingon"), b"\x00\x01" * 8000),
}


@pytest.mark.parametrize("case", sorted(BAD_UNARY))
def test_bad_unary_input_is_invalid_argument(served, speech: dict[str, Path], case: str) -> None:  # type: ignore[no-untyped-def]
    _, client = served
    config, audio = BAD_UNARY[case]
    with pytest.raises(grpc.RpcError) as info:
        client.recognize_bytes(audio, config, timeout=60)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert info.value.details()
    assert client.recognize_bytes(speech["wav16k"].read_bytes(), timeout=60).text


def test_bad_streams_are_invalid_argument(served, speech: dict[str, Path]) -> None:  # type: ignore[no-untyped-def]
    _, client = served
    audio_first = [pb.StreamingRecognizeRequest(audio_content=b"RIFF....")]
    config_twice = [pb.StreamingRecognizeRequest(streaming_config=pb.StreamingRecognitionConfig())
                    ] * 2
    no_audio = [pb.StreamingRecognizeRequest(streaming_config=pb.StreamingRecognitionConfig())]
    for messages, words in ((audio_first, "first message"), ([], "without a streaming_config"),
                            (config_twice, "only be sent once"), (no_audio, "empty")):
        with pytest.raises(grpc.RpcError) as info:
            _stream(client, messages)
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT, messages
        assert words in info.value.details()
    assert client.transcribe_file(speech["flac"]).text
