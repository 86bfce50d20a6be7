"""Tests for scheduler.stream_decode: streaming equals whole-file decode_audio, bounded memory,
no hangs on truncated/hostile input, and abort()."""

from __future__ import annotations

import io
import os
import struct
import subprocess
import sys
import threading
import time
import tracemalloc
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import soundfile as sf
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from scheduler.audio import Encoding, decode_audio
from scheduler.errors import InvalidAudio
from scheduler.stream_decode import StreamDecoder
from tests.audio_fixtures import convert, reference_16k_mono, speech_formats, wav_header

TIMEOUT = 30.0


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("stream_audio")
    out = speech_formats(d)
    # ~20 s, long enough that FFmpeg's probing does not need the whole upload
    x, sr = sf.read(str(out["s44.wav"]), dtype="int16")
    sf.write(str(d / "long.wav"), np.concatenate([x, np.zeros((sr, 2), np.int16)] * 5), sr)
    out["long.wav"] = d / "long.wav"
    for ext in ("flac", "mp3", "ogg", "m4a", "webm"):
        out[f"long.{ext}"] = convert(out["long.wav"], d / f"long.{ext}")
    out["long_faststart.m4a"] = d / "long_faststart.m4a"
    subprocess.run(["ffmpeg", "-nostdin", "-loglevel", "error", "-y", "-i", str(out["long.m4a"]),
                    "-c", "copy", "-movflags", "+faststart", str(out["long_faststart.m4a"])],
                   check=True, timeout=60)
    return out


class Run:
    """Decode in a worker thread (as the service does) while this thread feeds."""

    def __init__(self, block_s: float = 1.0, **kw: Any) -> None:
        self.dec = StreamDecoder(**kw)
        self.blocks: list[np.ndarray] = []
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._consume, args=(block_s,), daemon=True)
        self.thread.start()

    def _consume(self, block_s: float) -> None:
        try:
            for block in self.dec.blocks(block_s):
                assert block.dtype == np.float32 and block.ndim == 1
                self.blocks.append(block)
        except BaseException as exc:  # handed to the test thread
            self.error = exc

    def feed(self, data: bytes, sizes: list[int] | None = None) -> None:
        pos, i = 0, 0
        while pos < len(data):
            n = sizes[i % len(sizes)] if sizes else 65536
            self.dec.feed(data[pos:pos + n])
            pos, i = pos + n, i + 1

    def result(self, timeout: float = TIMEOUT) -> np.ndarray:
        self.thread.join(timeout)
        assert not self.thread.is_alive(), "the decoder hung"
        assert self.dec._spool.fd == -1, "the spool file was not closed"
        if self.error is not None:
            raise self.error
        return np.concatenate(self.blocks)


def stream(data: bytes, sizes: list[int] | None = None, block_s: float = 1.0,
           **kw: Any) -> tuple[np.ndarray, StreamDecoder]:
    run = Run(block_s, **kw)
    run.feed(data, sizes)
    run.dec.finish()
    return run.result(), run.dec


def random_sizes(seed: int, count: int = 400) -> list[int]:
    """1 byte to 64 KiB, log-uniform, so tiny and large pieces both occur."""
    rng = np.random.default_rng(seed)
    return [int(s) for s in np.exp(rng.uniform(0, np.log(65536), count)).astype(int)]


# ---- exactness against decode_audio -----------------------------------------------------


def test_16k_mono_wav_bit_exact_in_fixed_blocks(files: dict[str, Path]) -> None:
    data = files["m16.wav"].read_bytes()
    y, dec = stream(data, block_s=0.25)
    expected = decode_audio(data).as_float32()
    assert np.array_equal(y, expected)
    assert np.array_equal(y, reference_16k_mono(files["m16.wav"]))
    assert (dec.source_rate, dec.source_channels, dec.container) == (16000, 1, "wav")
    assert dec.bytes_received == len(data)
    run = Run(0.25)
    run.feed(data)
    run.dec.finish()
    run.result()
    assert {len(b) for b in run.blocks[:-1]} == {4000} and 0 < len(run.blocks[-1]) <= 4000


