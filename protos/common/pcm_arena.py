"""Shared memory for the PCM hand-off from the scheduler to one worker.

The scheduler creates one arena per worker process (an anonymous `memfd`, so no file name any
other user could open) and passes its descriptor to the worker at spawn. Each unit's samples
are copied once into a free block of the arena; the worker request carries only the block's
place (`PcmRef`), so the audio is not serialised into protobuf, framed by HTTP/2, received and
parsed again on the worker side. The scheduler frees the block when the unit's answer (or
failure) is back.

Blocks are placed first-fit from the start of the arena, so the memory actually touched (and
resident) follows the audio in flight, not the arena's size; touched pages stay resident (in
both processes) until `release_free` gives the free ones back, which the scheduler does once it
is idle. When the arena has no room (or
memfd does not exist on this platform) the caller sends the samples inline in the message,
as before: the arena is an optimisation, never a limit.

Only the scheduler's event loop allocates and frees (no locks); the worker only reads.
"""

from __future__ import annotations

import bisect
import mmap
import os
from dataclasses import dataclass

import numpy as np

from protos.common.wire import F32LE, S16LE, int16_to_float

ALIGN = 64  # block alignment, bytes
DEFAULT_ARENA_MB = 64
RAW = -1  # `PcmBlock.sample_format` of a block of raw bytes (`put_bytes`), not samples
_DTYPES: dict[int, np.dtype] = {S16LE: np.dtype("<i2"), F32LE: np.dtype("<f4")}


@dataclass(frozen=True)
class PcmBlock:
    """Where one unit's samples lie in the arena."""

    offset: int
    num_bytes: int
    sample_format: int


def supported() -> bool:
    return hasattr(os, "memfd_create")


class PcmArena:
    """One shared region; `create` on the scheduler side, `attach` in the worker."""

    def __init__(self, fd: int, size: int) -> None:
        self.fd, self.size = fd, size
        self._mm = mmap.mmap(fd, size, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
        self._view = memoryview(self._mm)
        self._starts: list[int] = []  # offsets of blocks in use, sorted
        self._ends: dict[int, int] = {}  # offset -> end of the block

    @classmethod
    def create(cls, size: int, name: str = "asr-pcm") -> PcmArena:
        """A new arena (scheduler side). Its `fd` is inheritable by a child via `pass_fds`."""
        fd = os.memfd_create(name, os.MFD_CLOEXEC)
        try:
            os.ftruncate(fd, size)
            return cls(fd, size)
        except BaseException:
            os.close(fd)
            raise

    @classmethod
    def attach(cls, fd: int, size: int) -> PcmArena:
        """The worker's side of an arena whose descriptor it inherited."""
        return cls(fd, size)

    @property
    def in_use(self) -> int:
        """Blocks handed out and not freed yet."""
        return len(self._starts)

    def _place(self, need: int) -> int | None:
        at = 0
        for start in self._starts:
            if start - at >= need:
                return at
            at = self._ends[start]
        return at if self.size - at >= need else None

    def free_ranges(self) -> list[tuple[int, int]]:
        """The whole pages no block touches, as (offset, length)."""
        page = mmap.PAGESIZE
        out, at = [], 0
        for start in [*self._starts, self.size]:
            lo, hi = -(-at // page) * page, start // page * page
            if hi > lo:
                out.append((lo, hi - lo))
            at = self._ends.get(start, start)
        return out

    def release_free(self) -> int:
        """Give the pages of free space back to the kernel (they read as zeros when next
        touched); bytes released. Call from the allocating thread only."""
        released = 0
        for offset, length in self.free_ranges():
            self._mm.madvise(mmap.MADV_REMOVE, offset, length)
            released += length
        return released

    def put(self, samples: np.ndarray) -> PcmBlock | None:
        """Copy `samples` (int16 stays S16LE, anything else F32LE) into a free block; None
        when no block is free (send the samples inline instead)."""
        if samples.dtype == np.int16:
            data, fmt = samples.astype("<i2", copy=False), S16LE
        else:
            data, fmt = samples.astype("<f4", copy=False), F32LE
        num_bytes = data.nbytes
        need = (num_bytes + ALIGN - 1) // ALIGN * ALIGN
        at = self._place(need) if num_bytes else None
        if at is None:
            return None
        # A memcpy that keeps the GIL: numpy's copy lets go of it for arrays this size, and
        # taking it back from gRPC's poller thread costs more than the copy (a 10 s unit).
        # ndarray exports the buffer protocol, but numpy's stubs declare `__buffer__` only for
        # Python 3.12+, so below that mypy does not see it as a Buffer.
        self._view[at:at + num_bytes] = memoryview(
            np.ascontiguousarray(data)).cast("B")  # type: ignore[arg-type]
        bisect.insort(self._starts, at)
        self._ends[at] = at + need
        return PcmBlock(at, num_bytes, fmt)

    def put_bytes(self, data: bytes) -> PcmBlock | None:
        """Copy raw bytes (a serialized message) into a free block; None when none is free."""
        num_bytes = len(data)
        need = (num_bytes + ALIGN - 1) // ALIGN * ALIGN
        at = self._place(need) if num_bytes else None
        if at is None:
            return None
        self._view[at:at + num_bytes] = data
        bisect.insort(self._starts, at)
        self._ends[at] = at + need
        return PcmBlock(at, num_bytes, RAW)

    def view(self, offset: int, num_bytes: int) -> memoryview:
        """The `num_bytes` raw bytes at `offset`, not copied (checked against the arena's
        size); copy what you keep, then `release()` the view."""
        if offset < 0 or num_bytes < 0 or offset + num_bytes > self.size:
            raise ValueError(f"block {offset}+{num_bytes} is outside the {self.size}-byte arena")
        return self._view[offset:offset + num_bytes]

    def free(self, block: PcmBlock) -> None:
        """Give a block back (idempotent)."""
        if self._ends.pop(block.offset, None) is not None:
            del self._starts[bisect.bisect_left(self._starts, block.offset)]

    def samples(self, block: PcmBlock) -> np.ndarray:
        """A copy of the block's samples in the format they were put (int16 or float32)."""
        dtype = _DTYPES.get(block.sample_format)
        if dtype is None or block.num_bytes % dtype.itemsize:
            raise ValueError(f"bad PCM block format {block.sample_format}/{block.num_bytes}")
        view = self.view(block.offset, block.num_bytes)
        try:
            return np.frombuffer(view, dtype=dtype).astype(dtype.newbyteorder("="), copy=True)
        finally:
            view.release()

    def read(self, block: PcmBlock) -> np.ndarray:
        """The block's samples as float32 in [-1, 1] (a copy: the block is reused later)."""
        if block.offset < 0 or block.num_bytes < 0 or block.offset + block.num_bytes > self.size:
            raise ValueError(f"PCM block {block.offset}+{block.num_bytes} is outside the "
                             f"{self.size}-byte arena")
        dtype = _DTYPES.get(block.sample_format)
        if dtype is None or block.num_bytes % dtype.itemsize:
            raise ValueError(f"bad PCM block format {block.sample_format}/{block.num_bytes}")
        raw = np.frombuffer(self._view[block.offset:block.offset + block.num_bytes], dtype=dtype)
        if dtype == np.int16:
            return int16_to_float(raw)
        return raw.astype(np.float32, copy=True)

    def close(self) -> None:
        """Unmap and close (blocks still referenced elsewhere keep nothing alive)."""
        self._view.release()
        self._mm.close()
        os.close(self.fd)
