"""The synthesized-audio store: how tests and benchmarks get their speech on a machine without
espeak-ng, sox or ffmpeg (a lent GPU machine)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from bench.audio_store import STORE_ENV, NotInStore, synthesized


def _missing_tool(out: Path) -> None:
    raise FileNotFoundError(2, "No such file or directory", "espeak-ng")


def _tone(rate: int, channels: int) -> np.ndarray:
    t = np.arange(rate // 2) / rate
    x = (8000 * np.sin(2 * np.pi * 440 * t)).astype(np.int16)
    return np.stack([x // (k + 1) for k in range(channels)], axis=1)


@pytest.mark.parametrize(("rate", "channels"), [(16000, 1), (44100, 2)])
def test_a_recorded_wav_comes_back_with_the_same_samples(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, rate: int, channels: int) -> None:
    monkeypatch.setenv(STORE_ENV, str(tmp_path / "store"))
    made: list[Path] = []

    def make(out: Path) -> None:
        made.append(out)
        sf.write(str(out), _tone(rate, channels), rate, subtype="PCM_16")

    first = synthesized(tmp_path / "a" / "x.wav", f"tone|{rate}|{channels}", make)
    kept = list((tmp_path / "store").iterdir())
    assert made == [first] and len(kept) == 1 and kept[0].suffix == ".flac"
    assert kept[0].stat().st_size < first.stat().st_size
    again = synthesized(tmp_path / "b" / "x.wav", f"tone|{rate}|{channels}", _missing_tool)
    a, ra = sf.read(str(first), dtype="int16", always_2d=True)
    b, rb = sf.read(str(again), dtype="int16", always_2d=True)
    assert ra == rb == rate and np.array_equal(a, b) and sf.info(str(again)).format == "WAV"


def test_other_formats_are_kept_byte_for_byte(tmp_path: Path,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(STORE_ENV, str(tmp_path / "store"))
    payload = b"ID3\x04fake mp3 bytes"
    synthesized(tmp_path / "x.mp3", "mp3|1", lambda out: out.write_bytes(payload))
    assert synthesized(tmp_path / "y.mp3", "mp3|1", _missing_tool).read_bytes() == payload


def test_a_recipe_not_in_the_store_without_the_tools_says_what_to_do(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(STORE_ENV, str(tmp_path / "store"))
    sf.write(str(tmp_path / "seed.wav"), _tone(16000, 1), 16000)
    synthesized(tmp_path / "seed2.wav", "recipe one",
                lambda out: out.write_bytes((tmp_path / "seed.wav").read_bytes()))
    with pytest.raises(NotInStore, match=r"espeak-ng not found.*gpu_kit\.py.*recipe two"):
        synthesized(tmp_path / "z.wav", "recipe two", _missing_tool)


def test_without_the_variable_every_file_is_made(tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(STORE_ENV, raising=False)
    calls: list[Path] = []
    for name in ("p.mp3", "q.mp3"):
        synthesized(tmp_path / name, "same", lambda out: (calls.append(out), out.write_bytes(b"x")))
    assert [c.name for c in calls] == ["p.mp3", "q.mp3"]
    with pytest.raises(FileNotFoundError):
        synthesized(tmp_path / "r.mp3", "same", _missing_tool)
