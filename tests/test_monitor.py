"""The NVML monitor with a fake pynvml: index mapping, figures, and failure to CPU serving."""

from __future__ import annotations

import logging
import sys
import types

import pytest

from scheduler.monitor import GIB, NoGpuMonitor, NvmlMonitor, SimMonitor, open_monitor


class FakeNvml(types.ModuleType):
    """Three GPUs; physical 1 is 95 % full (another process)."""

    class NVMLError(Exception):
        pass

    def __init__(self) -> None:
        super().__init__("pynvml")
        self.inits = 0

    def nvmlInit(self) -> None:
        self.inits += 1

    def nvmlDeviceGetCount(self) -> int:
        return 3

    def nvmlDeviceGetHandleByIndex(self, i: int) -> int:
        return i

    def nvmlDeviceGetName(self, h: int) -> bytes:
        return f"NVIDIA Fake {h}".encode()

    def nvmlDeviceGetMemoryInfo(self, h: int) -> types.SimpleNamespace:
        used = 76 * GIB if h == 1 else 2 * GIB
        return types.SimpleNamespace(total=80 * GIB, used=used, free=80 * GIB - used)

    def nvmlDeviceGetUtilizationRates(self, h: int) -> types.SimpleNamespace:
        if h == 2:
            raise self.NVMLError("not supported")
        return types.SimpleNamespace(gpu=40 + h)


@pytest.fixture
def fake_nvml(monkeypatch: pytest.MonkeyPatch) -> FakeNvml:
    fake = FakeNvml()
    monkeypatch.setitem(sys.modules, "pynvml", fake)
    return fake


def test_nvml_maps_cuda_visible_devices(fake_nvml: FakeNvml,
                                        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "2,1")
    mon = NvmlMonitor()
    devices = mon.devices()
    assert [(d.name, d.index, d.product) for d in devices] == [
        ("cuda:0", 0, "NVIDIA Fake 2"), ("cuda:1", 1, "NVIDIA Fake 1")]
    assert devices[0].utilization == -1 and devices[1].utilization == 41
    assert not devices[1].accepts_work(0.10) and devices[0].accepts_work(0.10)
    mon.devices()
    assert fake_nvml.inits == 1, "NVML is initialised once, not per poll"


def test_auto_without_nvml_serves_on_cpu(monkeypatch: pytest.MonkeyPatch,
                                         caplog: pytest.LogCaptureFixture) -> None:
    broken = types.ModuleType("pynvml")

    def fail() -> None:
        raise OSError("libnvidia-ml.so.1: cannot open shared object file")

    broken.nvmlInit = fail  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "pynvml", broken)
    with caplog.at_level(logging.WARNING):
        mon = open_monitor("auto")
    assert isinstance(mon, NoGpuMonitor) and mon.devices() == []
    assert "NVML unavailable" in caplog.text and "serving on CPU" in caplog.text


def test_sim_devices_and_plan(monkeypatch: pytest.MonkeyPatch) -> None:
    from scheduler.config import ServeConfig
    from scheduler.server import plan_workers

    mon = open_monitor("sim:3", 8 * GIB)
    assert isinstance(mon, SimMonitor) and len(mon.devices()) == 3
    specs, reason = plan_workers(ServeConfig(devices="sim:3", workers_per_device=2), mon)
    assert reason == "" and len(specs) == 7 and specs[-1].is_cpu
    assert {s.torch_device for s in specs} == {"cpu"}
    specs, reason = plan_workers(ServeConfig(devices="auto"), NoGpuMonitor())
    assert reason == "no_gpu" and [s.worker_id for s in specs] == ["cpu#0"]
    specs, reason = plan_workers(ServeConfig(devices="cpu", workers_per_device=2), mon)
    assert reason == "" and [s.worker_id for s in specs] == ["cpu#0", "cpu#1"]
    specs, _ = plan_workers(ServeConfig(devices="sim:2", cpu_fallback="never"), mon)
    assert not any(s.is_cpu for s in specs)
    with pytest.raises(ValueError, match="cuda:5 not found"):
        plan_workers(ServeConfig(devices="cuda:5"), mon)
    with pytest.raises(ValueError):
        open_monitor("sim:x")


def test_vad_workers_go_to_the_gpus_only_when_asked_and_there_are_some() -> None:
    from scheduler.server import CPU_SPEC, vad_torch_devices
    from scheduler.workers import WorkerSpec

    gpus = [WorkerSpec(f"cuda:{i}#{k}", f"cuda:{i}", f"cuda:{i}") for i in (10, 2)
            for k in range(2)] + [CPU_SPEC]
    assert vad_torch_devices("gpu", gpus, 5) == ["cuda:2", "cuda:10", "cuda:2", "cuda:10",
                                                 "cuda:2"]
    assert vad_torch_devices("cpu", gpus, 2) == ["cpu", "cpu"]
    simulated = [WorkerSpec("sim:0#0", "sim:0", "cpu"), CPU_SPEC]
    assert vad_torch_devices("gpu", simulated, 3) == ["cpu"] * 3
    assert vad_torch_devices("gpu", [CPU_SPEC], 1) == ["cpu"]
