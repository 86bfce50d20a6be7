"""Live-mode input: client byte chunks in, 16 kHz mono sample blocks out as they arrive.

Raw LINEAR16 is converted in memory chunk by chunk (channels mixed down, other rates resampled
with a streaming soxr resampler, to float32), so a stream open for hours holds nothing but the
current chunk. Raw LINEAR16 that already is 16 kHz mono is not converted at all: its blocks are
the int16 samples as sent (half the bytes of float32 to keep and to send to the worker, which
scales them exactly as this would; a live stream's audio passes here ten times a second).
Containers (WAV, OGG, WebM, ...) go through the upload path's `StreamDecoder`, which parses
them incrementally from a disk spool (the spool grows with the stream, at the encoded size;
memory stays bounded).
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator

import numpy as np
import soxr

from protos.common.wire import SAMPLE_RATE, int16_to_float
from scheduler.audio import Encoding
from scheduler.errors import InvalidAudio
from scheduler.stream_decode import StreamDecoder

BLOCK_S = 0.06  # container blocks: one 60 ms frame of the streaming model
LIVE_MAX_DURATION_S = 7 * 24 * 3600.0  # a live stream may stay open for days
_END = object()


async def _linear16(chunks: AsyncIterator[bytes], rate: int,
                    channels: int) -> AsyncIterator[np.ndarray]:
    frame = 2 * channels
    rest = b""
    resampler = None if rate == SAMPLE_RATE else soxr.ResampleStream(
        rate, SAMPLE_RATE, 1, dtype="float32")
    async for data in chunks:
        data = rest + data if rest else data
        n = len(data) // frame * frame
        rest = data[n:]
        if not n:
            continue
        pcm = np.frombuffer(data if n == len(data) else data[:n], dtype="<i2")
        if channels == 1 and resampler is None:
            yield pcm  # 16 kHz mono: the samples as they are
            continue
        x = int16_to_float(pcm)
        if channels > 1:
            x = x.reshape(-1, channels).mean(axis=1, dtype=np.float32)
        if resampler is not None:
            x = resampler.resample_chunk(x)
        if len(x):
            yield x
    if rest:
        raise InvalidAudio(f"raw PCM ends with {len(rest)} stray byte(s): not a multiple of "
                           f"2 bytes x {channels} channel(s)")
    if resampler is not None:
        tail = resampler.resample_chunk(np.zeros(0, np.float32), last=True)
        if len(tail):
            yield tail


async def _container(chunks: AsyncIterator[bytes],
                     spool_dir: str | None) -> AsyncIterator[np.ndarray]:
    decoder = StreamDecoder(Encoding.CONTAINER, spool_dir=spool_dir,
                            max_duration_s=LIVE_MAX_DURATION_S)
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue[object] = asyncio.Queue()

    def produce() -> None:
        try:
            for block in decoder.blocks(BLOCK_S):
                loop.call_soon_threadsafe(queue.put_nowait, block)
            loop.call_soon_threadsafe(queue.put_nowait, _END)
        except BaseException as exc:  # handed to the consumer
            try:
                loop.call_soon_threadsafe(queue.put_nowait, exc)
            except RuntimeError:  # the loop is gone
                pass

    async def feed() -> None:
        try:
            async for data in chunks:
                decoder.feed(data)
            decoder.finish()
        except BaseException:
            decoder.abort()
            raise

    thread = threading.Thread(target=produce, name="live-decode", daemon=True)
    thread.start()
    feeder = loop.create_task(feed())
    try:
        while True:
            getter = asyncio.ensure_future(queue.get())
            waits = {getter} if feeder.done() else {getter, feeder}
            await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
            if not getter.done():
                getter.cancel()
                feeder.result()  # the client's stream failed: raise it
                continue
            item = getter.result()
            if item is _END:
                break
            if isinstance(item, BaseException):
                raise item
            yield item  # type: ignore[misc]
    finally:
        decoder.abort()
        feeder.cancel()
        await asyncio.gather(feeder, return_exceptions=True)


def live_blocks(chunks: AsyncIterator[bytes], encoding: Encoding, sample_rate: int,
                channels: int, spool_dir: str | None = None) -> AsyncIterator[np.ndarray]:
    """16 kHz mono blocks of a live stream, as its bytes arrive: int16 for raw 16 kHz mono
    LINEAR16, float32 in [-1, 1] otherwise."""
    if encoding == Encoding.LINEAR16:
        return _linear16(chunks, sample_rate, max(1, channels))
    return _container(chunks, spool_dir)
