"""The scheduler's middle layer with fakes: pipeline (model choice, capability checks, VAD
decided once, units, assembly), ingestion, status, and error mapping. Runs in seconds."""

from __future__ import annotations

import asyncio
import types
from collections.abc import AsyncIterator

import grpc
import numpy as np
import pytest
from prometheus_client import CollectorRegistry

from protos.asr.worker.v1 import worker_pb2 as wpb
from scheduler.audio import Encoding
from scheduler.catalog import UnknownModel, UnsupportedOption
from scheduler.errors import InferenceFailed, InvalidAudio, QueueFull, TooBigForGpu
from scheduler.ingest import open_stream
from scheduler.interceptor import REQUEST_ID, ErrorInterceptor
from scheduler.metrics import Metrics
from scheduler.pipeline import Pipeline, RecognitionRequest, StreamSettings
from scheduler.results import RecognitionOutcome, Segment
from scheduler.status import StatusReporter
from scheduler.vad import VadPool
from scheduler.workers_client import Capabilities
from tests.fakes import FakeVadStub, FakeWorkerStub, fake_service, ready_worker, rpc_error

RATE = 16000


def pcm(seconds: float) -> bytes:
    t = np.arange(int(seconds * RATE)) / RATE
    return (np.sin(2 * np.pi * 220 * t) * 8000).astype("<i2").tobytes()


def request(seconds: float = 1.0, **kw: object) -> RecognitionRequest:
    return RecognitionRequest(audio=pcm(seconds), encoding=Encoding.LINEAR16, sample_rate=RATE,
                              request_id="r1", **kw)  # type: ignore[arg-type]


def pipeline(stubs: dict[str, FakeWorkerStub], vad_segments: list[tuple[int, int]] | None = None,
             **policy: object) -> Pipeline:
    dispatcher, catalog = fake_service(stubs, **policy)
    vad = VadPool([])
    if vad_segments is not None:
        vad = VadPool([ready_worker("vad#0", "vad", FakeVadStub(lambda n: vad_segments),
                                    model="", is_cpu=True, role="vad")])
    return Pipeline(dispatcher, catalog, Metrics(CollectorRegistry()), vad,
                    default_max_segment_ms=30000, stream=StreamSettings(buffer_bytes=64_000))


async def test_short_audio_is_one_unit() -> None:
    p = pipeline({"sim:0": FakeWorkerStub("sim:0")})
    out = await p.recognize(request(1.0))
    assert out.text == "16000 samples" and out.device == "sim:0" and out.model == "m"
    assert [(s.start_ms, s.end_ms) for s in out.segments] == [(0, 1000)]
    assert p.dispatcher.unfinished == 0


async def test_model_choice_and_capability_checks() -> None:
    p = pipeline({"sim:0": FakeWorkerStub("sim:0")})
    with pytest.raises(UnknownModel, match="served models: m"):
        await p.recognize(request(model="other"))
    with pytest.raises(UnsupportedOption, match=r"language 'fr' .* one of en, zh"):
        await p.recognize(request(language="fr"))
    assert (await p.recognize(request(language="zh"))).text
    # A model whose workers take no language hint says so.
    p.catalog.default.workers[0].capabilities = Capabilities(family="paraformer")
    with pytest.raises(UnsupportedOption, match="takes no language hint"):
        await p.recognize(request(language="en"))
    p.catalog.default.workers[0].capabilities = None
    assert (await p.recognize(request(language="fr"))).text  # unknown yet: not refused
    long_value = "x" * 5000
    with pytest.raises(UnknownModel) as info:
        await p.recognize(request(model=long_value))
    assert len(str(info.value)) < 300  # long values are not echoed whole


