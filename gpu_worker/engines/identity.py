"""The identity engine: an empty transcript at once, after the same decode and hand-off as a
real engine (like the identity models Triton's perf tools use). It measures the service's own
cost per request apart from any model: `asr-scheduler serve --engine identity` (or
`--model NAME=DIR?engine=identity`). It loads no model; it reports the capabilities of the
model directory's family so requests are validated as they would be for the real engine."""

from __future__ import annotations

import time

from gpu_worker.engines.base import (
    BatchStats,
    Engine,
    EngineStats,
    StartupError,
    Transcript,
    Utterance,
    register_engine,
)
from gpu_worker.families import family_for_class, model_class_of
from protos.common.capabilities import RECOGNIZE, Capabilities
from protos.common.worker_config import WorkerConfig

ENGINE = "identity"


class IdentityEngine(Engine):
    """Answers every utterance with "" at once; counts them as batches of one."""

    name = ENGINE

    def __init__(self, capabilities: Capabilities, model: str) -> None:
        super().__init__()
        self.capabilities = capabilities
        self.model = model
        self.batches = 0

    async def transcribe(self, utt: Utterance) -> tuple[Transcript, BatchStats]:
        started = time.monotonic()
        self.batches += 1
        return Transcript(text=""), BatchStats(batch_size=1, wait_s=0.0,
                                               inference_s=time.monotonic() - started,
                                               batch_id=self.batches)

    def stats(self) -> EngineStats:
        return EngineStats(model=self.model, batches=self.batches)


def create(cfg: WorkerConfig) -> IdentityEngine:
    family = family_for_class(model_class_of(cfg.model))
    if family.kind != RECOGNIZE:
        raise StartupError(f"engine {ENGINE!r} stands in for recognition models; "
                           f"{cfg.model} is a {family.name!r} model")
    caps = family.capabilities(ENGINE)
    return IdentityEngine(caps, cfg.model)


register_engine(ENGINE, create)
