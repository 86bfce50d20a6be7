"""Unit tests for scheduler.audio: containers, raw PCM, exact numerics and hostile input."""

from __future__ import annotations

import io
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import scheduler.audio as audio_mod
from scheduler.audio import (
    TARGET_RATE,
    DecodedAudio,
    Encoding,
    decode_audio,
    pcm_bytes,
)
from scheduler.errors import InvalidAudio
from tests.audio_fixtures import convert, reference_16k_mono, speech_formats, wav_header


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("audio")
    out = speech_formats(d)
    out["m16.flac"] = convert(out["m16.wav"], d / "m16.flac")
    return out


def _source_duration(files: dict[str, Path]) -> float:
    return sf.info(str(files["m16.wav"])).duration


def _bad(data: bytes, match: str, **kw: object) -> None:
    with pytest.raises(InvalidAudio, match=match):
        decode_audio(data, **kw)  # type: ignore[arg-type]


# ---- well-formed containers -------------------------------------------------------------


@pytest.mark.parametrize("name", ["m16.wav", "m16.flac"])
def test_16k_mono_pcm16_passes_through_as_int16(files: dict[str, Path], name: str) -> None:
    data = files[name].read_bytes()
    a = decode_audio(data)
    assert a.samples.dtype == np.int16
    assert (a.source_rate, a.source_channels, a.container) == (16000, 1, name.split(".")[1])
    expected, _ = sf.read(io.BytesIO(data), dtype="int16")
    assert np.array_equal(a.samples, expected)
    assert np.array_equal(a.as_float32(), reference_16k_mono(files[name]))
    assert a.as_float32().dtype == np.float32
    assert abs(a.duration_s - _source_duration(files)) < 0.01
    raw, fmt = pcm_bytes(a)
    assert fmt == "s16le" and raw == expected.astype("<i2").tobytes()


@pytest.mark.parametrize(
    ("name", "container", "rate", "tol"),
    [("s44.wav", "wav", 44100, 0.01), ("s44.flac", "flac", 44100, 0.01),
     ("s44.mp3", "mp3", 44100, 0.1), ("s44.ogg", "ogg", 44100, 0.05),
     ("s44.opus", "ogg", 48000, 0.05), ("s8.wav", "wav", 8000, 0.01)],
)
def test_libsndfile_containers_match_reference_exactly(
    files: dict[str, Path], name: str, container: str, rate: int, tol: float
) -> None:
    a = decode_audio(files[name].read_bytes())
    assert isinstance(a, DecodedAudio)
    assert (a.container, a.source_rate, a.source_channels) == (container, rate, 2)
    assert a.samples.dtype == np.float32
    assert np.array_equal(a.samples, reference_16k_mono(files[name]))
    assert a.as_float32() is a.samples
    assert abs(a.duration_s - _source_duration(files)) < tol
    raw, fmt = pcm_bytes(a)
    assert fmt == "f32le" and len(raw) == 4 * len(a.samples)


@pytest.mark.parametrize(("name", "container", "rate"),
                         [("s44.m4a", "m4a", 44100), ("s44.webm", "webm", 48000),
                          ("s44.aac", "aac", 44100)])
def test_ffmpeg_containers_decode_via_pyav_close_to_ffmpeg_cli(
    files: dict[str, Path], name: str, container: str, rate: int
) -> None:
    a = decode_audio(files[name].read_bytes())
    assert (a.container, a.source_rate, a.source_channels) == (container, rate, 2)
    assert a.samples.dtype == np.float32 and np.isfinite(a.samples).all()
    ref = reference_16k_mono(files[name])
    assert abs(len(a.samples) - len(ref)) <= 16
    n = min(len(a.samples), len(ref))
    assert np.max(np.abs(a.samples[:n] - ref[:n])) < 1e-4
    assert abs(a.duration_s - _source_duration(files)) < 0.1


def test_truncated_wav_decodes_what_is_there(files: dict[str, Path]) -> None:
    data = files["m16.wav"].read_bytes()
    a = decode_audio(data[: 44 + 2 * 8000 + 1])
    assert a.samples.dtype == np.int16 and len(a.samples) == 8000


@pytest.mark.parametrize(("declared", "frames"), [(0x7FFFFFFF, None), (0xFFFFFFFF, None),
                                                  (2 * 1000, 1000)])
