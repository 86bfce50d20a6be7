"""GPU monitoring behind one interface: NVML for real GPUs, a simulation for tests.

The scheduler reads memory and utilisation here and never initialises CUDA. NVML numbers
devices by PCI bus order and ignores ``CUDA_VISIBLE_DEVICES``; `NvmlMonitor` maps the visible
list to physical indices so that ``cuda:N`` means what torch in a worker means by it.
"""

from __future__ import annotations

import logging
import os
import threading
from dataclasses import dataclass, replace
from typing import Protocol

log = logging.getLogger(__name__)

GIB = 1024**3


@dataclass(frozen=True)
class DeviceInfo:
    """A snapshot of one GPU."""

    name: str  # "cuda:0" or "sim:0"
    index: int  # what the worker passes to torch (cuda:index)
    product: str
    memory_total: int
    memory_used: int
    utilization: int = -1  # percent, -1 when unknown

    @property
    def memory_free(self) -> int:
        return max(self.memory_total - self.memory_used, 0)

    def accepts_work(self, floor_fraction: float) -> bool:
        """False when free memory is under `floor_fraction` of the total."""
        return self.memory_total > 0 and self.memory_free >= floor_fraction * self.memory_total


class GpuMonitor(Protocol):
    """Read-only view of the machine's GPUs."""

    simulated: bool

    def devices(self) -> list[DeviceInfo]:
        """Current figures for every GPU the service may use (empty: no GPU)."""
        ...


class NoGpuMonitor:
    """A machine without GPUs (or where NVML is missing)."""

    simulated = False

    def devices(self) -> list[DeviceInfo]:
        return []


class SimMonitor:
    """N pretend GPUs; tests set their memory use to drive placement."""

    simulated = True

    def __init__(self, count: int, memory_total: int = 16 * GIB) -> None:
        self._lock = threading.Lock()
        self._devices = [DeviceInfo(f"sim:{i}", i, "Simulated GPU", memory_total, 0, 0)
                         for i in range(count)]

    def devices(self) -> list[DeviceInfo]:
        with self._lock:
            return list(self._devices)

    def set_usage(self, name: str, memory_used: int | None = None,
                  utilization: int | None = None) -> None:
        with self._lock:
            for i, d in enumerate(self._devices):
                if d.name == name:
                    self._devices[i] = replace(
                        d, memory_used=d.memory_used if memory_used is None else memory_used,
                        utilization=d.utilization if utilization is None else utilization)
                    return
        raise KeyError(name)


class NvmlMonitor:
    """Real GPUs through NVML (``nvidia-ml-py``); initialised once per process."""

    simulated = False

    def __init__(self, visible: list[int] | None = None) -> None:
        import pynvml

        self._nvml = pynvml
        pynvml.nvmlInit()
        count = pynvml.nvmlDeviceGetCount()
        self._physical = visible if visible is not None else _visible_devices(count)
        self._handles = [pynvml.nvmlDeviceGetHandleByIndex(i) for i in self._physical]
        self._products = [_text(pynvml.nvmlDeviceGetName(h)) for h in self._handles]

    def devices(self) -> list[DeviceInfo]:
        out = []
        for logical, handle in enumerate(self._handles):
            mem = self._nvml.nvmlDeviceGetMemoryInfo(handle)
            try:
                util = int(self._nvml.nvmlDeviceGetUtilizationRates(handle).gpu)
            except self._nvml.NVMLError:
                util = -1
            out.append(DeviceInfo(f"cuda:{logical}", logical, self._products[logical],
                                  int(mem.total), int(mem.used), util))
        return out


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def _visible_devices(count: int) -> list[int]:
    env = os.environ.get("CUDA_VISIBLE_DEVICES")
    if env is None:
        return list(range(count))
    try:
        return [int(x) for x in env.split(",") if x.strip() != ""]
    except ValueError:
        log.warning("CUDA_VISIBLE_DEVICES=%r is not a list of indices; using all %d GPUs",
                    env, count)
        return list(range(count))


def open_monitor(devices: str, sim_memory_total: int = 16 * GIB) -> GpuMonitor:
    """The monitor that `--devices` asks for; a missing NVML means no GPU, with a log line."""
    spec = devices.strip().lower()
    if spec.startswith("sim:"):
        try:
            count = int(spec[4:])
        except ValueError as exc:
            raise ValueError(f"--devices {devices!r}: expected sim:N with N a number") from exc
        if count < 1:
            raise ValueError(f"--devices {devices!r}: N must be >= 1")
        return SimMonitor(count, sim_memory_total)
    if spec == "cpu":
        return NoGpuMonitor()
    try:
        return NvmlMonitor()
    except Exception as exc:  # pynvml missing, no driver, no GPU
        log.warning("NVML unavailable (%s: %s): serving on CPU", type(exc).__name__, exc)
        return NoGpuMonitor()
