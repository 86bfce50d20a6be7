"""The scheduler -> worker hand-off: the shared PCM arena and the tagged `Work` call, against
the real worker servicer on a real gRPC Unix socket (an engine stand-in answers at once)."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import mmap
import os
import socket
import struct
import weakref
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import numpy as np
import pytest

from gpu_worker.engines.base import (
    BatchStats,
    Capabilities,
    Engine,
    EngineStats,
    Transcript,
    Utterance,
)
from gpu_worker.main import serve_work_socket
from gpu_worker.service import WorkerServicer
from protos.asr.worker.v1 import worker_pb2 as wpb
from protos.asr.worker.v1 import worker_pb2_grpc as wpb_grpc
from protos.common.framed import FramedStream
from protos.common.pcm_arena import ALIGN, PcmArena, PcmBlock, supported
from protos.common.wire import F32LE, S16LE, WORKER_CHANNEL_OPTIONS, encode_pcm
from protos.common.worker_auth import new_secret, server_interceptors
from scheduler.errors import DeadlineExceeded, InferenceFailed, InvalidAudio, WorkerLost
from scheduler.work_stream import WorkStream
from scheduler.workers_client import UnitRequest

pytestmark = pytest.mark.skipif(not supported(), reason="needs memfd (Linux)")

FAIL_LEN, SLOW_LEN = 1234, 4321


def fingerprint(audio: np.ndarray) -> str:
    """What the stand-in engine answers: length and content of what it received."""
    return f"{len(audio)}:{float(np.abs(audio).sum()):.4f}"


class EchoEngine(Engine):
    """Answers each utterance with its fingerprint; FAIL_LEN fails, SLOW_LEN waits."""

    name = "echo"

    def __init__(self) -> None:
        super().__init__()
        self.capabilities = Capabilities(kind="recognize", family="fake", engine="echo")
        self.cancelled = 0

    def stats(self) -> EngineStats:
        return EngineStats(model="echo")

    async def transcribe(self, utt: Utterance) -> tuple[Transcript, BatchStats]:
        if len(utt.audio) == FAIL_LEN:
            raise RuntimeError("this unit fails alone")
        try:
            await asyncio.sleep(30 if len(utt.audio) == SLOW_LEN else 0.001)
        except asyncio.CancelledError:
            self.cancelled += 1
            raise
        return Transcript(fingerprint(utt.audio)), BatchStats(1, 0.0, 0.0)


def clip(n: int, seed: int, dtype: type = np.float32) -> np.ndarray:
    x = np.random.default_rng(seed).uniform(-0.5, 0.5, n).astype(np.float32)
    return (x * 32767).astype(np.int16) if dtype == np.int16 else x


def expected(samples: np.ndarray) -> str:
    if samples.dtype == np.int16:
        return fingerprint(samples.astype(np.float32) / np.float32(32768.0))
    return fingerprint(samples)


class Worker:
    """The worker servicer on a Unix socket, with an arena shared with the test."""

    def __init__(self, tmp: Path, arena_bytes: int, framed: bool = False) -> None:
        """`framed`: units also served over a socket pair, as a spawned worker does."""
        self.path = str(tmp / "w.sock")
        self.secret = new_secret()
        self.engine = EchoEngine()
        self.arena = PcmArena.create(arena_bytes) if arena_bytes else None
        self.framed = framed
        self.ours: socket.socket | None = None
        self.units: asyncio.Task[None] | None = None

    async def start(self) -> None:
        worker_side = (PcmArena.attach(os.dup(self.arena.fd), self.arena.size)
                       if self.arena else None)
        self.server = grpc.aio.server(options=list(WORKER_CHANNEL_OPTIONS),
                                      interceptors=server_interceptors(self.secret))
        servicer = WorkerServicer(self.engine, "cpu", worker_side)
        wpb_grpc.add_WorkerServicer_to_server(servicer, self.server)
        self.server.add_insecure_port(f"unix://{self.path}")
        await self.server.start()
        if self.framed:
            self.ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
            self.units = asyncio.create_task(serve_work_socket(servicer, theirs))

    def link(self, secret: str | None = None) -> WorkStream:
        channel = grpc.aio.insecure_channel(f"unix://{self.path}",
                                            options=list(WORKER_CHANNEL_OPTIONS))
        sock, self.ours = self.ours, None
        return WorkStream(channel, "w#0", self.arena,
                          self.secret if secret is None else secret, sock)

    async def stop(self) -> None:
        if self.units is not None:
            self.units.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self.units
        await self.server.stop(0)


def test_arena_places_first_fit_and_falls_back_when_full() -> None:
    arena = PcmArena.create(64 * 1024)
    try:
        a = arena.put(clip(1000, 1))  # 4000 bytes
        b = arena.put(clip(1000, 2, np.int16))  # 2000 bytes
        assert a is not None and b is not None
        assert (a.offset, a.sample_format) == (0, F32LE)
        assert b.offset == 4032 and b.sample_format == S16LE  # aligned after a
        arena.free(a)
        c = arena.put(clip(500, 3))  # fits in a's freed place: memory follows what is in use
        assert c is not None and c.offset == 0
        assert arena.put(clip(64 * 1024, 4)) is None  # bigger than the free room
        assert np.array_equal(arena.read(b), clip(1000, 2, np.int16) / np.float32(32768.0))
        assert np.array_equal(arena.read(c), clip(500, 3))
        arena.free(b)
        arena.free(b)  # idempotent
        arena.free(c)
        assert arena.in_use == 0
        big = arena.put(clip(16 * 1024 - ALIGN // 4, 5))  # all but the last ALIGN bytes
        assert big is not None and big.offset == 0
        with pytest.raises(ValueError, match="outside"):
            arena.read(PcmBlock(60 * 1024, 8 * 1024, F32LE))
        with pytest.raises(ValueError, match="format"):
            arena.read(PcmBlock(0, 6, F32LE))
    finally:
        arena.close()


def _resident_kib(fd: int) -> int:
    """Resident KiB of this process's mappings of the memfd `fd`."""
    target = os.readlink(f"/proc/self/fd/{fd}")  # "/memfd:NAME (deleted)"
    total, inside = 0, False
    with open("/proc/self/smaps") as f:
        for line in f:
            head = line.split()
            if head and "-" in head[0] and not head[0].endswith(":"):
                inside = line.rstrip().endswith(target)
            elif inside and head[0] == "Rss:":
                total += int(head[1])
    return total


