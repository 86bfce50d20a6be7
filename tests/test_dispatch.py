"""Dispatch logic on a simulated multi-GPU machine: no processes, no models."""

from __future__ import annotations

import asyncio
import collections

import pytest

from protos.common.worker_config import WorkerConfig
from scheduler.dispatch import (
    CPU_POOL,
    GPU_MEMORY_FULL,
    GPU_OOM,
    NO_GPU,
    WORKER_UNAVAILABLE,
    Dispatcher,
    DispatchPolicy,
    GpuOutOfMemory,
)
from scheduler.errors import NoCapacity, QueueFull, TooBigForGpu, WorkerLost
from scheduler.monitor import GIB, SimMonitor
from scheduler.workers import WorkerHandle, WorkerLaunch, WorkerSpec, WorkerState

LAUNCH = WorkerLaunch(WorkerConfig("m"), runtime_dir="/tmp")


def make_workers(gpus: int, per_device: int = 1, cpu: bool = True) -> list[WorkerHandle]:
    specs = [WorkerSpec(f"sim:{g}#{k}", f"sim:{g}", "cpu") for g in range(gpus)
             for k in range(per_device)]
    if cpu:
        specs.append(WorkerSpec("cpu#0", "cpu", "cpu", is_cpu=True))
    workers = [WorkerHandle(s, LAUNCH) for s in specs]
    for w in workers:
        w.state = WorkerState.READY
    return workers


def dispatcher(gpus: int = 4, cpu: bool = True, **policy: object) -> tuple[Dispatcher, SimMonitor]:
    monitor = SimMonitor(gpus, 16 * GIB)
    return Dispatcher(make_workers(gpus, cpu=cpu), monitor, DispatchPolicy(**policy)), monitor


async def slow_call(worker: WorkerHandle, seconds: float = 0.05) -> str:
    await asyncio.sleep(seconds)
    return worker.spec.device_name


async def test_even_spread_under_equal_load() -> None:
    d, _ = dispatcher(4)
    results = await asyncio.gather(*(d.run(10.0, slow_call) for _ in range(64)))
    counts = collections.Counter(device for device, _ in results)
    assert set(counts) == {"sim:0", "sim:1", "sim:2", "sim:3"}, counts
    assert all(c == 16 for c in counts.values()), counts
    assert all(p.fallback_reason == "" for _, p in results)


async def test_least_expected_finish_prefers_the_idle_gpu() -> None:
    d, _ = dispatcher(2)
    busy = d.workers[0]
    busy.pending_audio_s = 500.0
    _, placement = await d.run(10.0, slow_call)
    assert placement.worker.spec.device_name == "sim:1"


async def test_gpu_over_the_floor_takes_no_new_work() -> None:
    d, monitor = dispatcher(4)
    monitor.set_usage("sim:2", memory_used=int(15.5 * GIB))  # 97 % used (by anyone)
    results = await asyncio.gather(*(d.run(5.0, slow_call) for _ in range(30)))
    devices = {device for device, _ in results}
    assert "sim:2" not in devices and devices == {"sim:0", "sim:1", "sim:3"}
    assert d.accepting("sim:0") and not d.accepting("sim:2")


async def test_overflow_to_cpu_says_why() -> None:
    d, monitor = dispatcher(2, cpu_fallback="overflow")
    for name in ("sim:0", "sim:1"):
        monitor.set_usage(name, memory_used=int(15 * GIB))
    device, placement = await d.run(5.0, slow_call)
    assert device == "cpu" and placement.fallback_reason == GPU_MEMORY_FULL
    for w in d.workers[:2]:
        w.state = WorkerState.RESTARTING
    monitor.set_usage("sim:0", memory_used=0)
    d._snapshot_at = -1.0
    _, placement = await d.run(5.0, slow_call)
    assert placement.fallback_reason == WORKER_UNAVAILABLE
    assert d.fallbacks == {GPU_MEMORY_FULL: 1, WORKER_UNAVAILABLE: 1}


async def test_cpu_only_service_reports_no_gpu() -> None:
    workers = make_workers(0, cpu=True)
    d = Dispatcher(workers, SimMonitor(1), DispatchPolicy(), cpu_only_reason=NO_GPU)
    _, placement = await d.run(1.0, slow_call)
    assert placement.fallback_reason == NO_GPU


async def test_always_available_lets_cpu_compete() -> None:
    d, _ = dispatcher(1, cpu_fallback="always-available")
    d.workers[0].pending_audio_s = 10_000.0
    _, placement = await d.run(1.0, slow_call)
    assert placement.worker.spec.is_cpu and placement.fallback_reason == CPU_POOL


