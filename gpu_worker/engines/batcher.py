"""Dynamic batcher: groups concurrent requests into one model call (Triton-style).

A batch forms from the oldest waiting utterance plus others with the same options, bounded by
`max_batch_size` and `max_batch_audio_s` (and by what free device memory allows); it is sent as
soon as it is full, or once its oldest member has waited `max_queue_delay_s`. The oldest
utterance is always in the batch (no starvation); the caps still hold with it (only an
utterance alone may exceed them). The model runs in one dedicated thread (FunASR models are not
thread-safe), so the event loop keeps answering RPCs while a batch runs.

Failure isolation: when a batch raises, it is split in halves and retried (after freeing the
allocator cache on OOM), down to single utterances; only the utterance that fails alone gets
the error. No request fails because of another request in its batch. An error that poisons the
device is not retried: the `FailureTracker` marks the worker unhealthy, and every waiting and
new utterance gets `WorkerUnhealthy`.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Protocol

from gpu_worker.device import Device, bind_cuda_device, is_oom, is_sticky_error, one_thread_here
from gpu_worker.engines.base import BatchStats, Transcript, Utterance, WorkerUnhealthy
from gpu_worker.engines.health import DEFAULT_THRESHOLD, FailureTracker

log = logging.getLogger(__name__)


def _host_thread(device: str) -> None:
    """The host stages' thread: one torch thread, the worker's CUDA device current."""
    one_thread_here()
    bind_cuda_device(device)


Outcome = Transcript | BaseException


class Runner(Protocol):
    """Runs batches of utterances through one model (the batcher's view of a model)."""

    # True when a clip's text does not depend on the other clips' lengths in its batch;
    # otherwise the batcher only batches clips of equal length.
    padding_invariant: bool

    def transcribe(self, batch: list[Utterance]) -> list[Transcript]:
        """Transcripts in the order of `batch`; all utterances share one `options`."""
        ...


@dataclass
class _Pending:
    utt: Utterance
    future: asyncio.Future[tuple[Transcript, BatchStats]]
    enqueued: float = field(default_factory=time.monotonic)

    @property
    def audio_s(self) -> float:
        return self.utt.audio_s


@dataclass
class BatcherCounters:
    batches: int = 0
    utterances: int = 0
    splits: int = 0
    oom_events: int = 0
    cache_clears: dict[str, int] = field(default_factory=dict)  # by trigger
    peak_in_flight: int = 0  # most batches in flight at once (2 for staged runners)

    def count_clear(self, trigger: str) -> None:
        self.cache_clears[trigger] = self.cache_clears.get(trigger, 0) + 1


class Batcher:
    """Collects utterances and runs them through `runner` on `device` in batches."""

    def __init__(self, runner: Runner, device: Device, max_batch_size: int = 32,
                 max_batch_audio_s: float = 600.0, max_queue_delay_s: float = 0.005,
                 cache_clear_every: int = 0, cache_clear_margin_bytes: int = 0,
                 on_batch: Callable[[int, float], None] | None = None,
                 failure_threshold: int = DEFAULT_THRESHOLD,
                 on_unhealthy: Callable[[str], None] | None = None) -> None:
        """`cache_clear_every`: clear the allocator cache after this many utterances (0: never);
        `cache_clear_margin_bytes`: clear when reserved exceeds allocated by more (0: never);
        `on_unhealthy(reason)`: called once when the worker can no longer serve."""
        self.runner = runner
        self.device = device
        self.max_batch_size = max_batch_size
        self.max_batch_audio_s = max_batch_audio_s
        self.max_queue_delay_s = max_queue_delay_s
        self.cache_clear_every = cache_clear_every
        self.cache_clear_margin_bytes = cache_clear_margin_bytes
        self._since_clear = 0
        self.counters = BatcherCounters()
        self.health = FailureTracker(failure_threshold)
        self._on_batch = on_batch
        self._on_unhealthy = on_unhealthy
        self._pending: list[_Pending] = []
        self._wakeup = asyncio.Event()
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="model")
        # Staged runners (prepare -> compute -> finish) keep `in_flight` batches going: the
        # host stages of one run on this thread while the model thread computes another.
        self._staged = all(hasattr(runner, m) for m in ("prepare", "compute", "finish"))
        # (Single-threaded torch there: a second OpenMP team would throttle the model's; on
        # CUDA bound to the worker's device: its pinned buffers are allocated there.)
        self._host = ThreadPoolExecutor(
            max_workers=1, thread_name_prefix="host", initializer=_host_thread,
            initargs=(getattr(device, "name", "cpu"),)) if self._staged else None
        self._slots = asyncio.Semaphore(
            max(1, int(getattr(runner, "in_flight", 1))) if self._staged else 1)
        self._in_flight: set[asyncio.Task[None]] = set()
        self._running = 0  # batches taken and not yet resolved
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        # torch's intra-op thread count is per calling thread under OpenMP: set it on the
        # model thread itself, where every batch runs.
        self._executor.submit(self.device.set_threads)
        self._task = asyncio.get_running_loop().create_task(self._loop(), name="batcher")

    async def stop(self) -> None:
        if self._task:
            self._task.cancel()
        for task in self._in_flight:
            task.cancel()
        self._executor.shutdown(wait=False, cancel_futures=True)
        if self._host is not None:
            self._host.shutdown(wait=False, cancel_futures=True)

    @property
    def depth(self) -> int:
        return len(self._pending)

    async def submit(self, utt: Utterance) -> tuple[Transcript, BatchStats]:
        """Queue one utterance; resolves with its transcript once its batch has run."""
        if self.health.unhealthy is not None:
            raise WorkerUnhealthy(self.health.unhealthy)
        fut: asyncio.Future[tuple[Transcript, BatchStats]] = (
            asyncio.get_running_loop().create_future())
        self._pending.append(_Pending(utt, fut))
        self._wakeup.set()
        return await fut

    def run_in_model_thread(self, fn: Callable[[], object]) -> asyncio.Future[object]:
        """Run `fn` between batches on the model thread (e.g. a cache clear)."""
        return asyncio.get_running_loop().run_in_executor(self._executor, fn)

    def _key(self, p: _Pending) -> tuple[object, ...]:
        """Utterances batch together only with equal keys: same options, and the same length
        for models whose text depends on padding (length buckets)."""
        if self.runner.padding_invariant:
            return p.utt.options
        return (*p.utt.options, len(p.utt.audio))

    def _fill(self, first: list[_Pending], candidates: list[_Pending],
              limit_s: float) -> list[_Pending]:
        """`first` plus candidates in order while the size and audio caps hold. A runner that
        pads its batch (`padded_budget`) counts padded audio: size x longest clip."""
        padded = getattr(self.runner, "padded_budget", False)
        batch = list(first)
        audio = sum(p.audio_s for p in batch)
        longest = max((p.audio_s for p in batch), default=0.0)
        for p in candidates:
            grown = ((len(batch) + 1) * max(longest, p.audio_s) if padded
                     else audio + p.audio_s)
            if batch and (len(batch) >= self.max_batch_size or grown > limit_s):
                break
            batch.append(p)
            audio += p.audio_s
            longest = max(longest, p.audio_s)
        return batch

    def _take_batch(self) -> list[_Pending]:
        """The oldest live utterance and others with its key, shortest first."""
        self._pending = [p for p in self._pending if not p.future.done()]  # drop cancelled
        if not self._pending:
            return []
        oldest = self._pending[0]
        key = self._key(oldest)
        group = sorted((p for p in self._pending if self._key(p) == key),
                       key=lambda p: p.audio_s)
        capacity = self.device.audio_capacity_s()
        limit = self.max_batch_audio_s if capacity is None else min(self.max_batch_audio_s,
                                                                    capacity)
        batch = self._fill([], group, limit)
        if all(p is not oldest for p in batch):
            # The oldest must not starve behind short ones: it goes first, and shorter ones
            # join only while the caps still hold.
            others = self._fill([oldest], [p for p in group if p is not oldest], limit)
            batch = sorted(others, key=lambda p: p.audio_s)
        chosen = {id(p) for p in batch}
        self._pending = [p for p in self._pending if id(p) not in chosen]
        return batch

    def _ready(self) -> bool:
        if not self._pending:
            return False
        if len(self._pending) >= self.max_batch_size:
            return True
        return time.monotonic() - self._pending[0].enqueued >= self.max_queue_delay_s

    async def _loop(self) -> None:
        loop = asyncio.get_running_loop()
        while self.health.unhealthy is None:
            await self._slots.acquire()  # a batch is taken only when one may start
            if self.health.unhealthy is not None:
                self._slots.release()
                return
            try:
                batch = await self._next_batch()
            except BaseException:
                self._slots.release()
                raise
            self._running += 1
            self.counters.peak_in_flight = max(self.counters.peak_in_flight, self._running)
            task = loop.create_task(self._process(batch))
            self._in_flight.add(task)
            task.add_done_callback(self._in_flight.discard)

    async def _next_batch(self) -> list[_Pending]:
        """Wait until a batch is due, then take it."""
        while True:
            if not self._pending:
                self._wakeup.clear()
                await self._wakeup.wait()
            if not self._ready():
                delay = self.max_queue_delay_s - (time.monotonic() - self._pending[0].enqueued)
                self._wakeup.clear()
                try:
                    await asyncio.wait_for(self._wakeup.wait(), timeout=max(delay, 0.0))
                except asyncio.TimeoutError:
                    pass
                if not self._ready():
                    continue
            batch = self._take_batch()
            if batch:
                return batch

    async def _process(self, batch: list[_Pending]) -> None:
        """Run one batch and resolve its utterances (then free its slot)."""
        loop = asyncio.get_running_loop()
        try:
            started = time.monotonic()
            utts = [p.utt for p in batch]
            if self._staged:
                outcomes = await self._run_staged(utts)
            else:
                outcomes = await loop.run_in_executor(self._executor, self._run_batch, utts)
            elapsed = time.monotonic() - started
            self.counters.batches += 1
            self.counters.utterances += len(batch)
            batch_id = self.counters.batches
            ids = [p.utt.request_id for p in batch]
            log.info("batch %d: %d utterance(s), %.2f s audio, %.3f s: %s", batch_id, len(batch),
                     sum(p.audio_s for p in batch), elapsed, " ".join(ids),
                     extra={"batch_id": batch_id, "request_ids": ids})
            if self._on_batch:
                self._on_batch(len(batch), elapsed)
            reason = self.health.record(utts, outcomes)
            if reason is not None:  # the failures are the worker's, not the requests'
                outcomes = [WorkerUnhealthy(reason) if isinstance(o, BaseException) else o
                            for o in outcomes]
            for p, outcome in zip(batch, outcomes, strict=True):
                if p.future.done():
                    continue
                if isinstance(outcome, BaseException):
                    p.future.set_exception(outcome)
                else:
                    p.future.set_result(
                        (outcome, BatchStats(len(batch), started - p.enqueued, elapsed,
                                             batch_id)))
            if reason is not None:
                self._become_unhealthy(reason)
        finally:
            self._running -= 1
            self._slots.release()

    async def _run_staged(self, utts: list[Utterance]) -> list[Outcome]:
        """prepare (host thread) -> compute (model thread) -> finish (host thread); any failure
        reruns the batch the plain way, which isolates the failing utterance."""
        loop = asyncio.get_running_loop()
        runner: Any = self.runner
        try:
            prepared = await loop.run_in_executor(self._host, runner.prepare, utts)
            computed = await loop.run_in_executor(self._executor, self._compute, prepared)
            return list(await loop.run_in_executor(self._host, runner.finish, computed))
        except Exception:
            return await loop.run_in_executor(self._executor, self._run_batch, utts)

    def _compute(self, prepared: object) -> object:
        """On the model thread: the device stage, then any cache clear it calls for."""
        computed = self.runner.compute(prepared)  # type: ignore[attr-defined]
        self._after_batch(len(prepared.batch))  # type: ignore[attr-defined]
        return computed

    def _become_unhealthy(self, reason: str) -> None:
        """Hand every waiting utterance back (to run elsewhere) and tell the owner."""
        for p in self._pending:
            if not p.future.done():
                p.future.set_exception(WorkerUnhealthy(reason))
        self._pending = []
        if self._on_unhealthy:
            self._on_unhealthy(reason)

    def _run_batch(self, batch: list[Utterance]) -> list[Outcome]:
        """On the model thread: the batch, then any cache clear it calls for."""
        outcomes = self._run_isolated(batch)
        self._after_batch(len(batch))
        return outcomes

    def _after_batch(self, size: int) -> None:
        """The cache-clear policy after a batch (on the model thread)."""
        self._since_clear += size
        if not self.device.has_cache:
            return
        if self.cache_clear_every and self._since_clear >= self.cache_clear_every:
            self.clear_cache("periodic")
        elif self.cache_clear_margin_bytes:
            allocated, reserved = self.device.memory()
            if reserved - allocated > self.cache_clear_margin_bytes:
                self.clear_cache("fragmentation")

    def clear_cache(self, trigger: str) -> None:
        """Clear the allocator cache (call on the model thread, between batches)."""
        self.device.clear_cache()
        self.counters.count_clear(trigger)
        self._since_clear = 0
        log.info("cleared the allocator cache (%s)", trigger)

    def _run_isolated(self, batch: list[Utterance]) -> list[Outcome]:
        """Run a batch; on failure split it so only the failing utterance gets the error."""
        try:
            return list(self.runner.transcribe(batch))
        except Exception as exc:
            if is_sticky_error(exc):  # every later call fails too: do not retry
                log.error("batch of %d hit a device error: %s: %s", len(batch),
                          type(exc).__name__, exc)
                return [exc] * len(batch)
            if is_oom(exc):
                self.counters.oom_events += 1
                self.clear_cache("oom")
            if len(batch) == 1:
                log.warning("utterance failed alone: %s: %s", type(exc).__name__, exc)
                return [exc]
            self.counters.splits += 1
            mid = len(batch) // 2
            log.warning("batch of %d failed (%s); splitting", len(batch), type(exc).__name__)
            return self._run_isolated(batch[:mid]) + self._run_isolated(batch[mid:])
