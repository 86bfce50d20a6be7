"""The multi-GPU path end to end with simulated GPUs: real worker processes, real gRPC."""

from __future__ import annotations

import collections
import os
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from client.library import AsrClient
from protos.common.worker_config import WorkerConfig
from scheduler.monitor import GIB
from scheduler.workers import WorkerHandle, WorkerLaunch, WorkerSpec, WorkerState
from tests.test_cli import free_port, wait_serving

pytestmark = pytest.mark.integration


def wait_for(predicate, timeout: float = 60.0, what: str = "condition") -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.05)
    raise TimeoutError(what)


@pytest.fixture(scope="module")
def expected_texts(models_dir: Path, speech: dict[str, Path]) -> dict[str, str]:
    """Each file's text from a single-device service (the multi-GPU runs must equal it)."""
    from tests.conftest import RunningService, make_config

    svc = RunningService(make_config(models_dir / "sensevoice-tiny"))
    svc.wait_all_ready()
    try:
        with AsrClient(svc.address) as c:
            return {k: c.recognize_bytes(p.read_bytes()).text for k, p in speech.items()}
    finally:
        svc.stop()


def test_sim4_spreads_64_concurrent_requests_and_survives_kill9(
        start_service, models_dir: Path, speech: dict[str, Path],  # type: ignore[no-untyped-def]
        expected_texts: dict[str, str]) -> None:
    svc = start_service(models_dir / "sensevoice-tiny", devices="sim:4", max_queue_delay_ms=20)
    workers = {w.spec.worker_id: w for w in svc.service.workers}
    assert set(workers) == {"sim:0#0", "sim:1#0", "sim:2#0", "sim:3#0", "cpu#0"}
    victim = workers["sim:1#0"]
    old_pid = victim.pid
    jobs = [k for _ in range(16) for k in sorted(speech)]  # 64 requests
    killed = []

    def one(i: int, key: str) -> tuple[int, str, str, str]:
        if i == 24:  # in the middle of the run
            os.kill(old_pid, signal.SIGKILL)
            killed.append(time.monotonic())
        r = client.recognize_bytes(speech[key].read_bytes(), timeout=120)
        return i, key, r.text, r.device

    with AsrClient(svc.address) as client, ThreadPoolExecutor(64) as pool:
        results = list(pool.map(lambda a: one(*a), enumerate(jobs)))
    assert killed, "the worker was not killed"
    assert sorted(i for i, *_ in results) == list(range(64)), "every request answered once"
    for _, key, text, _ in results:
        assert text == expected_texts[key]
    served = collections.Counter(device for *_, device in results)
    assert len([d for d in served if d.startswith("sim:")]) >= 3, served
    assert "cpu" not in served, f"no request needed the CPU fallback: {served}"
    wait_for(lambda: victim.ready and victim.pid not in (0, old_pid), 120, "worker restart")
    assert victim.restarts >= 1 and "SIGKILL" in victim.last_error
    with AsrClient(svc.address) as client:
        status = client.status()
        row = {w.worker_id: w for d in status.devices for w in d.workers}["sim:1#0"]
        assert row.state == "ready" and row.restarts >= 1 and row.pid == victim.pid


def test_full_gpu_overflows_to_cpu_with_reason(start_service, models_dir: Path,  # type: ignore[no-untyped-def]
                                               speech: dict[str, Path],
                                               expected_texts: dict[str, str]) -> None:
    svc = start_service(models_dir / "sensevoice-tiny", devices="sim:2")
    monitor = svc.service.monitor
    monitor.set_usage("sim:0", memory_used=int(15 * GIB))
    with AsrClient(svc.address) as client:
        devices = {client.recognize_bytes(speech["flac"].read_bytes()).device for _ in range(6)}
        assert devices == {"sim:1"}
        monitor.set_usage("sim:1", memory_used=int(15.5 * GIB))
        time.sleep(0.3)
        r = client.recognize_bytes(speech["flac"].read_bytes())
        assert (r.device, r.fallback_reason, r.text) == ("cpu", "gpu_memory_full",
                                                         expected_texts["flac"])
        status = client.status()
        assert {(f.reason, f.count) for f in status.fallbacks} == {("gpu_memory_full", 1)}
        accepting = {d.name: d.accepting for d in status.devices}
        assert accepting == {"sim:0": False, "sim:1": False, "cpu": True}
        mem = {d.name: d.memory_total_bytes for d in status.devices}
        assert mem["sim:0"] == 16 * GIB


def test_workers_per_device_and_hung_worker_replaced(start_service, models_dir: Path,  # type: ignore[no-untyped-def]
                                                     speech: dict[str, Path]) -> None:
    svc = start_service(models_dir / "sensevoice-tiny", devices="sim:1", workers_per_device=2,
                        cpu_fallback="never", heartbeat_interval_s=0.3, heartbeat_timeout_s=2.0)
    ids = sorted(w.spec.worker_id for w in svc.service.workers)
    assert ids == ["sim:0#0", "sim:0#1"]
    hung = svc.service.workers[0]
    pid = hung.pid
    os.kill(pid, signal.SIGSTOP)  # alive but silent: must be killed and replaced
    try:
        with AsrClient(svc.address) as client:
            texts = [client.recognize_bytes(speech["wav16k"].read_bytes(), timeout=60).text
                     for _ in range(3)]
        assert len(set(texts)) == 1
        wait_for(lambda: hung.ready and hung.pid not in (0, pid), 60, "hung worker replaced")
        assert "no heartbeat" in hung.last_error
    finally:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


async def test_crash_loop_is_reported_not_spun(tmp_path: Path) -> None:
    launch = WorkerLaunch(WorkerConfig("m"), runtime_dir=str(tmp_path), initial_backoff_s=0.01,
                          command=[sys.executable, "-c", "import sys; sys.exit(3)"])
    w = WorkerHandle(WorkerSpec("sim:0#0", "sim:0", "cpu"), launch)
    import asyncio

    task = asyncio.create_task(w.supervise())
    try:
        for _ in range(400):
            if w.state == WorkerState.FAILED:
                break
            await asyncio.sleep(0.05)
        assert w.state == WorkerState.FAILED
        assert "exited with code 3" in w.last_error and w.restarts >= 5
        restarts = w.restarts
        await asyncio.sleep(1.0)
        assert w.restarts == restarts, "a crash-looping worker is retried slowly, not spun"
    finally:
        await w.stop()
        task.cancel()


def test_workers_die_with_the_scheduler(models_dir: Path) -> None:
    port = free_port()
    proc = subprocess.Popen([str(Path(sys.executable).parent / "asr-scheduler"), "serve",
                             "--model", str(models_dir / "sensevoice-tiny"), "--devices", "sim:2",
                             "--cpu-fallback", "never", "--host", "127.0.0.1", "--port",
                             str(port), "--metrics-port", "0", "--worker-threads", "1",
                             "--vad-model", "none"])
    try:
        wait_serving(f"127.0.0.1:{port}", proc)
        with AsrClient(f"127.0.0.1:{port}") as client:
            wait_for(lambda: all(w.state == "ready" for d in client.status().devices
                                 for w in d.workers), 120, "all workers ready")
            pids = [w.pid for d in client.status().devices for w in d.workers]
        assert len(pids) == 2 and all(pids)
        proc.kill()
        proc.wait(10)

        def all_gone() -> bool:
            return not any(Path(f"/proc/{p}").exists() and
                           "zombie" not in Path(f"/proc/{p}/status").read_text().lower()
                           for p in pids)
        wait_for(all_gone, 15, "workers exit after the scheduler dies")
    finally:
        if proc.poll() is None:
            proc.kill()
