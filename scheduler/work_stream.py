"""The hand-off of units to one worker process: one long-lived `Work` call, shared memory.

Every unit used to be a `Transcribe` call of its own carrying its samples as protobuf bytes:
per unit an HTTP/2 stream, headers, the worker secret check, and the audio serialised, framed
and parsed again on the worker side (measured on the 2-core machine: ~1.2 ms of worker CPU
and ~0.7 ms of scheduler CPU for 10 s of float32 audio, against ~0.07/0.09 ms for one small
message on an open stream). Now:

- the samples go into the worker's shared PCM arena (`protos.common.pcm_arena`; created at
  spawn, one per worker process) and the message carries only their place; a unit that does
  not fit goes inline as before;
- units travel as tagged messages on one `Work` call per worker process, opened on first use;
  answers come back in any order and are matched by tag.

Semantics are those of a `Transcribe` call per unit: per-unit status codes map to the same
errors (`workers_client.unit_error`); if the call breaks (the worker died or was killed),
every unit still waiting gets `WorkerLost` and the dispatcher runs it again elsewhere,
exactly once; a deadline or a cancelled request sends a `cancel` for its tag and frees its
block. A unit's block is freed only when its answer or failure is in, so the worker never
reads a block that was reused for another live unit.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import time

import grpc

from protos.asr.worker.v1 import worker_pb2 as wpb
from protos.asr.worker.v1 import worker_pb2_grpc as wpb_grpc
from protos.common.pcm_arena import PcmArena
from protos.common.worker_auth import call_metadata
from scheduler.errors import DeadlineExceeded, WorkerLost
from scheduler.workers_client import UnitRequest, UnitResult, unit_error, unit_request, unit_result

log = logging.getLogger(__name__)


class WorkStream:
    """Units to one worker process over its `Work` call (see the module docstring)."""

    def __init__(self, channel: grpc.aio.Channel, worker_id: str,
                 arena: PcmArena | None = None, secret: str = "") -> None:
        """`channel`: a channel of its own without interceptors; the worker secret goes in
        the call's metadata."""
        self.worker_id = worker_id
        self.arena = arena
        self._channel = channel
        self._stub = wpb_grpc.WorkerStub(channel)
        self._metadata = call_metadata(secret)
        self._call: grpc.aio.StreamStreamCall | None = None
        self._reader: asyncio.Task[None] | None = None
        self._writer: asyncio.Task[None] | None = None
        self._outbox = wpb.WorkRequest()
        self._wake = asyncio.Event()
        # A unit's answer, or why the call was lost (a string, not an exception: an exception
        # kept in the future would tie, through its traceback, every frame it passes through,
        # the unit's audio included, into a reference cycle only a full GC collects).
        self._pending: dict[int, asyncio.Future[wpb.WorkAnswer | str]] = {}
        self._tags = itertools.count(1)
        self._closed = False

    @property
    def pending(self) -> int:
        return len(self._pending)

    def _open(self) -> None:
        if self._closed:
            raise WorkerLost(f"worker {self.worker_id} is gone")
        if self._call is None:
            call = self._stub.Work(metadata=self._metadata)
            self._call = call
            loop = asyncio.get_running_loop()
            self._reader = loop.create_task(self._read(call), name=f"work-in-{self.worker_id}")
            self._writer = loop.create_task(self._write(call), name=f"work-out-{self.worker_id}")

    async def _write(self, call: grpc.aio.StreamStreamCall) -> None:
        """Send what the outbox holds, as one message, whenever it holds something."""
        with contextlib.suppress(asyncio.CancelledError):
            while True:
                await self._wake.wait()
                self._wake.clear()
                msg, self._outbox = self._outbox, wpb.WorkRequest()
                try:
                    await call.write(msg)
                except grpc.aio.AioRpcError as exc:
                    self._broken(call, f"{exc.code().name}: {exc.details()}")
                    return
                except (grpc.aio.UsageError, asyncio.InvalidStateError) as exc:
                    self._broken(call, f"the Work call broke: {exc}")
                    return

    async def _read(self, call: grpc.aio.StreamStreamCall) -> None:
        why = "the worker ended its Work call"
        try:
            async for msg in call:
                for answer in msg.answers:
                    fut = self._pending.get(answer.tag)
                    if fut is not None and not fut.done():
                        fut.set_result(answer)
        except grpc.aio.AioRpcError as exc:
            why = f"{exc.code().name}: {exc.details()}"
        except asyncio.CancelledError:
            why = "the scheduler closed the Work call"
        finally:
            self._broken(call, why)

    def _broken(self, call: grpc.aio.StreamStreamCall, why: str) -> None:
        """`call` is over: every unit still waiting on it is lost; the next unit reopens."""
        if self._call is not call:
            return
        self._call = None
        for task in (self._reader, self._writer):
            if task is not None and task is not asyncio.current_task():
                task.cancel()
        self._outbox = wpb.WorkRequest()
        for fut in self._pending.values():
            if not fut.done():
                fut.set_result(why)

    async def transcribe(self, unit: UnitRequest, deadline: float | None) -> UnitResult:
        """Run one unit; the same results and errors as a Transcribe call would give."""
        self._open()
        block = self.arena.put(unit.samples) if self.arena is not None else None
        tag = next(self._tags)
        fut: asyncio.Future[wpb.WorkAnswer | str] = asyncio.get_running_loop().create_future()
        self._pending[tag] = fut
        unit_request(unit, block, self._outbox.units.add(tag=tag).request)
        self._wake.set()
        answered = False
        try:
            timeout = None if deadline is None else max(deadline - time.monotonic(), 0.001)
            try:
                answer = await asyncio.wait_for(fut, timeout)
            except TimeoutError as exc:
                raise DeadlineExceeded(
                    "the request's deadline passed before its result") from exc
            answered = True
        finally:
            self._pending.pop(tag, None)
            if not answered and self._call is not None:
                self._outbox.cancel.append(tag)  # the worker may still hold it: stop it
                self._wake.set()
            if block is not None and self.arena is not None:
                self.arena.free(block)
        if isinstance(answer, str):
            raise WorkerLost(f"{self.worker_id}: {answer}")
        if answer.code:
            code = _CODES.get(answer.code, grpc.StatusCode.UNKNOWN)
            raise unit_error(self.worker_id, code, answer.details)
        return unit_result(answer.result)

    async def close(self) -> None:
        """Fail what is waiting (WorkerLost), end the call, release the arena."""
        self._closed = True
        call = self._call
        if call is not None:
            self._broken(call, "the worker is being replaced")
            call.cancel()
        await asyncio.gather(*(t for t in (self._reader, self._writer) if t is not None),
                             return_exceptions=True)
        if self.arena is not None:
            self.arena.close()
            self.arena = None
        await self._channel.close()


_CODES = {c.value[0]: c for c in grpc.StatusCode}
