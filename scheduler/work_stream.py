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
  answers come back in any order and are matched by tag. The call is a framed stream over a
  socket pair the worker inherits at spawn (`protos.common.framed`: no gRPC per message); a
  gRPC `Work` call on the worker's socket if that ever breaks while the process lives on.

Semantics are those of a `Transcribe` call per unit: per-unit status codes map to the same
errors (`workers_client.unit_error`); if the call breaks (the worker died or was killed),
every unit still waiting gets `WorkerLost` and the dispatcher runs it again elsewhere,
exactly once; a deadline or a cancelled request sends a `cancel` for its tag and frees its
block. A unit's block is freed only when its answer or failure is in, so the worker never
reads a block that was reused for another live unit.
"""

from __future__ import annotations

import logging
import socket
import time
from collections.abc import Callable

import grpc

from protos.asr.worker.v1 import worker_pb2 as wpb
from protos.asr.worker.v1 import worker_pb2_grpc as wpb_grpc
from protos.common.framed import FramedFirst
from protos.common.pcm_arena import PcmArena
from protos.common.worker_auth import call_metadata
from scheduler.errors import DeadlineExceeded, WorkerLost
from scheduler.tagged_call import TaggedCall, answer_code
from scheduler.workers_client import UnitRequest, UnitResult, unit_error, unit_request, unit_result

log = logging.getLogger(__name__)


class WorkStream:
    """Units to one worker process over its `Work` call (see the module docstring)."""

    def __init__(self, channel: grpc.aio.Channel, worker_id: str,
                 arena: PcmArena | None = None, secret: str = "",
                 sock: socket.socket | None = None,
                 on_broken: Callable[[str], object] | None = None) -> None:
        """`channel`: a channel of its own without interceptors; the worker secret goes in
        the call's metadata. `sock`: the scheduler's end of the socket pair the worker
        inherited; units go over it first, and over a gRPC `Work` call on `channel` if it
        ever breaks while the worker lives on. `on_broken(why)`: told when the worker's end
        of the call ends (almost always: the process is exiting)."""
        self.worker_id = worker_id
        self.arena = arena
        self._channel = channel
        stub = wpb_grpc.WorkerStub(channel)
        metadata = call_metadata(secret)
        self._open_call = FramedFirst(sock, wpb.WorkResponse.FromString,
                                      lambda: stub.Work(metadata=metadata))
        self._call: TaggedCall[wpb.WorkRequest, wpb.WorkAnswer] = TaggedCall(
            "the Work call", self._open_call, wpb.WorkRequest, on_broken)
        self._closed = False

    @property
    def pending(self) -> int:
        return self._call.pending

    async def transcribe(self, unit: UnitRequest, deadline: float | None) -> UnitResult:
        """Run one unit; the same results and errors as a Transcribe call would give."""
        if self._closed:
            raise WorkerLost(f"worker {self.worker_id} is gone")
        block = self.arena.put(unit.samples) if self.arena is not None else None
        try:
            timeout = None if deadline is None else max(deadline - time.monotonic(), 0.001)
            try:
                answer = await self._call.request(
                    lambda out, tag: unit_request(unit, block, out.units.add(tag=tag).request),
                    timeout)
            except TimeoutError as exc:
                raise DeadlineExceeded(
                    "the request's deadline passed before its result") from exc
        finally:  # answered, failed or given up: the worker no longer reads the block
            if block is not None and self.arena is not None:
                self.arena.free(block)
        if isinstance(answer, str):
            raise WorkerLost(f"{self.worker_id}: {answer}")
        if answer.code:
            code = answer_code(answer.code)
            raise unit_error(self.worker_id, code, answer.details)
        return unit_result(answer.result)

    async def close(self) -> None:
        """Fail what is waiting (WorkerLost), end the call, release the arena."""
        self._closed = True
        await self._call.close("the worker is being replaced")
        self._open_call.close()
        if self.arena is not None:
            self.arena.close()
            self.arena = None
        await self._channel.close()

