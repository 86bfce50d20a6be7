"""Output formats of `asr-client transcribe`: text, json, jsonl, csv, srt, vtt.

Each renders one file's `Transcript` as a document (`render`); csv, json and jsonl also have a
combined form with one record per input (`csv_header`/`csv_row`, `json_line`). Subtitle cues are
the transcript's segments, with their start and end times.
"""

from __future__ import annotations

import csv
import io
import json
from typing import Any

from client.types import Segment, Transcript

FORMATS = ("text", "json", "jsonl", "csv", "srt", "vtt")
EXTENSIONS = {"text": ".txt", "json": ".json", "jsonl": ".jsonl", "csv": ".csv",
              "srt": ".srt", "vtt": ".vtt"}
CSV_COLUMNS = ("file", "duration_s", "text", "language", "device", "fallback_reason", "model",
               "queue_time_s", "inference_time_s", "wall_time_s", "status", "error")
STATUS_OK = "ok"
STATUS_FAILED = "failed"


def _timestamp(ms: int, sep: str) -> str:
    ms = max(0, int(ms))
    h, rest = divmod(ms, 3_600_000)
    m, rest = divmod(rest, 60_000)
    s, milli = divmod(rest, 1000)
    return f"{h:02d}:{m:02d}:{s:02d}{sep}{milli:03d}"


def cues(t: Transcript) -> list[Segment]:
    """The subtitle cues: segments with text; the whole text as one cue when none are timed."""
    timed = [s for s in t.segments if s.text.strip()]
    if timed or not t.text.strip():
        return timed
    return [Segment(0, max(1, round(t.timings.audio_duration_s * 1000)), t.text)]


def srt(t: Transcript) -> str:
    """SubRip subtitles: numbered cues, `HH:MM:SS,mmm --> HH:MM:SS,mmm`."""
    blocks = [f"{i}\n{_timestamp(c.start_ms, ',')} --> {_timestamp(c.end_ms, ',')}\n"
              f"{c.text.strip()}\n" for i, c in enumerate(cues(t), 1)]
    return "\n".join(blocks)


def vtt(t: Transcript) -> str:
    """WebVTT subtitles: `WEBVTT` header, cues `HH:MM:SS.mmm --> HH:MM:SS.mmm`."""
    blocks = [f"{_timestamp(c.start_ms, '.')} --> {_timestamp(c.end_ms, '.')}\n"
              f"{c.text.strip()}\n" for c in cues(t)]
    return "WEBVTT\n\n" + "\n".join(blocks)


def csv_row(t: Transcript | None, file: str, error: str = "") -> list[str]:
    """One CSV record (columns `CSV_COLUMNS`); `t` None for a failed file."""
    if t is None:
        return [file, "", "", "", "", "", "", "", "", "", STATUS_FAILED, error]
    tm = t.timings
    return [file, f"{tm.audio_duration_s:.3f}", t.text, t.language, t.device, t.fallback_reason,
            t.model, f"{tm.queue_time_s:.4f}", f"{tm.inference_time_s:.4f}",
            f"{tm.wall_time_s:.4f}", STATUS_OK, ""]


def csv_text(rows: list[list[str]], header: bool = True) -> str:
    """Rows as CSV text (RFC 4180 quoting, `\\r\\n` line ends as the csv module writes)."""
    buf = io.StringIO()
    writer = csv.writer(buf)
    if header:
        writer.writerow(CSV_COLUMNS)
    writer.writerows(rows)
    return buf.getvalue()


def json_record(t: Transcript, file: str) -> dict[str, Any]:
    """The JSON object of one file (DESIGN.md keys first)."""
    return {**t.to_dict(), "file": file}


def json_line(t: Transcript, file: str) -> str:
    """One compact JSON object on one line."""
    return json.dumps(json_record(t, file), ensure_ascii=False)


def render(fmt: str, t: Transcript, file: str) -> str:
    """The whole document of one file in format `fmt` (what `--output-dir` writes)."""
    if fmt == "text":
        return t.text + "\n"
    if fmt == "json":
        return json.dumps(json_record(t, file), ensure_ascii=False, indent=2) + "\n"
    if fmt == "jsonl":
        return json_line(t, file) + "\n"
    if fmt == "csv":
        return csv_text([csv_row(t, file)])
    if fmt == "srt":
        return srt(t)
    if fmt == "vtt":
        return vtt(t)
    raise ValueError(f"unknown format {fmt!r}; one of {', '.join(FORMATS)}")
