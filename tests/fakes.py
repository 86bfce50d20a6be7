"""Fakes for the scheduler's middle layer: worker stubs that answer like real workers, so the
pipeline, dispatcher, status and long-form assembly run in tests without processes."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable

import grpc

from protos.asr.worker.v1 import worker_pb2 as wpb
from protos.common.wire import decode_pcm
from protos.common.worker_config import WorkerConfig
from scheduler.catalog import ModelCatalog, ServedModel
from scheduler.dispatch import Dispatcher, DispatchPolicy
from scheduler.monitor import GIB, SimMonitor
from scheduler.workers import WorkerHandle, WorkerLaunch, WorkerSpec, WorkerState
from scheduler.workers_client import Capabilities

SENSEVOICE_LIKE = Capabilities(kind="recognize", family="fake", engine="generate",
                               languages=("en", "zh"), itn=True)


def rpc_error(code: grpc.StatusCode, details: str) -> grpc.aio.AioRpcError:
    return grpc.aio.AioRpcError(code, grpc.aio.Metadata(), grpc.aio.Metadata(), details)


class FakeWorkerStub:
    """Answers Transcribe with "<n> samples" (or what `behaviour` says) after `delay_s`."""

    def __init__(self, device: str, delay_s: float = 0.01,
                 behaviour: Callable[[wpb.TranscribeRequest], str | grpc.aio.AioRpcError]
                 | None = None) -> None:
        self.device = device
        self.delay_s = delay_s
        self.behaviour = behaviour
        self.calls: list[wpb.TranscribeRequest] = []

    async def Transcribe(self, req: wpb.TranscribeRequest,
                         timeout: float | None = None) -> wpb.TranscribeResponse:
        self.calls.append(req)
        await asyncio.sleep(self.delay_s)
        text = f"{len(decode_pcm(req.pcm, req.sample_format))} samples"
        if self.behaviour is not None:
            out = self.behaviour(req)
            if isinstance(out, grpc.aio.AioRpcError):
                raise out
            text = out
        return wpb.TranscribeResponse(text=text, language="en", device=self.device,
                                      batch_size=1, batch_id=len(self.calls))


class _FakeSegmentCall:
    def __init__(self, requests: AsyncIterator[wpb.VadRequest],
                 segments: Callable[[int], list[tuple[int, int]]]) -> None:
        self._gen = self._run(requests, segments)
        self.cancelled = False

    async def _run(self, requests: AsyncIterator[wpb.VadRequest],
                   segments: Callable[[int], list[tuple[int, int]]]
                   ) -> AsyncIterator[wpb.VadResponse]:
        total = 0
        async for req in requests:
            total += len(decode_pcm(req.pcm, req.sample_format))
            segs = segments(total) if req.is_final else []
            yield wpb.VadResponse(segments=[wpb.VadSegment(start_ms=s, end_ms=e)
                                            for s, e in segs])

    def __aiter__(self) -> AsyncIterator[wpb.VadResponse]:
        return self._gen

    def cancel(self) -> None:
        self.cancelled = True


class FakeVadStub:
    """A VAD worker that reports `segments(total_samples)` when the stream ends."""

    def __init__(self, segments: Callable[[int], list[tuple[int, int]]]) -> None:
        self.segments = segments

    def Segment(self, requests: AsyncIterator[wpb.VadRequest]) -> _FakeSegmentCall:
        return _FakeSegmentCall(requests, self.segments)


def ready_worker(worker_id: str, device: str, stub: object, model: str = "m",
                 is_cpu: bool = False, role: str = "asr",
                 capabilities: Capabilities | None = SENSEVOICE_LIKE) -> WorkerHandle:
    spec = WorkerSpec(worker_id, device, "cpu", is_cpu=is_cpu, role=role, model=model)
    w = WorkerHandle(spec, WorkerLaunch(WorkerConfig("/models/" + model, model_name=model),
                                        "/tmp"))
    w.state = WorkerState.READY
    w.stub = stub  # type: ignore[assignment]
    w.capabilities = capabilities
    return w


def fake_service(stubs: dict[str, FakeWorkerStub], model: str = "m",
                 **policy: object) -> tuple[Dispatcher, ModelCatalog]:
    """One model served by one worker per simulated GPU in `stubs` (device -> stub)."""
    workers = [ready_worker(f"{dev}#0", dev, stub, model) for dev, stub in stubs.items()]
    monitor = SimMonitor(len(stubs), 16 * GIB)
    dispatcher = Dispatcher(workers, monitor, DispatchPolicy(**policy))  # type: ignore[arg-type]
    return dispatcher, ModelCatalog([ServedModel(model, "/models/" + model, workers)])
