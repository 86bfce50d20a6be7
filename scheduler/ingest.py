"""Streamed input as audio: a short stream whole, a long one decoded as it arrives.

A stream is buffered up to `buffer_bytes`; one that ends within it is handed over whole (and
decoded exactly like a unary request). A longer one switches to the streaming decoder (spooled
to disk, decoded in a thread) whose 16 kHz blocks are read as they come, so neither the whole
file nor its decoded audio is ever held in memory. This module only reads input: what to do
with the audio is the pipeline's business.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator
from dataclasses import dataclass

import numpy as np

from scheduler.audio import Encoding
from scheduler.errors import InvalidAudio
from scheduler.limits import ByteBudget
from scheduler.stream_decode import StreamDecoder

_END = object()
BRIDGE_DEPTH = 4  # decoded blocks waiting between the decoder thread and the event loop


@dataclass
class StreamInput:
    """What a stream holds: `whole` bytes (it ended within the buffer), or decoded `blocks`."""

    whole: bytes | None = None
    blocks: AsyncIterator[np.ndarray] | None = None


async def _decoded_blocks(decoder: StreamDecoder) -> AsyncIterator[np.ndarray]:
    """The decoder's blocks, produced on a thread of their own, with backpressure."""
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue[object] = asyncio.Queue(maxsize=BRIDGE_DEPTH)

    def produce() -> None:
        def put(item: object) -> None:
            asyncio.run_coroutine_threadsafe(queue.put(item), loop).result()
        try:
            for block in decoder.blocks():
                put(block)
            put(_END)
        except BaseException as exc:  # handed to the consumer
            try:
                put(exc)
            except RuntimeError:  # the loop is gone
                pass

    thread = threading.Thread(target=produce, name="stream-decode", daemon=True)
    thread.start()
    try:
        while (item := await queue.get()) is not _END:
            if isinstance(item, BaseException):
                raise item
            yield item  # type: ignore[misc]
    finally:
        decoder.abort()
        while thread.is_alive():  # let a producer blocked on a full queue finish
            while not queue.empty():
                queue.get_nowait()
            await asyncio.sleep(0.01)


def open_stream(chunks: AsyncIterator[bytes], encoding: Encoding, sample_rate: int,
                channels: int, *, buffer_bytes: int, max_bytes: int,
                spool_dir: str | None = None, buffers: ByteBudget | None = None) -> OpenStream:
    """Read a stream of byte chunks into a `StreamInput` (`async with open_stream(...) as
    source`). Leaving the context after consuming `blocks` surfaces input errors (e.g. over
    `max_bytes`); the input's own error wins over the decoder's "aborted" error it causes."""
    return OpenStream(chunks, encoding, sample_rate, channels, buffer_bytes, max_bytes,
                      spool_dir, buffers)


class OpenStream:
    """`open_stream`'s context. A class rather than an `asynccontextmanager`: that is an
    async generator, resumed (through its `__aenter__`) on every message a stream reads; with
    the other frames removed from that path it saved 2.7 % of the scheduler's instructions per
    stream (bench/instructions.py)."""

    def __init__(self, chunks: AsyncIterator[bytes], encoding: Encoding, sample_rate: int,
                 channels: int, buffer_bytes: int, max_bytes: int, spool_dir: str | None,
                 buffers: ByteBudget | None) -> None:
        self._chunks = chunks
        self._format = (encoding, sample_rate, channels)
        self._buffer_bytes = buffer_bytes
        self._max_bytes = max_bytes
        self._spool_dir = spool_dir
        self._buffers = buffers
        self._received = 0
        self._decoder: StreamDecoder | None = None
        self._feeder: asyncio.Task[None] | None = None

    def _count(self, chunk: bytes) -> None:
        self._received += len(chunk)
        if self._received > self._max_bytes:
            raise InvalidAudio(f"stream is over the {self._max_bytes}-byte limit")

    async def __aenter__(self) -> StreamInput:
        head: list[bytes] = []
        held = 0  # bytes of `head` counted in `buffers`
        buffers = self._buffers
        it = self._chunks.__aiter__()
        try:
            async for chunk in it:
                self._count(chunk)
                head.append(chunk)
                if self._received > self._buffer_bytes:
                    break
                if buffers is not None:
                    if not buffers.try_take(len(chunk)):
                        break  # all buffers together are full: spool this stream to disk now
                    held += len(chunk)
            else:
                audio = b"".join(head)
                if not audio:
                    raise InvalidAudio("audio is empty")
                return StreamInput(whole=audio)
        finally:
            if buffers is not None:
                buffers.give_back(held)

        decoder = StreamDecoder(*self._format, spool_dir=self._spool_dir)
        for chunk in head:
            decoder.feed(chunk)
        head.clear()
        self._decoder = decoder
        self._feeder = asyncio.get_running_loop().create_task(self._feed_rest(it, decoder))
        return StreamInput(blocks=_decoded_blocks(decoder))

    async def _feed_rest(self, it: AsyncIterator[bytes], decoder: StreamDecoder) -> None:
        try:
            async for chunk in it:
                self._count(chunk)
                decoder.feed(chunk)
            decoder.finish()
        except BaseException:
            decoder.abort()
            raise

    async def __aexit__(self, exc_type: type[BaseException] | None,
                        exc: BaseException | None, tb: object) -> bool:
        feeder, decoder = self._feeder, self._decoder
        if feeder is None or decoder is None:
            return False
        try:
            if exc_type is None:
                await feeder  # surfaces an input error (e.g. over the byte limit)
            elif issubclass(exc_type, Exception) and feeder.done() and not feeder.cancelled() \
                    and feeder.exception() is not None:
                raise feeder.exception() from None  # type: ignore[misc]
        finally:
            feeder.cancel()
            decoder.abort()
        return False


async def decoded_stream(data: bytes | memoryview, encoding: Encoding, sample_rate: int,
                         channels: int, spool_dir: str | None = None
                         ) -> AsyncIterator[np.ndarray]:
    """Bytes already received, decoded incrementally (for input too long to decode whole)."""
    decoder = StreamDecoder(encoding, sample_rate, channels, spool_dir=spool_dir)
    try:
        decoder.feed(data)
        decoder.finish()
        async for block in _decoded_blocks(decoder):
            yield block
    finally:
        decoder.abort()
