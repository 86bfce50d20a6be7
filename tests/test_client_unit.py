"""Client pieces without the real service: options, formats, inputs, status layout, and the
retry loop against a real gRPC server on loopback that answers with scripted errors."""

from __future__ import annotations

import asyncio
import csv
import io
import os
import random
import time
from collections.abc import Iterator
from concurrent import futures
from pathlib import Path

import grpc
import pytest

from client import (
    AsrClient,
    AsrError,
    AsyncAsrClient,
    RetryPolicy,
    Segment,
    Timings,
    Transcript,
    formats,
    inputs,
    status_view,
)
from client.cli import build_parser, channel_options
from client.errors import from_rpc_error, retry_after_from
from client.sources import chunked
from client.types import DeviceStatus, ModelInfo, ServiceStatus, WorkerStatus
from protos.asr.v1 import asr_pb2 as pb
from protos.asr.v1 import asr_pb2_grpc as pb_grpc


def transcript(segments: list[tuple[int, int, str]], duration_s: float = 5.0) -> Transcript:
    return Transcript(" ".join(s[2] for s in segments), [Segment(*s) for s in segments],
                      timings=Timings(audio_duration_s=duration_s))


# -- command line ---------------------------------------------------------------------------

@pytest.mark.parametrize("argv", [
    ["--server", "h:1", "--token", "t", "transcribe", "a.wav", "--format", "json"],
    ["transcribe", "a.wav", "--server", "h:1", "--format", "json", "--token", "t"],
    ["--token", "t", "transcribe", "--server", "h:1", "a.wav", "--format", "json"],
])
def test_connection_options_before_or_after_the_command(argv: list[str]) -> None:
    args = build_parser().parse_args(argv)
    opts = channel_options(args)
    assert (opts.server, opts.token, args.files, args.format) == ("h:1", "t", ["a.wav"], "json")


