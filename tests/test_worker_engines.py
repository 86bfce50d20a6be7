"""Worker engines, families and health: unit tests (no FunASR model, seconds)."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest

from gpu_worker.device import TorchDevice, is_oom, is_sticky_error
from gpu_worker.engines.base import (
    Engine,
    EngineStats,
    StartupError,
    Transcript,
    Utterance,
    WorkerUnhealthy,
    create_engine,
    engine_names,
)
from gpu_worker.engines.health import FailureTracker
from gpu_worker.families import family_for, family_for_class
from gpu_worker.main import EXIT_STARTUP, EXIT_UNHEALTHY, serve
from gpu_worker.plugins import load_plugins
from gpu_worker.service import UNHEALTHY_DETAIL, WorkerServicer
from protos.asr.worker.v1 import worker_pb2 as wpb
from protos.asr.worker.v1 import worker_pb2_grpc as wpb_grpc
from protos.common.worker_config import WorkerConfig
from tests.test_batching import FakeRunner, fake_engine, make_batcher, run_all, utt

ROOT = Path(__file__).resolve().parent.parent
STICKY = RuntimeError("CUDA error: an illegal memory access was encountered")


class FailingRunner(FakeRunner):
    """Every batch raises `error` (a broken device)."""

    def __init__(self, error: Exception, **kw: Any) -> None:
        super().__init__(**kw)
        self.error = error
        self.calls = 0

    def transcribe(self, batch: list[Utterance]) -> list[Transcript]:
        self.calls += 1
        raise self.error


def req(n: int, rid: str) -> Utterance:
    return Utterance(audio=np.zeros(n, dtype=np.float32), request_id=rid)


def test_tracker_sticky_error_is_unhealthy_at_once() -> None:
    t = FailureTracker(threshold=3)
    assert t.record([req(10, "a")], [STICKY]) is not None
    assert t.unhealthy and "illegal memory access" in t.unhealthy
    assert t.consecutive_failed == 1


def test_tracker_counts_all_failed_batches_of_distinct_requests() -> None:
    t = FailureTracker(threshold=3)
    bad = ValueError("boom")
    assert t.record([req(10, "a")], [bad]) is None
    assert t.record([req(10, "b/1"), req(10, "b/2")], [bad, bad]) is None
    assert t.consecutive_failed == 2
    assert t.record([req(10, "a")], [Transcript("ok")]) is None, "a success resets"
    assert t.consecutive_failed == 0
    for rid in ("a", "b", "c"):
        reason = t.record([req(10, rid)], [bad])
    assert reason is not None and "3 batches in a row" in reason and t.consecutive_failed == 3


def test_tracker_one_bad_request_or_oom_never_trips_it() -> None:
    t = FailureTracker(threshold=2)
    for i in range(5):  # the segments of one request, each failing alone
        assert t.record([req(10, f"same/{i}")], [ValueError("bad input")]) is None
    t = FailureTracker(threshold=2)
    oom = RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB")
    for rid in "abcd":
        assert t.record([req(10, rid)], [oom]) is None
    assert t.consecutive_failed == 0 and t.unhealthy is None


async def test_sticky_error_fails_waiting_and_new_requests_unavailable() -> None:
    runner = FailingRunner(STICKY)
    reasons: list[str] = []
    b = make_batcher(runner, max_batch_size=4, max_queue_delay_s=0.05,
                     on_unhealthy=reasons.append)
    out = await run_all(b, [req(1000 + i, f"r{i}") for i in range(10)])
    assert all(isinstance(o, WorkerUnhealthy) for o in out), out
    assert runner.calls == 1, "no split, no retry after a sticky device error"
    assert len(reasons) == 1 and "illegal memory access" in reasons[0]
    with pytest.raises(WorkerUnhealthy):
        await b.submit(req(1000, "late"))


async def test_repeated_all_failed_batches_make_the_worker_unhealthy() -> None:
    runner = FailingRunner(ValueError("model broken"))
    reasons: list[str] = []
    b = make_batcher(runner, max_batch_size=1, max_queue_delay_s=0.0,
                     on_unhealthy=reasons.append)
    out = await run_all(b, [req(1000, f"r{i}") for i in range(6)])
    assert [type(o).__name__ for o in out] == ["ValueError", "ValueError"] + [
        "WorkerUnhealthy"] * 4, "the third failed batch and everything after run elsewhere"
    assert len(reasons) == 1 and b.health.consecutive_failed == 3


async def test_isolated_failures_keep_the_worker_healthy() -> None:
    runner = FakeRunner(bad_length=1234)
    b = make_batcher(runner, max_batch_size=1, max_queue_delay_s=0.0)
    out = await run_all(b, [utt(1234), utt(1234), utt(1000), utt(1234), utt(1234)])
    assert [type(o).__name__ for o in out] == ["ValueError", "ValueError", "tuple",
                                               "ValueError", "ValueError"]
    assert b.health.unhealthy is None


class Aborted(Exception):
    pass


class Context:
    async def abort(self, code: grpc.StatusCode, details: str) -> None:
        raise Aborted(code, details)


async def test_servicer_routes_by_capability() -> None:
    engine = fake_engine(FailingRunner(STICKY), max_queue_delay_ms=0.0)
    engine.start()
    try:
        servicer = WorkerServicer(engine, "cuda:0")
        with pytest.raises(Aborted) as info:
            await servicer.Transcribe(wpb.TranscribeRequest(pcm=b"\0\0" * 800), Context())
        code, details = info.value.args
        assert code == grpc.StatusCode.UNAVAILABLE
        assert details.startswith(f"{UNHEALTHY_DETAIL}: device error: RuntimeError: CUDA error")
        got = await servicer.GetInfo(wpb.InfoRequest(), Context())
        assert got.consecutive_failed_batches == 1 and got.batches == 1
        assert got.capabilities.kind == "recognize" and got.capabilities.family == "fake"
        with pytest.raises(Aborted) as info:
            async for _ in servicer.Segment(_no_requests(), Context()):
                pass
        assert info.value.args[0] == grpc.StatusCode.UNIMPLEMENTED
        assert "does not segment" in info.value.args[1]
    finally:
        await engine.stop()


async def _no_requests() -> Any:
    for r in ():
        yield r


class SegmentOnly(Engine):
    name = "segment-only"

    def __init__(self) -> None:
        super().__init__()
        from gpu_worker.families.fsmn_vad import FSMN_VAD

        self.capabilities = FSMN_VAD.capabilities(self.name)

    def stats(self) -> EngineStats:
        return EngineStats(model="vad-model")


async def test_engine_without_transcribe_or_cache_answers_unimplemented() -> None:
    servicer = WorkerServicer(SegmentOnly(), "cpu")
    for call in (servicer.Transcribe(wpb.TranscribeRequest(pcm=b"\0\0" * 80), Context()),
                 servicer.ClearCache(wpb.WorkerClearCacheRequest(), Context())):
        with pytest.raises(Aborted) as info:
            await call
        assert info.value.args[0] == grpc.StatusCode.UNIMPLEMENTED, info.value.args
    got = await servicer.GetInfo(wpb.InfoRequest(), Context())
    caps = got.capabilities
    assert (got.model, caps.kind, caps.family, caps.engine) == (
        "vad-model", "segment", "fsmn-vad", "segment-only")
    assert caps.timestamps and caps.streaming and not got.supports_hotwords


def test_family_capabilities() -> None:
    sv = family_for_class("SenseVoiceSmall").capabilities("generate")
    assert sv.languages == ("zh", "en", "yue", "ja", "ko", "nospeech")
    assert sv.itn and sv.padding_invariant and not sv.hotwords and sv.kind == "recognize"
    para = family_for_class("Paraformer").capabilities("generate")
    assert para.languages == () and not para.itn and not para.padding_invariant
    assert not para.hotwords
    for cls in ("SeacoParaformer", "ContextualParaformer"):
        assert family_for_class(cls).name == "seaco" and family_for_class(cls).hotwords
    assert family_for_class("ParaformerStreaming").streaming


def _model_dir(tmp_path: Path, model_class: str) -> str:
    (tmp_path / "config.yaml").write_text(f"model: {model_class}\n", encoding="utf-8")
    return str(tmp_path)


def test_family_for_checks_engine_and_class(tmp_path: Path) -> None:
    assert family_for(_model_dir(tmp_path, "SenseVoiceSmall"), "generate").name == "sensevoice"
    with pytest.raises(StartupError, match="engine 'vad' cannot run model family 'sensevoice'"):
        family_for(str(tmp_path), "vad")
    with pytest.raises(StartupError, match="no model family for FunASR model class 'Whisper'"):
        family_for(_model_dir(tmp_path, "Whisper"), "generate")
    with pytest.raises(StartupError, match=r"unknown engine .warp..*generate.*vad"):
        create_engine(WorkerConfig(model=str(tmp_path), engine="warp"))
    assert {"generate", "vad"} <= set(engine_names())


def test_plugins_register_a_family() -> None:
    assert load_plugins({"ASR_WORKER_PLUGINS": " tests.fake_family , "}) == ["tests.fake_family"]
    assert family_for_class("FakeLengthModel").name == "fake-length"
    with pytest.raises(StartupError, match=r"cannot import plugin 'tests\.no_such_plugin'"):
        load_plugins({"ASR_WORKER_PLUGINS": "tests.no_such_plugin"})


@pytest.mark.parametrize(("engine", "model_class", "message"), [
    ("warp", "SenseVoiceSmall", "unknown engine 'warp'; known engines: direct, generate, "),
    ("vad", "SenseVoiceSmall", "engine 'vad' cannot run model family 'sensevoice'"),
    ("generate", "NotAModel", "no model family for FunASR model class 'NotAModel'"),
])
def test_worker_process_startup_errors(tmp_path: Path, engine: str, model_class: str,
                                       message: str) -> None:
    cfg = WorkerConfig(model=_model_dir(tmp_path, model_class), engine=engine,
                       socket_path=str(tmp_path / "w.sock"))
    proc = subprocess.run([sys.executable, "-m", "gpu_worker", cfg.to_json()], cwd=ROOT,
                          capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == EXIT_STARTUP, proc.stderr
    assert message in proc.stderr


async def test_unhealthy_worker_answers_unavailable_then_exits(tmp_path: Path) -> None:
    """Through a real gRPC server on a Unix socket: UNAVAILABLE, GetInfo still answers, and
    serve() ends with the distinct exit code shortly after."""
    cfg = WorkerConfig(model="fake-model", socket_path=str(tmp_path / "w.sock"),
                       device_name="sim:0", max_queue_delay_ms=0.0)
    engine = fake_engine(FailingRunner(STICKY), max_queue_delay_ms=0.0)
    served = asyncio.create_task(serve(cfg, engine))
    async with grpc.aio.insecure_channel(f"unix://{cfg.socket_path}") as channel:
        stub = wpb_grpc.WorkerStub(channel)
        info = await stub.GetInfo(wpb.InfoRequest(), wait_for_ready=True, timeout=30)
        assert info.consecutive_failed_batches == 0 and info.device == "sim:0"
        started = time.monotonic()
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await stub.Transcribe(wpb.TranscribeRequest(pcm=b"\0\0" * 800), timeout=30)
        assert err.value.code() == grpc.StatusCode.UNAVAILABLE
        assert (err.value.details() or "").startswith("worker_unhealthy: device error")
        info = await stub.GetInfo(wpb.InfoRequest(), timeout=5)
        assert info.consecutive_failed_batches == 1
    assert await asyncio.wait_for(served, 30) == EXIT_UNHEALTHY
    assert time.monotonic() - started >= 0.4



def test_error_classes() -> None:
    class AcceleratorError(RuntimeError):
        pass

    class OutOfMemoryError(RuntimeError):
        pass

    assert is_sticky_error(STICKY) and is_sticky_error(AcceleratorError("launch failed"))
    assert is_sticky_error(RuntimeError("CUDA error: device-side assert triggered"))
    assert not is_sticky_error(OutOfMemoryError("CUDA out of memory"))
    assert not is_sticky_error(ValueError("bad input")) and is_oom(OutOfMemoryError("x"))


def test_torch_device_on_cpu() -> None:
    import torch

    device = TorchDevice("cpu", "bf16", threads=1)
    assert device.dtype == "fp32", "autocast applies on CUDA only"
    assert device.memory() == (0, 0) and not device.has_cache
    assert device.audio_capacity_s() is None
    with device.inference(16000):
        assert torch.is_inference_mode_enabled()
    with pytest.raises(ValueError, match="dtype 'int8'"):
        TorchDevice("cpu", "int8")


@pytest.fixture
def tf32_flags() -> Iterator[Any]:
    """The process's TF32 flags, put back after the test."""
    import torch

    matmul, cudnn = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cudnn.allow_tf32 = True  # PyTorch's default
    yield torch.backends
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = matmul, cudnn


