"""The scheduler's side of `--frontends N`: the front-end processes and their relayed calls.

`FrontendPool` starts N `scheduler.frontend` processes on the public port (the first one binds
it, picking the port when it is 0; the others join it through SO_REUSEPORT), restarts any that
dies, and stops them after the scheduler's drain. Each process gets a shared-memory arena
(memfd), new at every start; `LinkServicer` serves each front end's `asr.frontend.v1.Relay/Link`
call: every Recognize call the front end relays on it (request bytes in that arena) is answered
as `Recognizer.Recognize` answers a direct call, and every StreamingRecognize call it carries
(an upload read whole, or a live stream whose audio follows as tagged inputs) as
`Recognizer.StreamingRecognize` answers one.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import dataclasses
import functools
import logging
import os
import socket
import sys
import time
from collections.abc import AsyncIterator, Callable, Coroutine, Iterable, Iterator
from typing import Any, cast

import grpc
from google.protobuf.message import DecodeError
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from protos.asr.frontend.v1 import frontend_pb2 as fpb
from protos.asr.frontend.v1 import frontend_pb2_grpc as fpb_grpc
from protos.asr.v1 import asr_pb2 as pb
from protos.common import framed
from protos.common.answer_pump import AnswerPump
from protos.common.pcm_arena import PcmArena, PcmBlock
from protos.common.pcm_arena import supported as arena_supported
from protos.common.worker_auth import SECRET_ENV
from scheduler.audio import DecodedAudio
from scheduler.auth import TokenInterceptor
from scheduler.drain import Drain, run_admitted
from scheduler.errors import InvalidRequest, Unavailable
from scheduler.frontend import FRONTEND_KEY, READY, RECOGNIZE, STREAMING, FrontendConfig
from scheduler.interceptor import REQUEST_ID_KEY, code_name, set_request_id, status_of
from scheduler.limits import client_key
from scheduler.metrics import Metrics
from scheduler.request_views import AudioChunk
from scheduler.servicers import RecognizerServicer

log = logging.getLogger(__name__)

START_TIMEOUT_S = 60.0
INITIAL_BACKOFF_S = 0.5
MAX_BACKOFF_S = 10.0
STABLE_S = 30.0  # a front end that ran this long restarts without waiting


@dataclasses.dataclass(frozen=True)
class FrontendLaunch:
    """What every front-end process of one service shares: `process` holds the settings
    each process gets as they are (its own index, generation, port, arena and Link socket
    are filled in at each start)."""

    count: int
    host: str
    port: int
    arena_bytes: int
    secret: str
    process: FrontendConfig
    command: tuple[str, ...] = (sys.executable, "-m", "scheduler.frontend")


class FrontendProcess:
    """One supervised front-end process."""

    def __init__(self, index: int, launch: FrontendLaunch) -> None:
        self.index = index
        self.launch = launch
        self.generation = 0
        self.restarts = 0
        self.process: asyncio.subprocess.Process | None = None
        self.arena: PcmArena | None = None
        self._stopping = False
        # Serves the Link of one process over our end of its socket pair (LinkServicer).
        self.link_handler: Callable[[int, socket.socket], Coroutine[Any, Any, None]] | None = None
        self._link_task: asyncio.Task[None] | None = None

    @property
    def pid(self) -> int:
        proc = self.process
        return proc.pid if proc is not None and proc.returncode is None else 0

    async def start(self, port: int) -> int:
        """Start the process on `port` (0: any); the port it listens on. Raises OSError when it
        does not come up."""
        self.generation += 1
        self._drop_spawned()
        launch = self.launch
        if launch.arena_bytes and arena_supported():
            self.arena = PcmArena.create(launch.arena_bytes, f"asr-frontend-{self.index}")
        arena = self.arena
        ours, theirs = (socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
                        if self.link_handler is not None else (None, None))
        cfg = dataclasses.replace(
            launch.process, index=self.index, generation=self.generation,
            listen=f"{launch.host}:{port}", arena_fd=arena.fd if arena else -1,
            arena_bytes=arena.size if arena else 0, parent_pid=os.getpid(),
            link_fd=theirs.fileno() if theirs else -1)
        try:
            self.process = await asyncio.create_subprocess_exec(
                *launch.command, cfg.to_json(), stdout=asyncio.subprocess.PIPE,
                env={**os.environ, SECRET_ENV: launch.secret},
                pass_fds=(*((arena.fd,) if arena else ()),
                          *((theirs.fileno(),) if theirs else ())))
        except BaseException:
            if ours is not None:
                ours.close()
            raise
        finally:
            if theirs is not None:
                theirs.close()  # the process holds its end: its exit is our end-of-file
        if ours is not None and self.link_handler is not None:
            self._end_link()
            self._link_task = asyncio.get_running_loop().create_task(
                self.link_handler(self.index, ours), name=f"frontend{self.index} link")
        assert self.process.stdout is not None
        try:
            line = await asyncio.wait_for(self.process.stdout.readline(), START_TIMEOUT_S)
        except asyncio.TimeoutError:
            line = b""
        words = line.decode(errors="replace").split()
        if len(words) != 2 or words[0] != READY:
            await self.kill()
            raise OSError(f"front end {self.index} did not start on {launch.host}:{port} "
                          f"(exit code {self.process.returncode}; see its log above)")
        log.info("front end %d: pid %d on port %s", self.index, self.process.pid, words[1])
        return int(words[1])

    async def supervise(self, port: int) -> None:
        """Restart the process whenever it exits, until `stop()`."""
        backoff = INITIAL_BACKOFF_S
        while not self._stopping:
            assert self.process is not None
            started = time.monotonic()
            code = await self.process.wait()
            if self._stopping:
                break
            self.restarts += 1
            how = f"killed by signal {-code}" if code < 0 else f"exited with code {code}"
            log.error("front end %d (pid %d) %s; its calls in flight are lost (their clients "
                      "see UNAVAILABLE); restarting", self.index, self.process.pid, how)
            if time.monotonic() - started > STABLE_S:
                backoff = INITIAL_BACKOFF_S
            await asyncio.sleep(backoff)
            backoff = min(2 * backoff, MAX_BACKOFF_S)
            if self._stopping:
                break
            with contextlib.suppress(OSError):  # logged; the loop tries again
                await self.start(port)

    async def kill(self) -> None:
        proc = self.process
        if proc is not None and proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            await proc.wait()

    async def stop(self, grace_s: float) -> None:
        """SIGTERM, up to `grace_s` to exit, then SIGKILL."""
        self._stopping = True
        proc = self.process
        if proc is not None and proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                proc.terminate()
            try:
                await asyncio.wait_for(proc.wait(), grace_s)
            except asyncio.TimeoutError:
                await self.kill()
        self._drop_spawned()

    def _end_link(self) -> None:
        if self._link_task is not None:
            self._link_task.cancel()
            self._link_task = None

    def _drop_spawned(self) -> None:
        """Release what was made for the current process: its arena, its Link task."""
        self._end_link()
        if self.arena is not None:
            self.arena.close()
            self.arena = None


class FrontendPool:
    """The N front-end processes of the service."""

    def __init__(self, launch: FrontendLaunch) -> None:
        self.launch = launch
        self.processes = [FrontendProcess(i, launch) for i in range(launch.count)]
        self.port = 0
        self._tasks: list[asyncio.Task[None]] = []

    async def start(self) -> int:
        """Start them all; the public port. The first picks the port when it is 0."""
        try:
            self.port = await self.processes[0].start(self.launch.port)
            await asyncio.gather(*(p.start(self.port) for p in self.processes[1:]))
        except BaseException:
            await self.stop(1.0)
            raise
        loop = asyncio.get_running_loop()
        self._tasks = [loop.create_task(p.supervise(self.port), name=f"frontend{p.index}")
                       for p in self.processes]
        return self.port

    def serve_links(self, handler: Callable[[int, socket.socket], Coroutine[Any, Any, None]]
                    ) -> None:
        """Each process started from now on gets a Link socket pair, our end served by
        `handler(index, sock)` (`LinkServicer.serve_framed`)."""
        for process in self.processes:
            process.link_handler = handler

    def arena(self, index: int, generation: int) -> PcmArena | None:
        """The arena of front end `index` while it runs its start `generation`."""
        if not 0 <= index < len(self.processes):
            return None
        process = self.processes[index]
        return process.arena if process.generation == generation else None

    async def stop(self, grace_s: float) -> None:
        await asyncio.gather(*(p.stop(grace_s) for p in self.processes), return_exceptions=True)
        for t in self._tasks:
            t.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)


class FrontendCollector(Collector):
    """The front-end processes in the scheduler's /metrics, read at scrape time."""

    def __init__(self, pool: FrontendPool, links: LinkServicer) -> None:
        self.pool = pool
        self.links = links

    def collect(self) -> Iterator[GaugeMetricFamily | CounterMetricFamily]:
        up = GaugeMetricFamily("asr_frontend_up", "1 while the front-end process runs",
                               labels=["frontend"])
        restarts = CounterMetricFamily("asr_frontend_restarts", "front-end process restarts",
                                       labels=["frontend"])
        relayed = GaugeMetricFamily("asr_frontend_link_calls", "Calls in flight on the front "
                                    "end's Link (Recognize, whole uploads)", labels=["frontend"])
        carried = CounterMetricFamily("asr_frontend_link_requests", "Calls the front end "
                                      "relayed on its Link (the rest go as calls of their own)",
                                      labels=["frontend", "rpc"])
        for p in self.pool.processes:
            name = str(p.index)
            up.add_metric([name], 1.0 if p.pid else 0.0)
            restarts.add_metric([name], p.restarts)
            relayed.add_metric([name], self.links.in_flight.get(p.index, 0))
            for rpc in ("Recognize", "StreamingRecognize"):
                carried.add_metric([name, rpc], self.links.carried[p.index, rpc])
        yield from (up, restarts, relayed, carried)


