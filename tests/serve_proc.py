"""`asr-scheduler serve` as a subprocess (for signals and kill -9), with a health and metrics
reader; used by the drain and the scale-out tests."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from tests.test_cli import free_port, wait_serving

BIN = Path(sys.executable).parent
RECOGNIZER = "asr.v1.Recognizer"


class ServeProcess:
    """One service instance on loopback: `--devices sim:1`, one simulated GPU worker."""

    def __init__(self, model: Path, *extra: str, log_path: Path | None = None) -> None:
        self.port = free_port()
        self.metrics_port = free_port()
        self.address = f"127.0.0.1:{self.port}"
        cmd = [str(BIN / "asr-scheduler"), "serve", "--model", str(model), "--devices", "sim:1",
               "--cpu-fallback", "never", "--host", "127.0.0.1", "--port", str(self.port),
               "--metrics-port", str(self.metrics_port), "--worker-threads", "1",
               "--vad-model", "none", *extra]
        self._log = open(log_path, "wb") if log_path else None
        self.proc = subprocess.Popen(cmd, stdout=self._log, stderr=subprocess.STDOUT,
                                     env={**os.environ, "ASR_LOG_LEVEL": "INFO"})

    def wait_serving(self, timeout: float = 300) -> ServeProcess:
        wait_serving(self.address, self.proc, timeout)
        return self

    def health(self, service: str = RECOGNIZER, timeout: float = 2.0) -> int:
        """The health status (raises grpc.RpcError when the port is closed)."""
        with grpc.insecure_channel(self.address) as channel:
            return health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(service=service), timeout=timeout).status

    def metric(self, name: str) -> float:
        """One unlabelled sample of the scheduler's /metrics."""
        with urllib.request.urlopen(f"http://127.0.0.1:{self.metrics_port}/metrics",
                                    timeout=5) as resp:
            for line in resp.read().decode().splitlines():
                if line.startswith(name + " "):
                    return float(line.split()[1])
        raise KeyError(name)

    def signal(self, sig: int = signal.SIGTERM) -> float:
        """Send `sig`; returns the monotonic time it was sent."""
        self.proc.send_signal(sig)
        return time.monotonic()

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(30)
        if self._log:
            self._log.close()


SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING
