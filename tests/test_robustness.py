"""Bad, odd and interrupted input through the real service: a result or INVALID_ARGUMENT,
never a crashed worker, a hung request or leaked work."""

from __future__ import annotations

import struct
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from client.library import CHUNK_BYTES, AsrClient
from protos.asr.v1 import asr_pb2 as pb
from tests.long_audio import speech_clips, write_recording

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def served(models_dir: Path, tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    from tests.conftest import RunningService, make_config

    d = tmp_path_factory.mktemp("robust")
    long_wav = write_recording(d / "600s.wav", 600.0, speech_clips(d))
    svc = RunningService(make_config(models_dir / "sensevoice-tiny",
                                     vad_model=str(models_dir / "fsmn-vad"), stream_buffer_mib=1,
                                     max_queue_delay_ms=20, devices="sim:2",
                                     cpu_fallback="never"))
    svc.wait_all_ready()
    with AsrClient(svc.address) as client:
        yield svc, client, long_wav
    svc.stop()


def requests(config: pb.RecognitionConfig, data: bytes, limit: int | None = None
             ) -> Iterator[pb.StreamingRecognizeRequest]:
    yield pb.StreamingRecognizeRequest(streaming_config=pb.StreamingRecognitionConfig(
        config=config))
    data = data if limit is None else data[:limit]
    for i in range(0, len(data), CHUNK_BYTES):
        yield pb.StreamingRecognizeRequest(audio_content=data[i:i + CHUNK_BYTES])


def no_work_left(svc) -> bool:  # type: ignore[no-untyped-def]
    service = svc.service
    workers = [*service.workers, *service.vad_workers]
    return service.dispatcher.unfinished == 0 and all(
        w.in_flight == 0 and w.pending_audio_s == 0 for w in workers)


def wait_idle(svc, timeout: float = 20.0) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not no_work_left(svc):
        service = svc.service
        state = (service.dispatcher.unfinished,
                 [(w.spec.worker_id, w.in_flight, w.pending_audio_s)
                  for w in (*service.workers, *service.vad_workers)])
        assert time.monotonic() < deadline, f"work left behind: {state}"
        time.sleep(0.05)


def test_cancelled_stream_frees_its_work(served) -> None:  # type: ignore[no-untyped-def]
    svc, client, long_wav = served
    pids = {w.spec.worker_id: w.pid for w in svc.service.workers}
    call = client.recognizer.StreamingRecognize(requests(pb.RecognitionConfig(),
                                                         long_wav.read_bytes()), timeout=120)
    got = 0
    for response in call:
        assert not response.is_last
        got += 1
        if got == 3:
            call.cancel()
            break
    wait_idle(svc)
    assert {w.spec.worker_id: w.pid for w in svc.service.workers} == pids
    assert client.transcribe_file(long_wav, timeout=300).audio_duration_s == pytest.approx(600)


def test_stream_that_stops_mid_file_gives_what_arrived(served) -> None:  # type: ignore[no-untyped-def]
    svc, client, long_wav = served
    data = long_wav.read_bytes()
    responses = list(client.recognizer.StreamingRecognize(
        requests(pb.RecognitionConfig(), data, limit=len(data) * 2 // 5), timeout=300))
    last = responses[-1]
    assert last.is_last and last.result.audio_duration_s == pytest.approx(240.0, abs=0.1)
    assert last.result.segments and last.result.segments[-1].end_ms <= 240_000
    wait_idle(svc)


def test_container_lying_about_its_length(served) -> None:  # type: ignore[no-untyped-def]
    _, client, long_wav = served
    data = bytearray(long_wav.read_bytes()[: 44 + 16000 * 2 * 5])  # 5 s of a 600 s file
    result = client.recognize_bytes(bytes(data), timeout=60)  # header still says 600 s
    assert result.audio_duration_s == pytest.approx(5.0)
    data[40:44] = struct.pack("<I", 0xFFFFFFFF)  # streamed-WAV style: size unknown
    assert list(client.recognizer.StreamingRecognize(requests(pb.RecognitionConfig(),
                                                              bytes(data)), timeout=60))


@pytest.mark.parametrize("rate", [1, 10**9])
def test_absurd_sample_rates(served, rate: int) -> None:  # type: ignore[no-untyped-def]
    _, client, _ = served
    config = pb.RecognitionConfig(encoding=pb.LINEAR16, sample_rate_hertz=rate)
    with pytest.raises(grpc.RpcError) as info:
        client.recognize_bytes(b"\x01\x00" * 4000, config, timeout=30)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "out of range" in info.value.details()


def test_options_reach_the_model(served, speech: dict[str, Path]) -> None:  # type: ignore[no-untyped-def]
    _, client, _ = served
    audio = speech["wav16k"].read_bytes()
    plain = client.recognize_bytes(audio)
    hot = client.recognize_bytes(audio, pb.RecognitionConfig(hotwords=["FunASR"]))
    assert hot.hotwords_ignored and not plain.hotwords_ignored
    assert hot.text == plain.text
    for options in (dict(language="en"), dict(enable_itn=True)):
        assert client.recognize_bytes(audio, pb.RecognitionConfig(**options)).text is not None
    with pytest.raises(grpc.RpcError) as info:
        client.recognize_bytes(audio, pb.RecognitionConfig(max_segment_ms=5))
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT


@settings(max_examples=40, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_fuzzed_input_never_crashes_or_hangs(served, speech: dict[str, Path], data) -> None:  # type: ignore[no-untyped-def]
    svc, client, _ = served
    source = speech[data.draw(st.sampled_from(sorted(speech)))].read_bytes()
    kind = data.draw(st.sampled_from(["random", "flip", "truncate"]))
    if kind == "random":
        blob = data.draw(st.binary(min_size=0, max_size=4096))
    elif kind == "flip":
        blob = bytearray(source)
        for pos in data.draw(st.lists(st.integers(0, len(blob) - 1), min_size=1, max_size=20)):
            blob[pos] ^= 0xFF
        blob = bytes(blob)
    else:
        blob = source[: data.draw(st.integers(0, len(source)))]
    streamed = data.draw(st.booleans())
    try:
        if streamed:
            list(client.recognizer.StreamingRecognize(requests(pb.RecognitionConfig(), blob),
                                                      timeout=60))
        else:
            client.recognize_bytes(blob, timeout=60)
    except grpc.RpcError as exc:
        assert exc.code() == grpc.StatusCode.INVALID_ARGUMENT, exc.details()
    assert all(w.ready for w in svc.service.workers), "a worker crashed"
    wait_idle(svc)
