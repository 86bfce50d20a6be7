"""Streaming decode: audio bytes in as they arrive, 16 kHz mono float32 blocks out.

``feed()`` (asyncio side) appends to an unlinked temp file; ``blocks()`` (a worker thread) reads it
through a blocking "growing file" reader, so neither the upload nor the decoded audio is ever held
whole in memory. WAV (PCM 8/16/24/32-bit, float 32/64, WAVE_FORMAT_EXTENSIBLE, RF64) and raw
LINEAR16 are parsed here incrementally; a data chunk size of 0 or 0xFFFFFFFF, or one larger than
the upload, means "up to the end of the upload". Other formats recognised by the magic bytes of
``scheduler.audio`` go through PyAV; anything else falls back to libsndfile once the upload is
complete. Numerics follow ``scheduler.audio.decode_audio``: float32 samples, ``mean(axis=1,
dtype=float32)`` downmix, then ``soxr.ResampleStream`` (HQ), whose output equals one-shot
``soxr.resample`` bit for bit whatever the chunking. Every problem raises ``InvalidAudio``.
"""

from __future__ import annotations

import os
import struct
import tempfile
import threading
from collections.abc import Iterator

import numpy as np
import soundfile as sf
import soxr

from scheduler.audio import (
    MAX_DURATION_S,
    TARGET_RATE,
    Encoding,
    _check_layout,
    _mono,
    _sniff_ffmpeg,
)
from scheduler.errors import InvalidAudio

_READ_BYTES = 1 << 17  # the most bytes one parse step reads (PCM) or decodes at once (libsndfile)
_PCM_KINDS = {(1, 8): "u1", (1, 16): "<i2", (1, 24): "i3", (1, 32): "<i4", (3, 32): "<f4",
              (3, 64): "<f8"}
_SCALE = {"u1": 1 / 128, "<i2": 1 / 32768, "i3": 1 / 8388608, "<i4": 1 / 2147483648}
_ABORTED = "the audio stream was aborted"


class _Spool:
    """An unlinked, append-only temp file plus the condition its readers wait on."""

    def __init__(self, spool_dir: str | None) -> None:
        self.fd, path = tempfile.mkstemp(prefix="asr-spool-", suffix=".audio", dir=spool_dir)
        os.unlink(path)  # the data lives until the descriptor is closed
        self.cond = threading.Condition()
        self.size = self.received = 0
        self.done = self.aborted = self.reading = False

    def append(self, data: bytes | memoryview) -> None:
        with self.cond:
            self.received += len(data)
            if self.fd < 0 or self.done or self.aborted or not data:
                return
            view, off = memoryview(data), self.size
            while view:
                n = os.pwrite(self.fd, view, off)
                view, off = view[n:], off + n
            self.size = off
            self.cond.notify_all()

    def wait(self, end: int | None) -> int:
        """Block until ``end`` bytes exist (None: until the upload is complete); the size then."""
        with self.cond:
            while not (self.done or self.aborted) and (end is None or self.size < end):
                self.cond.wait()
            return self.size

    def close(self) -> None:
        with self.cond:
            if self.fd >= 0:
                os.close(self.fd)
                self.fd = -1


class _Reader:
    """A file object over the spool: reads block until the bytes exist or the upload ends."""

    def __init__(self, spool: _Spool) -> None:
        self._spool, self.pos, self.partial, self.can_seek = spool, 0, False, True

    def seekable(self) -> bool:  # PyAV asks once, at open
        return self.can_seek

    def tell(self) -> int:
        return self.pos

    def seek(self, offset: int, whence: int = os.SEEK_SET) -> int:
        base = {os.SEEK_SET: 0, os.SEEK_CUR: self.pos}.get(whence)
        if base is None:
            if whence != os.SEEK_END:
                raise OSError(f"unsupported whence {whence}")
            base = self._spool.wait(None)  # the end is known only once the upload is done
        if base + offset < 0:
            raise OSError("seek before the start of the audio")
        self.pos = base + offset
        return self.pos

    def read(self, n: int = -1) -> bytes:
        """``n`` bytes (fewer only at the end); with ``partial``, whatever is there (>= 1 byte)."""
        end = None if n is None or n < 0 else self.pos + (min(n, 1) if self.partial else n)
        size = self._spool.wait(end)
        if self._spool.aborted or size <= self.pos:
            return b""
        count = size - self.pos if n is None or n < 0 else min(n, size - self.pos)
        data = os.pread(self._spool.fd, count, self.pos)
        self.pos += len(data)
        return data