def test_cuda_devices_and_workers_compute_fp32_in_full(tf32_flags: Any, models_dir: Path
                                                        ) -> None:
    """No TF32 in a CUDA worker (cuDNN convolutions would use it by default): set by a CUDA
    `TorchDevice` and by every worker that loads on a CUDA device; a CPU device leaves the
    flags alone. (Set, not exercised: no GPU here; the GPU tier compares texts and VAD
    decisions on cuda:0 with the CPU's.)"""
    from gpu_worker.main import load_engine

    TorchDevice("cpu")
    assert tf32_flags.cudnn.allow_tf32
    TorchDevice("cuda:0", "bf16")  # no CUDA call at construction
    assert not tf32_flags.cudnn.allow_tf32 and not tf32_flags.cuda.matmul.allow_tf32
    tf32_flags.cudnn.allow_tf32 = True
    engine = load_engine(WorkerConfig(model=str(models_dir / "sensevoice-tiny"),
                                      engine="identity", torch_device="cuda:0"))
    assert engine.name == "identity" and not tf32_flags.cudnn.allow_tf32


@pytest.fixture
def cuda_binds(monkeypatch: pytest.MonkeyPatch, tf32_flags: Any) -> list[tuple[str, str]]:
    """torch.cuda as if a GPU were there: each `set_device` call, with its thread's name."""
    import threading

    import torch

    calls: list[tuple[str, str]] = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "set_device", lambda d: calls.append(
        (threading.current_thread().name.split("_")[0], str(d))))
    return calls


