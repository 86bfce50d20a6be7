"""Protobuf messages over a socket the scheduler shares with one worker process it spawned.

The unit hand-off (`Work`) used to ride on a gRPC call over the worker's Unix socket. Per unit
that costs both processes gRPC's per-message machinery (HTTP/2 framing, the C core's completion
queue, grpc.aio's callbacks): measured with the identity engine on the 2-core machine, the
write alone took ~0.11 ms of the scheduler's CPU per 10 s request and the worker spent ~0.3 ms
per unit, most of it in gRPC. Here the same `WorkRequest`/`WorkResponse` messages go as
length-prefixed frames over one end of a `socketpair` the worker inherits at spawn (like its PCM
arena): no listener, so nobody else can connect (no secret needed), and when either process dies
the other reads end-of-file at once. A second socket pair carries the worker's live streams
(`LiveLink` messages) the same way.

A frame is a 4-byte little-endian length, then that many bytes of one serialized message.
`FramedStream` has the shape `TaggedCall` expects of a call (`write`, async iteration over
messages received, `cancel`); its failures are `ConnectionError` (the peer went away or sent
something that is not a frame).
"""

from __future__ import annotations

import asyncio
import logging
import socket
import struct
from collections.abc import AsyncIterator, Callable
from typing import Any, Generic, TypeVar

In = TypeVar("In")

log = logging.getLogger(__name__)

HEADER = struct.Struct("<I")
MAX_FRAME_BYTES = 256 * 1024 * 1024  # a unit inline (no arena room) is at most this big
SEND_NOW_BUFFER_BYTES = 1024 * 1024  # `send_now` declines while more than this is unsent


class FramedStream(Generic[In]):
    """Messages out with `write`, messages in by iterating; over a connected stream socket."""

    def __init__(self, sock: socket.socket, parse: Callable[[bytes], In]) -> None:
        """Takes `sock` over (closed with the stream); `parse` turns a frame into a message.
        Must be created inside the running event loop."""
        self._parse = parse
        self._sock = sock
        self._opening = asyncio.get_running_loop().create_task(
            asyncio.open_unix_connection(sock=sock, limit=4 * 1024 * 1024))
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None
        self._closed = False

    async def _open(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        if self._reader is None or self._writer is None:
            self._reader, self._writer = await self._opening
        if self._closed:
            raise ConnectionError("the framed stream is closed")
        return self._reader, self._writer

    async def write(self, message: Any) -> None:
        """Send one message (waits only while the peer is not reading)."""
        _, writer = await self._open()
        writer.write(_frame(message))
        if writer.transport.is_closing():
            raise ConnectionError("the peer closed the framed stream")
        await writer.drain()

    def send_now(self, message: Any) -> bool:
        """Send one message at once if the stream is open and the peer keeps up (nothing
        waiting in the write buffer beyond `SEND_NOW_BUFFER_BYTES`); False: use `write`."""
        writer = self._writer
        if (writer is None or self._closed or writer.transport.is_closing()
                or writer.transport.get_write_buffer_size() > SEND_NOW_BUFFER_BYTES):
            return False
        writer.write(_frame(message))
        return True

    def __aiter__(self) -> FramedStream[In]:
        return self

    async def __anext__(self) -> In:
        reader, _ = await self._open()
        try:
            header = await reader.readexactly(HEADER.size)
        except asyncio.IncompleteReadError as exc:
            if exc.partial:
                raise ConnectionError("the framed stream ended inside a frame header") from None
            raise StopAsyncIteration from None
        (size,) = HEADER.unpack(header)
        if size > MAX_FRAME_BYTES:
            raise ConnectionError(f"a frame of {size} bytes is over the limit")
        try:
            data = await reader.readexactly(size)
        except asyncio.IncompleteReadError:
            raise ConnectionError("the framed stream ended inside a frame") from None
        try:
            return self._parse(data)
        except Exception as exc:  # a message that does not parse: the stream is not usable
            raise ConnectionError(f"a frame did not parse: {exc}") from None

    def cancel(self) -> None:
        """Close the stream (the peer reads end-of-file)."""
        self._closed = True
        if not self._opening.done():
            self._opening.cancel()
            self._sock.close()
        elif not self._opening.cancelled() and self._opening.exception() is None:
            self._opening.result()[1].close()
        else:
            self._sock.close()


def _frame(message: Any) -> bytes:
    data = message.SerializeToString()
    return HEADER.pack(len(data)) + data


class FramedFirst:
    """A `TaggedCall`'s `open_call`: the framed stream over `sock` the first time, `fallback()`
    (a gRPC call of the same messages) every time after, should the socket ever break while
    the peer lives on."""

    def __init__(self, sock: socket.socket | None, parse: Callable[[bytes], Any],
                 fallback: Callable[[], Any]) -> None:
        self._sock, self._parse, self._fallback = sock, parse, fallback

    def __call__(self) -> Any:
        sock, self._sock = self._sock, None
        return FramedStream(sock, self._parse) if sock is not None else self._fallback()

    def close(self) -> None:
        """Close the socket if it was never used."""
        if self._sock is not None:
            self._sock.close()
            self._sock = None


async def serve(sock: socket.socket, parse: Callable[[bytes], In],
                respond: Callable[[AsyncIterator[In]], AsyncIterator[Any]], what: str) -> None:
    """The peer's side of a `FramedFirst` stream: `respond` turns the messages received into
    the messages sent back, until the other process closes its end (or the task is
    cancelled)."""
    stream = FramedStream(sock, parse)
    try:
        async for message in respond(stream):
            await stream.write(message)
    except ConnectionError as exc:
        log.warning("%s broke: %s", what, exc)
    finally:
        stream.cancel()
