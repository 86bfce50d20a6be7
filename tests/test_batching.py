"""Dynamic batching: grouping, limits, failure isolation, OOM recovery, cache clears."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from gpu_worker.engines.base import Capabilities, Transcript, Utterance
from gpu_worker.engines.batched import BatchedEngine
from gpu_worker.engines.batcher import Batcher
from protos.common.worker_config import WorkerConfig


class OutOfMemoryError(RuntimeError):
    """Named like torch.cuda.OutOfMemoryError, which the batcher recognises by name."""


class FakeRunner:
    """Echoes each clip's length; can fail like a GPU would. It is its own (fake CUDA) device:
    memory figures, cache clears and a capacity limit."""

    name = "cuda:0"

    def __init__(self, oom_above: int = 0, bad_length: int = -1, padding_invariant: bool = True,
                 has_cache: bool = True, capacity_s: float | None = None) -> None:
        self.oom_above = oom_above
        self.bad_length = bad_length
        self.padding_invariant = padding_invariant
        self.has_cache = has_cache
        self.capacity_s = capacity_s
        self.batches: list[list[int]] = []
        self.clears = 0
        self.reserved = 0
        self.allocated = 0

    def transcribe(self, batch: list[Utterance]) -> list[Transcript]:
        lengths = [len(u.audio) for u in batch]
        if self.oom_above and sum(lengths) > self.oom_above:
            raise OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        if self.bad_length in lengths:
            raise ValueError("bad input in batch")
        self.batches.append(lengths)
        self.reserved += 100
        return [Transcript(text=f"len={n}") for n in lengths]

    def memory(self) -> tuple[int, int]:
        return (self.allocated, self.reserved)

    def clear_cache(self) -> None:
        self.clears += 1
        self.reserved = self.allocated

    def audio_capacity_s(self) -> float | None:
        return self.capacity_s

    def set_threads(self) -> None:
        pass


def make_batcher(runner: FakeRunner, **kw: Any) -> Batcher:
    return Batcher(runner, runner, **kw)


def fake_engine(runner: FakeRunner, **cfg: Any) -> BatchedEngine:
    """A batched engine over `runner`, configured like a worker (WorkerConfig fields)."""
    caps = Capabilities(kind="recognize", family="fake", engine="fake",
                        padding_invariant=runner.padding_invariant)
    return BatchedEngine("fake", runner, runner, caps, "fake-model",
                         WorkerConfig(model="fake-model", **cfg))


def utt(n: int, **kw: object) -> Utterance:
    return Utterance(audio=np.zeros(n, dtype=np.float32), **kw)  # type: ignore[arg-type]


async def run_all(batcher: Batcher, utts: list[Utterance]) -> list[object]:
    batcher.start()
    try:
        return await asyncio.gather(*(batcher.submit(u) for u in utts), return_exceptions=True)
    finally:
        await batcher.stop()


async def test_concurrent_requests_share_batches_within_limits() -> None:
    runner = FakeRunner()
    b = make_batcher(runner, max_batch_size=4, max_batch_audio_s=100, max_queue_delay_s=0.05)
    out = await run_all(b, [utt(16000 * (i + 1)) for i in range(10)])
    assert [t.text for t, _ in out] == [f"len={16000 * (i + 1)}" for i in range(10)]
    assert all(len(batch) <= 4 for batch in runner.batches)
    assert len(runner.batches) == 3 and max(s.batch_size for _, s in out) == 4
    assert all(batch == sorted(batch) for batch in runner.batches), "length-sorted batches"


async def test_audio_seconds_cap_and_memory_capacity() -> None:
    runner = FakeRunner(capacity_s=2.5)
    b = make_batcher(runner, max_batch_size=32, max_batch_audio_s=100, max_queue_delay_s=0.05)
    await run_all(b, [utt(16000) for _ in range(8)])
    assert all(sum(batch) <= 2.5 * 16000 for batch in runner.batches)
    runner = FakeRunner()
    b = make_batcher(runner, max_batch_size=32, max_batch_audio_s=3.0, max_queue_delay_s=0.05)
    await run_all(b, [utt(16000) for _ in range(8)])
    assert [len(x) for x in runner.batches] == [3, 3, 2]


async def test_oldest_swapped_in_still_respects_the_audio_cap() -> None:
    """The oldest utterance never starves, and joining a batch it keeps the caps: with a 3 s
    cap, 100 s waiting before 1 s + 1 s + 1 s runs alone (it used to make 1 + 1 + 100 s)."""
    second = 16000
    runner = FakeRunner()
    b = make_batcher(runner, max_batch_size=32, max_batch_audio_s=3.0, max_queue_delay_s=0.05)
    out = await run_all(b, [utt(100 * second), utt(second), utt(second), utt(second)])
    assert all(isinstance(o, tuple) for o in out), out
    assert runner.batches[0] == [100 * second], "the oldest first, alone"
    assert sorted(map(tuple, runner.batches)) == [(second, second, second), (100 * second,)]
    for batch in runner.batches:
        assert len(batch) == 1 or sum(batch) <= 3 * second, runner.batches
    runner = FakeRunner(capacity_s=2.5)  # the memory capacity is a cap the same way
    b = make_batcher(runner, max_batch_size=32, max_batch_audio_s=100, max_queue_delay_s=0.05)
    await run_all(b, [utt(2 * second), utt(second), utt(second), utt(second)])
    assert runner.batches[0] == [2 * second]
    assert all(len(x) == 1 or sum(x) <= 2.5 * second for x in runner.batches), runner.batches


async def test_options_and_length_buckets_separate_batches() -> None:
    runner = FakeRunner(padding_invariant=False)
    b = make_batcher(runner, max_batch_size=32, max_queue_delay_s=0.05)
    utts = [utt(8000), utt(8000), utt(9000), utt(8000, language="en"), utt(8000)]
    await run_all(b, utts)
    assert sorted(map(tuple, runner.batches)) == [(8000,), (8000, 8000, 8000), (9000,)]


async def test_oom_splits_down_to_batch_one_and_loses_nothing() -> None:
    runner = FakeRunner(oom_above=3 * 16000)
    b = make_batcher(runner, max_batch_size=16, max_queue_delay_s=0.05)
    out = await run_all(b, [utt(16000) for _ in range(12)])
    assert all(isinstance(o, tuple) for o in out), out
    assert b.counters.oom_events > 0 and b.counters.splits > 0
    assert b.counters.cache_clears["oom"] == b.counters.oom_events
    assert max(len(x) for x in runner.batches) <= 3


async def test_request_too_big_even_alone_gets_oom_others_succeed() -> None:
    runner = FakeRunner(oom_above=5 * 16000)
    b = make_batcher(runner, max_batch_size=16, max_queue_delay_s=0.05)
    out = await run_all(b, [utt(16000), utt(10 * 16000), utt(16000)])
    assert isinstance(out[1], OutOfMemoryError)
    assert isinstance(out[0], tuple) and isinstance(out[2], tuple)


async def test_bad_member_fails_alone() -> None:
    runner = FakeRunner(bad_length=1234)
    b = make_batcher(runner, max_batch_size=16, max_queue_delay_s=0.05)
    out = await run_all(b, [utt(16000), utt(1234), utt(17000), utt(18000)])
    assert isinstance(out[1], ValueError)
    assert [o[0].text for i, o in enumerate(out) if i != 1] == ["len=16000", "len=17000",
                                                                "len=18000"]
    assert b.counters.oom_events == 0


async def test_periodic_and_fragmentation_cache_clears() -> None:
    runner = FakeRunner()
    b = make_batcher(runner, max_batch_size=1, max_queue_delay_s=0.0, cache_clear_every=5)
    await run_all(b, [utt(1000) for _ in range(12)])
    assert b.counters.cache_clears == {"periodic": 2}
    runner = FakeRunner()
    b = make_batcher(runner, max_batch_size=1, max_queue_delay_s=0.0,
                     cache_clear_margin_bytes=250)
    await run_all(b, [utt(1000) for _ in range(6)])
    assert b.counters.cache_clears == {"fragmentation": 2}  # at 300 reserved, twice
    runner = FakeRunner(has_cache=False)
    b = make_batcher(runner, max_batch_size=1, max_queue_delay_s=0.0, cache_clear_every=1)
    await run_all(b, [utt(1000) for _ in range(3)])
    assert b.counters.cache_clears == {} and runner.clears == 0


async def test_admin_clear_under_load_fails_nothing() -> None:
    runner = FakeRunner()
    b = make_batcher(runner, max_batch_size=2, max_queue_delay_s=0.001)
    b.start()
    try:
        jobs = [asyncio.create_task(b.submit(utt(1000 + i))) for i in range(40)]
        for _ in range(10):
            await b.run_in_model_thread(lambda: b.clear_cache("admin"))
            await asyncio.sleep(0)
        out = await asyncio.gather(*jobs)
    finally:
        await b.stop()
    assert [t.text for t, _ in out] == [f"len={1000 + i}" for i in range(40)]
    assert b.counters.cache_clears["admin"] == 10


@pytest.mark.integration
@pytest.mark.parametrize("model", ["sensevoice-tiny", "paraformer-tiny",
                                   "paraformer-streaming-tiny"])
async def test_batch_invariance_on_real_models(model: str, models_dir: Path,
                                               speech: dict[str, Path]) -> None:
    """A clip's text alone equals its text in any batch the batcher forms."""
    from gpu_worker.engines.generate import load_runner
    from tests.audio_fixtures import reference_16k_mono

    runner = load_runner(str(models_dir / model), "cpu", threads=1)
    clips = [reference_16k_mono(p) for p in speech.values()]
    clips += [clips[0][: len(clips[0]) // 2], clips[1][:16000], clips[0].copy()]
    alone = [runner.transcribe([Utterance(c)])[0].text for c in clips]
    b = Batcher(runner, runner.device, max_batch_size=8, max_queue_delay_s=0.2)
    out = await run_all(b, [Utterance(c) for c in clips])
    assert [t.text for t, _ in out] == alone
    sizes = [s.batch_size for _, s in out]
    if runner.padding_invariant:
        assert max(sizes) == len(clips), "mixed lengths should share one batch"
    else:
        assert sizes[0] == sizes[-1] == 2, "equal-length clips share a bucket"


async def test_worker_hands_back_oom_alone_as_gpu_oom() -> None:
    """The worker answers RESOURCE_EXHAUSTED 'gpu_oom', which the scheduler reroutes."""
    import grpc

    from gpu_worker.service import GPU_OOM_DETAIL, WorkerServicer
    from protos.asr.worker.v1 import worker_pb2 as wpb

    class Aborted(Exception):
        pass

    class Context:
        async def abort(self, code: grpc.StatusCode, details: str) -> None:
            raise Aborted(code, details)

    engine = fake_engine(FakeRunner(oom_above=16000), max_queue_delay_ms=0.0)
    engine.start()
    try:
        servicer = WorkerServicer(engine, "cuda:0")
        ok = await servicer.Transcribe(wpb.TranscribeRequest(pcm=b"\0\0" * 8000), Context())
        assert ok.text == "len=8000" and ok.device == "cuda:0"
        with pytest.raises(Aborted) as info:
            await servicer.Transcribe(wpb.TranscribeRequest(pcm=b"\0\0" * 32000), Context())
        assert info.value.args == (grpc.StatusCode.RESOURCE_EXHAUSTED, GPU_OOM_DETAIL)
    finally:
        await engine.stop()


@pytest.mark.integration
def test_clear_cache_under_load_through_the_service(start_service, models_dir: Path,  # type: ignore[no-untyped-def]
                                                    speech: dict[str, Path]) -> None:
    from concurrent.futures import ThreadPoolExecutor

    from client.library import AsrClient

    svc = start_service(models_dir / "sensevoice-tiny", devices="sim:2", cpu_fallback="never")
    audio = speech["wav16k"].read_bytes()
    with AsrClient(svc.address) as client, ThreadPoolExecutor(16) as pool:
        expected = client.recognize_bytes(audio).text
        futures = [pool.submit(client.recognize_bytes, audio) for _ in range(48)]
        clears = [client.clear_cache(device) for device in ("", "sim:0", "sim:1", "")]
        texts = [f.result().text for f in futures]
    assert texts == [expected] * 48
    assert [len(c.results) for c in clears] == [2, 1, 1, 2]


async def test_padded_budget_counts_size_times_longest() -> None:
    """A runner that pads its batches (the direct engine) has its audio cap applied to
    size x longest clip: 1 s + 2 s + 2 s is 5 s of audio but 6 s padded."""
    second = 16000
    runner = FakeRunner()
    b = make_batcher(runner, max_batch_size=32, max_batch_audio_s=5.0, max_queue_delay_s=0.05)
    await run_all(b, [utt(second), utt(2 * second), utt(2 * second)])
    assert runner.batches == [[second, 2 * second, 2 * second]]
    runner = FakeRunner()
    runner.padded_budget = True  # type: ignore[attr-defined]
    b = make_batcher(runner, max_batch_size=32, max_batch_audio_s=5.0, max_queue_delay_s=0.05)
    await run_all(b, [utt(second), utt(2 * second), utt(2 * second)])
    assert runner.batches == [[second, 2 * second], [2 * second]]
