"""Audio sources: a path, bytes, or a binary file-like object, read as chunks.

A source is read lazily, `CHUNK_BYTES` at a time, so a file of any size is streamed and never
held whole. Paths, bytes and seekable file objects can be read again from the start, which is
what lets a failed call be retried; a non-seekable stream (a pipe) cannot.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Union

from client.options import CHUNK_BYTES

AudioSource = Union[str, "os.PathLike[str]", bytes, bytearray, memoryview, BinaryIO]


@dataclass
class Chunked:
    """A source ready to be read as chunks, any number of times if `replayable`."""

    name: str
    source: AudioSource
    replayable: bool
    size: int | None  # bytes, when known
    _start: int = 0

    def chunks(self, chunk_bytes: int = CHUNK_BYTES) -> Iterator[bytes]:
        """The audio bytes, from the start, in pieces of at most `chunk_bytes`."""
        src = self.source
        if isinstance(src, (bytes, bytearray, memoryview)):
            view = memoryview(src)
            for i in range(0, len(view), chunk_bytes):
                yield bytes(view[i:i + chunk_bytes])
        elif isinstance(src, (str, os.PathLike)):
            with open(src, "rb") as f:
                while chunk := f.read(chunk_bytes):
                    yield chunk
        else:
            if self.replayable:
                src.seek(self._start)
            while chunk := src.read(chunk_bytes):
                yield chunk


def chunked(source: AudioSource) -> Chunked:
    """Wrap a source; paths must exist (FileNotFoundError otherwise, before any call)."""
    if isinstance(source, (bytes, bytearray, memoryview)):
        return Chunked("", source, True, len(source))
    if isinstance(source, (str, os.PathLike)):
        path = Path(source)
        return Chunked(str(source), source, True, path.stat().st_size)
    if not hasattr(source, "read"):
        raise TypeError(f"audio source must be a path, bytes or a binary file object, "
                        f"not {type(source).__name__}")
    try:
        seekable = bool(source.seekable())
    except (AttributeError, OSError):
        seekable = False
    start = source.tell() if seekable else 0
    name = getattr(source, "name", None)  # open() files have their path; pipes an int
    return Chunked(name if isinstance(name, str) else "", source, seekable, None, start)
