"""Long audio through the service: VAD segmentation, segments spread over devices, order."""

from __future__ import annotations

import functools
from pathlib import Path

import grpc
import numpy as np
import pytest
import soundfile as sf

from client.library import AsrClient
from protos.asr.v1 import asr_pb2 as pb
from tests.long_audio import speech_clips, write_recording

pytestmark = pytest.mark.integration

ALWAYS = pb.RecognitionConfig(vad_mode=pb.VAD_ALWAYS)


@pytest.fixture(scope="module")
def recording(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("long")
    return write_recording(d / "150s.wav", 150.0, speech_clips(d))


@functools.lru_cache(maxsize=2)
def funasr_vad_text(model_dir: str, vad_dir: str, wav: str) -> str:
    """FunASR's own VAD + ASR pipeline on the same 16 kHz samples."""
    from funasr import AutoModel
    from funasr.utils.postprocess_utils import rich_transcription_postprocess

    model = AutoModel(model=model_dir, vad_model=vad_dir, disable_update=True, device="cpu",
                      disable_pbar=True, ncpu=1,
                      vad_kwargs={"max_single_segment_time": 30000})
    samples = sf.read(wav, dtype="float32")[0]
    return rich_transcription_postprocess(model.generate(input=samples)[0]["text"])


def check_segments(result: pb.RecognitionResult, duration_s: float) -> None:
    starts = [s.start_ms for s in result.segments]
    assert starts == sorted(starts) and len(starts) > 5
    assert all(s.end_ms > s.start_ms for s in result.segments)
    assert all(s.end_ms - s.start_ms <= 30000 + 100 for s in result.segments)  # FSMN-VAD slack
    assert result.segments[-1].end_ms <= duration_s * 1000 + 1
    assert result.text == " ".join(s.text for s in result.segments)


def test_vad_asr_equals_funasr_unary_and_streamed(start_service, models_dir: Path,  # type: ignore[no-untyped-def]
                                                  recording: Path) -> None:
    svc = start_service(models_dir / "sensevoice-tiny", vad_model=str(models_dir / "fsmn-vad"),
                        stream_buffer_mib=1)
    expected = funasr_vad_text(str(models_dir / "sensevoice-tiny"), str(models_dir / "fsmn-vad"),
                               str(recording))
    with AsrClient(svc.address) as client:
        unary = client.recognize_bytes(recording.read_bytes(), ALWAYS, timeout=300)
        responses = list(client.stream_file(recording, timeout=300))
    assert unary.text == expected
    check_segments(unary, 150.0)
    *per_segment, last = responses
    assert last.is_last and last.result.text == expected
    assert [s.start_ms for s in last.result.segments] == [s.start_ms for s in unary.segments]
    assert len(per_segment) == len(unary.segments) and all(r.is_final for r in per_segment)
    assert sorted(r.result.segments[0].start_ms for r in per_segment) == \
        [s.start_ms for s in unary.segments]
    assert last.result.audio_duration_s == pytest.approx(150.0, abs=0.01)
    # Exactly two VAD chunks (120 s): the final VAD push must not be empty, or FunASR never
    # closes the last segment.
    exact = write_recording(recording.parent / "120s.wav", 120.0,
                            speech_clips(recording.parent), seed=3)
    with AsrClient(svc.address) as client:
        assert client.transcribe_file(exact, timeout=300).text == funasr_vad_text(
            str(models_dir / "sensevoice-tiny"), str(models_dir / "fsmn-vad"), str(exact))


def test_segments_of_one_file_spread_over_devices(start_service, models_dir: Path,  # type: ignore[no-untyped-def]
                                                   recording: Path) -> None:
    single = start_service(models_dir / "sensevoice-tiny", vad_model=str(models_dir / "fsmn-vad"))
    with AsrClient(single.address) as client:
        reference = client.recognize_bytes(recording.read_bytes(), ALWAYS, timeout=300)
    single.stop()
    svc = start_service(models_dir / "sensevoice-tiny", devices="sim:4", cpu_fallback="never",
                        vad_model=str(models_dir / "fsmn-vad"), stream_buffer_mib=1,
                        max_queue_delay_ms=20)
    with AsrClient(svc.address) as client:
        result = client.transcribe_file(recording, timeout=300)
    devices = {s.device for s in result.segments}
    assert len(devices) >= 2 and devices <= {"sim:0", "sim:1", "sim:2", "sim:3"}, devices
    assert result.text == reference.text
    assert [s.text for s in result.segments] == [s.text for s in reference.segments]


def test_short_audio_is_one_piece_in_auto_mode(start_service, models_dir: Path,  # type: ignore[no-untyped-def]
                                               speech: dict[str, Path]) -> None:
    svc = start_service(models_dir / "sensevoice-tiny", vad_model=str(models_dir / "fsmn-vad"))
    with AsrClient(svc.address) as client:
        result = client.transcribe_file(speech["wav16k"])
    assert len(result.segments) == 1 and result.segments[0].start_ms == 0


def test_silence_is_empty_text_not_an_error(start_service, models_dir: Path,  # type: ignore[no-untyped-def]
                                            tmp_path: Path) -> None:
    svc = start_service(models_dir / "sensevoice-tiny", vad_model=str(models_dir / "fsmn-vad"),
                        stream_buffer_mib=1)
    path = tmp_path / "silence.wav"
    sf.write(path, np.zeros(16000 * 90, dtype=np.int16), 16000, subtype="PCM_16")
    with AsrClient(svc.address) as client:
        streamed = client.transcribe_file(path, timeout=120)
        unary = client.recognize_bytes(path.read_bytes(), ALWAYS, timeout=120)
    for result in (streamed, unary):
        assert result.text == "" and list(result.segments) == []
        assert result.audio_duration_s == pytest.approx(90.0)


def test_unary_limit_points_to_streaming(start_service, models_dir: Path,  # type: ignore[no-untyped-def]
                                         recording: Path) -> None:
    svc = start_service(models_dir / "sensevoice-tiny", max_unary_bytes=1_000_000)
    with AsrClient(svc.address) as client, pytest.raises(grpc.RpcError) as info:
        client.recognize_bytes(recording.read_bytes(), timeout=60)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "StreamingRecognize" in info.value.details()
