"""Decode request audio to 16 kHz mono, in the scheduler process (no torch, no funasr).

Containers go through libsndfile first (WAV, FLAC, OGG/Vorbis/Opus, MP3, AIFF, ...): the
float32 result then equals, bit for bit, ``soundfile.read(..., dtype="float32")`` mixed to mono
with ``mean(axis=1, dtype=float32)`` and resampled with ``soxr.resample(m, sr, 16000)``. A file
that is already 16 kHz mono PCM_16 passes through losslessly as int16. Containers libsndfile
cannot read (M4A/MP4, WebM/MKV, ADTS AAC, AMR, WMA) fall back to FFmpeg through PyAV; only
formats recognised by their magic bytes are handed to FFmpeg, so playlist-like demuxers (HLS,
concat) never get to open other URLs. Raw LINEAR16 is little-endian int16, interleaved.

Nothing here trusts a header's length: data is read in blocks until the decoder stops, and the
decoded duration is capped at ``MAX_DURATION_S``. Every problem raises ``InvalidAudio``.
"""

from __future__ import annotations

import enum
import io
import logging
import struct
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import soundfile as sf
import soxr

from protos.common.wire import int16_to_float
from scheduler.errors import InvalidAudio

log = logging.getLogger(__name__)

TARGET_RATE = 16000
MIN_RATE = 1000
MAX_RATE = 768000
MAX_CHANNELS = 64
MAX_DURATION_S = 6 * 3600.0
WHOLE_DECODE_LIMIT_S = 300.0  # longer input that VAD may cut is decoded as a stream
_BLOCK_FRAMES = 1 << 18


class Encoding(enum.Enum):
    CONTAINER = "container"
    LINEAR16 = "linear16"


@dataclass(frozen=True)
class DecodedAudio:
    """16 kHz mono samples: int16 for a lossless passthrough, else float32 nominally in [-1, 1]."""

    samples: np.ndarray
    source_rate: int
    source_channels: int
    container: str

    @property
    def duration_s(self) -> float:
        return len(self.samples) / TARGET_RATE

    def as_float32(self) -> np.ndarray:
        if self.samples.dtype == np.int16:
            return int16_to_float(self.samples)
        return self.samples


def pcm_bytes(audio: DecodedAudio) -> tuple[bytes, str]:
    """The samples as little-endian bytes and their FFmpeg-style format name, for workers."""
    if audio.samples.dtype == np.int16:
        return audio.samples.astype("<i2", copy=False).tobytes(), "s16le"
    return audio.samples.astype("<f4", copy=False).tobytes(), "f32le"


def _check_layout(rate: int, channels: int) -> None:
    if not MIN_RATE <= rate <= MAX_RATE:
        raise InvalidAudio(
            f"sample rate {rate} Hz is out of range ({MIN_RATE}-{MAX_RATE} expected)")
    if not 1 <= channels <= MAX_CHANNELS:
        raise InvalidAudio(f"channel count {channels} is out of range (1-{MAX_CHANNELS} expected)")


class LongerThanWholeLimit(Exception):
    """The audio decodes to more than the caller's whole-decode limit: decode it as a stream
    instead (memory then follows what is kept, not the decoded length)."""


def _check_length(frames: int, rate: int, whole_limit_s: float | None = None) -> None:
    if frames > MAX_DURATION_S * rate:
        raise InvalidAudio(f"the audio is longer than the {MAX_DURATION_S / 3600:g} h limit")
    if whole_limit_s is not None and frames > whole_limit_s * rate:
        raise LongerThanWholeLimit(f"over {whole_limit_s:g} s")


def _mono(x: np.ndarray) -> np.ndarray:
    """(frames, channels) float32 -> mono float32, exactly as the reference expression."""
    return x.mean(axis=1, dtype=np.float32) if x.shape[1] > 1 else x[:, 0]


def _finish(mono: np.ndarray, rate: int, channels: int, container: str) -> DecodedAudio:
    """Resample float32 mono to 16 kHz and validate the result."""
    if len(mono) == 0:
        raise InvalidAudio("the audio decodes to zero samples")
    if mono.dtype == np.int16:
        out = mono
    else:
        out = mono if rate == TARGET_RATE else soxr.resample(mono, rate, TARGET_RATE)
        if len(out) == 0:
            raise InvalidAudio("the audio decodes to zero samples")
        if not np.isfinite(out).all():
            raise InvalidAudio("the audio contains NaN or infinite sample values")
    log.debug("decoded %s: %d Hz x %d ch -> %d samples at 16 kHz (%s)",
              container, rate, channels, len(out), out.dtype)
    return DecodedAudio(np.ascontiguousarray(out), rate, channels, container)