class StreamDecoder:
    """Bytes in as they arrive (from an asyncio handler), 16 kHz mono float32 blocks out (in a
    worker thread). ``feed``/``finish``/``abort`` are thread-safe and never wait for the reader;
    ``feed`` raises ``OSError`` if the spool disk is full (then call ``abort``)."""

    def __init__(self, encoding: Encoding = Encoding.CONTAINER, sample_rate: int = 0,
                 channels: int = 1, spool_dir: str | None = None,
                 max_duration_s: float = MAX_DURATION_S) -> None:
        self._encoding, self._rate, self._channels = encoding, sample_rate, channels
        self._max_duration_s, self._spool = max_duration_s, _Spool(spool_dir)
        self.source_rate, self.source_channels, self.container = 0, 0, ""

    @property
    def bytes_received(self) -> int:
        return self._spool.received

    def feed(self, data: bytes | memoryview) -> None:
        self._spool.append(data)

    def finish(self) -> None:
        with self._spool.cond:
            self._spool.done = True
            self._spool.cond.notify_all()

    def abort(self) -> None:
        with self._spool.cond:
            self._spool.aborted = True
            self._spool.cond.notify_all()
            if not self._spool.reading:  # else the reader closes it: it may be inside pread()
                self._spool.close()

    def __del__(self) -> None:
        spool = getattr(self, "_spool", None)
        if spool is not None and not spool.reading:
            spool.close()

    def blocks(self, block_s: float = 1.0) -> Iterator[np.ndarray]:
        """Yield float32 16 kHz mono blocks of ``round(block_s * 16000)`` samples (the last may
        be shorter) as input arrives; raises ``InvalidAudio``. Removes the spool when done."""
        if not block_s > 0:
            raise ValueError("block_s must be positive")
        with self._spool.cond:
            if self._spool.aborted:
                raise InvalidAudio(_ABORTED)
            if self._spool.reading or self._spool.fd < 0:
                raise RuntimeError("blocks() can run only once per StreamDecoder")
            self._spool.reading = True
        reader = _Reader(self._spool)
        try:
            yield from self._emit(self._source(reader), max(1, round(block_s * TARGET_RATE)))
        except InvalidAudio as exc:
            if self._spool.aborted:
                raise InvalidAudio(_ABORTED) from exc
            raise
        finally:
            self._spool.reading = False
            self._spool.close()

    # ---- output: duration cap, resampling, fixed-size blocks --------------------------------

    def _emit(self, chunks: Iterator[np.ndarray], block_len: int) -> Iterator[np.ndarray]:
        resampler: soxr.ResampleStream | None = None
        pending: list[np.ndarray] = []
        frames = produced = 0
        for mono in chunks:
            if self._spool.aborted:
                raise InvalidAudio(_ABORTED)
            if not frames and self.source_rate != TARGET_RATE:
                resampler = soxr.ResampleStream(self.source_rate, TARGET_RATE, 1, dtype="float32")
            frames += len(mono)
            if frames > self._max_duration_s * self.source_rate:
                limit = self._max_duration_s
                raise InvalidAudio("the audio is longer than the " + (
                    f"{limit / 3600:g} h limit" if limit >= 3600 else f"{limit:g} s limit"))
            mono = np.ascontiguousarray(mono, dtype=np.float32)
            pending.append(mono if resampler is None else resampler.resample_chunk(mono))
            produced += len(pending[-1])
            yield from _split(pending, block_len, final=False)
        if self._spool.aborted:
            raise InvalidAudio(_ABORTED)
        if resampler is not None:
            pending.append(resampler.resample_chunk(np.zeros(0, np.float32), last=True))
            produced += len(pending[-1])
        if not produced:
            raise InvalidAudio("the audio decodes to zero samples")
        yield from _split(pending, block_len, final=True)

    # ---- input: sniff, then one of the parsers below, each yielding mono float32 ------------

    def _source(self, reader: _Reader) -> Iterator[np.ndarray]:
        head = reader.read(64)
        reader.seek(0)
        if not head:
            raise InvalidAudio(_ABORTED if self._spool.aborted else "audio is empty")
        if self._encoding is Encoding.LINEAR16:
            if self._rate <= 0:
                raise InvalidAudio("sample_rate_hertz is required for LINEAR16 raw PCM")
            return self._pcm(reader, self._rate, self._channels, "<i2", None, "raw")
        if head[:4] in (b"RIFF", b"RF64", b"BW64") and head[8:12] == b"WAVE":
            return self._wav(reader)
        sniffed = _sniff_ffmpeg(head)
        if sniffed is not None:
            return self._pyav(reader, *sniffed)
        return self._sndfile(reader)

    def _start(self, rate: int, channels: int, container: str) -> None:
        _check_layout(rate, channels)
        self.source_rate, self.source_channels, self.container = rate, channels, container

    def _pcm(self, reader: _Reader, rate: int, channels: int, kind: str, limit: int | None,
             container: str) -> Iterator[np.ndarray]:
        """Interleaved PCM up to ``limit`` bytes or the end of the upload."""
        self._start(rate, channels, container)
        width = {"u1": 1, "i3": 3}.get(kind) or int(kind[2:])
        frame = width * channels
        step = max(1, _READ_BYTES // frame) * frame
        reader.partial, rest, total = True, b"", 0
        while limit is None or total < limit:
            data = reader.read(step if limit is None else min(step, limit - total))
            if not data:
                break
            total += len(data)
            data = rest + data if rest else data
            n = len(data) // frame * frame
            rest = data[n:]
            if n:
                yield _mono(_to_float(memoryview(data)[:n], kind).reshape(-1, channels))
        if rest and container == "raw":
            raise InvalidAudio(f"raw PCM byte count {total} is not a multiple of "
                               f"2 bytes x {channels} channel(s)")

    def _wav(self, reader: _Reader) -> Iterator[np.ndarray]:
        riff, fmt, data_size = reader.read(12), b"", None
        while True:
            header = reader.read(8)
            if len(header) < 8:
                raise InvalidAudio("could not decode the wav audio: no data chunk")
            cid, size = header[:4], struct.unpack("<I", header[4:])[0]
            body = reader.read(min(size, 64)) if cid in (b"fmt ", b"ds64") else b""
            if cid == b"fmt ":
                fmt = body
            elif cid == b"ds64" and len(body) >= 16:
                data_size = struct.unpack("<Q", body[8:16])[0]
            elif cid == b"data":
                break
            reader.seek(reader.tell() - len(body) + size + (size & 1))
        if len(fmt) < 16:
            raise InvalidAudio("could not decode the wav audio: no valid fmt chunk before data")
        tag, channels, rate, _, _, bits = struct.unpack("<HHIIHH", fmt[:16])
        if tag == 0xFFFE and len(fmt) >= 26:  # WAVE_FORMAT_EXTENSIBLE: the sub-format GUID
            tag = struct.unpack("<H", fmt[24:26])[0]
        _check_layout(rate, channels)
        kind = _PCM_KINDS.get((tag, bits))
        if kind is None:  # ADPCM, A-law, mu-law, ...: FFmpeg's WAV demuxer, still streaming
            reader.seek(0)
            return (yield from self._pyav(reader, "wav", "wav"))
        if riff[:4] == b"RIFF" or data_size is None:
            data_size = size
        limit = None if data_size in (0, 0xFFFFFFFF, 0xFFFFFFFFFFFFFFFF) else data_size
        yield from self._pcm(reader, rate, channels, kind, limit, "wav")

    def _pyav(self, reader: _Reader, demuxer: str, container: str) -> Iterator[np.ndarray]:
        import av  # here, not at the top: PyAV only for what libsndfile cannot read

        reader.can_seek = demuxer == "caf" or (demuxer == "mp4" and not _moov_first(reader))
        reader.partial = True
        try:
            with av.open(reader, mode="r", format=demuxer, metadata_errors="ignore") as c:
                if not c.streams.audio:
                    raise InvalidAudio(f"the {container} file has no audio stream")
                resampler: av.AudioResampler | None = None
                channels = 0
                for frame in c.decode(c.streams.audio[0]):
                    if resampler is None:
                        channels = len(frame.layout.channels)
                        self._start(frame.rate, channels, container)
                        resampler = av.AudioResampler(format="flt", layout=frame.layout,
                                                      rate=frame.rate)
                    for out in resampler.resample(frame):
                        yield _mono(out.to_ndarray().reshape(-1, channels))
                for out in resampler.resample(None) if resampler is not None else ():
                    yield _mono(out.to_ndarray().reshape(-1, channels))
        except (av.FFmpegError, ValueError, OSError, EOFError) as exc:
            raise InvalidAudio(f"could not decode the {container} audio: {exc}") from exc

    def _sndfile(self, reader: _Reader) -> Iterator[np.ndarray]:
        """Formats without an FFmpeg magic (AIFF, AU, W64, ...): libsndfile, which needs the
        file length and so starts only once the upload is complete."""
        try:
            f = sf.SoundFile(reader)
        except (sf.SoundFileError, RuntimeError, ValueError, TypeError) as exc:
            raise InvalidAudio("could not decode the audio: not a recognised audio container "
                               "(tried WAV/FLAC/OGG/MP3 via libsndfile and FFmpeg)") from exc
        with f:
            self._start(f.samplerate, f.channels, {"WAVEX": "wav"}.get(f.format, f.format.lower()))
            frames = max(1, _READ_BYTES // (4 * f.channels))
            try:
                while len(x := f.read(frames, dtype="float32", always_2d=True)):
                    yield _mono(x)
            except (sf.SoundFileError, RuntimeError) as exc:
                raise InvalidAudio(f"could not decode the {self.container} audio: {exc}") from exc


def _moov_first(reader: _Reader) -> bool:
    """Whether an MP4's index (moov) precedes its samples, so FFmpeg can read it front to back.
    Else (moov at the end) the reader is made seekable and decoding starts after the upload."""
    pos, kind = 0, b""
    for _ in range(32):
        reader.seek(pos)
        head = reader.read(16) + bytes(16)
        size, kind, large = struct.unpack(">I4sQ", head[:16])
        size = large if size == 1 else size
        if kind in (b"moov", b"mdat", b"moof") or size < 8:
            break
        pos += size
    reader.seek(0)
    return kind == b"moov"


def _to_float(data: bytes | memoryview, kind: str) -> np.ndarray:
    """Little-endian PCM bytes -> float32 exactly as libsndfile normalises them."""
    if kind == "i3":
        b = np.frombuffer(data, np.uint8).reshape(-1, 3).astype(np.int32)
        x = (b[:, 2] << 24 | b[:, 1] << 16 | b[:, 0] << 8) >> 8  # sign-extends via the top byte
    elif kind == "u1":
        x = np.frombuffer(data, np.uint8).astype(np.int16) - 128
    else:
        x = np.frombuffer(data, kind)
    y = x.astype(np.float32)
    if kind in _SCALE:
        y *= np.float32(_SCALE[kind])
    return y


def _split(pending: list[np.ndarray], block_len: int, final: bool) -> Iterator[np.ndarray]:
    """Pop ``block_len``-sample blocks off ``pending`` (all of it when ``final``)."""
    if not pending:
        return
    buf = np.concatenate(pending) if len(pending) > 1 else pending[0]
    pending.clear()
    pos = 0
    while len(buf) - pos >= block_len or (final and pos < len(buf)):
        block = buf[pos:pos + block_len].copy()
        pos += len(block)
        if not np.isfinite(block).all():
            raise InvalidAudio("the audio contains NaN or infinite sample values")
        yield block
    if pos < len(buf):
        pending.append(buf[pos:])