@pytest.mark.parametrize(("name", "rate", "channels"), [("m16.wav", 16000, 1),
                                                         ("s8.wav", 8000, 2)])
def test_raw_linear16_bit_exact(files: dict[str, Path], name: str, rate: int,
                                channels: int) -> None:
    pcm, _ = sf.read(str(files[name]), dtype="int16", always_2d=True)
    raw = pcm.astype("<i2").tobytes()
    kw: dict[str, Any] = {"encoding": Encoding.LINEAR16, "sample_rate": rate,
                          "channels": channels}
    y, dec = stream(raw, random_sizes(1), **kw)
    assert np.array_equal(y, decode_audio(raw, **kw).as_float32())
    assert np.array_equal(y, reference_16k_mono(files[name]))
    assert (dec.source_rate, dec.source_channels, dec.container) == (rate, channels, "raw")


@pytest.mark.parametrize("name", ["s44.wav", "s8.wav", "s44.flac", "s44.m4a", "s44.webm",
                                  "s44.aac", "long_faststart.m4a"])
def test_resampled_and_lossless_containers_bit_exact(files: dict[str, Path], name: str) -> None:
    # chunked soxr.ResampleStream == one-shot soxr.resample bit for bit; FLAC via FFmpeg ==
    # libsndfile; M4A/WebM/AAC take the same PyAV path in decode_audio
    data = files[name].read_bytes()
    y, dec = stream(data)
    assert np.array_equal(y, decode_audio(data).as_float32())
    assert dec.source_channels == 2 and dec.source_rate in (8000, 44100, 48000)


@pytest.mark.parametrize(("name", "tol"), [("s44.mp3", 1e-5), ("s44.ogg", 1e-5),
                                           ("s44.opus", 2e-2)])
def test_lossy_containers_close_to_libsndfile(files: dict[str, Path], name: str,
                                              tol: float) -> None:
    # FFmpeg's MP3/Vorbis/Opus decoders vs libsndfile's mpg123/libvorbis/libopus: measured max
    # differences ~7e-7 (MP3), ~2e-7 (Vorbis), ~3e-3 (Opus); lengths are identical
    data = files[name].read_bytes()
    y, dec = stream(data)
    ref = decode_audio(data).as_float32()
    assert len(y) == len(ref) and np.isfinite(y).all()
    assert np.max(np.abs(y - ref)) < tol
    assert dec.container == ("mp3" if name.endswith("mp3") else "ogg")


