"""Streamed input as audio: a short stream whole, a long one decoded as it arrives.

A stream is buffered up to `buffer_bytes`; one that ends within it is handed over whole (and
decoded exactly like a unary request). A longer one switches to the streaming decoder (spooled
to disk, decoded in a thread) whose 16 kHz blocks are read as they come, so neither the whole
file nor its decoded audio is ever held in memory. This module only reads input: what to do
with the audio is the pipeline's business.
"""

from __future__ import annotations

import asyncio
import contextlib
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


@contextlib.asynccontextmanager
async def open_stream(chunks: AsyncIterator[bytes], encoding: Encoding, sample_rate: int,
                      channels: int, *, buffer_bytes: int, max_bytes: int,
                      spool_dir: str | None = None,
                      buffers: ByteBudget | None = None) -> AsyncIterator[StreamInput]:
    """Read a stream of byte chunks into a `StreamInput`. Leaving the context after consuming
    `blocks` surfaces input errors (e.g. over `max_bytes`); the input's own error wins over the
    decoder's "aborted" error it causes."""
    received = 0

    def count(chunk: bytes) -> None:
        nonlocal received
        received += len(chunk)
        if received > max_bytes:
            raise InvalidAudio(f"stream is over the {max_bytes}-byte limit")

    head: list[bytes] = []
    held = 0  # bytes of `head` counted in `buffers`

    def release() -> None:
        nonlocal held
        if buffers is not None:
            buffers.give_back(held)
        held = 0

    it = chunks.__aiter__()
    try:
        async for chunk in it:
            count(chunk)
            head.append(chunk)
            if received > buffer_bytes:
                break
            if buffers is not None:
                if not buffers.try_take(len(chunk)):
                    break  # all buffers together are full: spool this stream to disk now
                held += len(chunk)
        else:
            audio = b"".join(head)
            if not audio:
                raise InvalidAudio("audio is empty")
            release()
            yield StreamInput(whole=audio)
            return
    finally:
        release()

    decoder = StreamDecoder(encoding, sample_rate, channels, spool_dir=spool_dir)
    for chunk in head:
        decoder.feed(chunk)
    head.clear()

    async def feed_rest() -> None:
        try:
            async for chunk in it:
                count(chunk)
                decoder.feed(chunk)
            decoder.finish()
        except BaseException:
            decoder.abort()
            raise

    feeder = asyncio.get_running_loop().create_task(feed_rest())
    try:
        yield StreamInput(blocks=_decoded_blocks(decoder))
        await feeder  # surfaces an input error (e.g. over the byte limit)
    except Exception:
        if feeder.done() and not feeder.cancelled() and feeder.exception() is not None:
            raise feeder.exception() from None  # type: ignore[misc]
        raise
    finally:
        feeder.cancel()
        decoder.abort()


async def decoded_stream(data: bytes, encoding: Encoding, sample_rate: int, channels: int,
                         spool_dir: str | None = None) -> AsyncIterator[np.ndarray]:
    """Bytes already received, decoded incrementally (for input too long to decode whole)."""
    decoder = StreamDecoder(encoding, sample_rate, channels, spool_dir=spool_dir)
    try:
        decoder.feed(data)
        decoder.finish()
        async for block in _decoded_blocks(decoder):
            yield block
    finally:
        decoder.abort()
