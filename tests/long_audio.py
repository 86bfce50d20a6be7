"""Long synthetic recordings: real espeak-ng speech separated by pauses, built by tiling."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import soundfile as sf

from tests.audio_fixtures import espeak_wav

PHRASES = (
    "hello world, this is a test of the speech recognition service",
    "the quick brown fox jumps over the lazy dog",
    "please call me back tomorrow morning at nine",
    "numbers like forty two and seven hundred are spoken here",
    "the meeting is moved to the large room on the second floor",
)


def speech_clips(workdir: Path) -> list[np.ndarray]:
    """Each phrase as 16 kHz mono int16."""
    clips = []
    for i, text in enumerate(PHRASES):
        path = espeak_wav(text, workdir / f"phrase{i}.wav")
        clips.append(sf.read(path, dtype="int16")[0])
    return clips


def write_recording(path: Path, seconds: float, clips: list[np.ndarray], seed: int = 0,
                    block_s: float = 600.0) -> Path:
    """A 16 kHz mono PCM16 WAV of about `seconds`: phrases with 0.3-2 s pauses, written in
    blocks so that even a multi-hour file never sits whole in memory."""
    rng = np.random.default_rng(seed)
    total = int(seconds * 16000)
    written = 0
    with sf.SoundFile(path, "w", samplerate=16000, channels=1, subtype="PCM_16") as out:
        while written < total:
            parts, n = [], 0
            while n < block_s * 16000 and written + n < total:
                clip = clips[int(rng.integers(len(clips)))]
                pause = np.zeros(int(16000 * rng.uniform(0.3, 2.0)), dtype=np.int16)
                parts += [clip, pause]
                n += len(clip) + len(pause)
            block = np.concatenate(parts)[: total - written]
            out.write(block)
            written += len(block)
    return path
