"""When a worker's unit call ends from its side, no units go to that worker until the
supervisor knows why: its exit (then it restarts as before), or that it still answers (then
units take the gRPC fallback). Before, a dead worker stayed `ready` until its exit was polled
(100-200 ms), and every unit dispatched to it meanwhile failed to connect and was requeued."""

from __future__ import annotations

import io
import time
from collections.abc import Callable
from pathlib import Path

import grpc
import soundfile as sf

from protos.asr.v1 import asr_pb2 as pb
from protos.asr.v1 import asr_pb2_grpc as pb_grpc
from protos.common.framed import HEADER, MAX_FRAME_BYTES
from scheduler.workers import WorkerState
from tests.conftest import RunningService
from tests.long_audio import speech_clips


def recognize(address: str, wav: bytes, request_id: str) -> pb.RecognitionResult:
    with grpc.insecure_channel(address) as channel:
        return pb_grpc.RecognizerStub(channel).Recognize(pb.RecognizeRequest(
            config=pb.RecognitionConfig(request_id=request_id), audio_content=wav),
            timeout=60).result


def wait_for(condition: Callable[[], bool], timeout_s: float, step_s: float = 0.001) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(step_s)
    return condition()


def test_a_worker_whose_unit_call_breaks_is_avoided_until_it_answers(
        start_service: Callable[..., RunningService], models_dir: Path,
        tmp_path: Path) -> None:
    svc = start_service(models_dir / "sensevoice-tiny", engine="identity")
    buf = io.BytesIO()
    sf.write(buf, speech_clips(tmp_path)[0], 16000, format="WAV", subtype="PCM_16")
    wav = buf.getvalue()
    assert recognize(svc.address, wav, "before").request_id == "before"  # the call is open
    worker = svc.service.workers[0]
    pid = worker.pid
    assert worker.ready and worker.link is not None
    framed = worker.link._call._call
    assert framed is not None, "units went over the socket pair"

    # A frame header over the limit: the worker's side refuses it and closes its end, but
    # the worker process lives on.
    svc.loop.call_soon_threadsafe(
        framed._writer.transport.write, HEADER.pack(MAX_FRAME_BYTES + 1))
    assert wait_for(lambda: not worker.ready, 10), "taken out of rotation"
    assert worker.state == WorkerState.READY, "by the broken call, not by an exit or restart"
    # It still answers its heartbeat: back in rotation, units over the gRPC fallback.
    assert wait_for(lambda: worker.ready, 15, 0.05)
    assert worker.pid == pid and worker.restarts == 0
    for n in range(3):
        assert recognize(svc.address, wav, f"after-{n}").request_id == f"after-{n}"
