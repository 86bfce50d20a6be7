"""A front-end process (`--frontends N`): takes public calls and relays them to the scheduler.

With `--frontends N` the scheduler does not listen on the public port itself. N of these
processes do, all on the same port (gRPC sets SO_REUSEPORT, so the kernel spreads incoming
connections over them), and each relays every call to the scheduler's private Unix socket,
where the one dispatcher, its workers, admission control, limits, drain and metrics live. What
a front end takes off the scheduler is the expensive part of Python gRPC: a call per request,
and receiving, framing and joining the client's request (a 10 s clip is ~320 KB). A Recognize
request is relayed without being parsed: its bytes go into a shared-memory arena the scheduler
created for this process, and only their place crosses the socket, as a tagged message on one
long-lived `asr.frontend.v1.Relay/Link` call (a small message on an open stream costs a
fraction of a call). A StreamingRecognize upload (not live) whose audio ends within
`stream_link_bytes` is read here whole, under the scheduler's stream limits and idle timeout,
and goes on the Link the same way; its responses come back as tagged answers. A live stream
goes on the Link too: its config message as a call, then each audio message as a tagged input
as the client sends it (an input waits up to `live_input_linger_s` for other streams', so
that one Link message carries many), its responses back as tagged answers, so the scheduler
serves live clients without a gRPC call each. Every other call (longer uploads, Admin,
Health, reflection) is relayed message by message as a call of its own under its own method,
the messages already read first.

Nothing is decided here: status codes, details and trailers come back from the scheduler as
they are. The client's address and the call's deadline go along (the scheduler limits streams
per client address). The process exits when the scheduler dies; the scheduler restarts it when
it dies. Killing a front end ends only the calls it holds (their clients see UNAVAILABLE,
retryable); the scheduler sees those calls cancelled.

Run by the scheduler: `python -m scheduler.frontend CONFIG_JSON` (secret in the environment).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import logging
import os
import signal
import socket
import sys
from collections.abc import AsyncIterator, Callable
from typing import Any, cast

import grpc
from google.protobuf.message import DecodeError
from grpc_health.v1 import health_pb2
from grpc_reflection.v1alpha import reflection_pb2

from protos.asr.frontend.v1 import frontend_pb2 as fpb
from protos.asr.v1 import asr_pb2 as pb
from protos.common.event_loop import run as run_loop
from protos.common.framed import FramedFirst
from protos.common.logs import setup_logging
from protos.common.memory import trim_when_idle, tune_malloc
from protos.common.pcm_arena import PcmArena, PcmBlock
from protos.common.process import die_with_parent, watch_parent
from protos.common.worker_auth import METADATA_KEY, SECRET_ENV
from scheduler.audio import (
    WHOLE_DECODE_LIMIT_S,
    DecodedAudio,
    Encoding,
    LongerThanWholeLimit,
    canonical_wav,
    decode_audio,
)
from scheduler.auth import server_credentials
from scheduler.errors import InvalidAudio, RequestError
from scheduler.grpc_fixes import keep_delivered_status
from scheduler.interceptor import status_of
from scheduler.limits import RELAYED_PEER_KEY, ByteBudget, IdleWatch, StreamLimits, client_key
from scheduler.request_views import AudioChunk, parse_streaming
from scheduler.tagged_call import TaggedCall, answer_code

log = logging.getLogger("scheduler.frontend")

RECOGNIZE = "/asr.v1.Recognizer/Recognize"
STREAMING = "/asr.v1.Recognizer/StreamingRecognize"
LINK = "/asr.frontend.v1.Relay/Link"
FRONTEND_KEY = "x-asr-frontend"  # metadata of a Link call: the front end's index
READY = "frontend-ready"  # first stdout line: "frontend-ready <port>"
# Metadata a relay must not copy: HTTP/2 and gRPC's own headers, and what the relay sets.
_DROPPED_PREFIXES = (":", "grpc-")
_DROPPED = frozenset(("te", "content-type", "user-agent", METADATA_KEY, RELAYED_PEER_KEY))


def _kept(key: str) -> bool:
    return key not in _DROPPED and not key.startswith(_DROPPED_PREFIXES)


@dataclasses.dataclass(frozen=True)
class FrontendConfig:
    """What one front-end process needs; passed as JSON on its command line (no secrets)."""

    index: int
    generation: int
    listen: str  # host:port of the public port
    dispatcher: str  # unix:PATH of the scheduler's private socket
    max_receive_bytes: int
    max_unary_bytes: int = 0  # Recognize audio up to this is decoded here (0: none)
    arena_fd: int = -1
    link_fd: int = -1  # inherited end of the scheduler's Link socket pair; -1 none
    arena_bytes: int = 0
    tls_cert: str = ""
    tls_key: str = ""
    tls_client_ca: str = ""
    parent_pid: int = 0
    log_level: str = "INFO"
    log_format: str = "text"
    event_loop: str = "auto"
    # StreamingRecognize uploads up to this many bytes of audio go on the Link (0: none), read
    # here under the scheduler's stream limits (per front end) and idle timeout.
    stream_link_bytes: int = 0
    max_streams: int = 1000
    max_streams_per_client: int = 100
    stream_idle_timeout_s: float = 60.0
    # Live streams' audio waits up to this long on the Link for other streams' (chunks of
    # 60-200 ms, from clients at staggered moments), so that the scheduler wakes once for many
    # (`--live-input-linger-ms`: at 1,024 streams over 2 front ends and 10 ms, ~50 chunks a
    # message instead of one). Calls go at once.
    live_input_linger_s: float = 0.0

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self))

    @classmethod
    def from_json(cls, text: str) -> FrontendConfig:
        return cls(**json.loads(text))


def relayed_methods() -> dict[str, tuple[bool, bool]]:
    """Every public method path -> (client streaming, server streaming)."""
    services = [*pb.DESCRIPTOR.services_by_name.values(),
                health_pb2.DESCRIPTOR.services_by_name["Health"],
                reflection_pb2.DESCRIPTOR.services_by_name["ServerReflection"]]
    return {f"/{s.full_name}/{m.name}": (m.client_streaming, m.server_streaming)
            for s in services for m in s.methods}


def forward_metadata(context: grpc.aio.ServicerContext, secret: str) -> tuple[tuple[str, Any], ...]:
    """The caller's metadata, minus transport headers, plus its address and the secret."""
    kept = tuple((m.key, m.value) for m in (context.invocation_metadata() or ())
                 if _kept(m.key))
    return (*kept, (RELAYED_PEER_KEY, context.peer() or ""), (METADATA_KEY, secret))