class LinkServicer(fpb_grpc.RelayServicer):
    """`Relay/Link`: the Recognize calls a front end relays, answered as Recognize is (request
    id, token, drain, the same handler, status codes and trailers, counted in the metrics)."""

    def __init__(self, pool: FrontendPool, recognizer: RecognizerServicer, drain: Drain,
                 metrics: Metrics, tokens: TokenInterceptor | None) -> None:
        self.pool = pool
        self.recognizer = recognizer
        self.drain = drain
        self.metrics = metrics
        self.tokens = tokens
        self.in_flight: dict[int, int] = {}  # front end -> relayed calls running
        self.carried: collections.Counter[tuple[int, str]] = collections.Counter()

    async def Link(self, request_iterator: AsyncIterator[fpb.LinkRequest],
                   context: grpc.aio.ServicerContext) -> AsyncIterator[fpb.LinkResponse]:
        given = dict(context.invocation_metadata() or ()).get(FRONTEND_KEY, "")
        try:
            index = int(str(given))
        except ValueError:
            raise InvalidRequest(f"a Link call needs its front end's index in {FRONTEND_KEY}"
                                 ) from None
        log.info("front end %d: Link call over gRPC (its socket pair broke)", index)
        async for message in _Link(self, index).run(request_iterator):
            yield message

    async def serve_framed(self, index: int, sock: socket.socket) -> None:
        """Front end `index`'s Link over our end of its socket pair: the same messages as
        frames (`protos.common.framed`), until the process ends (end-of-file)."""
        log.debug("front end %d: Link over its socket pair", index)
        await framed.serve(sock, fpb.LinkRequest.FromString,
                           lambda calls: _Link(self, index, gone_at_end=True).run(calls),
                           f"front end {index}'s Link socket")

    def _arena(self, call: fpb.RelayedCall, index: int) -> PcmArena:
        arena = self.pool.arena(index, call.generation)
        if arena is None:
            raise Unavailable(f"front end {index} restarted while relaying this call; retry")
        return arena

    def _decoded(self, call: fpb.RelayedCall, index: int) -> DecodedAudio | None:
        """The samples the front end decoded (a copy: it reuses its arena block); None when
        it could not decode them."""
        d = call.decoded
        if d.error:
            return None
        try:
            samples = self._arena(call, index).samples(
                PcmBlock(d.offset, d.length, d.sample_format))
        except ValueError as exc:
            raise InvalidRequest(f"relayed audio: {exc}") from None
        return DecodedAudio(samples, d.source_rate, d.source_channels, d.container)

    def _request(self, call: fpb.RelayedCall, index: int) -> pb.RecognizeRequest:
        """The relayed request, parsed (a copy: the front end reuses its arena block)."""
        data: bytes | memoryview = call.request
        if not data:
            try:
                data = self._arena(call, index).view(call.offset, call.length)
            except ValueError as exc:
                raise InvalidRequest(f"relayed request: {exc}") from None
        try:
            # FromString takes any buffer (the stubs say bytes): a view, parsed without a copy
            return pb.RecognizeRequest.FromString(cast(bytes, data))
        except DecodeError as exc:
            raise InvalidRequest(f"malformed request message: {str(exc)[:200]}") from None
        finally:
            if isinstance(data, memoryview):
                data.release()

    async def answer(self, call: fpb.RelayedCall, index: int,
                     emit: Callable[[fpb.RelayedAnswer], None],
                     inputs: asyncio.Queue[fpb.StreamInput] | None = None) -> None:
        """Run one relayed call to its end, its answers to `emit`: one for a Recognize call, a
        stream's responses as they come (`more` on all but the last; a live stream's all
        with `more`, then an empty answer); how it failed as its last answer. `inputs`: a
        live stream's relayed messages. Never raises but CancelledError."""
        rpc, path = _rpc_of(call)
        done = self.metrics.track(rpc)
        started, code = time.monotonic(), "OK"
        try:
            set_request_id(call.metadata.get(REQUEST_ID_KEY))
            refused = (self.tokens.refusal(path, call.metadata.get("authorization"))
                       if self.tokens is not None else None)
            if refused is not None:
                raise refused
            if call.live:
                assert inputs is not None, "a live call has its inputs"
                await run_admitted(self.drain, lambda: self._live(call, inputs, emit))
                emit(fpb.RelayedAnswer(tag=call.tag))  # the stream ended: OK
                return
            if call.HasField("decoded"):
                request = pb.RecognizeRequest(config=call.decoded.config)
                audio = self._decoded(call, index)
                error = call.decoded.error
            else:
                request, audio, error = self._request(call, index), None, ""
            timeout = call.timeout_s or None
            if call.stream:
                await run_admitted(self.drain, lambda: self._stream(call, request, timeout,
                                                                    audio, error, emit))
            else:
                response = await run_admitted(self.drain, lambda: self.recognizer.recognize(
                    request, timeout, audio, error))
                emit(fpb.RelayedAnswer(tag=call.tag, response=response.SerializeToString()))
        except Exception as exc:
            code = code_name(exc)
            status, details, trailers = status_of(path, exc)
            out = fpb.RelayedAnswer(tag=call.tag, code=status.value[0], details=details)
            out.trailers.update(trailers)
            emit(out)
        except BaseException:
            code = "CANCELLED"
            raise
        finally:
            done(code, time.monotonic() - started)

    async def _stream(self, call: fpb.RelayedCall, request: pb.RecognizeRequest,
                      timeout_s: float | None, audio: DecodedAudio | None, error: str,
                      emit: Callable[[fpb.RelayedAnswer], None]) -> None:
        """A relayed upload, under the same stream limits as a stream of the scheduler's own
        (counted from when it arrives whole)."""
        with self._counted_stream(call):
            responses = self.recognizer.relayed_upload(request, timeout_s, audio, error)
            async with contextlib.aclosing(responses):
                async for response in responses:
                    emit(fpb.RelayedAnswer(tag=call.tag, more=not response.is_last,
                                           response=response.SerializeToString()))

    @contextlib.contextmanager
    def _counted_stream(self, call: fpb.RelayedCall) -> Iterator[None]:
        """A relayed stream admitted under the scheduler's stream limits (per client) and
        counted in `asr_live_streams` while it runs, as a stream of its own is."""
        key = client_key(call.peer, call.metadata.get("authorization", ""))
        with self.recognizer.limits.admit(key):
            self.metrics.live_streams.inc()
            try:
                yield
            finally:
                self.metrics.live_streams.dec()

    async def _live(self, call: fpb.RelayedCall, inputs: asyncio.Queue[fpb.StreamInput],
                    emit: Callable[[fpb.RelayedAnswer], None]) -> None:
        """A relayed live stream, under the same stream limits and idle timeout as a live
        stream of the scheduler's own; its audio from `inputs` as the front end relays it."""
        try:
            first = pb.StreamingRecognizeRequest.FromString(call.request)
        except DecodeError as exc:
            raise InvalidRequest(f"malformed request message: {str(exc)[:200]}") from None
        recognizer = self.recognizer
        with self._counted_stream(call):
            idle = recognizer.limits.idle_watch()
            try:
                responses = recognizer.live_responses(first.streaming_config,
                                                      _RelayedInputs(inputs), idle,
                                                      call.timeout_s or None)
                async with contextlib.aclosing(responses):
                    async for response in responses:
                        emit(fpb.RelayedAnswer(tag=call.tag, more=True,
                                               response=response.SerializeToString()))
            finally:
                idle.close()


