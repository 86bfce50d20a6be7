"""The "generate" engine: FunASR's `AutoModel.generate` behind the dynamic batcher.

`GenerateRunner` is the only code in the worker that calls FunASR for recognition; what differs
per model family (generate arguments, one clip per call, post-processing, padding invariance)
comes from the family module.
"""

from __future__ import annotations

import logging
from typing import Any

from gpu_worker.device import TorchDevice
from gpu_worker.engines.base import Transcript, Utterance, register_engine
from gpu_worker.engines.batched import BatchedEngine
from gpu_worker.families import Family, family_for
from protos.common.worker_config import WorkerConfig

log = logging.getLogger(__name__)

ENGINE = "generate"


class GenerateRunner:
    """One FunASR `AutoModel` of one family on one device."""

    def __init__(self, model_dir: str, family: Family, device: TorchDevice,
                 cfg: WorkerConfig | None = None) -> None:
        from funasr import AutoModel

        self.family = family
        self.device = device
        self.model_name = model_dir
        self.padding_invariant = family.padding_invariant
        self.supports_hotwords = family.hotwords
        extra = family.model_kwargs(cfg or WorkerConfig(model=model_dir, torch_device=device.name))
        self._model = AutoModel(model=model_dir, device=device.name, disable_update=True,
                                disable_pbar=True, disable_log=True, ncpu=device.threads,
                                **extra)
        self.model_class = type(self._model.model).__name__
        family.loaded(self._model)
        if self.model_class not in family.model_classes:
            log.warning("%s loaded as %s, not a class of family %s (%s)", model_dir,
                        self.model_class, family.name, ", ".join(family.model_classes))
        log.info("loaded %s (%s, family %s) on %s", model_dir, self.model_class, family.name,
                 device.name)

    @property
    def automodel(self) -> Any:
        """The loaded FunASR `AutoModel` (live sessions call it with their own caches)."""
        return self._model

    def transcribe(self, batch: list[Utterance]) -> list[Transcript]:
        if not batch:
            return []
        for u in batch:
            u.check()
        first = batch[0]
        kwargs = self.family.generate_kwargs(first, len(batch))
        ignored = bool(first.hotwords) and not self.family.hotwords
        with self.device.inference(sum(len(u.audio) for u in batch)):
            out = self.family.generate(self._model, [u.audio for u in batch], kwargs)
        if len(out) != len(batch):
            raise RuntimeError(f"FunASR returned {len(out)} results for {len(batch)} inputs")
        results = []
        for item in out:  # FunASR may give list inputs one shared key: match by order
            text, lang = self.family.postprocess(str(item.get("text", "")))
            results.append(Transcript(text=text, language=lang, hotwords_ignored=ignored,
                                      tokens_generated=int(item.get("tokens_generated", 0)),
                                      decode_steps=int(item.get("decode_steps", 0))))
        return results


def load_runner(model_dir: str, device: str = "cpu", threads: int = 1,
                dtype: str = "fp32") -> GenerateRunner:
    """A runner for `model_dir` on `device` (for tests and benchmarks)."""
    cfg = WorkerConfig(model=model_dir, torch_device=device, threads=threads, dtype=dtype)
    return GenerateRunner(model_dir, family_for(model_dir, ENGINE),
                          TorchDevice(device, dtype, threads), cfg)


def create(cfg: WorkerConfig) -> BatchedEngine:
    family = family_for(cfg.model, ENGINE)
    device = TorchDevice(cfg.torch_device, cfg.dtype, cfg.threads)
    runner = GenerateRunner(cfg.model, family, device, cfg)
    if family.streaming:  # a streaming model also serves live streams
        from gpu_worker.engines.live import LiveEngine

        return LiveEngine(ENGINE, runner, device, family.capabilities(ENGINE), cfg)
    return BatchedEngine(ENGINE, runner, device, family.capabilities(ENGINE), cfg.model, cfg)


register_engine(ENGINE, create)
