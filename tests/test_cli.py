"""The console scripts as users run them: `asr-scheduler serve` and `asr-client`."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

pytestmark = pytest.mark.integration

BIN = Path(sys.executable).parent


_HANDED_OUT: set[int] = set()


def free_port() -> int:
    """A loopback port free now and not handed out before by this test process: two calls in
    a row may get the same port back from the kernel (a service was once started with its
    gRPC and metrics ports equal, which it refuses)."""
    while True:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = int(s.getsockname()[1])
        if port not in _HANDED_OUT:
            _HANDED_OUT.add(port)
            return port


def wait_serving(address: str, proc: subprocess.Popen[bytes], timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    with grpc.insecure_channel(address) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        while time.monotonic() < deadline:
            assert proc.poll() is None, "the service exited while starting"
            try:
                status = stub.Check(health_pb2.HealthCheckRequest(service="asr.v1.Recognizer"),
                                    timeout=1).status
                if status == health_pb2.HealthCheckResponse.SERVING:
                    return
            except grpc.RpcError:
                pass
            time.sleep(0.2)
    raise TimeoutError("service not SERVING in time")


def test_serve_and_transcribe_json(models_dir: Path, speech: dict[str, Path],
                                   tmp_path: Path) -> None:
    port = free_port()
    env = {**os.environ, "ASR_DEVICES": "cpu", "ASR_PORT": str(port), "ASR_METRICS_PORT": "0",
           "ASR_WORKER_THREADS": "1", "ASR_VAD_MODEL": str(models_dir / "fsmn-vad")}
    proc = subprocess.Popen([str(BIN / "asr-scheduler"), "serve", "--model",
                             str(models_dir / "sensevoice-tiny"), "--host", "127.0.0.1"], env=env)
    try:
        wait_serving(f"127.0.0.1:{port}", proc)
        out = subprocess.run(
            [str(BIN / "asr-client"), "--server", f"127.0.0.1:{port}", "transcribe",
             str(speech["wav16k"]), str(speech["mp3"]), "--format", "json"],
            capture_output=True, text=True, timeout=120)
        assert out.returncode == 0, out.stderr
        records = [json.loads(line) for line in out.stdout.splitlines()]
        assert sorted(r["file"] for r in records) == sorted(
            [str(speech["wav16k"]), str(speech["mp3"])])
        for r in records:
            assert {"file", "text", "segments", "device", "fallback_reason"} <= set(r)
            assert r["text"] and r["device"] == "cpu" and r["fallback_reason"] == ""
            assert {"start_ms", "end_ms", "text"} <= set(r["segments"][0])
        bad = tmp_path / "notes.wav"
        bad.write_text("not audio")
        out = subprocess.run([str(BIN / "asr-client"), "--server", f"127.0.0.1:{port}",
                              "transcribe", str(bad)], capture_output=True, text=True, timeout=60)
        assert out.returncode == 1 and "INVALID_ARGUMENT" in out.stderr
        out = subprocess.run([str(BIN / "asr-client"), "--server", f"127.0.0.1:{port}",
                              "status"], capture_output=True, text=True, timeout=60)
        assert out.returncode == 0 and "cpu#0" in out.stdout and "vad#0" in out.stdout
        assert "ready" in out.stdout
        grpcurl_like = subprocess.run(
            [sys.executable, "-c", REFLECTION_LIST, f"127.0.0.1:{port}"],
            capture_output=True, text=True, timeout=60)
        assert "asr.v1.Recognizer" in grpcurl_like.stdout, grpcurl_like.stderr
    finally:
        proc.terminate()
        assert proc.wait(30) == 0


REFLECTION_LIST = """
import sys, grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
with grpc.insecure_channel(sys.argv[1]) as ch:
    stub = reflection_pb2_grpc.ServerReflectionStub(ch)
    req = reflection_pb2.ServerReflectionRequest(list_services="")
    for resp in stub.ServerReflectionInfo(iter([req]), timeout=10):
        print([s.name for s in resp.list_services_response.service])
"""


def test_hub_id_without_hub_fails_clearly() -> None:
    out = subprocess.run([str(BIN / "asr-scheduler"), "serve", "--model",
                          "iic/SenseVoiceSmall", "--devices", "cpu", "--port", "0"],
                         capture_output=True, text=True, timeout=60,
                         env={**os.environ, "ASR_METRICS_PORT": "0"})
    assert out.returncode == 2
    assert "iic/SenseVoiceSmall" in out.stderr and "--model /path/to/model_dir" in out.stderr


def test_missing_model_dir_fails_clearly(tmp_path: Path) -> None:
    out = subprocess.run([str(BIN / "asr-scheduler"), "serve", "--model", str(tmp_path),
                          "--devices", "cpu", "--port", "0"], capture_output=True, text=True,
                         timeout=60)
    assert out.returncode == 2 and "lacks config.yaml, model.pt" in out.stderr
