"""The session engine ("vad"): per-stream state fed chunk by chunk; FSMN-VAD today.

A VAD worker keeps one model per maximum segment length and one state cache per stream, so
many streams share the worker. Fed 60 s chunks (FSMN-VAD's own internal chunk size) with
`is_final` on the last, the segments equal FunASR's offline VAD over the whole file.

A chunk runs through `vad_step` (FunASR's `generate(input=chunk, cache=..., is_final=...,
chunk_size=60000)` step for step) with the frame decisions of `vad_frames.detect_frames`:
the same segments and cache, without FunASR's per-frame tensor indexing (its state machine was
a third of the VAD's CPU time; one 10-minute file: 2.8 s -> 2.1 s on one core of the dev
machine), and the log-mel of `gpu_worker.fast.features` (torch, on the worker's device) in
place of kaldi-native-fbank (2.35 s -> 1.34 s, `bench/vad_speed.py`; `--vad-fbank kaldi` keeps
FunASR's). `tests/test_vad_frames.py` checks both against FunASR.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np

from gpu_worker.device import bind_cuda_device
from gpu_worker.engines.base import Engine, EngineStats, SessionChunk, register_engine
from gpu_worker.engines.live_vad import run_alone, use_fast_fbank, vad_step
from gpu_worker.families import family_for
from protos.common.wire import DEFAULT_MAX_SEGMENT_MS, VAD_CHUNK_MS
from protos.common.worker_config import WorkerConfig

log = logging.getLogger(__name__)

ENGINE = "vad"


class VadSessionEngine(Engine):
    """FSMN-VAD models by max segment length, run on one CPU thread (the network on the
    worker's device)."""

    name = ENGINE

    def __init__(self, cfg: WorkerConfig) -> None:
        super().__init__()
        family = family_for(cfg.model, ENGINE)
        self.capabilities = family.capabilities(ENGINE)
        self.model_dir = cfg.model
        self.device = cfg.torch_device  # `--vad-device gpu`: fbank and FSMN network on cuda:N
        self.threads = cfg.threads
        self.fast_fbank = cfg.vad_fbank == "torch"
        self._extra = family.model_kwargs(cfg)
        self._models: dict[int, Any] = {}
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="vad",
                                            initializer=bind_cuda_device,
                                            initargs=(self.device,))
        self.model(DEFAULT_MAX_SEGMENT_MS)  # load now: readiness means the model loads

    def model(self, max_segment_ms: int) -> Any:
        if max_segment_ms not in self._models:
            from funasr import AutoModel

            vad = AutoModel(
                model=self.model_dir, device=self.device, disable_update=True, disable_pbar=True,
                disable_log=True, ncpu=self.threads, max_single_segment_time=max_segment_ms,
                **self._extra)
            if self.fast_fbank and not use_fast_fbank(vad, self.device):
                log.info("VAD features: FunASR's own fbank (front-end %s)",
                         type(vad.kwargs.get("frontend")).__name__)
            self._models[max_segment_ms] = vad
        return self._models[max_segment_ms]

    def stats(self) -> EngineStats:
        return EngineStats(model=self.model_dir)

    async def stop(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)

    def _run(self, model: Any, cache: dict[str, Any], audio: np.ndarray,
             is_final: bool) -> list[tuple[int, int]]:
        import torch

        with torch.inference_mode():
            found = run_alone(vad_step(model, audio, cache, is_final, VAD_CHUNK_MS))
        return [(int(s), int(e)) for s, e in found]

    async def segment(self, chunks: AsyncIterator[SessionChunk]
                      ) -> AsyncIterator[list[tuple[int, int]]]:
        loop = asyncio.get_running_loop()
        cache: dict[str, Any] = {}
        model = None
        async for chunk in chunks:
            if model is None:  # a new maximum segment length loads a model: not on the loop
                model = await loop.run_in_executor(
                    self._executor, self.model, chunk.max_segment_ms or DEFAULT_MAX_SEGMENT_MS)
            yield await loop.run_in_executor(self._executor, self._run, model, cache,
                                             chunk.audio, chunk.is_final)
            if chunk.is_final:
                cache = {}


register_engine(ENGINE, VadSessionEngine)