@pytest.mark.parametrize(("fmt", "subtype", "channels"), [
    ("WAV", "PCM_U8", 2), ("WAV", "PCM_24", 2), ("WAV", "PCM_32", 1), ("WAV", "FLOAT", 2),
    ("WAV", "DOUBLE", 1), ("WAVEX", "PCM_16", 2), ("WAVEX", "PCM_24", 6), ("RF64", "PCM_16", 2),
    ("WAV", "ULAW", 1), ("WAV", "ALAW", 2), ("WAV", "IMA_ADPCM", 2),  # via FFmpeg
    ("AIFF", "PCM_16", 2), ("AU", "PCM_16", 1), ("W64", "PCM_24", 2),  # via libsndfile
    ("CAF", "PCM_16", 2),
])
def test_wav_variants_and_other_containers_bit_exact(files: dict[str, Path], fmt: str,
                                                     subtype: str, channels: int) -> None:
    x, sr = sf.read(str(files["s44.wav"]), dtype="float64", always_2d=True)
    x = np.concatenate([x * 0.9] * 3, axis=1)[: sr // 2, :channels]
    buf = io.BytesIO()
    sf.write(buf, x, sr, format=fmt, subtype=subtype)
    data = buf.getvalue()
    y, dec = stream(data, random_sizes(2))
    assert np.array_equal(y, decode_audio(data).as_float32())
    assert dec.source_channels == channels


@pytest.mark.parametrize("name", ["m16.wav", "s44.mp3", "s44.m4a", "s44.ogg", "long_faststart.m4a"])
def test_random_piece_sizes_give_the_same_output(files: dict[str, Path], name: str) -> None:
    data = files[name].read_bytes()
    whole, _ = stream(data, [len(data)])
    for seed in (3, 4):
        y, _ = stream(data, random_sizes(seed))
        assert np.array_equal(y, whole)


@pytest.mark.parametrize("name", ["long.wav", "long.flac", "long.mp3", "long.ogg", "long.webm",
                                  "long_faststart.m4a"])
def test_decoding_starts_before_the_upload_ends(files: dict[str, Path], name: str) -> None:
    data = files[name].read_bytes()
    run = Run(0.25)
    run.feed(data[: len(data) * 2 // 3])
    deadline = time.monotonic() + TIMEOUT
    while not run.blocks and time.monotonic() < deadline and run.thread.is_alive():
        time.sleep(0.01)
    assert run.blocks, "no block before the upload finished"
    run.feed(data[len(data) * 2 // 3:])
    run.dec.finish()
    assert np.array_equal(run.result(), stream(data)[0])


def test_m4a_with_moov_at_the_end_decodes_once_complete(files: dict[str, Path]) -> None:
    data = files["long.m4a"].read_bytes()
    run = Run(0.25)
    run.feed(data[: len(data) // 2])
    time.sleep(0.3)
    assert not run.blocks and run.thread.is_alive()
    run.feed(data[len(data) // 2:])
    run.dec.finish()
    assert np.array_equal(run.result(), decode_audio(data).as_float32())


# ---- WAV sizes that lie, truncation ------------------------------------------------------


@pytest.mark.parametrize(("declared", "frames"), [(0, None), (0xFFFFFFFF, None),
                                                  (0x7FFFFFFF, None), (2 * 1000, 1000)])
def test_wav_with_lying_data_size(files: dict[str, Path], declared: int,
                                  frames: int | None) -> None:
    data = bytearray(files["m16.wav"].read_bytes())
    assert data[36:40] == b"data"
    full = decode_audio(bytes(data)).as_float32()
    data[40:44] = struct.pack("<I", declared)
    data[4:8] = struct.pack("<I", 0xFFFFFFFF)
    y, _ = stream(bytes(data), random_sizes(5))
    assert np.array_equal(y, full if frames is None else full[:frames])
    if declared:  # decode_audio (libsndfile) treats a zero size as "no data"
        assert np.array_equal(y, decode_audio(bytes(data)).as_float32())


def test_wav_declared_size_excludes_trailing_chunks(files: dict[str, Path]) -> None:
    data = files["m16.wav"].read_bytes() + b"LIST" + struct.pack("<I", 400) + b"\x7f" * 400
    y, _ = stream(data)
    assert np.array_equal(y, decode_audio(data).as_float32())


def test_truncated_wav_decodes_what_is_there(files: dict[str, Path]) -> None:
    y, _ = stream(files["m16.wav"].read_bytes()[: 44 + 2 * 8000 + 1])
    assert len(y) == 8000


@pytest.mark.parametrize("name", ["s44.wav", "s44.flac", "s44.mp3", "s44.ogg", "s44.m4a",
                                  "s44.webm", "s44.aac", "long_faststart.m4a"])
def test_truncated_files_never_hang(files: dict[str, Path], name: str) -> None:
    data = files[name].read_bytes()
    for cut in (4, 12, 63, 100, 1000, len(data) // 2, len(data) - 1):
        try:
            y, _ = stream(data[:cut])
        except InvalidAudio as exc:
            assert str(exc)
        else:
            assert len(y) and np.isfinite(y).all()


# ---- abort --------------------------------------------------------------------------------


@pytest.mark.parametrize(("name", "fraction"), [("m16.wav", 0.0), ("m16.wav", 0.5),
                                                ("long.mp3", 0.3), ("long.m4a", 0.5),
                                                ("aiff", 0.5)])
def test_abort_unblocks_a_waiting_reader(files: dict[str, Path], tmp_path: Path, name: str,
                                         fraction: float) -> None:
    if name == "aiff":  # libsndfile fallback: blocked waiting for the file length
        buf = io.BytesIO()
        sf.write(buf, np.zeros(16000, np.int16), 16000, format="AIFF")
        data = buf.getvalue()
    else:
        data = files[name].read_bytes()
    run = Run(0.25, spool_dir=str(tmp_path))
    run.feed(data[: int(len(data) * fraction)])
    time.sleep(0.2)
    assert run.thread.is_alive()
    assert not os.listdir(tmp_path)  # the spool is unlinked as soon as it is created
    t0 = time.monotonic()
    run.dec.abort()
    with pytest.raises(InvalidAudio, match="aborted"):
        run.result(timeout=1.0)
    assert time.monotonic() - t0 < 1.0
    run.dec.feed(b"late bytes are dropped")


def test_abort_before_blocks() -> None:
    dec = StreamDecoder()
    dec.feed(b"RIFF")
    dec.abort()
    assert dec._spool.fd == -1
    with pytest.raises(InvalidAudio, match="aborted"):
        next(dec.blocks())


# ---- bad input ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("data", "kw", "match"),
    [
        (b"", {}, "audio is empty"),
        (b"", {"encoding": Encoding.LINEAR16, "sample_rate": 16000}, "audio is empty"),
        (b"\x00", {}, "not a recognised audio container"),
        (b"\xff", {}, "could not decode"),
        (np.random.default_rng(1).bytes(5000), {}, "could not decode"),
        (b"Hello, this is a plain text file.\n" * 50, {}, "not a recognised audio container"),
        (b"#EXTM3U\n#EXT-X-TARGETDURATION:10\n#EXTINF:10,\nhttp://127.0.0.1:9/a.ts\n", {},
         "not a recognised audio container"),
        (b"\x00\x00" * 100, {"encoding": Encoding.LINEAR16}, "sample_rate_hertz is required"),
        (b"\x00" * 1001, {"encoding": Encoding.LINEAR16, "sample_rate": 16000},
         "raw PCM byte count 1001 is not a multiple of 2 bytes x 1 channel"),
        (b"\x00\x00" * 100, {"encoding": Encoding.LINEAR16, "sample_rate": 10**9},
         "sample rate 1000000000 Hz is out of range"),
        (b"\x00\x00" * 100, {"encoding": Encoding.LINEAR16, "sample_rate": 16000, "channels": 0},
         "channel count 0 is out of range"),
        (wav_header(), {}, "zero samples"),
        (wav_header()[:30], {}, "could not decode"),
        (wav_header(rate=3, data_len=200) + b"\x01\x00" * 100, {}, "3 Hz is out of range"),
        (wav_header(channels=100, data_len=200) + b"\x01\x00" * 100, {}, "channel count 100"),
    ],
)
def test_bad_input_raises_invalid_audio(data: bytes, kw: dict[str, Any], match: str) -> None:
    with pytest.raises(InvalidAudio, match=match):
        stream(data, **kw)


def test_nan_samples_are_rejected() -> None:
    header = bytearray(wav_header(data_len=16))
    header[20:22] = struct.pack("<H", 3)  # IEEE float
    header[34:36] = struct.pack("<H", 32)
    with pytest.raises(InvalidAudio, match="NaN"):
        stream(bytes(header) + struct.pack("<4f", 0, np.nan, 0, 0))


@pytest.mark.parametrize("name", ["m16.wav", "s44.mp3", "raw"])
def test_duration_cap(files: dict[str, Path], name: str) -> None:
    if name == "raw":
        kw: dict[str, Any] = {"encoding": Encoding.LINEAR16, "sample_rate": 16000}
        data = b"\x00\x00" * 16001
    else:
        kw, data = {}, files[name].read_bytes()
    with pytest.raises(InvalidAudio, match="longer than the 1 s limit"):
        stream(data, max_duration_s=1.0, **kw)


def test_module_does_not_import_torch() -> None:
    code = "import sys, scheduler.stream_decode; assert not {'torch', 'funasr'} & set(sys.modules)"
    subprocess.run([sys.executable, "-c", code], check=True, cwd=Path(__file__).parents[1])


# ---- fuzzing ------------------------------------------------------------------------------

_FUZZ = settings(max_examples=100, deadline=None,
                 suppress_health_check=[HealthCheck.function_scoped_fixture])
_MAGICS = [b"", b"RIFF\x00\x00\x00\x00WAVE", b"RIFF\xff\xff\xff\xffWAVEfmt ", b"OggS", b"fLaC",
           b"ID3", b"\xff\xfb", b"\xff\xf1", b"\x00\x00\x00\x20ftypM4A ", b"\x1a\x45\xdf\xa3",
           b"caff", b"FORM", b"RF64\xff\xff\xff\xffWAVEds64"]


def _stream_or_invalid(data: bytes, sizes: list[int], **kw: Any) -> None:
    try:
        y, _ = stream(data, sizes, block_s=0.5, **kw)
    except InvalidAudio as exc:
        assert str(exc)
        return
    assert y.ndim == 1 and len(y) > 0 and np.isfinite(y).all()


@_FUZZ
@given(st.sampled_from(_MAGICS), st.binary(max_size=4096),
       st.lists(st.integers(1, 65536), min_size=1, max_size=8))
def test_fuzz_random_bytes(magic: bytes, data: bytes, sizes: list[int]) -> None:
    _stream_or_invalid(magic + data, sizes)


@_FUZZ
@given(st.sampled_from(["short.wav", "short.mp3", "s44.m4a", "s44.ogg", "s44.flac"]),
       st.lists(st.tuples(st.integers(0, 10**6), st.integers(0, 255)), max_size=12),
       st.one_of(st.none(), st.integers(0, 10**6)),
       st.lists(st.integers(1, 65536), min_size=1, max_size=8))
def test_fuzz_mutated_files(files: dict[str, Path], name: str, flips: list[tuple[int, int]],
                            cut: int | None, sizes: list[int]) -> None:
    data = bytearray(files[name].read_bytes())
    for pos, value in flips:
        data[pos % min(len(data), 256 if pos % 2 else len(data))] = value
    _stream_or_invalid(bytes(data[: None if cut is None else cut % (len(data) + 1)]), sizes)


# ---- memory -------------------------------------------------------------------------------


def test_ten_minutes_stream_in_bounded_memory(files: dict[str, Path], tmp_path: Path) -> None:
    x, sr = sf.read(str(files["m16.wav"]), dtype="int16")
    unit = np.concatenate([x, np.zeros(sr, np.int16)])
    path = tmp_path / "ten_minutes.wav"
    with sf.SoundFile(str(path), "w", sr, 1, subtype="PCM_16") as f:
        for _ in range(600 * sr // len(unit) + 1):
            f.write(unit)
    del x, unit
    size = path.stat().st_size
    tracemalloc.start()
    try:
        run = Run(1.0, spool_dir=str(tmp_path))
        run.blocks = _Discard()  # type: ignore[assignment]
        with path.open("rb") as f:
            while chunk := f.read(65536):
                run.dec.feed(chunk)
        run.dec.finish()
        run.thread.join(TIMEOUT)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert not run.thread.is_alive() and run.error is None
    discard: _Discard = run.blocks  # type: ignore[assignment]
    assert discard.samples >= 600 * sr and discard.max_len == 16000
    assert run.dec.bytes_received == size > 19_000_000
    print(f"peak traced memory {peak / 2**20:.2f} MiB")
    assert peak < 4 * 2**20, f"peak traced memory {peak / 2**20:.1f} MiB"
    assert os.listdir(tmp_path) == ["ten_minutes.wav"]


class _Discard:
    """Counts blocks instead of keeping them."""

    def __init__(self) -> None:
        self.samples = self.max_len = 0

    def append(self, block: np.ndarray) -> None:
        self.samples += len(block)
        self.max_len = max(self.max_len, len(block))