class _RelayedInputs:
    """A relayed live stream's messages after its first, from its queue of `StreamInput`s:
    audio as `AudioChunk`s, any other message parsed (the servicer refuses it as it would
    on a direct stream), the end at the client's half-close."""

    __slots__ = ("_queue",)

    def __init__(self, queue: asyncio.Queue[fpb.StreamInput]) -> None:
        self._queue = queue

    def __aiter__(self) -> _RelayedInputs:
        return self

    async def __anext__(self) -> AudioChunk | pb.StreamingRecognizeRequest:
        item = await self._queue.get()
        if item.end:
            raise StopAsyncIteration
        if item.message:
            try:
                return pb.StreamingRecognizeRequest.FromString(item.message)
            except DecodeError as exc:
                raise InvalidRequest(f"malformed request message: {str(exc)[:200]}") from None
        return AudioChunk(item.audio)  # type: ignore[arg-type]  # bytes: joined to a tail


def _rpc_of(call: fpb.RelayedCall) -> tuple[str, str]:
    """The public method a relayed call stands for: (its name, its path)."""
    return (("StreamingRecognize", STREAMING) if call.stream or call.live
            else ("Recognize", RECOGNIZE))


class _Link(AnswerPump[fpb.LinkResponse]):
    """One front end's Link call: a task per relayed call, answers batched back.
    `gone_at_end`: the end of its requests means the front end is gone (a socket pair has no
    half-close): its calls are cancelled then, as a gRPC Link call's are when it breaks."""

    def __init__(self, owner: LinkServicer, index: int, gone_at_end: bool = False) -> None:
        super().__init__(fpb.LinkResponse)
        self.owner = owner
        self.index = index
        self.gone_at_end = gone_at_end
        owner.in_flight[index] = 0
        self.calls: dict[int, asyncio.Task[None]] = {}
        self.inputs: dict[int, asyncio.Queue[fpb.StreamInput]] = {}  # live calls' by tag

    def tasks(self) -> Iterable[asyncio.Task[None]]:
        return self.calls.values()

    def finished(self, reader: asyncio.Task[None]) -> bool:
        return self.gone_at_end or not self.calls

    async def read(self, requests: AsyncIterator[fpb.LinkRequest]) -> None:
        loop = asyncio.get_running_loop()
        try:
            async for message in requests:
                for call in message.calls:
                    if call.live:
                        self.inputs[call.tag] = asyncio.Queue()
                    task = self.calls[call.tag] = loop.create_task(self._answer(call))
                    # Not a `finally` in the task: a call cancelled in the message that
                    # brought it is cancelled before it runs, and its `finally` never would.
                    task.add_done_callback(functools.partial(self._finished, call.tag))
                    self.owner.carried[self.index, _rpc_of(call)[0]] += 1
                self.owner.in_flight[self.index] = len(self.calls)
                for item in message.input:  # a stream already over has no queue: dropped
                    queue = self.inputs.get(item.tag)
                    if queue is not None:
                        queue.put_nowait(item)
                for tag in message.cancel:
                    running = self.calls.get(tag)
                    if running is not None:
                        running.cancel()
        finally:
            self.wake.set()

    def _emit(self, answer: fpb.RelayedAnswer) -> None:
        self.outbox.answers.append(answer)
        self.wake.set()

    async def _answer(self, call: fpb.RelayedCall) -> None:
        await self.owner.answer(call, self.index, self._emit, self.inputs.get(call.tag))

    def _finished(self, tag: int, task: asyncio.Task[None]) -> None:
        if self.calls.get(tag) is task:
            del self.calls[tag]
            self.inputs.pop(tag, None)
        self.owner.in_flight[self.index] = len(self.calls)
        self.wake.set()