def test_wav_with_lying_data_length(files: dict[str, Path], declared: int,
                                    frames: int | None) -> None:
    data = bytearray(files["m16.wav"].read_bytes())
    assert data[36:40] == b"data"
    full = decode_audio(bytes(data))
    data[40:44] = struct.pack("<I", declared)
    data[4:8] = struct.pack("<I", 0xFFFFFFFF)
    a = decode_audio(bytes(data))
    expected = full.samples if frames is None else full.samples[:frames]
    assert np.array_equal(a.samples, expected)


# ---- raw LINEAR16 -------------------------------------------------------------------------


def test_raw_linear16_16k_mono_passthrough(files: dict[str, Path]) -> None:
    pcm, _ = sf.read(str(files["m16.wav"]), dtype="int16")
    a = decode_audio(pcm.astype("<i2").tobytes(), Encoding.LINEAR16, sample_rate=16000)
    assert a.samples.dtype == np.int16 and np.array_equal(a.samples, pcm)
    assert (a.container, a.source_rate, a.source_channels) == ("raw", 16000, 1)
    assert np.array_equal(a.as_float32(), reference_16k_mono(files["m16.wav"]))


def test_raw_linear16_8k_stereo_matches_reference(files: dict[str, Path]) -> None:
    pcm, _ = sf.read(str(files["s8.wav"]), dtype="int16")
    a = decode_audio(pcm.astype("<i2").tobytes(), Encoding.LINEAR16, sample_rate=8000,
                     channels=2)
    assert (a.container, a.source_rate, a.source_channels) == ("raw", 8000, 2)
    assert a.samples.dtype == np.float32
    assert np.array_equal(a.samples, reference_16k_mono(files["s8.wav"]))
    assert abs(a.duration_s - _source_duration(files)) < 0.01


# ---- bad input ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("data", "kw", "match"),
    [
        (b"", {}, "audio is empty"),
        (b"", {"encoding": Encoding.LINEAR16, "sample_rate": 16000}, "audio is empty"),
        (b"\x00", {}, "not a recognised audio container"),
        (b"\xff", {}, "could not decode"),
        (b"\x00", {"encoding": Encoding.LINEAR16, "sample_rate": 16000}, "not a multiple of 2"),
        (np.random.default_rng(1).bytes(5000), {}, "could not decode"),
        (b"Hello, this is a plain text file.\n" * 50, {}, "not a recognised audio container"),
        (b"#EXTM3U\n#EXT-X-TARGETDURATION:10\n#EXTINF:10,\nhttp://127.0.0.1:9/a.ts\n", {},
         "not a recognised audio container"),
        (b"\x00\x00" * 100, {"encoding": Encoding.LINEAR16}, "sample_rate_hertz is required"),
        (b"\x00" * 1001, {"encoding": Encoding.LINEAR16, "sample_rate": 16000},
         "raw PCM byte count 1001 is not a multiple of 2 bytes x 1 channel"),
        (b"\x00" * 1002, {"encoding": Encoding.LINEAR16, "sample_rate": 16000, "channels": 2},
         "not a multiple of 2 bytes x 2 channel"),
        (b"\x00\x00" * 100, {"encoding": Encoding.LINEAR16, "sample_rate": 1}, "out of range"),
        (b"\x00\x00" * 100, {"encoding": Encoding.LINEAR16, "sample_rate": 10**9},
         "sample rate 1000000000 Hz is out of range"),
        (b"\x00\x00" * 100, {"encoding": Encoding.LINEAR16, "sample_rate": 16000, "channels": 0},
         "channel count 0 is out of range"),
        (wav_header(), {}, "zero samples"),
        (wav_header()[:30], {}, "could not decode"),
        (wav_header(rate=3, data_len=200) + b"\x01\x00" * 100, {}, "3 Hz is out of range"),
        (wav_header(rate=10**9, data_len=200) + b"\x01\x00" * 100, {}, "out of range"),
    ],
)
def test_bad_input_raises_invalid_audio(data: bytes, kw: dict[str, object], match: str) -> None:
    _bad(data, match, **kw)


