"""The worker's internal gRPC servicer: thin translation between protos and the batcher."""

from __future__ import annotations

import logging
import os
from collections.abc import AsyncIterator

import grpc

from gpu_worker.batcher import Batcher, is_oom
from gpu_worker.runner import Utterance, decode_pcm
from gpu_worker.vad import VadRunner
from protos.asr.worker.v1 import worker_pb2 as pb
from protos.asr.worker.v1 import worker_pb2_grpc as pb_grpc

log = logging.getLogger(__name__)

# Detail string the scheduler reads to reroute a request that ran out of GPU memory alone.
GPU_OOM_DETAIL = "gpu_oom"


class WorkerServicer(pb_grpc.WorkerServicer):
    """Recognition (`batcher`) for ASR workers, segmentation (`vad`) for VAD workers."""

    def __init__(self, batcher: Batcher | None, device_name: str,
                 vad: VadRunner | None = None) -> None:
        self._batcher = batcher
        self.device_name = device_name
        self.vad = vad
        self.served = 0

    @property
    def batcher(self) -> Batcher:
        if self._batcher is None:
            raise RuntimeError("this is a VAD worker: it does not transcribe")
        return self._batcher

    async def Segment(self, request_iterator: AsyncIterator[pb.VadRequest],
                      context: grpc.aio.ServicerContext) -> AsyncIterator[pb.VadResponse]:
        if self.vad is None:
            await context.abort(grpc.StatusCode.UNIMPLEMENTED, "not a VAD worker")
            return
        async for response in self.vad.segment(request_iterator):
            self.served += 1
            yield response

    async def GetInfo(self, request: pb.InfoRequest,
                      context: grpc.aio.ServicerContext) -> pb.InfoResponse:
        if self._batcher is None:
            return pb.InfoResponse(device=self.device_name, model=getattr(self.vad, "model_dir",
                                                                          ""),
                                   pid=os.getpid(), served=self.served)
        runner = self.batcher.runner
        allocated, reserved = runner.memory()
        return pb.InfoResponse(device=self.device_name, model=runner.model_name, pid=os.getpid(),
                               allocated_bytes=allocated, reserved_bytes=reserved,
                               supports_hotwords=runner.supports_hotwords, served=self.served,
                               batches=self.batcher.counters.batches,
                               oom_events=self.batcher.counters.oom_events,
                               cache_clears=self.batcher.counters.cache_clears,
                               capabilities=pb.Capabilities(
                                   kind="recognize", engine="generate",
                                   family=getattr(runner, "model_class", ""),
                                   languages=(["zh", "en", "yue", "ja", "ko", "nospeech"]
                                              if getattr(runner, "model_class", "")
                                              .startswith("SenseVoice") else []),
                                   hotwords=runner.supports_hotwords,
                                   padding_invariant=runner.padding_invariant))

    async def Transcribe(self, request: pb.TranscribeRequest,
                         context: grpc.aio.ServicerContext) -> pb.TranscribeResponse:
        audio = decode_pcm(request.pcm, request.sample_format)
        if audio.size == 0:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "no audio samples")
        utt = Utterance(audio=audio, language=request.language or "auto",
                        use_itn=request.enable_itn, hotwords=tuple(request.hotwords),
                        request_id=request.request_id)
        try:
            transcript, stats = await self.batcher.submit(utt)
        except Exception as exc:  # one utterance failed alone: report it, keep serving
            if is_oom(exc):
                await context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, GPU_OOM_DETAIL)
            log.exception("request %s failed", request.request_id)
            await context.abort(grpc.StatusCode.INTERNAL, f"{type(exc).__name__}: {exc}")
        self.served += 1
        return pb.TranscribeResponse(
            text=transcript.text, language=transcript.language, device=self.device_name,
            inference_time_s=stats.inference_s, batch_wait_s=stats.wait_s,
            batch_size=stats.batch_size, hotwords_ignored=transcript.hotwords_ignored,
            batch_id=stats.batch_id)

    async def ClearCache(self, request: pb.WorkerClearCacheRequest,
                         context: grpc.aio.ServicerContext) -> pb.WorkerClearCacheResponse:
        runner = self.batcher.runner
        before = runner.memory()[1]
        await self.batcher.run_in_model_thread(lambda: self.batcher.clear_cache("admin"))
        return pb.WorkerClearCacheResponse(reserved_before_bytes=before,
                                           reserved_after_bytes=runner.memory()[1])