def _set_status(context: grpc.aio.ServicerContext, error: grpc.aio.AioRpcError) -> None:
    """Give the client's call the scheduler's status, details and trailers (the handler then
    returns; a streaming handler does not `abort` while its pump still reads the client)."""
    trailers = tuple((m.key, m.value) for m in (error.trailing_metadata() or ())
                     if _kept(m.key))
    code = error.code()
    if code == grpc.StatusCode.CANCELLED and not context.cancelled():
        code = grpc.StatusCode.UNAVAILABLE  # the scheduler went away under the call
    context.set_trailing_metadata(trailers)
    context.set_details(error.details() or "")
    context.set_code(code)


async def _relay_error(context: grpc.aio.ServicerContext, error: grpc.aio.AioRpcError) -> None:
    """End the client's call with the scheduler's status, details and trailers."""
    _set_status(context, error)
    await context.abort(context.code(), context.details() or "", ())


class Relay(grpc.GenericRpcHandler):
    """Relays every public method to the scheduler's socket; Recognize on the Link."""

    def __init__(self, channel: grpc.aio.Channel, cfg: FrontendConfig, secret: str,
                 arena: PcmArena | None) -> None:
        self.channel, self.cfg, self.secret, self.arena = channel, cfg, secret, arena
        # Recognize calls as tagged messages on one Link call, answers back by tag.
        open_link = channel.stream_stream(
            LINK, request_serializer=fpb.LinkRequest.SerializeToString,
            response_deserializer=fpb.LinkResponse.FromString)
        metadata = ((METADATA_KEY, secret), (FRONTEND_KEY, str(cfg.index)))
        # First over the socket pair end the scheduler handed over at spawn (framed messages,
        # no gRPC per call: protos.common.framed); a gRPC Link call if that ever breaks.
        open_call = FramedFirst(socket.socket(fileno=cfg.link_fd) if cfg.link_fd >= 0 else None,
                                fpb.LinkResponse.FromString,
                                lambda: open_link(metadata=metadata))
        self.link: TaggedCall[fpb.LinkRequest, fpb.RelayedAnswer] = TaggedCall(
            "the link to the scheduler", open_call, fpb.LinkRequest,
            input_linger_s=cfg.live_input_linger_s)
        self.active = 0
        self.started = 0
        self.stream_limits = StreamLimits(cfg.max_streams, cfg.max_streams_per_client,
                                          cfg.stream_idle_timeout_s)
        # Audio held by uploads being read here, all together: at most what the arena holds.
        self.buffered = ByteBudget(cfg.arena_bytes)
        self._relay_stream: Callable[..., AsyncIterator[bytes]] | None = None
        self._handlers = {path: self._handler(path, *kind)
                          for path, kind in relayed_methods().items()}

    def service(self, details: grpc.HandlerCallDetails) -> grpc.RpcMethodHandler | None:
        return self._handlers.get(details.method)

    def _handler(self, path: str, client_streaming: bool,
                 server_streaming: bool) -> grpc.RpcMethodHandler:
        if path == RECOGNIZE:
            return grpc.unary_unary_rpc_method_handler(self._recognize)
        if path == STREAMING:
            self._relay_stream = self._duplex(self.channel.stream_stream(path))
            return grpc.stream_stream_rpc_method_handler(self._stream)
        if not client_streaming and not server_streaming:
            return grpc.unary_unary_rpc_method_handler(
                self._unary(self.channel.unary_unary(path)))
        if not client_streaming:
            return grpc.unary_stream_rpc_method_handler(
                self._streaming(self.channel.unary_stream(path)))
        if not server_streaming:
            return grpc.stream_unary_rpc_method_handler(self._unary(
                self.channel.stream_unary(path)))
        return grpc.stream_stream_rpc_method_handler(
            self._duplex(self.channel.stream_stream(path)))

    def _unary(self, call: Callable[..., Any]) -> Callable[..., Any]:
        async def relay(request: Any, context: grpc.aio.ServicerContext) -> bytes:
            self.active += 1
            self.started += 1
            try:
                return await call(request, metadata=forward_metadata(context, self.secret),
                                  timeout=context.time_remaining())
            except grpc.aio.AioRpcError as exc:
                await _relay_error(context, exc)
                raise  # not reached: abort raises
            finally:
                self.active -= 1
        return relay

    def _streaming(self, call: Callable[..., Any]) -> Callable[..., AsyncIterator[bytes]]:
        async def relay(request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[bytes]:
            self.active += 1
            self.started += 1
            try:
                responses = call(request, metadata=forward_metadata(context, self.secret),
                                 timeout=context.time_remaining())
                async for response in responses:
                    yield response
            except grpc.aio.AioRpcError as exc:
                await _relay_error(context, exc)
            finally:
                self.active -= 1
        return relay

    def _duplex(self, open_call: Callable[..., Any]) -> Callable[..., AsyncIterator[bytes]]:
        """A bidirectional call: a task of ours pumps the client's messages to the
        scheduler while the scheduler's answers go back; the scheduler's status ends both."""
        async def relay(requests: AsyncIterator[bytes],
                        context: grpc.aio.ServicerContext) -> AsyncIterator[bytes]:
            self.active += 1
            self.started += 1
            call = open_call(metadata=forward_metadata(context, self.secret),
                             timeout=context.time_remaining())

            async def pump() -> None:
                # Ends when the client half-closes or either call ends (their status says
                # why; the errors of a write into an ended call are not news).
                with contextlib.suppress(grpc.aio.AioRpcError, grpc.aio.AbortError,
                                         grpc.aio.UsageError, asyncio.InvalidStateError):
                    async for message in requests:
                        await call.write(message)
                    await call.done_writing()

            pumper = asyncio.get_running_loop().create_task(pump())
            try:
                while (response := await call.read()) is not grpc.aio.EOF:
                    yield response
                if await call.code() != grpc.StatusCode.OK:
                    raise grpc.aio.AioRpcError(await call.code(), await call.initial_metadata(),
                                               await call.trailing_metadata(),
                                               await call.details())
            except grpc.aio.AioRpcError as exc:
                _set_status(context, exc)
            finally:
                pumper.cancel()
                call.cancel()  # no-op once it ended; stops the scheduler's side otherwise
                self.active -= 1
        return relay

    async def _decode(self, request: bytes
                      ) -> tuple[pb.RecognitionConfig, DecodedAudio | str] | None:
        """The request's config and its audio decoded here (or why it does not decode), so
        that decoding spreads over the front ends; None: relay the request as it is and let
        the scheduler decide (raw PCM, too big, longer than a whole decode, not a message)."""
        if self.arena is None:
            return None
        try:
            message = pb.RecognizeRequest.FromString(request)
        except DecodeError:
            return None
        return await self._decode_audio(message.config, message.audio_content)

    async def _decode_audio(self, config: pb.RecognitionConfig, audio: bytes
                            ) -> tuple[pb.RecognitionConfig, DecodedAudio | str] | None:
        """`_decode` of a request's config and audio."""
        if (config.encoding not in _CONTAINER or not audio
                or len(audio) > self.cfg.max_unary_bytes):
            return None
        try:
            decoded = canonical_wav(audio)
            if decoded is None:
                decoded = await asyncio.to_thread(
                    decode_audio, audio, Encoding.CONTAINER, 0, 1, WHOLE_DECODE_LIMIT_S)
        except InvalidAudio as exc:
            return config, str(exc)
        except (LongerThanWholeLimit, Exception):
            return None
        if decoded.duration_s > WHOLE_DECODE_LIMIT_S:
            return None
        return config, decoded

    async def _recognize(self, request: bytes, context: grpc.aio.ServicerContext) -> bytes:
        """Recognize over the Link."""
        fill, block = self._link_call(request, await self._decode(request), context,
                                      stream=False)
        self.active += 1
        self.started += 1
        try:
            return await _response(await self.link.request(fill), context)
        finally:
            self.active -= 1
            self._free(block)

    def _link_call(self, request: bytes,
                   decoded: tuple[pb.RecognitionConfig, DecodedAudio | str] | None,
                   context: grpc.aio.ServicerContext, stream: bool, live: bool = False
                   ) -> tuple[Callable[[fpb.LinkRequest, int], None], PcmBlock | None]:
        """A call for the Link: the audio decoded here into the arena (else the request's
        bytes; inline when the arena is full or off, and for a `live` stream, whose request is
        its small config message), the call's metadata, address and deadline along. Its
        `fill(outbox, tag)` for `TaggedCall`, and the arena block it uses (`_free` it when the
        call is over)."""
        audio = decoded[1] if decoded is not None else None
        block = None
        if isinstance(audio, DecodedAudio):
            block = self.arena.put(audio.samples)  # type: ignore[union-attr]
            if block is None:  # no room for the samples: relay the request itself
                decoded = audio = None
        if decoded is None and self.arena is not None and not live:
            block = self.arena.put_bytes(request)
        timeout = context.time_remaining()

        def fill(outbox: fpb.LinkRequest, tag: int) -> None:
            call = outbox.calls.add(tag=tag, generation=self.cfg.generation, stream=stream,
                                    live=live)
            if decoded is not None:
                out = call.decoded
                out.config.CopyFrom(decoded[0])
                if isinstance(audio, DecodedAudio) and block is not None:
                    out.sample_format, out.offset, out.length = (block.sample_format,
                                                                 block.offset, block.num_bytes)
                    out.source_rate, out.source_channels = audio.source_rate, audio.source_channels
                    out.container = audio.container
                else:
                    out.error = str(audio)
            elif block is None:
                call.request = request
            else:
                call.offset, call.length = block.offset, block.num_bytes
            for m in context.invocation_metadata() or ():
                if isinstance(m.value, str) and _kept(m.key):
                    call.metadata[m.key] = m.value
            call.peer = context.peer() or ""
            call.timeout_s = timeout or 0.0

        return fill, block

    def _free(self, block: PcmBlock | None) -> None:
        if block is not None:
            self.arena.free(block)  # type: ignore[union-attr]

    async def _stream(self, requests: AsyncIterator[bytes], context: grpc.aio.ServicerContext
                      ) -> AsyncIterator[bytes]:
        """StreamingRecognize: a live stream, or an upload read whole here, goes on the
        Link; anything else is relayed message by message, the messages read so far first."""
        messages = requests.__aiter__()
        read: list[bytes] = []
        limits = self.stream_limits
        taken = 0
        self.active += 1  # reading counts as a call in progress (for the idle trimmer)
        self.started += 1
        try:
            meta = dict(context.invocation_metadata() or ())
            with limits.admit(client_key(context.peer() or "",
                                         str(meta.get("authorization", "")))):
                idle = limits.idle_watch()
                try:
                    upload, taken = await self._read_upload(messages, read, idle)
                finally:
                    idle.close()
                if upload is _LIVE:
                    (first,) = read
                    read.clear()
                    async for response in self._live(first, messages, context):
                        yield response
                    return
                if upload is not None:
                    read.clear()
                    config, audio = cast("tuple[pb.RecognitionConfig, bytes]", upload)
                    request = b""
                    decoded = await self._decode_audio(config, audio)
                    if decoded is None:
                        request = pb.RecognizeRequest(
                            config=config, audio_content=audio).SerializeToString()
                    self.buffered.give_back(taken)
                    taken = 0
                    fill, block = self._link_call(request, decoded, context, stream=True)
                    try:
                        async with contextlib.aclosing(self.link.request_stream(fill)) as answers:
                            async for answer in answers:
                                yield await _response(answer, context)
                    finally:
                        self._free(block)
                    return
        except RequestError as exc:  # over a stream limit, or idle: as the scheduler says it
            status, details, trailers = status_of(STREAMING, exc)
            await context.abort(status, details, trailers)
        finally:
            self.buffered.give_back(taken)
            self.active -= 1
        assert self._relay_stream is not None
        async for response in self._relay_stream(_replay(read, messages), context):
            yield response

    async def _live(self, first: bytes, messages: AsyncIterator[bytes],
                    context: grpc.aio.ServicerContext) -> AsyncIterator[bytes]:
        """A live stream on the Link: its first message (the config) as a live call, each
        later message as a tagged input as the client sends it, the scheduler's responses
        back as they come; its status ends the client's call when that is not OK."""
        fill, _ = self._link_call(first, None, context, stream=False, live=True)
        link = self.link
        tag, answers = link.open_stream(fill)

        def audio(data: bytes) -> Callable[[fpb.LinkRequest], object]:
            return lambda outbox: outbox.input.add(tag=tag, audio=data)

        def other(data: bytes) -> Callable[[fpb.LinkRequest], object]:
            return lambda outbox: outbox.input.add(tag=tag, message=data)

        async def pump() -> None:
            async for message in messages:
                try:
                    chunk = parse_streaming(message)
                except DecodeError:
                    chunk = None
                add = (audio(bytes(chunk.audio_content)) if isinstance(chunk, AudioChunk)
                       else other(message))
                if not link.send_input(tag, add):
                    return  # the stream is over (or the Link broke): its answer says why
            link.send_input(tag, lambda outbox: outbox.input.add(tag=tag, end=True))

        pumper = asyncio.get_running_loop().create_task(pump())
        try:
            async with contextlib.aclosing(answers):
                async for answer in answers:
                    if isinstance(answer, str) or answer.code or answer.more:
                        yield await _response(answer, context)
        finally:
            pumper.cancel()
            await asyncio.gather(pumper, return_exceptions=True)

    async def _read_upload(self, messages: AsyncIterator[bytes], read: list[bytes],
                           idle: IdleWatch
                           ) -> tuple[tuple[pb.RecognitionConfig, bytes] | object | None, int]:
        """Read an upload whole: (its config and audio, `_LIVE` for a live stream (its
        first message read), or None to relay it message by message instead, e.g. over
        `stream_link_bytes`, unexpected messages; the audio bytes held in `buffered`). Every
        message read is kept in `read`."""
        try:
            first = await idle.next(messages)
        except StopAsyncIteration:
            return None, 0
        read.append(first)
        try:
            head = parse_streaming(first)
        except DecodeError:
            return None, 0
        if (not isinstance(head, pb.StreamingRecognizeRequest)
                or head.WhichOneof("streaming_request") != "streaming_config"):
            return None, 0
        if head.streaming_config.live:
            return _LIVE, 0
        limit = self.cfg.stream_link_bytes if self.arena is not None else 0
        if not limit:
            return None, 0
        chunks: list[memoryview] = []
        size = 0
        while True:
            try:
                message = await idle.next(messages)
            except StopAsyncIteration:
                break
            read.append(message)
            try:
                chunk = parse_streaming(message)
            except DecodeError:
                return None, size
            if not isinstance(chunk, AudioChunk):
                return None, size
            n = len(chunk.audio_content)
            if size + n > limit or not self.buffered.try_take(n):
                return None, size
            size += n
            chunks.append(chunk.audio_content)
        if not size:
            return None, 0
        return (head.streaming_config.config, b"".join(chunks)), size


async def _response(answer: fpb.RelayedAnswer | str, context: grpc.aio.ServicerContext
                    ) -> bytes:
    """A serialized response from the scheduler's answer; its status ends the client's call
    when that is not OK (UNAVAILABLE when the Link broke)."""
    if isinstance(answer, str):
        await context.abort(grpc.StatusCode.UNAVAILABLE,
                            f"the front end lost its link to the scheduler ({answer}); retry")
    assert not isinstance(answer, str)
    if answer.code:
        await context.abort(answer_code(answer.code), answer.details,
                            tuple(answer.trailers.items()))
    return answer.response


async def _replay(read: list[bytes], messages: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
    """The messages already read, then the rest."""
    for message in read:
        yield message
    read.clear()
    async for message in messages:
        yield message


_CONTAINER = (pb.AUDIO_ENCODING_UNSPECIFIED, pb.CONTAINER)
_LIVE = object()  # `_read_upload`: a live stream, for the Link


async def serve(cfg: FrontendConfig, secret: str) -> int:
    arena = PcmArena.attach(cfg.arena_fd, cfg.arena_bytes) if cfg.arena_fd >= 0 else None
    channel = grpc.aio.insecure_channel(cfg.dispatcher, options=[
        ("grpc.max_send_message_length", cfg.max_receive_bytes),
        ("grpc.max_receive_message_length", cfg.max_receive_bytes)])
    relay = Relay(channel, cfg, secret, arena)
    server = grpc.aio.server(options=[("grpc.max_receive_message_length", cfg.max_receive_bytes),
                                      ("grpc.so_reuseport", 1)])
    server.add_generic_rpc_handlers((relay,))
    credentials = server_credentials(cfg.tls_cert, cfg.tls_key, cfg.tls_client_ca)
    try:
        port = (server.add_secure_port(cfg.listen, credentials) if credentials
                else server.add_insecure_port(cfg.listen))
    except RuntimeError:
        port = 0
    if not port:
        log.error("cannot listen on %s (address in use or not available)", cfg.listen)
        return 2
    await server.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)

    def release() -> None:
        if arena is not None:
            arena.release_free()

    tasks = [loop.create_task(trim_when_idle(lambda: relay.started, lambda: relay.active,
                                             release)),
             loop.create_task(watch_parent(cfg.parent_pid, stop))]
    sys.stdout.write(f"{READY} {port}\n")
    sys.stdout.flush()
    log.info("front end %d (pid %d) listening on port %d, relaying to %s", cfg.index,
             os.getpid(), port, cfg.dispatcher)
    await stop.wait()
    # The scheduler stops front ends after its own drain: what is left ends quickly.
    await server.stop(1.0)
    for t in tasks:
        t.cancel()
    await relay.link.close("the front end is stopping")
    await channel.close()
    return 0


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        sys.stderr.write("usage: python -m scheduler.frontend CONFIG_JSON (started by "
                         "asr-scheduler serve --frontends N)\n")
        return 2
    cfg = FrontendConfig.from_json(args[0])
    setup_logging(cfg.log_level, cfg.log_format, f"frontend{cfg.index}")
    keep_delivered_status()  # the scheduler's early status reaches the client as it is
    die_with_parent()
    tune_malloc()  # the same audio-sized buffers as the scheduler's
    with contextlib.suppress(KeyboardInterrupt):
        return run_loop(serve(cfg, os.environ.pop(SECRET_ENV, "")), cfg.event_loop)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
