"""Stream limits through a real scheduler process: idle streams time out, streams beyond the
per-client limit are refused, streams that stall after megabytes spill to disk instead of
memory, and other requests are served meanwhile."""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
import pytest

from protos.asr.v1 import asr_pb2 as pb
from protos.asr.v1 import asr_pb2_grpc as pb_grpc
from tests.rss import PeakSampler, tree_rss
from tests.serve_proc import ServeProcess

pytestmark = pytest.mark.integration
MB = 1024 * 1024
SLOW = os.environ.get("ASR_SLOW_TESTS") == "1"
IDLE, STALLED = (500, 100) if SLOW else (60, 40)


def config_msg() -> pb.StreamingRecognizeRequest:
    return pb.StreamingRecognizeRequest(streaming_config=pb.StreamingRecognitionConfig(
        config=pb.RecognitionConfig(encoding=pb.LINEAR16, sample_rate_hertz=16000)))


def stalling(release: threading.Event, upload_bytes: int) -> Iterator[pb.StreamingRecognizeRequest]:
    yield config_msg()
    chunk = b"\x01\x00" * 32768
    for _ in range(upload_bytes // len(chunk)):
        yield pb.StreamingRecognizeRequest(audio_content=chunk)
    release.wait(120)  # then the client stalls: sends nothing more, never half-closes


def run_stream(stub: pb_grpc.RecognizerStub, release: threading.Event,
               upload_bytes: int) -> grpc.StatusCode:
    try:
        list(stub.StreamingRecognize(stalling(release, upload_bytes), timeout=120))
    except grpc.RpcError as exc:
        return exc.code()  # type: ignore[no-any-return]
    return grpc.StatusCode.OK


def test_idle_refused_and_stalled_streams(models_dir: Path, speech: dict[str, Path]) -> None:
    svc = ServeProcess(models_dir / "sensevoice-tiny", "--stream-idle-timeout-s", "4",
                       "--max-streams-per-client", str(IDLE),
                       "--max-stream-buffers-mib", "8", "--max-decoded-audio-mib", "32",
                       "--queue-timeout-s", "10",
                       "--vad-model", str(models_dir / "fsmn-vad"), "--vad-workers", "1")
    release = threading.Event()
    try:
        svc.wait_serving()
        time.sleep(1.0)
        base = tree_rss([svc.proc.pid])[svc.proc.pid]
        with grpc.insecure_channel(svc.address) as channel, \
                PeakSampler([svc.proc.pid], 0.05) as peak, \
                ThreadPoolExecutor(max(IDLE, STALLED) + 8) as pool:
            stub = pb_grpc.RecognizerStub(channel)
            # Streams that send 5 MB and stall: buffered to disk past the global budget, then
            # closed by the idle timeout.
            stalled = [pool.submit(run_stream, stub, release, 5 * MB) for _ in range(STALLED)]
            codes = [f.result(timeout=300) for f in stalled]
            # Closed by the idle timeout, or refused while waiting for decoded-audio room.
            assert set(codes) <= {grpc.StatusCode.DEADLINE_EXCEEDED,
                                  grpc.StatusCode.RESOURCE_EXHAUSTED}, codes
            assert grpc.StatusCode.DEADLINE_EXCEEDED in codes
            grown = peak.peak_by_pid[svc.proc.pid] - base
            print(f"{STALLED} streams x 5 MB stalled: scheduler +{grown / MB:.0f} MB "
                  f"({codes.count(grpc.StatusCode.DEADLINE_EXCEEDED)} timed out)")
            # Unbounded, 40 x 5 MB of PCM16 held as float32 plus buffers is over 500 MB. Bounded,
            # a stalled stream costs a fixed amount (its gRPC receive window, the VAD chunk it
            # is filling), whatever it uploaded: measured ~4-7 MB each with 5 MB and 20 MB.
            assert grown < 40 * MB + STALLED * 6.5 * MB, f"{grown / MB:.0f} MB"

            # Idle streams (a config, then nothing): the ones over the per-client limit are
            # refused at once; the rest time out; a request is served meanwhile.
            idle = [pool.submit(run_stream, stub, release, 0) for _ in range(IDLE + 15)]
            time.sleep(1.5)
            result = stub.Recognize(pb.RecognizeRequest(
                audio_content=speech["wav16k"].read_bytes()), timeout=120).result
            assert result.text
            codes = [f.result(timeout=300) for f in idle]
    finally:
        release.set()
        svc.proc.kill()
        svc.proc.wait(30)
    refused = codes.count(grpc.StatusCode.RESOURCE_EXHAUSTED)
    timed_out = codes.count(grpc.StatusCode.DEADLINE_EXCEEDED)
    assert refused + timed_out == len(codes), codes
    assert refused >= 15 and timed_out >= IDLE - 5, (refused, timed_out)
