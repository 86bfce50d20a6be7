"""Live-mode input (`scheduler.live_audio.live_blocks`): raw LINEAR16 at 16 kHz mono passes as
the int16 samples the client sent (no conversion on the scheduler; the worker scales them),
other raw input is mixed down and resampled to float32, and odd chunk boundaries lose nothing."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import numpy as np
import pytest

from protos.common.wire import decode_pcm, encode_pcm, int16_to_float
from scheduler.audio import Encoding
from scheduler.errors import InvalidAudio
from scheduler.live_audio import live_blocks


async def _chunks(data: bytes, sizes: list[int]) -> AsyncIterator[bytes]:
    at = 0
    for n in sizes:
        yield data[at:at + n]
        at += n
    if at < len(data):
        yield data[at:]


def _blocks(data: bytes, sizes: list[int], rate: int = 16000,
            channels: int = 1) -> list[np.ndarray]:
    async def run() -> list[np.ndarray]:
        return [b async for b in live_blocks(_chunks(data, sizes), Encoding.LINEAR16, rate,
                                             channels)]
    return asyncio.run(run())


def test_16k_mono_blocks_are_the_clients_int16_samples() -> None:
    pcm = np.random.default_rng(1).integers(-32768, 32767, 4000, dtype=np.int16)
    blocks = _blocks(pcm.tobytes(), [3200, 1001, 999, 7])  # chunks split inside samples
    assert all(b.dtype == np.int16 for b in blocks)
    assert np.array_equal(np.concatenate(blocks), pcm)
    # What the worker makes of them is what the scheduler used to send as float32.
    for b in blocks:
        pcm_bytes, fmt = encode_pcm(b)
        assert np.array_equal(decode_pcm(pcm_bytes, fmt), int16_to_float(b))


@pytest.mark.parametrize(("rate", "channels"), [(8000, 1), (16000, 2), (44100, 2)])
def test_other_raw_input_becomes_16k_mono_float32(rate: int, channels: int) -> None:
    seconds = 1.0
    t = np.arange(int(rate * seconds)) / rate
    mono = (8000 * np.sin(2 * np.pi * 440 * t)).astype(np.int16)
    pcm = np.repeat(mono[:, None], channels, axis=1).reshape(-1)
    blocks = _blocks(pcm.tobytes(), [3333, 4096, 5000], rate, channels)
    assert all(b.dtype == np.float32 for b in blocks)
    joined = np.concatenate(blocks)
    assert abs(len(joined) - 16000 * seconds) <= 16
    assert np.abs(joined).max() <= 1.0
    if rate == 16000:  # mixed down only: exactly the mono samples, scaled
        assert np.array_equal(joined, int16_to_float(mono))


def test_a_stray_byte_at_the_end_is_refused() -> None:
    with pytest.raises(InvalidAudio, match="stray byte"):
        _blocks(b"\x01\x02\x03", [3])
