"""Streamed input: short streams are recognised whole, long ones decoded as they arrive.

A stream is buffered up to `buffer_bytes`; one that ends within it is decoded at once, exactly
like a unary request. A longer one switches to the streaming decoder (spooled to disk, decoded
in a thread) whose 16 kHz blocks go straight into VAD segmentation, so neither the whole file
nor its decoded audio is ever held in memory.
"""

from __future__ import annotations

import asyncio
import dataclasses
import threading
from collections.abc import AsyncIterator, Awaitable, Callable

import numpy as np

from scheduler.errors import InvalidAudio
from scheduler.longform import SegmentResult
from scheduler.recognition import RecognitionOutcome, RecognitionRequest, Recognizer
from scheduler.stream_decode import StreamDecoder

_END = object()
BRIDGE_DEPTH = 4  # decoded blocks waiting between the decoder thread and the event loop


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


async def recognize_stream(recognizer: Recognizer, req: RecognitionRequest,
                           chunks: AsyncIterator[bytes], *, buffer_bytes: int, max_bytes: int,
                           spool_dir: str | None = None,
                           on_segment: Callable[[SegmentResult], Awaitable[None]] | None = None,
                           ) -> RecognitionOutcome:
    """Recognise the audio of a stream of byte chunks (config already parsed into `req`)."""
    received = 0

    def count(chunk: bytes) -> None:
        nonlocal received
        received += len(chunk)
        if received > max_bytes:
            raise InvalidAudio(f"stream is over the {max_bytes}-byte limit")

    head: list[bytes] = []
    it = chunks.__aiter__()
    async for chunk in it:
        count(chunk)
        head.append(chunk)
        if received > buffer_bytes:
            break
    else:
        audio = b"".join(head)
        if not audio:
            raise InvalidAudio("audio is empty")
        return await recognizer.recognize(dataclasses.replace(req, audio=audio))

    decoder = StreamDecoder(req.encoding, req.sample_rate, req.channels, spool_dir=spool_dir)
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
        blocks = _decoded_blocks(decoder)
        if recognizer.wants_vad(req, None):
            outcome = await recognizer.recognize_blocks(req, blocks, on_segment)
        else:
            outcome = await recognizer.recognize_samples(
                req, np.concatenate([b async for b in blocks]))
        await feeder  # surfaces an input error (e.g. over the byte limit)
        return outcome
    except Exception:
        # An input error aborts the decoder, whose "aborted" error may surface first: the
        # input's own error is the one to report.
        if feeder.done() and not feeder.cancelled() and feeder.exception() is not None:
            raise feeder.exception() from None  # type: ignore[misc]
        raise
    finally:
        feeder.cancel()
        decoder.abort()