class _Staged:
    """A staged runner (prepare -> compute -> finish) that needs no model."""

    in_flight = 2
    padding_invariant = True

    def prepare(self, batch: list[Utterance]) -> list[Utterance]:
        return batch

    def compute(self, batch: list[Utterance]) -> list[Utterance]:
        return batch

    def finish(self, batch: list[Utterance]) -> list[Transcript]:
        return [Transcript(text=str(len(u.audio))) for u in batch]

    def transcribe(self, batch: list[Utterance]) -> list[Transcript]:
        return self.finish(batch)


def test_cuda_workers_bind_their_device_on_every_thread(cuda_binds: list[tuple[str, str]],
                                                        models_dir: Path) -> None:
    """CUDA's current device is per thread and 0 by default: a worker on cuda:1 makes it
    current on its main thread, its model thread and its host thread (where pinned buffers
    are allocated), or each would open a context on GPU 0. (torch.cuda faked: no GPU here.)"""
    from gpu_worker.engines.batcher import Batcher
    from gpu_worker.main import load_engine

    device = TorchDevice("cuda:1")
    assert cuda_binds == [("MainThread", "cuda:1")]
    device.has_cache = False  # no allocator to ask here

    async def run() -> list[Any]:
        batcher = Batcher(_Staged(), device, max_batch_size=2,  # type: ignore[arg-type]
                          max_queue_delay_s=0.0)
        batcher.start()
        try:
            return list(await asyncio.gather(*(batcher.submit(req(n, str(n))) for n in (3, 4, 5))))
        finally:
            await batcher.stop()

    assert [t.text for t, _ in asyncio.run(run())] == ["3", "4", "5"]
    assert {("model", "cuda:1"), ("host", "cuda:1")} <= set(cuda_binds)
    cuda_binds.clear()
    load_engine(WorkerConfig(model=str(models_dir / "sensevoice-tiny"), engine="identity",
                             torch_device="cuda:1"))
    assert ("MainThread", "cuda:1") in cuda_binds
    cuda_binds.clear()
    TorchDevice("cpu")
    assert cuda_binds == []


