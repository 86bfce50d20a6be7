"""A 2-hour recording (WAV ~230 MB, and MP3) through the real service with bounded memory.

The scheduler and the client run as the console scripts users run; the resident memory of
the client, the scheduler and every worker is sampled from /proc while a 20-minute and then a
2-hour file stream through. Bound checked: the peak for 2 hours is no more than the peak for 20
minutes plus 25 % (+100 MB of noise), i.e. it does not grow with length, and the scheduler and
client stay small (the workers' peaks are set by the batch limits, not by the file).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.long_audio import speech_clips, write_recording
from tests.rss import PeakSampler
from tests.test_cli import free_port, wait_serving

pytestmark = pytest.mark.integration

BIN = Path(sys.executable).parent
MB = 1024 * 1024


def transcribe(port: int, path: Path, scheduler_pid: int) -> tuple[dict, PeakSampler, int]:  # type: ignore[type-arg]
    client = subprocess.Popen([str(BIN / "asr-client"), "--server", f"127.0.0.1:{port}",
                               "transcribe", str(path), "--format", "json", "--timeout", "1800"],
                              stdout=subprocess.PIPE, text=True)
    with PeakSampler([scheduler_pid, client.pid]) as sampler:
        out, _ = client.communicate(timeout=1800)
    assert client.returncode == 0
    return json.loads(out), sampler, client.pid


def check_result(record: dict, seconds: float) -> None:  # type: ignore[type-arg]
    segments = record["segments"]
    starts = [s["start_ms"] for s in segments]
    assert starts == sorted(starts), "segments in order"
    assert len(segments) > seconds / 10, "a segment per phrase or so"
    # FSMN-VAD's forced cut at max_single_segment_time lands up to a frame or so past it.
    bad = [s for s in segments if not 0 < s["end_ms"] - s["start_ms"] <= 30000 + 100]
    assert not bad, bad[:5]
    assert segments[-1]["end_ms"] <= seconds * 1000 + 1
    assert segments[-1]["end_ms"] > (seconds - 60) * 1000, "the end of the file was reached"
    assert abs(record["audio_duration_s"] - seconds) < 0.5
    assert record["text"] == " ".join(s["text"] for s in segments)


def test_two_hour_recording_streams_with_bounded_memory(models_dir: Path,
                                                        tmp_path: Path) -> None:
    clips = speech_clips(tmp_path)
    short = write_recording(tmp_path / "20min.wav", 1200.0, clips, seed=1)
    long_wav = write_recording(tmp_path / "2h.wav", 7200.0, clips, seed=2)
    assert 220e6 < long_wav.stat().st_size < 240e6  # ~230 MB
    long_mp3 = tmp_path / "2h.mp3"
    subprocess.run(["ffmpeg", "-nostdin", "-loglevel", "error", "-i", str(long_wav), "-b:a",
                    "32k", str(long_mp3)], check=True)
    port = free_port()
    proc = subprocess.Popen([str(BIN / "asr-scheduler"), "serve", "--model",
                             str(models_dir / "sensevoice-tiny"), "--vad-model",
                             str(models_dir / "fsmn-vad"), "--devices", "cpu", "--host",
                             "127.0.0.1", "--port", str(port), "--metrics-port", "0",
                             "--max-batch-audio-s", "120", "--log-level", "WARNING"])
    try:
        wait_serving(f"127.0.0.1:{port}", proc)
        peaks = {}
        for name, path, seconds in (("20min", short, 1200.0), ("2h-wav", long_wav, 7200.0),
                                    ("2h-mp3", long_mp3, 7200.0)):
            record, sampler, client_pid = transcribe(port, path, proc.pid)
            check_result(record, seconds)
            peaks[name] = sampler
            assert sampler.peak_by_pid[client_pid] < 200 * MB, "client memory"
            assert sampler.peak_by_pid[proc.pid] < 500 * MB, "scheduler memory"
        print({k: f"{v.peak_total / MB:.0f} MB" for k, v in peaks.items()})
        for name in ("2h-wav", "2h-mp3"):
            assert peaks[name].peak_total < 1.25 * peaks["20min"].peak_total + 100 * MB, (
                f"{name}: {peaks[name].peak_total / MB:.0f} MB vs 20 min "
                f"{peaks['20min'].peak_total / MB:.0f} MB")
    finally:
        proc.terminate()
        proc.wait(30)
