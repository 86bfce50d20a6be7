"""Dynamic batcher: groups concurrent requests into one model call (Triton-style).

A batch forms from the oldest waiting utterance plus others with the same options, bounded by
`max_batch_size` and `max_batch_audio_s`; it is sent as soon as it is full, or once its oldest
member has waited `max_queue_delay_s`. The model runs in one dedicated thread (FunASR models are
not thread-safe), so the event loop keeps answering RPCs while a batch runs.

Failure isolation: when a batch raises, it is split in halves and retried (after freeing the
allocator cache on OOM), down to single utterances; only the utterance that fails alone gets
the error. No request fails because of another request in its batch.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from gpu_worker.runner import Runner, Transcript, Utterance

log = logging.getLogger(__name__)

SAMPLE_RATE = 16000


def is_oom(exc: BaseException) -> bool:
    """True for CUDA out-of-memory errors (torch's type or its message)."""
    return type(exc).__name__ == "OutOfMemoryError" or "out of memory" in str(exc).lower()


@dataclass(frozen=True)
class BatchStats:
    """How one utterance was run."""

    batch_size: int
    wait_s: float
    inference_s: float
    batch_id: int = 0


@dataclass
class _Pending:
    utt: Utterance
    future: asyncio.Future[tuple[Transcript, BatchStats]]
    enqueued: float = field(default_factory=time.monotonic)

    @property
    def audio_s(self) -> float:
        return len(self.utt.audio) / SAMPLE_RATE


@dataclass
class BatcherCounters:
    batches: int = 0
    utterances: int = 0
    splits: int = 0
    oom_events: int = 0
    cache_clears: dict[str, int] = field(default_factory=dict)  # by trigger

    def count_clear(self, trigger: str) -> None:
        self.cache_clears[trigger] = self.cache_clears.get(trigger, 0) + 1


class Batcher:
    """Collects utterances and runs them through `runner` in batches."""

    def __init__(self, runner: Runner, max_batch_size: int = 32, max_batch_audio_s: float = 600.0,
                 max_queue_delay_s: float = 0.005, cache_clear_every: int = 0,
                 cache_clear_margin_bytes: int = 0,
                 on_batch: Callable[[int, float], None] | None = None) -> None:
        """`cache_clear_every`: clear the allocator cache after this many utterances (0: never);
        `cache_clear_margin_bytes`: clear when reserved exceeds allocated by more (0: never)."""
        self.runner = runner
        self.max_batch_size = max_batch_size
        self.max_batch_audio_s = max_batch_audio_s
        self.max_queue_delay_s = max_queue_delay_s
        self.cache_clear_every = cache_clear_every
        self.cache_clear_margin_bytes = cache_clear_margin_bytes
        self._since_clear = 0
        self.counters = BatcherCounters()
        self._on_batch = on_batch
        self._pending: list[_Pending] = []
        self._wakeup = asyncio.Event()
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="model")
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        # torch's intra-op thread count is per calling thread under OpenMP: set it on the
        # model thread itself, where every batch runs.
        threads = getattr(self.runner, "threads", 0)
        if threads:
            import torch

            self._executor.submit(torch.set_num_threads, threads)
        self._task = asyncio.get_running_loop().create_task(self._loop(), name="batcher")

    async def stop(self) -> None:
        if self._task:
            self._task.cancel()
        self._executor.shutdown(wait=False, cancel_futures=True)

    @property
    def depth(self) -> int:
        return len(self._pending)

    async def submit(self, utt: Utterance) -> tuple[Transcript, BatchStats]:
        """Queue one utterance; resolves with its transcript once its batch has run."""
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

    def _take_batch(self) -> list[_Pending]:
        """The oldest live utterance and others with its key, shortest first."""
        self._pending = [p for p in self._pending if not p.future.done()]  # drop cancelled
        if not self._pending:
            return []
        key = self._key(self._pending[0])
        group = sorted((p for p in self._pending if self._key(p) == key),
                       key=lambda p: p.audio_s)
        capacity = self.runner.audio_capacity_s()
        limit = self.max_batch_audio_s if capacity is None else min(self.max_batch_audio_s,
                                                                    capacity)
        batch: list[_Pending] = []
        audio = 0.0
        for p in group:
            if batch and (len(batch) >= self.max_batch_size or audio + p.audio_s > limit):
                break
            batch.append(p)
            audio += p.audio_s
        oldest = self._pending[0]
        if all(p is not oldest for p in batch):  # the oldest must not starve behind short ones
            batch[-1] = oldest
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
            if not batch:
                continue
            started = time.monotonic()
            utts = [p.utt for p in batch]
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
            for p, outcome in zip(batch, outcomes, strict=True):
                if p.future.done():
                    continue
                if isinstance(outcome, BaseException):
                    p.future.set_exception(outcome)
                else:
                    p.future.set_result(
                        (outcome, BatchStats(len(batch), started - p.enqueued, elapsed,
                                             batch_id)))

    def _run_batch(self, batch: list[Utterance]) -> list[Transcript | BaseException]:
        """On the model thread: the batch, then any cache clear it calls for."""
        outcomes = self._run_isolated(batch)
        self._since_clear += len(batch)
        if not self.runner.has_cache:
            return outcomes
        if self.cache_clear_every and self._since_clear >= self.cache_clear_every:
            self.clear_cache("periodic")
        elif self.cache_clear_margin_bytes:
            allocated, reserved = self.runner.memory()
            if reserved - allocated > self.cache_clear_margin_bytes:
                self.clear_cache("fragmentation")
        return outcomes

    def clear_cache(self, trigger: str) -> None:
        """Clear the allocator cache (call on the model thread, between batches)."""
        self.runner.clear_cache()
        self.counters.count_clear(trigger)
        self._since_clear = 0
        log.info("cleared the allocator cache (%s)", trigger)

    def _run_isolated(self, batch: list[Utterance]) -> list[Transcript | BaseException]:
        """Run a batch; on failure split it so only the failing utterance gets the error."""
        try:
            return list(self.runner.transcribe(batch))
        except Exception as exc:
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