@pytest.mark.parametrize("name", ["s44.m4a", "s44.mp3", "s44.flac", "s44.ogg"])
def test_truncated_containers_never_crash(files: dict[str, Path], name: str) -> None:
    data = files[name].read_bytes()
    for cut in (4, 12, 100, len(data) // 2):
        try:
            a = decode_audio(data[:cut])
        except InvalidAudio as exc:
            assert str(exc)
        else:
            assert np.isfinite(a.as_float32()).all()


@pytest.mark.parametrize("name", ["m16.wav", "s44.mp3", "s44.m4a", "raw"])
def test_duration_cap(files: dict[str, Path], name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(audio_mod, "MAX_DURATION_S", 1.0)
    if name == "raw":
        _bad(b"\x00\x00" * 16001, "longer than", encoding=Encoding.LINEAR16, sample_rate=16000)
    else:
        _bad(files[name].read_bytes(), "longer than")


def test_scheduler_audio_does_not_import_torch() -> None:
    code = "import sys, scheduler.audio; assert not {'torch', 'funasr'} & set(sys.modules)"
    subprocess.run([sys.executable, "-c", code], check=True, cwd=Path(__file__).parents[1])


# ---- fuzzing ------------------------------------------------------------------------------


def _decode_or_invalid(data: bytes) -> None:
    try:
        a = decode_audio(data)
    except InvalidAudio as exc:
        assert str(exc)
        return
    assert isinstance(a, DecodedAudio)
    assert a.samples.ndim == 1 and len(a.samples) > 0
    assert a.samples.dtype in (np.int16, np.float32)
    assert np.isfinite(a.as_float32()).all()
    assert a.duration_s == len(a.samples) / TARGET_RATE


_FUZZ = settings(max_examples=150, deadline=None,
                 suppress_health_check=[HealthCheck.function_scoped_fixture])


_MAGICS = [b"", b"RIFF\x00\x00\x00\x00WAVE", b"OggS", b"fLaC", b"ID3", b"\xff\xfb",
           b"\xff\xf1", b"\x00\x00\x00\x20ftypM4A ", b"\x1a\x45\xdf\xa3", b"caff", b"FORM"]


@_FUZZ
@given(st.sampled_from(_MAGICS), st.binary(max_size=4096))
def test_fuzz_random_bytes(magic: bytes, data: bytes) -> None:
    _decode_or_invalid(magic + data)


@_FUZZ
@given(st.sampled_from(["short.wav", "short.mp3", "s44.m4a"]),
       st.lists(st.tuples(st.integers(0, 10**6), st.integers(0, 255)), max_size=12),
       st.one_of(st.none(), st.integers(0, 10**6)))
def test_fuzz_mutated_files(files: dict[str, Path], name: str,
                            flips: list[tuple[int, int]], cut: int | None) -> None:
    data = bytearray(files[name].read_bytes())
    for pos, value in flips:
        # bias towards the header, where a flipped byte does the most damage
        data[pos % min(len(data), 256 if pos % 2 else len(data))] = value
    _decode_or_invalid(bytes(data[: None if cut is None else cut % (len(data) + 1)]))


@pytest.mark.parametrize("declared", [None, 1000, 10**9])
def test_canonical_wav_fast_path_equals_libsndfile(files: dict[str, Path],
                                                   declared: int | None) -> None:
    """The no-copy reader of plain 16 kHz mono PCM16 WAV gives libsndfile's samples (also with
    a lying data length); anything else is left to the full decoder."""
    from scheduler.audio import canonical_wav

    data = files["m16.wav"].read_bytes()
    if declared is not None:
        data = data[:40] + struct.pack("<I", declared) + data[44:]
    fast = canonical_wav(data)
    assert fast is not None
    full = audio_mod._decode_sndfile(data)
    assert full is not None
    assert fast.samples.dtype == np.int16 and np.array_equal(fast.samples, full.samples)
    for other in ("s44.wav", "s8.wav", "short.wav", "m16.flac", "s44.mp3"):
        assert canonical_wav(files[other].read_bytes()) is None
    assert canonical_wav(wav_header(16000, 1, 0)) is None
    assert canonical_wav(b"RIFF....WAVE" + b"\x00" * 40) is None


@settings(max_examples=200, deadline=None)
@given(data=st.binary(max_size=200))
def test_canonical_wav_never_raises_on_garbage(data: bytes) -> None:
    from scheduler.audio import canonical_wav

    out = canonical_wav(wav_header(16000, 1, 64)[:36] + data)
    assert out is None or out.samples.dtype == np.int16
