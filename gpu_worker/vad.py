"""Voice activity detection with FunASR's FSMN-VAD, streamed chunk by chunk.

A VAD worker keeps one model per maximum segment length and one state cache per stream, so
many streams share the worker. Fed 60 s chunks (FSMN-VAD's own internal chunk size) with
`is_final` on the last, the segments equal FunASR's offline VAD over the whole file.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from gpu_worker.runner import decode_pcm
from protos.asr.worker.v1 import worker_pb2 as pb

log = logging.getLogger(__name__)

DEFAULT_MAX_SEGMENT_MS = 30000
VAD_CHUNK_MS = 60000  # FSMN-VAD's internal chunk: feeding chunks of this size keeps results exact


class VadRunner:
    """FSMN-VAD models by max segment length, run on one thread."""

    def __init__(self, model_dir: str, threads: int = 1) -> None:
        self.model_dir = model_dir
        self.threads = threads
        self._models: dict[int, Any] = {}
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="vad")
        self.model(DEFAULT_MAX_SEGMENT_MS)  # load now: readiness means the model loads

    def model(self, max_segment_ms: int) -> Any:
        if max_segment_ms not in self._models:
            from funasr import AutoModel

            self._models[max_segment_ms] = AutoModel(
                model=self.model_dir, device="cpu", disable_update=True, disable_pbar=True,
                disable_log=True, ncpu=self.threads, max_single_segment_time=max_segment_ms)
        return self._models[max_segment_ms]

    def _run(self, model: Any, cache: dict[str, Any], pcm: bytes, fmt: int,
             is_final: bool) -> list[list[int]]:
        import torch

        audio = decode_pcm(pcm, fmt)
        with torch.inference_mode():
            out = model.generate(input=audio, cache=cache, is_final=is_final,
                                 chunk_size=VAD_CHUNK_MS)
        return [list(seg) for seg in out[0]["value"]] if out else []

    async def segment(self, requests: AsyncIterator[pb.VadRequest]
                      ) -> AsyncIterator[pb.VadResponse]:
        loop = asyncio.get_running_loop()
        cache: dict[str, Any] = {}
        model = None
        async for req in requests:
            if model is None:
                model = self.model(req.max_segment_ms or DEFAULT_MAX_SEGMENT_MS)
            segs = await loop.run_in_executor(self._executor, self._run, model, cache, req.pcm,
                                              req.sample_format, req.is_final)
            yield pb.VadResponse(segments=[pb.VadSegment(start_ms=s, end_ms=e) for s, e in segs])
            if req.is_final:
                cache = {}