def test_environment_fills_what_flags_do_not(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ASR_SERVER", "env-host:9")
    monkeypatch.setenv("ASR_TOKEN", "env-token")
    opts = channel_options(build_parser().parse_args(["status"]))
    assert (opts.server, opts.token) == ("env-host:9", "env-token")
    opts = channel_options(build_parser().parse_args(["status", "--server", "flag:1"]))
    assert (opts.server, opts.token) == ("flag:1", "env-token")


# -- formats --------------------------------------------------------------------------------

def test_srt_and_vtt_cues_follow_segments() -> None:
    t = transcript([(0, 1500, "hello"), (1600, 3_725_042, "long one"), (3_725_100, 3_725_200, " ")])
    assert formats.srt(t) == ("1\n00:00:00,000 --> 00:00:01,500\nhello\n\n"
                              "2\n00:00:01,600 --> 01:02:05,042\nlong one\n")
    assert formats.vtt(t) == ("WEBVTT\n\n00:00:00.000 --> 00:00:01.500\nhello\n\n"
                              "00:00:01.600 --> 01:02:05.042\nlong one\n")
    untimed = Transcript("just text", [], timings=Timings(audio_duration_s=2.5))
    assert formats.srt(untimed) == "1\n00:00:00,000 --> 00:00:02,500\njust text\n"
    assert formats.vtt(Transcript("", [])) == "WEBVTT\n\n"


def test_csv_quotes_text_and_marks_failures() -> None:
    t = Transcript('a "quoted", text\nwith newline', [], device="cuda:1",
                   fallback_reason="", timings=Timings(12.3456, 0.1, 0.2, 0.5))
    text = formats.csv_text([formats.csv_row(t, "dir/a,b.wav"),
                             formats.csv_row(None, "bad.wav", "INVALID_ARGUMENT: not audio")])
    rows = list(csv.DictReader(io.StringIO(text)))
    assert rows[0]["file"] == "dir/a,b.wav" and rows[0]["text"] == t.text
    assert rows[0]["duration_s"] == "12.346" and rows[0]["status"] == "ok"
    assert rows[1]["status"] == "failed" and rows[1]["error"].startswith("INVALID_ARGUMENT")
    assert list(rows[0]) == list(formats.CSV_COLUMNS)


def test_json_keeps_the_fixed_keys() -> None:
    t = transcript([(0, 10, "x")])
    record = formats.json_record(t, "a.wav")
    assert {"file", "text", "segments", "device", "fallback_reason"} <= set(record)
    assert record["segments"][0] == {"start_ms": 0, "end_ms": 10, "text": "x", "device": ""}


# -- inputs, outputs, resume ----------------------------------------------------------------

def test_expand_walks_directories_for_audio(tmp_path: Path) -> None:
    for name in ("a.wav", "sub/b.MP3", "sub/deep/c.flac", "sub/notes.txt", "d.ogg"):
        (tmp_path / "in" / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / "in" / name).write_bytes(b"x")
    jobs, missing = inputs.expand([str(tmp_path / "in"), str(tmp_path / "in" / "a.wav"),
                                   str(tmp_path / "nope")])
    names = [j.path.relative_to(tmp_path / "in").as_posix() for j in jobs]
    assert names == ["a.wav", "d.ogg", "sub/b.MP3", "sub/deep/c.flac"]  # a.wav once
    assert missing == [(str(tmp_path / "nope"), "no such file or directory")]


def test_outputs_mirror_the_input_tree(tmp_path: Path) -> None:
    root = tmp_path / "in"
    for name in ("a.wav", "a.mp3", "sub/b.wav"):
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(b"x")
    jobs, _ = inputs.expand([str(root)])
    inputs.plan_outputs(jobs, tmp_path / "out", ".srt")
    outs = sorted(str(j.out.relative_to(tmp_path / "out")) for j in jobs if j.out)
    assert outs == ["a.mp3.srt", "a.wav.srt", "sub/b.srt"]
    single, _ = inputs.expand([str(root / "sub" / "b.wav")])
    inputs.plan_outputs(single, tmp_path / "out", ".json")
    assert single[0].out == tmp_path / "out" / "b.json"


def test_manifest_knows_complete_truncated_and_changed(tmp_path: Path) -> None:
    audio = tmp_path / "a.wav"
    audio.write_bytes(b"RIFF....")
    jobs, _ = inputs.expand([str(audio)])
    inputs.plan_outputs(jobs, tmp_path / "out", ".txt")
    job = jobs[0]
    manifest = inputs.Manifest(tmp_path / "out")
    assert not manifest.is_complete(job)
    manifest.write(job, "hello world\n")
    assert inputs.Manifest(tmp_path / "out").is_complete(job)
    assert job.out is not None
    job.out.write_text("hello")  # truncated
    assert not inputs.Manifest(tmp_path / "out").is_complete(job)
    manifest.write(job, "hello world\n")
    os.utime(audio, ns=(time.time_ns(), time.time_ns() + 10**9))  # the input changed
    assert not inputs.Manifest(tmp_path / "out").is_complete(job)


def test_sources_chunk_paths_bytes_and_files(tmp_path: Path) -> None:
    data = os.urandom(600_000)
    (tmp_path / "a.raw").write_bytes(data)
    for src in (tmp_path / "a.raw", data, io.BytesIO(data)):
        c = chunked(src)
        assert c.replayable
        assert b"".join(c.chunks(100_000)) == data == b"".join(c.chunks())
    r, w = os.pipe()
    with os.fdopen(r, "rb") as pipe:
        os.close(w)
        assert not chunked(pipe).replayable
    with pytest.raises(FileNotFoundError):
        chunked(tmp_path / "missing.wav")


# -- status layout --------------------------------------------------------------------------

def test_status_fits_80_columns_with_long_names() -> None:
    workers = [WorkerStatus(f"cuda:{i}#{k}", 123456 + k, "ready", "/models/SenseVoiceSmall",
                            12, 1234567, 3, "CUDA error: an illegal memory access was "
                            "encountered in a very long message" * 2)
               for i in range(2) for k in range(2)]
    st = ServiceStatus(
        devices=[DeviceStatus(f"cuda:{i}", 70 * 2**30, 141 * 2**30, 97, i == 0,
                              workers[2 * i:2 * i + 2], "NVIDIA H200 141GB HBM3e SXM5 extra")
                 for i in range(2)],
        models=[ModelInfo("sensevoice-small", "/m", "sensevoice", "generate",
                          ["zh", "en", "yue", "ja", "ko", "nospeech"], False, True, False, 4,
                          True)],
        queue_depth=3, queue_capacity=512, fallbacks=[],
        model="/very/long/path/to/models/iic/SenseVoiceSmall" * 3, cpu_fallback="overflow",
        version="0.1.0")
    text = status_view.render(st, 80)
    assert max(map(len, text.splitlines())) <= 80
    for expected in ("cuda:1#1", "ready", "70.0/141.0", "97%", "sensevoice-small", "1234567"):
        assert expected in text


# -- retries and errors over real gRPC ------------------------------------------------------

class ScriptedRecognizer(pb_grpc.RecognizerServicer):
    """Fails the first calls with scripted codes (and a retry-after-s trailer), then answers."""

    def __init__(self, script: list[tuple[grpc.StatusCode, float | None]]) -> None:
        self.script = list(script)
        self.calls: list[float] = []
        self.audio: list[bytes] = []

    def _fail_or_none(self, context: grpc.ServicerContext) -> None:
        self.calls.append(time.monotonic())
        if self.script:
            code, retry_after = self.script.pop(0)
            if retry_after is not None:
                context.set_trailing_metadata((("retry-after-s", f"{retry_after:g}"),))
            context.abort(code, f"scripted {code.name}")

    def StreamingRecognize(self, request_iterator: Iterator[pb.StreamingRecognizeRequest],
                           context: grpc.ServicerContext
                           ) -> Iterator[pb.StreamingRecognizeResponse]:
        first = next(request_iterator)
        assert first.HasField("streaming_config")
        audio = b"".join(r.audio_content for r in request_iterator)
        self._fail_or_none(context)
        self.audio.append(audio)
        result = pb.RecognitionResult(text=f"{len(audio)} bytes", device="cpu",
                                      audio_duration_s=1.0,
                                      segments=[pb.Segment(start_ms=0, end_ms=1000, text="x")])
        yield pb.StreamingRecognizeResponse(result=result, is_final=True, is_last=True)


@pytest.fixture
def scripted() -> Iterator[tuple[str, list[ScriptedRecognizer]]]:
    server = grpc.server(futures.ThreadPoolExecutor(8))
    holder: list[ScriptedRecognizer] = [ScriptedRecognizer([])]

    class Proxy(pb_grpc.RecognizerServicer):
        def StreamingRecognize(self, it, ctx):  # type: ignore[no-untyped-def]
            return holder[0].StreamingRecognize(it, ctx)

    pb_grpc.add_RecognizerServicer_to_server(Proxy(), server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    yield f"127.0.0.1:{port}", holder
    server.stop(0)


FAST = RetryPolicy(max_attempts=4, initial_backoff_s=0.05, max_backoff_s=0.2, jitter=0.2)


def test_retry_honours_retry_after_and_resends_the_whole_file(
        scripted: tuple[str, list[ScriptedRecognizer]], tmp_path: Path) -> None:
    address, holder = scripted
    holder[0] = ScriptedRecognizer([(grpc.StatusCode.RESOURCE_EXHAUSTED, 1.0),
                                    (grpc.StatusCode.UNAVAILABLE, None)])
    audio = tmp_path / "a.wav"
    audio.write_bytes(os.urandom(700_000))  # several chunks
    with AsrClient(address, retry=FAST) as client:
        t = client.transcribe(audio, timeout=30)
    calls = holder[0].calls
    assert len(calls) == 3 and t.text == "700000 bytes" and t.file == str(audio)
    assert calls[1] - calls[0] >= 1.0  # waited what the server asked
    assert calls[2] - calls[1] < 1.0  # then the policy's own short backoff (~0.1 s)
    assert all(a == audio.read_bytes() for a in holder[0].audio)


def test_non_retryable_and_exhausted_errors_carry_the_code(
        scripted: tuple[str, list[ScriptedRecognizer]]) -> None:
    address, holder = scripted
    holder[0] = ScriptedRecognizer([(grpc.StatusCode.INVALID_ARGUMENT, None)])
    with AsrClient(address, retry=FAST) as client:
        with pytest.raises(AsrError) as info:
            client.transcribe(b"abc")
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert info.value.attempts == 1 and "scripted" in info.value.message
        assert isinstance(info.value, grpc.RpcError)  # code written for plain stubs works
        holder[0] = ScriptedRecognizer([(grpc.StatusCode.UNAVAILABLE, None)] * 10)
        with pytest.raises(AsrError) as info:
            client.transcribe(b"abc")
        assert info.value.code() == grpc.StatusCode.UNAVAILABLE and info.value.attempts == 4
        assert len(holder[0].calls) == 4
        holder[0] = ScriptedRecognizer([(grpc.StatusCode.RESOURCE_EXHAUSTED, 30.0)])
        started = time.monotonic()
        with pytest.raises(AsrError) as info:  # the hint is longer than the deadline left
            client.transcribe(b"abc", timeout=2)
        assert time.monotonic() - started < 2 and info.value.retry_after_s == 30.0


def test_a_pipe_is_not_retried(scripted: tuple[str, list[ScriptedRecognizer]]) -> None:
    address, holder = scripted
    holder[0] = ScriptedRecognizer([(grpc.StatusCode.UNAVAILABLE, None)])
    r, w = os.pipe()
    os.write(w, b"x" * 1000)
    os.close(w)
    with os.fdopen(r, "rb") as pipe, AsrClient(address, retry=FAST) as client, \
            pytest.raises(AsrError) as info:
        client.transcribe(pipe)
    assert info.value.attempts == 1 and len(holder[0].calls) == 1


def test_async_client_retries_the_same_way(
        scripted: tuple[str, list[ScriptedRecognizer]]) -> None:
    address, holder = scripted
    holder[0] = ScriptedRecognizer([(grpc.StatusCode.RESOURCE_EXHAUSTED, 0.3)])

    async def main() -> tuple[Transcript, AsrError]:
        async with AsyncAsrClient(address, retry=FAST) as client:
            t = await client.transcribe(b"12345")
            holder[0].script = [(grpc.StatusCode.PERMISSION_DENIED, None)]
            try:
                await client.transcribe(b"1")
            except AsrError as exc:
                return t, exc
        raise AssertionError("no error")

    t, err = asyncio.run(main())
    assert t.text == "5 bytes" and len(holder[0].calls) == 3
    assert err.code() == grpc.StatusCode.PERMISSION_DENIED


def test_backoff_grows_is_capped_and_jittered() -> None:
    policy = RetryPolicy(initial_backoff_s=1, max_backoff_s=5, multiplier=2, jitter=0.2)
    rng = random.Random(1)
    for attempt, base in ((1, 1), (2, 2), (3, 4), (4, 5), (9, 5)):
        delays = [policy.delay_s(attempt, rng=rng) for _ in range(200)]
        assert base * 0.8 <= min(delays) < max(delays) <= base * 1.2
    assert min(policy.delay_s(1, 7.0, rng) for _ in range(50)) >= 7.0
    assert retry_after_from([("x", "1"), ("retry-after-s", "2.5")]) == 2.5
    assert retry_after_from([("retry-after-s", "soon")]) is None
    err = from_rpc_error(AsrError(grpc.StatusCode.ABORTED, "m"))
    assert (err.code(), err.details(), str(err)) == (grpc.StatusCode.ABORTED, "m", "ABORTED: m")


def test_every_public_name_has_a_docstring() -> None:
    import importlib
    import inspect
    import pkgutil

    import client

    missing = []
    assert (Path(client.__file__).parent / "py.typed").exists()
    for info in pkgutil.iter_modules(client.__path__):
        module = importlib.import_module(f"client.{info.name}")
        if not module.__doc__:
            missing.append(module.__name__)
        for name, obj in vars(module).items():
            if name.startswith("_") or getattr(obj, "__module__", None) != module.__name__:
                continue
            if not (inspect.isclass(obj) or inspect.isfunction(obj)):
                continue
            if not inspect.getdoc(obj):
                missing.append(f"{module.__name__}.{name}")
            for attr, member in vars(obj).items() if inspect.isclass(obj) else ():
                if attr.startswith("_") or not (inspect.isfunction(member)
                                                or isinstance(member, property)):
                    continue
                if not inspect.getdoc(member):
                    missing.append(f"{module.__name__}.{name}.{attr}")
    assert not missing, missing
