"""The "direct" engine: our own batched pipeline (features, encoder, decoding on the device)
behind the same dynamic batcher as "generate". Families that list "direct" in their engines
(SenseVoice, offline Paraformer) can run on it."""

from __future__ import annotations

from gpu_worker.device import TorchDevice
from gpu_worker.engines.base import register_engine
from gpu_worker.engines.batched import BatchedEngine
from gpu_worker.families import family_for
from protos.common.worker_config import WorkerConfig

ENGINE = "direct"


def create(cfg: WorkerConfig) -> BatchedEngine:
    from dataclasses import replace

    from gpu_worker.fast.runner import DirectRunner

    family = family_for(cfg.model, ENGINE)
    device = TorchDevice(cfg.torch_device, cfg.dtype, cfg.threads)
    runner = DirectRunner(cfg.model, family, device, cfg)
    # Masks make every direct family padding-invariant: mixed lengths share a batch.
    caps = replace(family.capabilities(ENGINE), padding_invariant=True)
    return BatchedEngine(ENGINE, runner, device, caps, cfg.model, cfg)


register_engine(ENGINE, create)