async def test_vad_cuts_run_as_units_and_assemble_in_time_order() -> None:
    slow_first = FakeWorkerStub("sim:0", behaviour=lambda r: "first" if r.request_id == "r1"
                                else "second")
    p = pipeline({"sim:0": slow_first}, vad_segments=[(0, 400), (500, 900)])

    async def chunks() -> AsyncIterator[bytes]:
        data = pcm(2.0)
        for i in range(0, len(data), 8000):
            yield data[i:i + 8000]

    results = [r async for r in p.recognize_stream(request(2.0, vad_mode="always"), chunks())]
    *seen, out = results
    assert all(isinstance(s, Segment) for s in seen) and isinstance(out, RecognitionOutcome)
    assert out.text == "first second"
    assert [(s.start_ms, s.end_ms) for s in out.segments] == [(0, 400), (500, 900)]
    assert len(seen) == 2 and out.audio_duration_s == pytest.approx(2.0)
    assert [len(c.pcm) // 4 for c in slow_first.calls] == [400 * 16, 400 * 16]  # f32 samples


async def test_stream_without_vad_runs_in_the_callers_task_and_closing_cancels_vad_work(
) -> None:
    async def chunks(data: bytes) -> AsyncIterator[bytes]:
        for i in range(0, len(data), 8000):
            yield data[i:i + 8000]

    p = pipeline({"sim:0": FakeWorkerStub("sim:0")}, vad_segments=[(0, 100)])
    before = len(asyncio.all_tasks())
    results = [r async for r in p.recognize_stream(request(vad_mode="never"),
                                                   chunks(pcm(1.0)))]
    assert len(results) == 1 and isinstance(results[0], RecognitionOutcome)
    assert results[0].text == "16000 samples" and len(asyncio.all_tasks()) == before

    # With VAD the units run in a task of their own; leaving after the first segment cancels
    # it and frees the dispatcher.
    slow = FakeWorkerStub("sim:0", delay_s=0.3)
    p = pipeline({"sim:0": slow}, vad_segments=[(0, 100), (200, 300), (400, 500)])
    stream = p.recognize_stream(request(1.0, vad_mode="always"), chunks(pcm(1.0)))
    first = await anext(stream)
    assert isinstance(first, Segment)
    await stream.aclose()
    await asyncio.sleep(0)
    assert len(asyncio.all_tasks()) == before
    assert p.dispatcher.unfinished == 0 and p.budget.held == 0


async def test_vad_decided_once_by_length() -> None:
    p = pipeline({"sim:0": FakeWorkerStub("sim:0")}, vad_segments=[(0, 100)])
    assert not p.wants_vad(request(), 29.0) and p.wants_vad(request(), 31.0)
    assert p.wants_vad(request(vad_mode="always"), 1.0)
    assert not p.wants_vad(request(vad_mode="never"), 3600.0)
    assert p.wants_vad(request(), None)  # a long stream's length is unknown: segment it
    assert not pipeline({"sim:0": FakeWorkerStub("sim:0")}).wants_vad(request(), None)


async def test_a_failing_segment_fails_the_request_and_cancels_the_rest() -> None:
    def fail_second(req: wpb.TranscribeRequest) -> str | grpc.aio.AioRpcError:
        return rpc_error(grpc.StatusCode.INTERNAL, "boom") if req.request_id == "r1/1" else "ok"

    stub = FakeWorkerStub("sim:0", behaviour=fail_second)
    p = pipeline({"sim:0": stub}, vad_segments=[(0, 100), (200, 300), (400, 500)])
    with pytest.raises(InferenceFailed, match="boom"):
        await p.recognize(request(1.0, vad_mode="always"))
    assert p.dispatcher.unfinished == 0
    assert all(w.in_flight == 0 for w in p.dispatcher.workers)


async def test_lost_worker_reruns_the_unit_elsewhere_once() -> None:
    dead = FakeWorkerStub("sim:0", behaviour=lambda r: rpc_error(grpc.StatusCode.UNAVAILABLE,
                                                                 "worker_unhealthy: x"))
    alive = FakeWorkerStub("sim:1")
    p = pipeline({"sim:0": dead, "sim:1": alive})
    outs = await asyncio.gather(*(p.recognize(request(0.5)) for _ in range(4)))
    assert all(o.device == "sim:1" for o in outs)
    assert len(alive.calls) == 4


async def test_admission_is_per_request() -> None:
    p = pipeline({"sim:0": FakeWorkerStub("sim:0", delay_s=0.2)}, max_queue=1)
    first = asyncio.create_task(p.recognize(request()))
    await asyncio.sleep(0.05)
    with pytest.raises(QueueFull):
        await p.recognize(request())
    await first


async def test_ingest_whole_blocks_and_limits() -> None:
    async def chunks(data: bytes, size: int = 4000) -> AsyncIterator[bytes]:
        for i in range(0, len(data), size):
            yield data[i:i + size]

    async with open_stream(chunks(pcm(0.5)), Encoding.LINEAR16, RATE, 1, buffer_bytes=64_000,
                           max_bytes=10**9) as source:
        assert source.whole == pcm(0.5) and source.blocks is None
    async with open_stream(chunks(pcm(3.0)), Encoding.LINEAR16, RATE, 1, buffer_bytes=16_000,
                           max_bytes=10**9) as source:
        assert source.blocks is not None
        total = sum([len(b) async for b in source.blocks])
    assert total == 3 * RATE
    with pytest.raises(InvalidAudio, match="over the 50000-byte limit"):
        async with open_stream(chunks(pcm(3.0)), Encoding.LINEAR16, RATE, 1,
                               buffer_bytes=16_000, max_bytes=50_000) as source:
            assert source.blocks is not None
            async for _ in source.blocks:
                pass
    with pytest.raises(InvalidAudio, match="empty"):
        async with open_stream(chunks(b""), Encoding.LINEAR16, RATE, 1, buffer_bytes=16_000,
                               max_bytes=10**9):
            pass


async def test_status_lists_models_with_capabilities() -> None:
    p = pipeline({"sim:0": FakeWorkerStub("sim:0"), "sim:1": FakeWorkerStub("sim:1")})
    status = StatusReporter(p.dispatcher, p.catalog, "overflow").status()
    (model,) = status.models
    assert (model.name, model.path, model.family, model.ready_workers, model.is_default) == (
        "m", "/models/m", "fake", 2, True)
    assert list(model.languages) == ["en", "zh"] and model.itn and not model.hotwords
    assert {d.name for d in status.devices} == {"sim:0", "sim:1"}
    assert status.model == "/models/m"


class _Context:
    """Just enough of grpc.aio.ServicerContext for the interceptor."""

    def __init__(self) -> None:
        self.aborted: tuple[grpc.StatusCode, str] | None = None
        self.trailers: tuple[tuple[str, str], ...] = ()

    def invocation_metadata(self) -> tuple[tuple[str, str], ...]:
        return (("x-request-id", "req-7"),)

    def set_trailing_metadata(self, md: tuple[tuple[str, str], ...]) -> None:
        self.trailers = md

    def code(self) -> grpc.StatusCode | None:
        return self.aborted[0] if self.aborted else None

    async def abort(self, code: grpc.StatusCode, details: str) -> None:
        self.aborted = (code, details)
        raise grpc.aio.AbortError()


@pytest.mark.parametrize(("exc", "code"), [
    (InvalidAudio("bad"), grpc.StatusCode.INVALID_ARGUMENT),
    (UnknownModel("no such model"), grpc.StatusCode.INVALID_ARGUMENT),
    (QueueFull("full", retry_after_s=2.0), grpc.StatusCode.RESOURCE_EXHAUSTED),
    (TooBigForGpu("too big"), grpc.StatusCode.RESOURCE_EXHAUSTED),
    (InferenceFailed("model"), grpc.StatusCode.INTERNAL),
    (KeyError("bug"), grpc.StatusCode.INTERNAL),
])
async def test_interceptor_maps_errors_to_codes(exc: Exception, code: grpc.StatusCode) -> None:
    metrics = Metrics(CollectorRegistry())
    seen_ids: list[str] = []

    async def handler(request: object, context: object) -> object:
        seen_ids.append(REQUEST_ID.get())
        raise exc

    async def continuation(details: object) -> grpc.RpcMethodHandler:
        return grpc.unary_unary_rpc_method_handler(handler)

    details = types.SimpleNamespace(method="/asr.v1.Recognizer/Recognize",
                                    invocation_metadata=())
    wrapped = await ErrorInterceptor(metrics).intercept_service(
        continuation, details)  # type: ignore[arg-type]
    ctx = _Context()
    with pytest.raises(grpc.aio.AbortError):
        await wrapped.unary_unary(object(), ctx)
    assert ctx.aborted is not None and ctx.aborted[0] == code
    assert seen_ids == ["req-7"]
    if isinstance(exc, QueueFull):
        assert ("retry-after-s", "2") in ctx.trailers
    if isinstance(exc, KeyError):
        assert "bug" not in ctx.aborted[1]  # internals are logged, not sent
    assert metrics.registry.get_sample_value(
        "asr_requests_total", {"rpc": "Recognize", "mode": "unary", "code": code.name}) == 1
