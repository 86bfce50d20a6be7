"""Helpers that make real speech files for tests, and an independent 16 kHz mono reference.

Plain functions (no pytest fixtures). They shell out to espeak-ng, sox and ffmpeg; sox runs with
``-R`` (repeatable dither) and ffmpeg with bitexact flags, so the same input gives the same bytes.
With ``ASR_AUDIO_STORE`` set, what they make is kept in / restored from a store
(`bench/audio_store.py`): how the GPU tests run where those tools are missing.
"""

from __future__ import annotations

import struct
import subprocess
import tempfile
from pathlib import Path

import numpy as np
import soundfile as sf
import soxr

from bench.audio_store import file_digest, synthesized

TARGET_RATE = 16000
SENTENCES = (
    "hello world, this is a test of the speech recognition service",
    "the quick brown fox jumps over the lazy dog",
    "please call me back tomorrow morning at nine",
    "numbers like forty two and seven hundred are spoken here",
)


def _run(cmd: list[str]) -> None:
    subprocess.run(cmd, check=True, capture_output=True, timeout=120)


def espeak_wav(text: str, path: Path, *, rate: int = 16000, channels: int = 1,
               voice: str = "en") -> Path:
    """Synthesize ``text`` with espeak-ng into a 16-bit WAV at ``rate`` Hz with ``channels``.

    With two or more channels the copies differ (channel k is scaled by 1/(k+1)), so a downmix
    is really exercised.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)

    def make(out: Path) -> None:
        with tempfile.TemporaryDirectory() as tmp:
            raw = Path(tmp) / "espeak.wav"
            _run(["espeak-ng", "-v", voice, "-w", str(raw), text])
            effects: list[str] = []
            if channels > 1:
                effects = ["remix", *(f"1v{1 / (k + 1):g}" for k in range(channels))]
            _run(["sox", "-R", str(raw), "-r", str(rate), "-c", str(channels), "-b", "16",
                  str(out), *effects])

    return synthesized(path, f"espeak_wav|{voice}|{rate}|{channels}|{text}", make)


def convert(src: Path, dst: Path) -> Path:
    """Convert ``src`` to the format of ``dst``'s suffix: .wav/.flac/.mp3/.ogg via sox,
    .m4a/.aac (AAC) and .opus/.webm (Opus) via ffmpeg. Deterministic output."""
    src, dst = Path(src), Path(dst)
    suffix = dst.suffix.lower()
    if suffix not in (".wav", ".flac", ".mp3", ".ogg", ".m4a", ".aac", ".opus", ".webm"):
        raise ValueError(f"unsupported target format {suffix!r}")

    def make(out: Path) -> None:
        if suffix in (".wav", ".flac", ".mp3", ".ogg"):
            _run(["sox", "-R", str(src), str(out)])
            return
        aac = suffix in (".m4a", ".aac")
        codec = ["-c:a", "aac", "-b:a", "128k"] if aac else ["-c:a", "libopus"]
        _run(["ffmpeg", "-nostdin", "-loglevel", "error", "-y", "-i", str(src), *codec,
              "-map_metadata", "-1", "-fflags", "+bitexact", "-flags:a", "+bitexact", str(out)])

    return synthesized(dst, f"convert|{file_digest(src)}|{suffix}", make)


def _ffmpeg_f32(path: Path) -> tuple[np.ndarray, int]:
    """Decode with the ffmpeg CLI to interleaved f32le at the native rate: (frames, ch), rate."""
    probe = subprocess.run(
        ["ffprobe", "-v", "error", "-select_streams", "a:0", "-show_entries",
         "stream=sample_rate,channels", "-of", "csv=p=0", str(path)],
        check=True, capture_output=True, text=True, timeout=60)
    rate_s, channels_s = probe.stdout.strip().splitlines()[0].split(",")[:2]
    raw = subprocess.run(
        ["ffmpeg", "-nostdin", "-loglevel", "error", "-i", str(path), "-map", "0:a:0",
         "-f", "f32le", "-acodec", "pcm_f32le", "-"],
        check=True, capture_output=True, timeout=120).stdout
    return np.frombuffer(raw, dtype="<f4").reshape(-1, int(channels_s)), int(rate_s)


def reference_16k_mono(path: Path) -> np.ndarray:
    """The reference decode: float32 read, mean over channels, soxr to 16 kHz.

    libsndfile (soundfile) reads everything but .m4a/.mp4/.aac/.webm, which the ffmpeg CLI
    decodes to f32le at the native rate.
    """
    path = Path(path)
    if path.suffix.lower() in (".m4a", ".webm", ".aac", ".mp4"):
        x, sr = _ffmpeg_f32(path)
    else:
        x, sr = sf.read(str(path), dtype="float32", always_2d=True)
    m = x.mean(axis=1, dtype=np.float32) if x.shape[1] > 1 else x[:, 0]
    return m if sr == TARGET_RATE else soxr.resample(m, sr, TARGET_RATE)


def wav_header(rate: int = 16000, channels: int = 1, data_len: int = 0) -> bytes:
    """A 44-byte PCM16 WAV header declaring `data_len` bytes of data."""
    return (b"RIFF" + struct.pack("<I", 36 + data_len) + b"WAVEfmt "
            + struct.pack("<IHHIIHH", 16, 1, channels, rate, rate * 2 * channels,
                          2 * channels, 16) + b"data" + struct.pack("<I", data_len))


FORMAT_TEXT = "hello world, this is a test of the speech recognition service"


def speech_formats(d: Path) -> dict[str, Path]:
    """One sentence in many shapes: 16 kHz mono, 44.1 kHz and 8 kHz stereo WAV, a short clip,
    and the 44.1 kHz stereo one as FLAC, MP3, OGG, M4A, Opus, WebM and AAC."""
    out = {
        "m16.wav": espeak_wav(FORMAT_TEXT, d / "m16.wav"),
        "s44.wav": espeak_wav(FORMAT_TEXT, d / "s44.wav", rate=44100, channels=2),
        "s8.wav": espeak_wav(FORMAT_TEXT, d / "s8.wav", rate=8000, channels=2),
        "short.wav": espeak_wav("hi", d / "short.wav", rate=22050),
    }
    for ext in ("flac", "mp3", "ogg", "m4a", "opus", "webm", "aac"):
        out[f"s44.{ext}"] = convert(out["s44.wav"], d / f"s44.{ext}")
    out["short.mp3"] = convert(out["short.wav"], d / "short.mp3")
    return out


def speech_files(d: Path) -> dict[str, Path]:
    """The `speech` fixture's files in `d`: 16 kHz mono WAV, 44.1 kHz stereo WAV, FLAC, MP3."""
    base = espeak_wav(SENTENCES[0], d / "s16k.wav")
    stereo = espeak_wav(SENTENCES[1], d / "s44k_stereo.wav", rate=44100, channels=2)
    return {"wav16k": base, "wav44k_stereo": stereo,
            "flac": convert(espeak_wav(SENTENCES[2], d / "f.wav", rate=22050), d / "s.flac"),
            "mp3": convert(espeak_wav(SENTENCES[3], d / "m.wav", rate=24000), d / "s.mp3")}