class EchoLive(Engine):
    """A live engine of the test: per chunk, how much audio the stream has had (ms, also as
    the interim text: each chunk has news); a chunk of 3 samples fails the stream."""

    name = "echo-live"

    def __init__(self) -> None:
        super().__init__()
        self.capabilities = family_for_class("ParaformerStreaming").capabilities("generate")
        self.closed = 0

    def stats(self) -> EngineStats:
        return EngineStats(model="echo")

    async def live(self, options: Any, chunks: Any) -> Any:  # type: ignore[override]
        from gpu_worker.engines.live_session import LiveUpdate

        total = 0
        try:
            async for chunk in chunks:
                if len(chunk.audio) == 3:
                    raise ValueError("three samples")
                total += len(chunk.audio)
                ms = total // 16 + options.offset_ms
                yield LiveUpdate(processed_ms=ms, interim_text=str(ms))
        finally:
            self.closed += 1


async def test_live_link_runs_tagged_streams_apart() -> None:
    """LiveLink: each tag its own stream, answers in order per tag; a refused stream ends
    with its code and its later chunks start nothing; a failing stream ends INTERNAL alone;
    a cancelled stream ends without an answer; the rest go on."""
    engine = EchoLive()
    servicer = WorkerServicer(engine, "cpu")
    inbox: asyncio.Queue[wpb.LiveLinkRequest | None] = asyncio.Queue()

    async def requests() -> Any:
        while (m := await inbox.get()) is not None:
            yield m

    def chunk(tag: int, samples: int, final: bool = False, **config: int
              ) -> wpb.TaggedLiveRequest:
        req = wpb.LiveRequest(pcm=np.zeros(samples, "<f4").tobytes(),
                              sample_format=wpb.F32LE, is_final=final)
        if config:
            req.config.CopyFrom(wpb.LiveConfig(**config))
        return wpb.TaggedLiveRequest(tag=tag, request=req)

    answers: list[wpb.TaggedLiveResponse] = []

    async def collect() -> None:
        async for message in servicer.LiveLink(requests(), None):  # type: ignore[arg-type]
            answers.extend(message.answers)

    collector = asyncio.ensure_future(collect())
    inbox.put_nowait(wpb.LiveLinkRequest(requests=[
        chunk(1, 1600, offset_ms=1000), chunk(2, 1600, end_silence_ms=50),
        chunk(3, 1600), chunk(4, 1600)]))
    inbox.put_nowait(wpb.LiveLinkRequest(requests=[chunk(1, 3200), chunk(2, 1600),
                                                   chunk(3, 3)]))
    await asyncio.sleep(0.1)
    inbox.put_nowait(wpb.LiveLinkRequest(cancel=[4], requests=[chunk(1, 0, final=True)]))
    await asyncio.sleep(0.1)
    inbox.put_nowait(None)
    await asyncio.wait_for(collector, 10)

    def of(tag: int) -> list[tuple[int, bool, int]]:
        return [(a.response.processed_ms, a.more, a.code) for a in answers if a.tag == tag]

    assert of(1) == [(1100, True, 0), (1300, True, 0), (1300, True, 0), (0, False, 0)]
    assert [a.response.last for a in answers if a.tag == 1 and a.more] == [False, False, True]
    assert of(2) == [(0, False, grpc.StatusCode.INVALID_ARGUMENT.value[0])]
    assert of(3) == [(100, True, 0), (0, False, grpc.StatusCode.INTERNAL.value[0])]
    assert of(4) == [(100, True, 0)]  # cancelled: no end answer
    assert "three samples" in next(a.details for a in answers if a.tag == 3 and not a.more)
    assert engine.closed == 3 and servicer.active == 0  # 1, 3 and 4 ran; 2 never started


