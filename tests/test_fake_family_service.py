"""A model family added by one plugin module (tests/fake_family.py), served through the real
scheduler and worker processes without touching the scheduler; and a worker whose device
fails every call (a sticky CUDA error) is restarted while its requests succeed elsewhere."""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

from client.library import AsrClient
from protos.asr.worker.v1 import worker_pb2 as wpb
from tests.audio_fixtures import wav_header
from tests.conftest import ROOT, RunningService
from tests.fake_family import expected_text, write_model_dir

pytestmark = pytest.mark.integration

LENGTHS = (16000, 12345, 24000, 8000, 30001, 16000)


def wav(num_samples: int, seed: int = 0) -> bytes:
    samples = np.random.default_rng(seed).integers(-3000, 3000, num_samples, dtype=np.int16)
    return wav_header(data_len=2 * num_samples) + samples.astype("<i2").tobytes()


@pytest.fixture
def plugin_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """Worker processes inherit the scheduler's environment: they load the plugin."""
    monkeypatch.setenv("ASR_WORKER_PLUGINS", "tests.fake_family")
    path = os.environ.get("PYTHONPATH", "")
    monkeypatch.setenv("PYTHONPATH", f"{ROOT}{os.pathsep}{path}" if path else str(ROOT))


def worker_infos(svc: RunningService) -> dict[str, wpb.InfoResponse]:
    async def read() -> dict[str, wpb.InfoResponse]:
        out = {}
        for w in svc.service.workers:
            assert w.stub is not None
            out[w.spec.device_name] = await w.stub.GetInfo(wpb.InfoRequest(), timeout=30)
        return out
    return svc.call(read())


def test_fake_family_served_through_the_scheduler(
        plugin_env: None, start_service: Callable[..., RunningService], tmp_path: Path) -> None:
    model = write_model_dir(tmp_path / "fake-length")
    svc = start_service(model, devices="cpu")
    with AsrClient(svc.address) as client, ThreadPoolExecutor(6) as pool:
        results = list(pool.map(client.recognize_bytes, [wav(n) for n in LENGTHS]))
    assert [r.text for r in results] == [expected_text(n) for n in LENGTHS]
    assert all(r.language == "xx" and r.device == "cpu" for r in results)
    infos = worker_infos(svc)
    assert sorted(infos) == ["cpu"]
    for info in infos.values():
        caps = info.capabilities
        assert (caps.kind, caps.family, caps.engine) == ("recognize", "fake-length", "generate")
        assert list(caps.languages) == ["xx"] and caps.padding_invariant
        assert not (caps.hotwords or caps.itn or caps.streaming or caps.timestamps)
        assert info.model == str(model) and info.consecutive_failed_batches == 0
    assert sum(i.served for i in infos.values()) == len(LENGTHS)


def test_sticky_failing_worker_is_restarted_and_its_requests_run_elsewhere(
        plugin_env: None, start_service: Callable[..., RunningService], tmp_path: Path) -> None:
    model = write_model_dir(tmp_path / "fake-poisoned", poison_device="sim:0")
    svc = start_service(model, devices="sim:2", cpu_fallback="never")
    sim0 = next(w for w in svc.service.workers if w.spec.device_name == "sim:0")
    lengths = [16000 + 100 * i for i in range(24)]
    with AsrClient(svc.address) as client, ThreadPoolExecutor(8) as pool:
        results = list(pool.map(client.recognize_bytes, [wav(n, i) for i, n in
                                                         enumerate(lengths)]))
    assert [r.text for r in results] == [expected_text(n) for n in lengths]
    assert {r.device for r in results} == {"sim:1"}
    deadline = time.monotonic() + 120
    while sim0.restarts < 1 and time.monotonic() < deadline:
        time.sleep(0.2)
    assert sim0.restarts >= 1, sim0.last_error
    # It exits with code 4 half a second after turning unhealthy; a heartbeat that lands in
    # that window may see it stopping first (then the scheduler kills it). An exit's reason
    # carries the last lines of the worker's stderr where the scheduler has read them by then.
    assert sim0.last_error.startswith(("exited with code 4", "no heartbeat (UNAVAILABLE); "
                                                             "killed")), sim0.last_error
