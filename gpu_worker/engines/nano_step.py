"""The "stepwise" engine: Fun-ASR-Nano with step-wise (continuous) decoding.

Instead of the dynamic batcher (batches that run to their longest member's last token), the
engine keeps one running set in a `StepDecoder` and drives it from an asyncio loop:

- with nothing running, the first requests are held up to `max_queue_delay_ms` (0 by
  default) so that requests sent together start together;
- a request waits in a queue until the running set has room (`max_batch_size` sequences); at
  the next step boundary it is prefilled and joins, whatever its options (language, ITN,
  hotwords and token cap are per sequence: they only change its prompt and its cap);
- each hop to the model thread runs up to `STEPS_PER_HOP` decoding steps, returning early as
  soon as a sequence finishes or a new request arrives, so finished results go back at once
  and newcomers join within one step;
- a sequence whose caller has gone (cancelled, deadline) is dropped at the next hop.

Per request it reports `tokens_generated` and `decode_steps` (the forwards it took part in,
prefill included), `inference_s` (prefill to last token, so the scheduler's time per output
token is this sequence's), and as `batch_size` the largest running set it decoded in.
Failure isolation: a clip whose prefill fails gets the error alone; a failed decoding step
fails the sequences running in it (an OOM frees the allocator cache first); errors that poison
the device make the worker unhealthy, as in the batcher.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from gpu_worker.device import TorchDevice, is_oom
from gpu_worker.engines.base import (
    BatchStats,
    Engine,
    EngineStats,
    Transcript,
    Utterance,
    WorkerUnhealthy,
    register_engine,
)
from gpu_worker.engines.generate import GenerateRunner
from gpu_worker.engines.health import FailureTracker
from gpu_worker.engines.nano_decoder import Running, StepDecoder
from gpu_worker.families import family_for
from gpu_worker.families.funasr_nano import generate_kwargs
from protos.common.worker_config import WorkerConfig

log = logging.getLogger(__name__)

ENGINE = "stepwise"
STEPS_PER_HOP = 16  # most decoding steps per trip to the model thread

Outcome = Running | BaseException


@dataclass
class _Job:
    utt: Utterance
    cap: int
    future: asyncio.Future[tuple[Transcript, BatchStats]]
    enqueued: float = field(default_factory=time.monotonic)
    started: float = 0.0  # prefill began
    seq: Running | None = None  # while it runs


class StepwiseEngine(Engine):
    """One Fun-ASR-Nano model decoding a running set of sequences step by step."""

    def __init__(self, runner: GenerateRunner, device: TorchDevice, cfg: WorkerConfig) -> None:
        super().__init__()
        self.name = ENGINE
        self.capabilities = runner.family.capabilities(ENGINE)
        self.model = cfg.model
        self.family = runner.family
        self.device = device
        self.decoder = StepDecoder(runner.automodel)
        self.max_running = max(1, cfg.max_batch_size)
        self.max_new_tokens = max(1, cfg.max_new_tokens)
        self.max_queue_delay_s = cfg.max_queue_delay_ms / 1000.0
        self.cache_clear_every = cfg.cache_clear_every
        self.health = FailureTracker()
        self.oom_events = 0
        self.cache_clears: dict[str, int] = {}
        self._since_clear = 0
        self._ids = itertools.count(1)
        self._waiting: list[_Job] = []
        self._active: list[_Job] = []
        self._arrived = threading.Event()  # read on the model thread: end the hop early
        self._wakeup = asyncio.Event()
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="model")
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._executor.submit(self.device.set_threads)
        self._task = asyncio.get_running_loop().create_task(self._loop(), name="stepwise")

    async def stop(self) -> None:
        if self._task:
            self._task.cancel()
        self._executor.shutdown(wait=False, cancel_futures=True)

    async def transcribe(self, utt: Utterance) -> tuple[Transcript, BatchStats]:
        if self.health.unhealthy is not None:
            raise WorkerUnhealthy(self.health.unhealthy)
        generate_kwargs(utt.language, utt.use_itn, utt.hotwords, 0)  # ValueError: bad language
        cap = min(utt.max_new_tokens or self.max_new_tokens, self.max_new_tokens)
        job = _Job(utt, cap, asyncio.get_running_loop().create_future())
        self._waiting.append(job)
        self._arrived.set()
        self._wakeup.set()
        return await job.future

    async def _loop(self) -> None:
        loop = asyncio.get_running_loop()
        while self.health.unhealthy is None:
            if not self._waiting and not self._active:
                self._wakeup.clear()
                await self._wakeup.wait()
            await self._gather_when_idle()
            self._waiting = [j for j in self._waiting if not j.future.done()]
            room = self.max_running - len(self._active)
            joining, self._waiting = self._waiting[:room], self._waiting[room:]
            gone = [j for j in self._active if j.future.done()]
            self._active = [j for j in self._active if not j.future.done()]
            self._arrived.clear()
            try:
                outcomes = await loop.run_in_executor(self._executor, self._hop, joining, gone)
            except Exception as exc:  # a bug outside the guarded model calls: fail, go on
                log.exception("step-wise hop failed; failing its %d sequences",
                              len(joining) + len(self._active))
                await loop.run_in_executor(self._executor, self.decoder.reset)
                outcomes = [(j, exc) for j in joining + self._active]
            self._settle(joining, outcomes)

    async def _gather_when_idle(self) -> None:
        """With nothing running, hold the first arrivals up to `max_queue_delay_ms` (the
        batcher's setting, 0 by default) so that requests sent together start together."""
        while (not self._active and 0 < len(self._waiting) < self.max_running
               and self.max_queue_delay_s > 0):
            left = self.max_queue_delay_s - (time.monotonic() - self._waiting[0].enqueued)
            if left <= 0:
                return
            self._wakeup.clear()
            try:
                await asyncio.wait_for(self._wakeup.wait(), timeout=left)
            except asyncio.TimeoutError:
                return

    def _settle(self, joining: list[_Job], outcomes: list[tuple[_Job, Outcome]]) -> None:
        """Answer the finished and failed jobs; the others of `joining` are now running."""
        done = {id(job) for job, _ in outcomes}
        self._active += [j for j in joining if id(j) not in done]
        self._active = [j for j in self._active if id(j) not in done]
        if not outcomes:
            return
        reason = self.health.record([j.utt for j, _ in outcomes], [
            o if isinstance(o, BaseException) else Transcript("") for _, o in outcomes])
        now = time.monotonic()
        for job, outcome in outcomes:
            if job.future.done():
                continue
            if isinstance(outcome, BaseException):
                job.future.set_exception(WorkerUnhealthy(reason) if reason else outcome)
                continue
            text, language = self.family.postprocess(self.decoder.text(outcome))
            tokens = self.decoder.tokens_generated(outcome)
            job.future.set_result((
                Transcript(text=text, language=language, tokens_generated=tokens,
                           decode_steps=len(outcome.tokens)),
                BatchStats(batch_size=outcome.peak_batch,
                           wait_s=job.started - job.enqueued, inference_s=now - job.started,
                           batch_id=next(self._ids))))
        if reason is not None:
            self._become_unhealthy(reason)

    def _become_unhealthy(self, reason: str) -> None:
        for job in self._waiting + self._active:
            if not job.future.done():
                job.future.set_exception(WorkerUnhealthy(reason))
        self._waiting, self._active = [], []
        self.on_unhealthy(reason)

    def _hop(self, joining: list[_Job], gone: list[_Job]) -> list[tuple[_Job, Outcome]]:
        """On the model thread: drop `gone`, prefill `joining`, then decode until a sequence
        finishes, a request arrives or `STEPS_PER_HOP` steps have run."""
        outcomes: list[tuple[_Job, Outcome]] = []
        self.decoder.remove([j.seq for j in gone if j.seq is not None])
        samples = sum(len(j.utt.audio) for j in joining)
        with self.device.inference(samples):
            for job in joining:
                outcomes += self._join(job)
            for _ in range(STEPS_PER_HOP):
                if not self.decoder.size:
                    break
                try:
                    finished = self.decoder.step()
                except Exception as exc:
                    self._failed(exc, f"decoding step of {self.decoder.size}")
                    outcomes += [(s.tag, exc) for s in self.decoder.reset()]
                    break
                outcomes += [(s.tag, s) for s in finished]
                if finished or self._arrived.is_set():
                    break
        self._count_finished(sum(1 for _, o in outcomes if not isinstance(o, BaseException)))
        return outcomes

    def _join(self, job: _Job) -> list[tuple[_Job, Outcome]]:
        job.started = time.monotonic()
        u = job.utt
        try:
            embeds = self.decoder.prompt_embeds(u.audio, u.language, u.use_itn, u.hotwords)
            finished = self.decoder.join(job, embeds, job.cap)
        except Exception as exc:
            self._failed(exc, f"prefill of {u.request_id or 'a request'}")
            return [(job, exc)]
        if finished is not None:
            return [(job, finished)]
        job.seq = self.decoder.running[-1]
        return []

    def _failed(self, exc: Exception, what: str) -> None:
        log.warning("%s failed: %s: %s", what, type(exc).__name__, exc)
        if is_oom(exc):
            self.oom_events += 1
            self._clear("oom")

    def _count_finished(self, n: int) -> None:
        self._since_clear += n
        if self.device.has_cache and self.cache_clear_every and (
                self._since_clear >= self.cache_clear_every):
            self._clear("periodic")

    def _clear(self, trigger: str) -> None:
        self.device.clear_cache()
        self.cache_clears[trigger] = self.cache_clears.get(trigger, 0) + 1
        self._since_clear = 0

    async def clear_cache(self) -> tuple[int, int]:
        before = self.device.memory()[1]
        await asyncio.get_running_loop().run_in_executor(self._executor, self._clear, "admin")
        return before, self.device.memory()[1]

    def stats(self) -> EngineStats:
        allocated, reserved = self.device.memory()
        return EngineStats(model=self.model, allocated_bytes=allocated, reserved_bytes=reserved,
                           batches=self.decoder.steps, oom_events=self.oom_events,
                           cache_clears=dict(self.cache_clears),
                           consecutive_failed_batches=self.health.consecutive_failed)


def create(cfg: WorkerConfig) -> StepwiseEngine:
    family = family_for(cfg.model, ENGINE)
    device = TorchDevice(cfg.torch_device, cfg.dtype, cfg.threads)
    return StepwiseEngine(GenerateRunner(cfg.model, family, device, cfg), device, cfg)


def load_engine(model_dir: str, device: str = "cpu", threads: int = 1,
                max_batch_size: int = 8, max_new_tokens: int = 512) -> StepwiseEngine:
    """A step-wise engine for `model_dir` (for tests and benchmarks; call `start` in a loop)."""
    return create(WorkerConfig(model=model_dir, engine=ENGINE, torch_device=device,
                               threads=threads, max_batch_size=max_batch_size,
                               max_new_tokens=max_new_tokens))


register_engine(ENGINE, create)
