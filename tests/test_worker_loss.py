"""Long requests survive the loss of their VAD worker and of the only recognition worker:
retries wait for the supervisor's verdict (a restart) instead of failing within milliseconds,
and every request is answered once with its idle-server text."""

from __future__ import annotations

import os
import signal
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
import pytest

from protos.asr.v1 import asr_pb2 as pb
from protos.asr.v1 import asr_pb2_grpc as pb_grpc
from tests.long_audio import speech_clips, write_recording

pytestmark = pytest.mark.integration

CHUNK = 64 * 1024


def stream(data: bytes, pace_s: float) -> Iterator[pb.StreamingRecognizeRequest]:
    yield pb.StreamingRecognizeRequest(streaming_config=pb.StreamingRecognitionConfig(
        config=pb.RecognitionConfig(vad_mode=pb.VAD_ALWAYS)))
    for i in range(0, len(data), CHUNK):
        yield pb.StreamingRecognizeRequest(audio_content=data[i:i + CHUNK])
        time.sleep(pace_s)


def transcribe(address: str, data: bytes, pace_s: float = 0.0) -> str:
    with grpc.insecure_channel(address) as channel:
        responses = list(pb_grpc.RecognizerStub(channel).StreamingRecognize(
            stream(data, pace_s), timeout=600))
    last = [r for r in responses if r.is_last]
    assert len(last) == 1
    return last[0].result.text


def test_long_requests_survive_vad_and_recognition_worker_kills(  # type: ignore[no-untyped-def]
        start_service, models_dir: Path, tmp_path: Path) -> None:
    wav = write_recording(tmp_path / "90s.wav", 90.0, speech_clips(tmp_path))
    data = wav.read_bytes()
    svc = start_service(models_dir / "sensevoice-tiny", vad_model=str(models_dir / "fsmn-vad"),
                        vad_workers=1, devices="sim:1", cpu_fallback="never",
                        stream_buffer_mib=1)
    idle_text = transcribe(svc.address, data)
    assert idle_text.strip()
    service = svc.service
    vad, asr = service.vad_workers[0], service.workers[0]
    vad_pid, asr_pid = vad.pid, asr.pid
    killed: list[str] = []

    def killer() -> None:
        time.sleep(1.5)  # the uploads are under way, VAD sessions open
        os.kill(vad_pid, signal.SIGKILL)
        killed.append("vad")
        deadline = time.monotonic() + 60
        while vad.pid in (0, vad_pid) and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(1.0)
        os.kill(asr_pid, signal.SIGKILL)
        killed.append("asr")

    thread = threading.Thread(target=killer)
    thread.start()
    with ThreadPoolExecutor(3) as pool:  # paced uploads: the kills land mid-request
        texts = list(pool.map(lambda _: transcribe(svc.address, data, 0.05), range(3)))
    thread.join()
    assert killed == ["vad", "asr"]
    assert texts == [idle_text] * 3
    assert vad.restarts >= 1 and asr.restarts >= 1
    assert service.dispatcher.unfinished == 0
    assert all(w.in_flight == 0 for w in (*service.workers, *service.vad_workers))