def _decode_raw(data: bytes, rate: int, channels: int) -> DecodedAudio:
    if rate <= 0:
        raise InvalidAudio("sample_rate_hertz is required for LINEAR16 raw PCM")
    _check_layout(rate, channels)
    if len(data) % (2 * channels):
        raise InvalidAudio(f"raw PCM byte count {len(data)} is not a multiple of "
                           f"2 bytes x {channels} channel(s)")
    pcm = np.frombuffer(data, dtype="<i2").astype(np.int16).reshape(-1, channels)
    _check_length(len(pcm), rate)
    if rate == TARGET_RATE and channels == 1:
        return _finish(pcm[:, 0], rate, channels, "raw")
    x = int16_to_float(pcm)
    return _finish(_mono(x), rate, channels, "raw")


def _decode_sndfile(data: bytes, whole_limit_s: float | None = None) -> DecodedAudio | None:
    """Decode with libsndfile; None when it does not recognise the container."""
    try:
        f = sf.SoundFile(io.BytesIO(data))
    except (sf.SoundFileError, RuntimeError, ValueError, TypeError) as exc:
        log.debug("libsndfile cannot open the audio: %s", exc)
        return None
    with f:
        rate, channels = f.samplerate, f.channels
        container = {"WAVEX": "wav"}.get(f.format, f.format.lower())
        _check_layout(rate, channels)
        passthrough = rate == TARGET_RATE and channels == 1 and f.subtype == "PCM_16"
        dtype = "int16" if passthrough else "float32"
        blocks: list[np.ndarray] = []
        total = 0
        try:
            while True:
                x = f.read(_BLOCK_FRAMES, dtype=dtype, always_2d=True)
                if len(x) == 0:
                    break
                total += len(x)
                _check_length(total, rate, whole_limit_s)
                blocks.append(x[:, 0].copy() if passthrough else _mono(x))
        except (sf.SoundFileError, RuntimeError) as exc:
            raise InvalidAudio(f"could not decode the {container} audio: {exc}") from exc
    mono = np.concatenate(blocks) if blocks else np.zeros(0, dtype=dtype)
    return _finish(mono, rate, channels, container)


def _sniff_ffmpeg(data: bytes) -> tuple[str, str] | None:
    """(FFmpeg demuxer, short container name) for formats we let FFmpeg open, else None."""
    head = data[:64]
    checks: list[tuple[Callable[[bytes], bool], str, Callable[[bytes], str]]] = [
        (lambda h: h[4:8] in (b"ftyp", b"moov", b"mdat", b"wide", b"free"), "mp4",
         lambda h: "m4a" if h[8:11] in (b"M4A", b"M4B") else "mp4"),
        (lambda h: h.startswith(b"\x1a\x45\xdf\xa3"), "matroska",
         lambda h: "webm" if b"webm" in h else "mkv"),
        (lambda h: len(h) > 1 and h[0] == 0xFF and h[1] & 0xF6 == 0xF0, "aac", lambda h: "aac"),
        (lambda h: h.startswith(b"#!AMR"), "amr", lambda h: "amr"),
        (lambda h: h.startswith(b"\x30\x26\xb2\x75\x8e\x66\xcf\x11"), "asf", lambda h: "wma"),
        (lambda h: h.startswith(b"ID3") or (len(h) > 1 and h[0] == 0xFF and h[1] & 0xE0 == 0xE0),
         "mp3", lambda h: "mp3"),
        (lambda h: h.startswith(b"OggS"), "ogg", lambda h: "ogg"),
        (lambda h: h.startswith(b"RIFF") and h[8:12] == b"WAVE", "wav", lambda h: "wav"),
        (lambda h: h.startswith(b"fLaC"), "flac", lambda h: "flac"),
        (lambda h: h.startswith(b"caff"), "caf", lambda h: "caf"),
    ]
    for match, demuxer, name in checks:
        if match(head):
            return demuxer, name(head)
    return None