async def test_never_waits_then_resource_exhausted() -> None:
    d, monitor = dispatcher(2, cpu_fallback="never", queue_timeout_s=0.3)
    for name in ("sim:0", "sim:1"):
        monitor.set_usage(name, memory_used=int(15 * GIB))
    with pytest.raises(NoCapacity) as info:
        await d.run(1.0, slow_call)
    assert info.value.retry_after_s > 0 and "memory-full" in str(info.value)


async def test_waiting_request_runs_when_memory_frees() -> None:
    d, monitor = dispatcher(1, cpu_fallback="never", queue_timeout_s=5.0)
    monitor.set_usage("sim:0", memory_used=int(15.9 * GIB))
    task = asyncio.create_task(d.run(1.0, slow_call))
    await asyncio.sleep(0.3)
    assert not task.done() and d.waiting == 1
    monitor.set_usage("sim:0", memory_used=GIB)
    device, _ = await asyncio.wait_for(task, 3.0)
    assert device == "sim:0"


async def admitted(d: Dispatcher, units: int, seconds: float = 0.5) -> list[object]:
    """One request of `units` units (a long file's VAD segments), admitted once."""
    with d.admit():
        return list(await asyncio.gather(*(d.run(1.0, lambda w: slow_call(w, seconds))
                                           for _ in range(units))))


async def test_admission_control_rejects_at_once() -> None:
    d, _ = dispatcher(1, max_queue=4)
    tasks = [asyncio.create_task(admitted(d, 1)) for _ in range(4)]
    await asyncio.sleep(0.05)
    with pytest.raises(QueueFull):
        await admitted(d, 1)
    await asyncio.gather(*tasks)
    await admitted(d, 1, 0.01)  # room again


async def test_admission_counts_requests_not_segments() -> None:
    """A long file's many segments take one place: it cannot fail half-way with QueueFull."""
    d, _ = dispatcher(2, max_queue=2)
    other = asyncio.create_task(admitted(d, 1, 0.3))
    await asyncio.sleep(0.01)
    results = await admitted(d, 12, 0.05)  # 12 segments while another request holds a place
    assert len(results) == 12
    await other
    assert d.unfinished == 0


async def test_gpu_oom_with_cpu_fallback_never_fails_at_once() -> None:
    d, _ = dispatcher(1, cpu=False, cpu_fallback="never", queue_timeout_s=30.0)

    async def oom(worker: WorkerHandle) -> str:
        raise GpuOutOfMemory("gpu_oom")

    loop = asyncio.get_running_loop()
    started = loop.time()
    with pytest.raises(TooBigForGpu, match="cpu-fallback never"):
        await d.run(100.0, oom)
    assert loop.time() - started < 1.0  # not the 30 s queue timeout


async def test_pools_are_per_model() -> None:
    monitor = SimMonitor(2, 16 * GIB)
    workers = [WorkerHandle(WorkerSpec(f"{m}@sim:{g}#0", f"sim:{g}", "cpu", model=m), LAUNCH)
               for m in ("a", "b") for g in range(2)]
    for w in workers:
        w.state = WorkerState.READY
    d = Dispatcher(workers, monitor, DispatchPolicy())
    for model in ("a", "b"):
        _, placement = await d.run(1.0, slow_call, model)
        assert placement.worker.spec.model == model


async def test_worker_lost_requeues_elsewhere_exactly_once() -> None:
    d, _ = dispatcher(3, cpu=False)
    calls: list[str] = []

    async def flaky(worker: WorkerHandle) -> str:
        calls.append(worker.spec.worker_id)
        if worker.spec.worker_id == "sim:0#0":
            raise WorkerLost("killed")
        return await slow_call(worker)

    results = await asyncio.gather(*(d.run(1.0, flaky) for _ in range(12)))
    assert len(results) == 12 and all(device != "sim:0" for device, _ in results)
    assert calls.count("sim:0#0") >= 1
    assert all(w.in_flight == 0 and w.pending_audio_s == 0 for w in d.workers)


async def test_gpu_oom_alone_goes_to_cpu_with_reason() -> None:
    d, _ = dispatcher(2)

    async def oom_on_gpu(worker: WorkerHandle) -> str:
        if not worker.spec.is_cpu:
            raise GpuOutOfMemory("gpu_oom")
        return await slow_call(worker)

    device, placement = await d.run(100.0, oom_on_gpu)
    assert device == "cpu" and placement.fallback_reason == GPU_OOM
