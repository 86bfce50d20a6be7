"""PCM on the wire: int16 samples become float32 in [-1, 1] exactly as FunASR's loaders scale
them (x / 32768), whichever path they take (inline bytes, the shared arena, scheduler-side)."""

from __future__ import annotations

import numpy as np

from protos.common.pcm_arena import PcmArena
from protos.common.wire import S16LE, decode_pcm, int16_to_float

EVERY_INT16 = np.arange(-32768, 32768, dtype=np.int16)
REFERENCE = EVERY_INT16.astype(np.float32) / np.float32(32768.0)


def test_int16_to_float_is_exact_for_every_value() -> None:
    out = int16_to_float(EVERY_INT16)
    assert out.dtype == np.float32
    assert np.array_equal(out, REFERENCE)
    assert out.min() == -1.0 and out.max() == np.float32(32767 / 32768)
    stereo = EVERY_INT16.reshape(-1, 2)
    assert np.array_equal(int16_to_float(stereo), REFERENCE.reshape(-1, 2))
    assert not np.shares_memory(out, EVERY_INT16)


def test_inline_and_arena_paths_agree() -> None:
    pcm = EVERY_INT16.tobytes()
    assert np.array_equal(decode_pcm(pcm, S16LE), REFERENCE)
    arena = PcmArena.create(len(pcm) * 2)
    try:
        block = arena.put(EVERY_INT16)
        assert block is not None
        assert np.array_equal(arena.read(block), REFERENCE)
    finally:
        arena.close()
