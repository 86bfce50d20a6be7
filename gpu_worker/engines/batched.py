"""The batched-utterance engine: whole utterances in dynamic batches over a runner.

It owns the `Batcher` (queueing, batch caps, OOM isolation, cache clears, failure tracking)
and reports the runner's family capabilities. Runners differ per engine ("generate" runs
FunASR's `AutoModel.generate`); the engine around them is the same.
"""

from __future__ import annotations

from gpu_worker.device import Device
from gpu_worker.engines.base import (
    BatchStats,
    Capabilities,
    Engine,
    EngineStats,
    Transcript,
    Utterance,
)
from gpu_worker.engines.batcher import Batcher, Runner
from protos.common.worker_config import WorkerConfig


class BatchedEngine(Engine):
    """Recognition of whole utterances, batched across concurrent requests."""

    def __init__(self, name: str, runner: Runner, device: Device, capabilities: Capabilities,
                 model: str, cfg: WorkerConfig | None = None) -> None:
        super().__init__()
        self.name = name  # per instance: one class can serve several engine names
        self.capabilities = capabilities
        self.model = model
        cfg = cfg or WorkerConfig(model=model)
        self.batcher = Batcher(
            runner, device, cfg.max_batch_size, cfg.max_batch_audio_s,
            cfg.max_queue_delay_ms / 1000.0, cfg.cache_clear_every,
            cfg.cache_clear_margin_bytes, on_unhealthy=self._unhealthy)

    def _unhealthy(self, reason: str) -> None:
        self.on_unhealthy(reason)

    def start(self) -> None:
        self.batcher.start()

    async def stop(self) -> None:
        await self.batcher.stop()

    async def transcribe(self, utt: Utterance) -> tuple[Transcript, BatchStats]:
        return await self.batcher.submit(utt)

    async def clear_cache(self) -> tuple[int, int]:
        device = self.batcher.device
        before = device.memory()[1]
        await self.batcher.run_in_model_thread(lambda: self.batcher.clear_cache("admin"))
        return before, device.memory()[1]

    def stats(self) -> EngineStats:
        allocated, reserved = self.batcher.device.memory()
        counters = self.batcher.counters
        return EngineStats(model=self.model, allocated_bytes=allocated,
                           reserved_bytes=reserved, batches=counters.batches,
                           oom_events=counters.oom_events,
                           cache_clears=dict(counters.cache_clears),
                           consecutive_failed_batches=self.batcher.health.consecutive_failed)