async def test_live_link_stream_cancelled_in_the_message_that_opens_it() -> None:
    """The scheduler sends what one turn of its event loop adds as one message, so a stream's
    first chunk and its cancel can come together: that stream's task is cancelled before it
    runs. The call must not wait for it; the other stream of the message is answered."""
    servicer = WorkerServicer(EchoLive(), "cpu")
    req = wpb.LiveRequest(pcm=np.zeros(1600, "<f4").tobytes(), sample_format=wpb.F32LE,
                          is_final=True)

    async def requests() -> Any:
        yield wpb.LiveLinkRequest(requests=[wpb.TaggedLiveRequest(tag=1, request=req),
                                            wpb.TaggedLiveRequest(tag=2, request=req)],
                                  cancel=[1])

    answers = [a for m in await asyncio.wait_for(_collect(servicer.LiveLink(
        requests(), None)), 5) for a in m.answers]  # type: ignore[arg-type]
    assert [(a.tag, a.more) for a in answers] == [(2, True), (2, False)]


async def _collect(messages: Any) -> list[Any]:
    return [m async for m in messages]


def test_live_news_answers_only_chunks_the_scheduler_acts_on() -> None:
    """A chunk is answered when it finishes an utterance, changes the interim text or its
    start, ran a model call, moves the safe point 1 s past the last answer's, or is the last;
    not otherwise (silence, chunks between the model's steps)."""
    from gpu_worker.engines.live import SAFE_STEP_MS, LiveNews
    from gpu_worker.engines.live_session import LiveUpdate, Utterance

    news = LiveNews()
    quiet = LiveUpdate(safe_ms=100, processed_ms=100)
    assert news.worth_sending(quiet, last=False)  # the first: the stream is alive
    assert not news.worth_sending(LiveUpdate(safe_ms=200, processed_ms=200), last=False)
    assert not news.worth_sending(LiveUpdate(safe_ms=100 + SAFE_STEP_MS - 1), last=False)
    assert news.worth_sending(LiveUpdate(safe_ms=100 + SAFE_STEP_MS), last=False)
    base = 100 + SAFE_STEP_MS
    assert news.worth_sending(LiveUpdate(safe_ms=base, interim_start_ms=base), last=False)
    assert not news.worth_sending(LiveUpdate(safe_ms=base, interim_start_ms=base), last=False)
    assert news.worth_sending(LiveUpdate(safe_ms=base, interim_start_ms=base, tick_streams=3),
                              last=False)  # a model call: the batch size histogram's sample
    assert news.worth_sending(LiveUpdate(safe_ms=base, interim_start_ms=base,
                                         interim_text="a"), last=False)
    assert not news.worth_sending(LiveUpdate(safe_ms=base, interim_start_ms=base,
                                             interim_text="a"), last=False)
    assert news.worth_sending(LiveUpdate(finals=[Utterance(base, base + 900, "a")],
                                         safe_ms=base + 900), last=False)
    assert not news.worth_sending(LiveUpdate(safe_ms=base + 900), last=False)
    assert news.worth_sending(LiveUpdate(safe_ms=base + 900), last=True)