def test_arena_gives_free_pages_back_and_keeps_blocks_in_use() -> None:
    arena = PcmArena.create(8 * 1024 * 1024)
    try:
        kept = arena.put(clip(100_000, 1))  # 400 KB at 0
        freed = arena.put(clip(1_000_000, 2))  # 4 MB after it
        assert kept is not None and freed is not None
        touched = _resident_kib(arena.fd)
        assert touched >= 4_000, "the copies made their pages resident"
        arena.free(freed)
        page = mmap.PAGESIZE
        ranges = arena.free_ranges()
        first = -(-(kept.offset + kept.num_bytes) // page) * page
        assert ranges == [(first, arena.size - first)], "all whole pages after the kept block"
        assert arena.release_free() == arena.size - first
        assert _resident_kib(arena.fd) <= touched - 3_900, "the freed block's pages are gone"
        assert np.array_equal(arena.read(kept), clip(100_000, 1)), "the block in use is intact"
        assert not np.any(arena.read(freed)[(first - freed.offset) // 4:]), \
            "released pages read as zeros"
        again = arena.put(clip(1_000_000, 3))
        assert again is not None and np.array_equal(arena.read(again), clip(1_000_000, 3))
    finally:
        arena.close()


@pytest.mark.parametrize("framed", [True, False], ids=["framed", "grpc"])
@pytest.mark.parametrize("arena_bytes", [4 * 1024 * 1024, 0], ids=["arena", "inline"])
async def test_units_are_answered_by_tag_with_their_own_audio(tmp_path: Path,
                                                             arena_bytes: int,
                                                             framed: bool) -> None:
    worker = Worker(tmp_path, arena_bytes, framed)
    await worker.start()
    link = worker.link()
    try:
        # Mixed sizes, dtypes and more audio in flight than a 4 MiB arena holds at once: the
        # overflow goes inline, every answer matches its own unit.
        clips = [clip(int(n), i, np.int16 if i % 3 == 0 else np.float32)
                 for i, n in enumerate(np.random.default_rng(0).integers(1600, 160_000, 80))]
        results = await asyncio.gather(*(
            link.transcribe(UnitRequest(f"r{i}", c), None) for i, c in enumerate(clips)))
        assert [r.text for r in results] == [expected(c) for c in clips]
        assert link.pending == 0
        if worker.arena is not None:
            assert worker.arena.in_use == 0, "every block is freed once answered"
    finally:
        await link.close()
        await worker.stop()


@pytest.mark.parametrize("framed", [True, False], ids=["framed", "grpc"])
async def test_unit_errors_deadlines_and_cancellation(tmp_path: Path, framed: bool) -> None:
    worker = Worker(tmp_path, 1024 * 1024, framed)
    await worker.start()
    link = worker.link()
    try:
        ok, failing = clip(1600, 1), clip(FAIL_LEN, 2)
        res = await asyncio.gather(link.transcribe(UnitRequest("a", ok), None),
                                   link.transcribe(UnitRequest("b", failing), None),
                                   return_exceptions=True)
        assert res[0].text == expected(ok)  # type: ignore[union-attr]
        assert isinstance(res[1], InferenceFailed) and "fails alone" in str(res[1])
        with pytest.raises(InvalidAudio, match="no audio"):
            await link.transcribe(UnitRequest("empty", np.zeros(0, np.float32)), None)
        # A deadline: DeadlineExceeded here, and the worker is told to stop the unit.
        loop = asyncio.get_running_loop()
        with pytest.raises(DeadlineExceeded):
            await link.transcribe(UnitRequest("slow", clip(SLOW_LEN, 3)), loop.time() + 0.3)
        # A cancelled request (client went away): the worker's unit is cancelled too.
        task = asyncio.create_task(link.transcribe(UnitRequest("slow2", clip(SLOW_LEN, 4)),
                                                   None))
        await asyncio.sleep(0.2)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        for _ in range(100):
            if worker.engine.cancelled == 2:
                break
            await asyncio.sleep(0.05)
        assert worker.engine.cancelled == 2
        assert worker.arena is not None and worker.arena.in_use == 0
        # The call is still good for the next unit.
        assert (await link.transcribe(UnitRequest("c", ok), None)).text == expected(ok)
    finally:
        await link.close()
        await worker.stop()


async def test_worker_loss_fails_waiting_units_and_the_next_call_reopens(tmp_path: Path) -> None:
    worker = Worker(tmp_path, 1024 * 1024)
    await worker.start()
    link = worker.link()
    try:
        waiting = [asyncio.create_task(link.transcribe(UnitRequest(f"s{i}", clip(SLOW_LEN, i)),
                                                       None)) for i in range(5)]
        await asyncio.sleep(0.3)
        await worker.server.stop(0)  # the worker goes away with 5 units in hand
        for t in waiting:
            with pytest.raises(WorkerLost):
                await asyncio.wait_for(t, 10)
        assert link.pending == 0 and worker.arena is not None and worker.arena.in_use == 0
        await worker.start()  # the same worker back on its socket: a new call is opened
        unit = clip(3200, 9)
        for _ in range(50):
            try:
                assert (await link.transcribe(UnitRequest("x", unit), None)).text == \
                    expected(unit)
                break
            except WorkerLost:
                await asyncio.sleep(0.1)
        else:
            pytest.fail("the link never reopened")
    finally:
        await link.close()
        await worker.stop()
    with pytest.raises(WorkerLost, match="gone"):
        await link.transcribe(UnitRequest("late", clip(1600, 1)), None)


async def test_a_lost_unit_leaves_no_reference_cycle(tmp_path: Path) -> None:
    """The WorkerLost a lost unit raises is not also kept in a future: its traceback would
    tie the unit's audio into a cycle that lives until a full collection (the fault-load run
    grew the scheduler by ~40 KB per request that way)."""
    worker = Worker(tmp_path, 1024 * 1024)
    await worker.start()
    link = worker.link()
    gc.collect()
    gc.disable()
    try:
        async def caller(samples: np.ndarray) -> str:
            try:
                await link.transcribe(UnitRequest("s", samples), None)
            except WorkerLost as exc:
                return str(exc)
            return "answered"

        samples = clip(SLOW_LEN, 1)
        alive = weakref.ref(samples)
        task = asyncio.create_task(caller(samples))
        del samples
        await asyncio.sleep(0.3)
        await worker.server.stop(0)
        assert "w#0" in await asyncio.wait_for(task, 10)
        del task
        await asyncio.sleep(0)
        assert alive() is None, "the lost unit's audio is freed by reference counting alone"
    finally:
        gc.enable()
        await link.close()
        await worker.stop()


async def test_work_call_without_the_secret_is_refused(tmp_path: Path) -> None:
    worker = Worker(tmp_path, 0)
    await worker.start()
    link = worker.link(secret="wrong")
    try:
        with pytest.raises(WorkerLost, match="UNAUTHENTICATED"):
            await link.transcribe(UnitRequest("a", clip(1600, 1)), None)
    finally:
        await link.close()
        await worker.stop()


async def test_a_broken_unit_socket_fails_its_units_then_units_go_over_grpc(
        tmp_path: Path) -> None:
    """The framed socket breaks while the worker lives on: the units it held get WorkerLost
    (the dispatcher runs them again), and the next ones travel on a gRPC Work call."""
    worker = Worker(tmp_path, 1024 * 1024, framed=True)
    await worker.start()
    link = worker.link()
    try:
        waiting = [asyncio.create_task(link.transcribe(UnitRequest(f"s{i}", clip(SLOW_LEN, i)),
                                                       None)) for i in range(3)]
        await asyncio.sleep(0.3)
        assert worker.units is not None
        worker.units.cancel()  # the worker's end of the socket pair closes
        for t in waiting:
            with pytest.raises(WorkerLost, match="Work call"):
                await asyncio.wait_for(t, 10)
        assert link.pending == 0 and worker.arena is not None and worker.arena.in_use == 0
        unit = clip(3200, 9)
        assert (await link.transcribe(UnitRequest("x", unit), None)).text == expected(unit)
    finally:
        await link.close()
        await worker.stop()


async def test_framed_stream_frames_and_refuses_what_is_not_a_frame() -> None:
    async def pair() -> tuple[FramedStream[wpb.WorkRequest], socket.socket]:
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        return FramedStream(ours, wpb.WorkRequest.FromString), theirs

    # Messages of any size round-trip, in order; the peer's close ends the iteration.
    a, b_sock = await pair()
    b = FramedStream(b_sock, wpb.WorkRequest.FromString)
    sent = [wpb.WorkRequest(cancel=list(range(n))) for n in (0, 1, 300, 70_000)]
    for m in sent:
        await a.write(m)
    a.cancel()
    assert [m async for m in b] == sent
    b.cancel()
    # A frame cut short, a length over the limit, bytes that do not parse: ConnectionError.
    for raw, why in ((struct.pack("<I", 10) + b"abc", "inside a frame"),
                     (b"\x01\x00", "frame header"),
                     (struct.pack("<I", 1 << 30), "over the limit"),
                     (struct.pack("<I", 3) + b"\xff\xff\xff", "did not parse")):
        s, raw_sock = await pair()
        raw_sock.sendall(raw)
        raw_sock.close()
        with pytest.raises(ConnectionError, match=why):
            await anext(aiter(s))
        s.cancel()


async def test_a_unit_cancelled_in_the_message_that_brings_it_ends_the_call_cleanly(
        tmp_path: Path) -> None:
    """The scheduler sends what one turn of its event loop adds as one message, so a unit and
    its cancel can arrive together: the unit's task is cancelled before it ever runs. The Work
    call must not wait for it: once the scheduler closes its side, the call ends."""
    servicer = WorkerServicer(EchoEngine(), "cpu", None)
    pcm, fmt = encode_pcm(clip(1600, 5))

    async def requests() -> AsyncIterator[wpb.WorkRequest]:
        yield wpb.WorkRequest(units=[wpb.WorkUnit(tag=1, request=wpb.TranscribeRequest(
            request_id="gone", pcm=pcm, sample_format=fmt))], cancel=[1])

    async with asyncio.timeout(5):
        answers = [m async for m in servicer.Work(requests(), None)]  # type: ignore[arg-type]
    assert [a.tag for m in answers for a in m.answers] in ([], [1])