def _decode_pyav(data: bytes, demuxer: str, container: str,
                 whole_limit_s: float | None = None) -> DecodedAudio:
    import av  # here, not at the top: PyAV (~36 MB) only for what libsndfile cannot read

    blocks: list[np.ndarray] = []
    rate = channels = total = 0
    try:
        with av.open(io.BytesIO(data), mode="r", format=demuxer) as c:
            if not c.streams.audio:
                raise InvalidAudio(f"the {container} file has no audio stream")
            resampler: av.AudioResampler | None = None
            for frame in c.decode(c.streams.audio[0]):
                if resampler is None:
                    rate, channels = frame.rate, len(frame.layout.channels)
                    _check_layout(rate, channels)
                    resampler = av.AudioResampler(format="flt", layout=frame.layout, rate=rate)
                for out in resampler.resample(frame):
                    x = out.to_ndarray().reshape(-1, channels)
                    total += len(x)
                    _check_length(total, rate, whole_limit_s)
                    blocks.append(_mono(x.astype(np.float32, copy=False)))
            if resampler is not None:
                for out in resampler.resample(None):
                    blocks.append(_mono(out.to_ndarray().reshape(-1, channels)))
    except (av.FFmpegError, ValueError, OSError, EOFError) as exc:
        raise InvalidAudio(f"could not decode the {container} audio: {exc}") from exc
    if not blocks:
        raise InvalidAudio("the audio decodes to zero samples")
    return _finish(np.concatenate(blocks), rate, channels, container)


def canonical_wav(data: bytes | memoryview) -> DecodedAudio | None:
    """The samples of a plain 16 kHz mono 16-bit PCM WAV without copying or a library call
    (the common case, and what FunASR expects); None for anything else, which the full
    decoder handles. Equal to libsndfile's reading of the same file."""
    if len(data) < 44 or data[:4] != b"RIFF" or data[8:12] != b"WAVE":
        return None
    fmt: bytes | memoryview
    pos, fmt = 12, b""
    while pos + 8 <= len(data):
        cid, size = data[pos:pos + 4], struct.unpack_from("<I", data, pos + 4)[0]
        body = pos + 8
        if cid == b"fmt ":
            fmt = data[body:body + min(size, 40)]
        elif cid == b"data":
            if len(fmt) < 16:
                return None
            tag, channels, rate, _, _, bits = struct.unpack("<HHIIHH", fmt[:16])
            if tag == 0xFFFE and len(fmt) >= 26:
                tag = struct.unpack("<H", fmt[24:26])[0]
            if (tag, channels, rate, bits) != (1, 1, TARGET_RATE, 16):
                return None
            end = min(body + size, len(data))
            end -= (end - body) % 2
            samples = np.frombuffer(data, dtype="<i2", count=(end - body) // 2, offset=body)
            if len(samples) == 0:
                return None  # let the full decoder say what is wrong
            _check_length(len(samples), rate)
            return DecodedAudio(samples.astype(np.int16, copy=False), rate, channels, "wav")
        pos = body + size + (size & 1)
    return None


def decode_audio(data: bytes | memoryview, encoding: Encoding = Encoding.CONTAINER,
                 sample_rate: int = 0, channels: int = 1,
                 whole_limit_s: float | None = None) -> DecodedAudio:
    """Decode ``data`` to 16 kHz mono; ``sample_rate``/``channels`` describe raw LINEAR16 only.
    A compressed container that decodes to more than ``whole_limit_s`` raises
    `LongerThanWholeLimit` (raw PCM is never larger decoded than received)."""
    if not data:
        raise InvalidAudio("audio is empty")
    if encoding is Encoding.LINEAR16:
        return _decode_raw(bytes(data), sample_rate, channels)
    data = bytes(data)
    decoded = _decode_sndfile(data, whole_limit_s)
    if decoded is not None:
        return decoded
    sniffed = _sniff_ffmpeg(data)
    if sniffed is None:
        raise InvalidAudio("could not decode the audio: not a recognised audio container "
                           "(tried WAV/FLAC/OGG/MP3 via libsndfile and FFmpeg)")
    log.debug("libsndfile declined; decoding as %s with FFmpeg", sniffed[1])
    return _decode_pyav(data, *sniffed, whole_limit_s=whole_limit_s)