class QuietLive(EchoLive):
    """Interim text only on every fourth chunk, the safe point never moving."""

    async def live(self, options: Any, chunks: Any) -> Any:  # type: ignore[override]
        from gpu_worker.engines.live_session import LiveUpdate

        n = 0
        async for chunk in chunks:
            n += 1
            yield LiveUpdate(processed_ms=100 * n, interim_text=str(n // 4))
            if chunk.is_final:
                break


async def test_live_stream_leaves_chunks_without_news_unanswered() -> None:
    """Through the servicer and the scheduler's `LiveCall` over a real `TaggedCall`: 10
    chunks, news on the 1st, 4th and 8th; the 10th is final. The scheduler gets those four
    answers, the last marked `is_last`, and the call counts as finished."""
    from scheduler.workers_client import LiveCall, LiveSettings, live_link

    servicer = WorkerServicer(QuietLive(), "cpu")
    server = grpc.aio.server()
    wpb_grpc.add_WorkerServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
    try:
        stub = wpb_grpc.WorkerStub(channel)
        link = live_link(stub.LiveLink, "w0")
        call = LiveCall(link, "w0", LiveSettings(), 0, "r1")
        for k in range(10):
            call.send(np.zeros(1600, np.int16), is_final=k == 9)
        steps = [await asyncio.wait_for(call.receive(), 10) for _ in range(4)]
        assert [(s.processed_ms, s.interim_text, s.is_last) for s in steps] == [
            (100, "0", False), (400, "1", False), (800, "2", False), (1000, "2", True)]
        assert call.finished
        call.close()
        await link.close("test over")
    finally:
        await channel.close()
        await server.stop(None)


class SilentLive(EchoLive):
    """Silence: no news, the safe point 3 s behind the audio (as a live session's look-back),
    or never moving (`stuck`)."""

    def __init__(self, stuck: bool = False) -> None:
        super().__init__()
        self.stuck = stuck

    async def live(self, options: Any, chunks: Any) -> Any:  # type: ignore[override]
        from gpu_worker.engines.live_session import LiveUpdate

        samples = 0
        async for chunk in chunks:
            samples += len(chunk.audio)
            ms = samples // 16
            yield LiveUpdate(safe_ms=0 if self.stuck else max(0, ms - 3000), processed_ms=ms)
            if chunk.is_final:
                break


@pytest.mark.parametrize("stuck", [False, True])
async def test_scheduler_keeps_a_bounded_look_back_through_silence(
        monkeypatch: pytest.MonkeyPatch, stuck: bool) -> None:
    """A live stream's 60 s of silence through the scheduler's `LiveRecognizer` and a real
    `LiveLink` to a worker whose answers come only with news: the audio the scheduler keeps
    for a resume stays within the worker's 3 s look-back, the 1 s between safe-point answers
    and what is in flight; with a safe point that never moves it would hold all 60 s."""
    from types import SimpleNamespace

    from prometheus_client import CollectorRegistry

    from scheduler import live as live_mod
    from scheduler.live_metrics import LiveMetrics
    from scheduler.workers_client import LiveCall, live_link

    kept_s: list[float] = []  # seconds kept, at each block's arrival
    append = live_mod._Kept.append

    def recording(self: Any, block: np.ndarray, at: float) -> None:
        append(self, block, at)
        kept_s.append((self.end - self.start) / 16000)

    monkeypatch.setattr(live_mod._Kept, "append", recording)
    answers = 0
    receive = LiveCall.receive

    async def counting(self: Any) -> Any:
        nonlocal answers
        answers += 1
        return await receive(self)

    monkeypatch.setattr(LiveCall, "receive", counting)
    server = grpc.aio.server()
    wpb_grpc.add_WorkerServicer_to_server(WorkerServicer(SilentLive(stuck), "cpu"), server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
    link = live_link(wpb_grpc.WorkerStub(channel).LiveLink, "w0")
    worker = SimpleNamespace(live_link=link, spec=SimpleNamespace(worker_id="w0",
                                                                   device_name="cpu"))

    class OneWorker:
        async def place_live(self, *args: Any, **kw: Any) -> Any:
            return worker

        def release_live(self, w: Any) -> None:
            pass

    catalog = SimpleNamespace(get=lambda name: SimpleNamespace(name="live", capabilities=None))
    recognizer = live_mod.LiveRecognizer(OneWorker(), catalog, LiveMetrics(CollectorRegistry()),
                                         8)  # type: ignore[arg-type]

    async def chunks() -> Any:
        for _ in range(600):  # 60 s in 100 ms chunks, ~20x real time
            yield np.zeros(1600, np.int16).tobytes()
            await asyncio.sleep(0.005)

    try:
        events = [e async for e in recognizer.run(live_mod.LiveRequest("r1", "live"), chunks())]
        assert [e.is_last for e in events] == [True] and events[0].end_ms == 60000
        if stuck:
            assert max(kept_s) > 55
        else:
            assert answers < 80  # answers with news only: ~1 a second, not 600
            # 3 s look-back, 1 s between safe-point answers, up to 6 s in flight (240 ms late
            # at this pace: a loaded machine); 4.0 s here
            assert max(kept_s) <= 10, max(kept_s)
    finally:
        await link.close("test over")
        await channel.close()
        await server.stop(None)
