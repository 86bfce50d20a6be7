"""`asr-client stream`: send one file (or stdin) as a live stream and print results as they come.

With `--realtime` the audio is sent at the pace it would be spoken (as from a microphone), which
needs its byte rate: WAV files carry it in their header, raw PCM takes `--sample-rate`.
"""

from __future__ import annotations

import json
import sys
import time
import wave
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import BinaryIO

from client.library import AsrClient
from client.options import RAW_SUFFIXES, TranscribeOptions

PACE_CHUNK_S = 0.1


def byte_rate(path: str, opts: TranscribeOptions) -> int:
    """Audio bytes per second of a WAV or raw PCM source (ValueError for anything else)."""
    raw = opts.raw_pcm if opts.raw_pcm is not None else Path(path).suffix.lower() in RAW_SUFFIXES
    if raw or (path == "-" and opts.sample_rate):
        if opts.sample_rate <= 0:
            raise ValueError("--realtime with raw PCM needs --sample-rate")
        return opts.sample_rate * max(1, opts.channels) * 2
    try:
        with wave.open(path, "rb") as w:
            return w.getframerate() * w.getnchannels() * w.getsampwidth()
    except (wave.Error, EOFError) as exc:
        raise ValueError(f"--realtime needs a PCM WAV or raw PCM input ({exc})") from None


def paced(f: BinaryIO, rate: int | None) -> Iterator[bytes]:
    """Chunks of `f`; with a byte `rate`, no faster than real time."""
    size = max(3200, int(rate * PACE_CHUNK_S)) if rate else 256 * 1024
    started = time.monotonic()
    sent = 0
    while chunk := f.read(size):
        if rate:
            ahead = sent / rate - (time.monotonic() - started)
            if ahead > 0:
                time.sleep(ahead)
        sent += len(chunk)
        yield chunk


def stream_command(client: AsrClient, path: str, opts: TranscribeOptions, realtime: bool,
                   fmt: str, timeout: float | None) -> int:
    """Stream `path` ("-" for stdin); print each result (text, or JSON lines with is_final)."""
    if path != "-" and opts.raw_pcm is None and Path(path).suffix.lower() in RAW_SUFFIXES:
        opts = replace(opts, raw_pcm=True)
    rate = byte_rate(path, opts) if realtime else None
    f: BinaryIO = sys.stdin.buffer if path == "-" else open(path, "rb")
    try:
        for r in client.stream(paced(f, rate), opts, timeout=timeout):
            t = r.transcript
            if fmt == "json":
                seg = t.segments[0] if t.segments and not r.is_last else None
                print(json.dumps({
                    "is_final": r.is_final, "is_last": r.is_last, "text": t.text,
                    "start_ms": seg.start_ms if seg else 0,
                    "end_ms": seg.end_ms if seg else round(t.audio_duration_s * 1000),
                    "device": t.device, "fallback_reason": t.fallback_reason,
                    "audio_processed_s": round(r.audio_processed_s, 3)}, ensure_ascii=False),
                    flush=True)
            elif r.is_last:
                print(t.text, flush=True)
            else:
                span = (f"[{t.segments[0].start_ms / 1000:.2f}-"
                        f"{t.segments[-1].end_ms / 1000:.2f} s]" if t.segments else "[-]")
                print(f"{span}{'' if r.is_final else ' (interim)'} {t.text}", flush=True)
    finally:
        if f is not sys.stdin.buffer:
            f.close()
    return 0
