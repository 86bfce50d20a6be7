"""Placement of requests on workers: memory-aware, least expected finish time, explicit fallback.

Rules, in order:
1. A GPU whose free memory is under the floor (default: more than 90 % used, by us or by anyone
   else) takes no new work.
2. Among ready workers on accepting GPUs, the one with the least expected finish time wins
   (queued audio seconds over its learnt speed); ties go to the least recently used.
3. When no GPU worker can take the request, the CPU worker does if the policy allows, and the
   result says why (`no_gpu`, `gpu_memory_full`, `worker_unavailable`, `gpu_oom`).
4. Otherwise the request waits (bounded by `queue_timeout_s`), then gets RESOURCE_EXHAUSTED.
   A unit that ran out of GPU memory alone, with no CPU worker allowed to take it, fails at once.
Admission is bounded too: more than `max_queue` unfinished requests (requests, not the VAD
segments of one: `admit()`) get RESOURCE_EXHAUSTED at once. Each served model has its own pool
of workers (`WorkerSpec.model`); devices, the memory floor and admission are shared.
A worker lost mid-request (crash, kill, hang) makes the request run again elsewhere.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass

from scheduler.errors import GpuOutOfMemory, NoCapacity, QueueFull, TooBigForGpu, WorkerLost
from scheduler.monitor import DeviceInfo, GpuMonitor
from scheduler.workers import LostWorkers, WorkerHandle

log = logging.getLogger(__name__)

NO_GPU = "no_gpu"
GPU_MEMORY_FULL = "gpu_memory_full"
WORKER_UNAVAILABLE = "worker_unavailable"
GPU_OOM = "gpu_oom"
CPU_POOL = "cpu_pool"
FALLBACK_REASONS = (NO_GPU, GPU_MEMORY_FULL, WORKER_UNAVAILABLE, GPU_OOM, CPU_POOL)
MONITOR_TTL_S = 0.25


@dataclass(frozen=True)
class DispatchPolicy:
    cpu_fallback: str = "overflow"  # never | overflow | always-available
    memory_floor_fraction: float = 0.10
    max_queue: int = 512
    queue_timeout_s: float = 30.0
    max_attempts: int = 4
    lost_settle_s: float = 5.0  # a worker that lost a request but still runs: retry it after


@dataclass(frozen=True)
class Placement:
    worker: WorkerHandle
    fallback_reason: str = ""


class Dispatcher:
    """Places requests on workers and runs them there, retrying on worker loss."""

    def __init__(self, workers: list[WorkerHandle], monitor: GpuMonitor,
                 policy: DispatchPolicy, cpu_only_reason: str = "") -> None:
        """`cpu_only_reason`: what a CPU-only service says of its requests ("" when the CPU
        was asked for, `no_gpu` when GPUs were expected but none were found)."""
        self.workers = workers
        self.monitor = monitor
        self.policy = policy
        self.fallbacks: collections.Counter[str] = collections.Counter()
        self.unfinished = 0
        self.waiting = 0
        self._changed = asyncio.Condition()
        self._snapshot: dict[str, DeviceInfo] = {}
        self._snapshot_at = -1.0
        self.no_gpu = not any(not w.spec.is_cpu for w in workers)
        # Live streams held per worker id (a live stream's state lives on one worker).
        self.live_streams: collections.Counter[str] = collections.Counter()
        self.cpu_only_reason = cpu_only_reason

    def notify(self) -> None:
        """Wake waiting requests: a worker changed state or finished work. Nothing to do
        when none waits (a request that comes to `place` later looks for itself)."""
        if not self.waiting:
            return

        async def _notify() -> None:
            async with self._changed:
                self._changed.notify_all()
        try:
            asyncio.get_running_loop().create_task(_notify())
        except RuntimeError:
            pass

    def devices(self) -> dict[str, DeviceInfo]:
        now = time.monotonic()
        if now - self._snapshot_at > MONITOR_TTL_S:
            self._snapshot = {d.name: d for d in self.monitor.devices()}
            self._snapshot_at = now
        return self._snapshot

    def accepting(self, device_name: str) -> bool:
        info = self.devices().get(device_name)
        return info is not None and info.accepts_work(self.policy.memory_floor_fraction)

    def pool(self, model: str = "") -> list[WorkerHandle]:
        """The workers serving `model` ("": every worker)."""
        return [w for w in self.workers if not model or w.spec.model == model]

    def choose(self, audio_s: float, avoid: LostWorkers | None = None,
               gpu_allowed: bool = True, model: str = "") -> Placement | None:
        """Best placement now, or None when the request must wait."""
        workers = self.pool(model)
        gpus = [w for w in workers if not w.spec.is_cpu]
        cpus = [w for w in workers if w.spec.is_cpu and w.ready]
        open_gpus = [w for w in gpus
                     if gpu_allowed and w.ready and self.accepting(w.spec.device_name)]
        if self.no_gpu:  # a CPU-only service: the CPU is the primary device
            return self._best(cpus, audio_s, avoid, self.cpu_only_reason)
        pool = open_gpus + (cpus if self.policy.cpu_fallback == "always-available" else [])
        best = self._best(pool, audio_s, avoid, "")
        if best is not None:
            if best.worker.spec.is_cpu:
                return Placement(best.worker, CPU_POOL)
            return best
        if self.policy.cpu_fallback == "never" or not cpus:
            return None
        if not gpu_allowed:
            reason = GPU_OOM
        elif any(w.ready for w in gpus):
            reason = GPU_MEMORY_FULL
        else:
            reason = WORKER_UNAVAILABLE
        return self._best(cpus, audio_s, avoid, reason)

    @staticmethod
    def _best(pool: list[WorkerHandle], audio_s: float, avoid: LostWorkers | None,
              reason: str) -> Placement | None:
        """The least loaded worker of `pool`; one that just lost this request is used again
        only once the supervisor has restarted it (or it proved alive): until then, wait."""
        preferred = [w for w in pool if avoid is None or not avoid.avoids(w)]
        if not preferred:
            return None
        w = min(preferred, key=lambda w: (round(w.expected_finish_s(audio_s), 6),
                                          w.last_assigned))
        return Placement(w, reason)

    async def place(self, audio_s: float, avoid: LostWorkers | None = None,
                    gpu_allowed: bool = True, model: str = "") -> Placement:
        """Wait (bounded) for a placement."""
        placement = self.choose(audio_s, avoid, gpu_allowed, model)
        if placement is not None:  # the common case: no lock, no wait
            return placement
        deadline = time.monotonic() + self.policy.queue_timeout_s
        self.waiting += 1
        try:
            async with self._changed:
                while True:
                    placement = self.choose(audio_s, avoid, gpu_allowed, model)
                    if placement is not None:
                        return placement
                    left = deadline - time.monotonic()
                    if left <= 0:
                        raise NoCapacity(
                            f"no device could take the request within "
                            f"{self.policy.queue_timeout_s:.0f} s ({self.describe()}); "
                            "retry later", retry_after_s=5.0)
                    try:
                        await asyncio.wait_for(self._changed.wait(), timeout=min(left, 0.5))
                    except asyncio.TimeoutError:
                        pass
        finally:
            self.waiting -= 1

    def describe(self) -> str:
        def state(w: WorkerHandle) -> str:
            full = not w.spec.is_cpu and not self.accepting(w.spec.device_name)
            return f"{w.spec.worker_id}={w.state.value}{'/memory-full' if full else ''}"

        states = ", ".join(state(w) for w in self.workers)
        return f"workers: {states}; cpu fallback {self.policy.cpu_fallback}"

    @contextlib.contextmanager
    def admit(self) -> Iterator[None]:
        """Hold one of `max_queue` places for a whole request (all of its units)."""
        if self.unfinished >= self.policy.max_queue:
            raise QueueFull(f"queue full ({self.policy.max_queue} requests unfinished); retry "
                            "later", retry_after_s=1.0)
        self.unfinished += 1
        try:
            yield
        finally:
            self.unfinished -= 1

    def live_on_device(self, device_name: str) -> int:
        return sum(n for wid, n in self.live_streams.items()
                   if any(w.spec.worker_id == wid and w.spec.device_name == device_name
                          for w in self.workers))

    def choose_live(self, model: str, max_per_device: int, avoid: LostWorkers | None,
                    resumed: bool) -> WorkerHandle | None:
        """The worker of `model` for a new live stream: ready, on an accepting device (GPU
        first; the CPU when it is the device or the policy allows), under `max_per_device`
        streams (a resumed stream may exceed it), fewest live streams then least loaded.
        None: no worker is ready now. Raises `NoCapacity` when every ready one is full."""
        ready = [w for w in self.pool(model) if w.ready and w.stub is not None
                 and (avoid is None or not avoid.avoids(w))]
        gpus = [w for w in ready if not w.spec.is_cpu and self.accepting(w.spec.device_name)]
        cpus = [w for w in ready if w.spec.is_cpu]
        pool = gpus or (cpus if self.no_gpu or self.policy.cpu_fallback != "never" else [])
        if not pool:
            return None
        open_ = [w for w in pool
                 if resumed or self.live_on_device(w.spec.device_name) < max_per_device]
        if not open_:
            raise NoCapacity(f"every device serving {model!r} holds --max-live-streams "
                             f"{max_per_device} live streams; retry later", retry_after_s=5.0)
        return min(open_, key=lambda w: (self.live_streams[w.spec.worker_id], w.in_flight,
                                         w.last_assigned))

    async def place_live(self, model: str, max_per_device: int,
                         avoid: LostWorkers | None = None, resumed: bool = False
                         ) -> WorkerHandle:
        """Wait (bounded) for a worker to hold a live stream; counts it until
        `release_live`."""
        deadline = time.monotonic() + self.policy.queue_timeout_s
        while (w := self.choose_live(model, max_per_device, avoid, resumed)) is None:
            if time.monotonic() > deadline:
                raise NoCapacity(f"no worker of {model!r} could take a live stream within "
                                 f"{self.policy.queue_timeout_s:.0f} s ({self.describe()})",
                                 retry_after_s=5.0)
            await asyncio.sleep(0.1)
        self.live_streams[w.spec.worker_id] += 1
        w.last_assigned = time.monotonic()
        return w

    def release_live(self, worker: WorkerHandle) -> None:
        self.live_streams[worker.spec.worker_id] -= 1
        if self.live_streams[worker.spec.worker_id] <= 0:
            del self.live_streams[worker.spec.worker_id]

    def _cpu_may_take(self, model: str) -> bool:
        return self.policy.cpu_fallback != "never" and any(
            w.spec.is_cpu for w in self.pool(model))

    async def run(self, audio_s: float, call: Callable[[WorkerHandle], Awaitable[object]],
                  model: str = "") -> tuple[object, Placement]:
        """Run `call` on a chosen worker of `model`'s pool; requeue on worker loss; exactly
        one answer. Admission (`admit()`) is the caller's, once per request."""
        avoid = LostWorkers(self.policy.lost_settle_s)
        gpu_allowed = True
        for attempt in range(1, self.policy.max_attempts + 1):
            placement = await self.place(audio_s, avoid, gpu_allowed, model)
            w = placement.worker
            w.in_flight += 1
            w.pending_audio_s += audio_s
            w.last_assigned = time.monotonic()
            started = time.monotonic()
            try:
                result = await call(w)
            except WorkerLost as exc:
                log.warning("worker %s lost a request (attempt %d): %s; requeueing",
                            w.spec.worker_id, attempt, exc)
                avoid.add(w)
                continue
            except GpuOutOfMemory as exc:
                if not self._cpu_may_take(model):
                    raise TooBigForGpu(
                        f"{audio_s:.1f} s of audio ran out of GPU memory on {w.spec.device_name} "
                        "even alone, and no CPU worker may take it (--cpu-fallback "
                        f"{self.policy.cpu_fallback}); send shorter audio (max_segment_ms) or "
                        "enable CPU fallback") from exc
                log.warning("request ran out of GPU memory on %s; trying without GPU",
                            w.spec.worker_id)
                gpu_allowed = False
                continue
            finally:
                w.in_flight -= 1
                # Exactly 0 when idle: float sums of many segments leave residue.
                w.pending_audio_s = (max(w.pending_audio_s - audio_s, 0.0) if w.in_flight
                                     else 0.0)
                self.notify()
            w.served += 1
            w.record(audio_s, time.monotonic() - started)
            if placement.fallback_reason:
                self.fallbacks[placement.fallback_reason] += 1
                log.info("request ran on %s: fallback reason %s", w.spec.device_name,
                         placement.fallback_reason)
            return result, placement
        raise NoCapacity(f"request failed on {self.policy.max_attempts} workers in turn "
                         f"({self.describe()}); retry later", retry_after_s=5.0)
