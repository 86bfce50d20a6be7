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
from typing import BinaryIO, TextIO

from client.library import AsrClient
from client.options import RAW_SUFFIXES, TranscribeOptions
from client.types import StreamResult

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


def paced(f: BinaryIO, rate: int | None, live: bool = False) -> Iterator[bytes]:
    """Chunks of `f`; with a byte `rate`, no faster than real time. `live`: small chunks, and
    from a pipe whatever has arrived (no waiting for a full chunk)."""
    size = max(3200, int(rate * PACE_CHUNK_S)) if rate else 3200 if live else 256 * 1024
    read = getattr(f, "read1", f.read) if live else f.read
    started = time.monotonic()
    sent = 0
    while chunk := read(size):
        if rate:
            ahead = sent / rate - (time.monotonic() - started)
            if ahead > 0:
                time.sleep(ahead)
        sent += len(chunk)
        yield chunk


class _Printer:
    """Text output: interim results rewrite one line in place on a terminal (and are left out
    elsewhere); finals and the whole transcript are printed as lines."""

    def __init__(self, out: TextIO) -> None:
        self.out = out
        self.tty = out.isatty()
        self.open_line = False

    def interim(self, text: str) -> None:
        if self.tty:
            self.out.write(f"\r\x1b[K... {text}")
            self.out.flush()
            self.open_line = True

    def line(self, text: str) -> None:
        if self.open_line:
            self.out.write("\r\x1b[K")
            self.open_line = False
        print(text, file=self.out, flush=True)


def json_line(r: StreamResult) -> str:
    """One response as one JSON object (`is_final`, `text`, times, device, ...)."""
    t = r.transcript
    seg = t.segments[0] if t.segments and not r.is_last else None
    return json.dumps({
        "is_final": r.is_final, "is_last": r.is_last, "text": t.text,
        "start_ms": seg.start_ms if seg else 0,
        "end_ms": seg.end_ms if seg else round(t.audio_duration_s * 1000),
        "stability": round(r.stability, 3), "resumed": r.resumed, "model": t.model,
        "device": t.device, "fallback_reason": t.fallback_reason,
        "audio_processed_s": round(r.audio_processed_s, 3)}, ensure_ascii=False)


def stream_command(client: AsrClient, path: str, opts: TranscribeOptions, realtime: bool,
                   fmt: str, timeout: float | None, live: bool = False,
                   final_model: str = "", end_silence_ms: int = 0) -> int:
    """Stream `path` ("-" for stdin); print each result (text, or JSON lines with is_final).
    `live`: live mode (interim results while someone speaks, a final one per utterance)."""
    if opts.raw_pcm is None and (Path(path).suffix.lower() in RAW_SUFFIXES if path != "-"
                                 else opts.sample_rate > 0):
        opts = replace(opts, raw_pcm=True)  # stdin with --sample-rate: raw PCM (arecord)
    rate = byte_rate(path, opts) if realtime else None
    f: BinaryIO = sys.stdin.buffer if path == "-" else open(path, "rb")
    printer = _Printer(sys.stdout)
    try:
        for r in client.stream(paced(f, rate, live), opts, timeout=timeout, live=live,
                               final_model=final_model, end_silence_ms=end_silence_ms):
            t = r.transcript
            if fmt == "json":
                print(json_line(r), flush=True)
            elif r.is_last:
                printer.line(t.text)
            elif not r.is_final:
                printer.interim(t.text)
            else:
                span = (f"[{t.segments[0].start_ms / 1000:.2f}-"
                        f"{t.segments[-1].end_ms / 1000:.2f} s]" if t.segments else "[-]")
                printer.line(f"{span}{' (resumed)' if r.resumed else ''} {t.text}")
    finally:
        if f is not sys.stdin.buffer:
            f.close()
    return 0
