"""Admin operations: the status report and cache clearing across workers."""

from __future__ import annotations

import asyncio
import logging

import grpc

from protos.asr.v1 import asr_pb2 as pb
from scheduler import __version__
from scheduler.catalog import ModelCatalog, ServedModel
from scheduler.dispatch import Dispatcher
from scheduler.errors import InvalidRequest, Unavailable
from scheduler.monitor import DeviceInfo
from scheduler.workers import WorkerHandle
from scheduler.workers_client import clear_cache

log = logging.getLogger(__name__)


class StatusReporter:
    def __init__(self, dispatcher: Dispatcher, catalog: ModelCatalog, cpu_fallback: str,
                 vad_workers: list[WorkerHandle] | None = None) -> None:
        self.dispatcher = dispatcher
        self.vad_workers = vad_workers or []
        self.catalog = catalog
        self.cpu_fallback = cpu_fallback
        self.cache_clears = 0

    def _device(self, name: str, info: DeviceInfo | None,
                workers: list[WorkerHandle]) -> pb.DeviceStatus:
        d = pb.DeviceStatus(name=name, utilization_percent=-1, accepting=True, product="CPU")
        if info is not None:
            d.memory_used_bytes = info.memory_used
            d.memory_total_bytes = info.memory_total
            d.utilization_percent = info.utilization
            d.product = info.product
            d.accepting = self.dispatcher.accepting(name)
        for w in workers:
            d.workers.append(pb.WorkerStatus(
                worker_id=w.spec.worker_id, pid=w.pid, state=w.state.value,
                model=w.launch.worker.model_name or w.launch.model,
                in_flight=w.in_flight, served=w.served, restarts=w.restarts,
                last_error=w.last_error))
        return d

    def status(self) -> pb.GetStatusResponse:
        infos = self.dispatcher.devices()
        by_device: dict[str, list[WorkerHandle]] = {}
        for w in self.dispatcher.workers:
            by_device.setdefault(w.spec.device_name, []).append(w)
        for name in infos:
            by_device.setdefault(name, [])
        if self.vad_workers:
            by_device["vad"] = list(self.vad_workers)
        return pb.GetStatusResponse(
            devices=[self._device(n, infos.get(n), ws) for n, ws in by_device.items()],
            queue_depth=self.dispatcher.waiting, queue_capacity=self.dispatcher.policy.max_queue,
            fallbacks=[pb.FallbackCount(reason=r, count=c)
                       for r, c in sorted(self.dispatcher.fallbacks.items())],
            model=self.catalog.default.path, cpu_fallback=self.cpu_fallback,
            version=__version__, models=[self._model(m) for m in self.catalog.models])

    @staticmethod
    def _model(m: ServedModel) -> pb.ModelInfo:
        info = pb.ModelInfo(name=m.name, path=m.path, ready_workers=m.ready_workers,
                            is_default=m.is_default)
        caps = m.capabilities
        if caps is not None:
            info.family, info.engine = caps.family, caps.engine
            info.languages.extend(caps.languages)
            info.hotwords, info.itn, info.streaming = caps.hotwords, caps.itn, caps.streaming
        return info

    async def clear_cache(self, device: str) -> pb.ClearCacheResponse:
        workers = [w for w in self.dispatcher.workers
                   if not device or w.spec.device_name == device]
        if device and not workers:
            names = sorted({w.spec.device_name for w in self.dispatcher.workers})
            raise InvalidRequest(f"no device {device!r}; devices: {', '.join(names)}")
        ready = [w for w in workers if w.ready and w.stub is not None]
        if not ready:
            raise Unavailable("no ready worker to clear")

        async def clear(w: WorkerHandle) -> pb.CacheClearResult:
            assert w.stub is not None
            before, after = await clear_cache(w.stub)
            return pb.CacheClearResult(worker_id=w.spec.worker_id,
                                       reserved_before_bytes=before, reserved_after_bytes=after)

        results = await asyncio.gather(*(clear(w) for w in ready), return_exceptions=True)
        out = pb.ClearCacheResponse()
        for w, r in zip(ready, results, strict=True):
            if isinstance(r, grpc.aio.AioRpcError):
                log.warning("cache clear on %s failed: %s", w.spec.worker_id, r.details())
            elif isinstance(r, BaseException):
                raise r
            else:
                out.results.append(r)
                await w.refresh()
        self.cache_clears += len(out.results)
        return out
