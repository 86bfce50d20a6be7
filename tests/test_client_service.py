"""The client against the real service: library (sync and asyncio), the `asr-client` batch CLI
in every output format, resume, status width, failures, and the Node.js example client."""

from __future__ import annotations

import asyncio
import csv
import io
import itertools
import json
import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import numpy as np
import pytest
import soundfile as sf

from client import AsrClient, AsrError, AsyncAsrClient, Transcript
from tests.audio_fixtures import SENTENCES, convert, espeak_wav
from tests.conftest import ROOT, RunningService, make_config

pytestmark = pytest.mark.integration

BIN = Path(sys.executable).parent
NODE_DIR = ROOT / "client" / "examples" / "node"


@pytest.fixture(scope="module")
def service(models_dir: Path) -> Iterator[RunningService]:
    svc = RunningService(make_config(models_dir / "sensevoice-tiny",
                                     vad_model=str(models_dir / "fsmn-vad")))
    try:
        svc.wait_all_ready()
        yield svc
    finally:
        svc.stop()


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A directory tree of mixed formats (and a text file that is not audio)."""
    d = tmp_path_factory.mktemp("corpus") / "calls"
    gen = tmp_path_factory.mktemp("gen")
    for sub in ("day1", "day2/deep"):
        (d / sub).mkdir(parents=True)
    espeak_wav(SENTENCES[0], d / "a.wav")
    espeak_wav(SENTENCES[1], d / "day1" / "b.wav", rate=44100, channels=2)
    convert(espeak_wav(SENTENCES[2], gen / "c.wav", rate=22050), d / "day1" / "c.flac")
    convert(espeak_wav(SENTENCES[3], gen / "d.wav", rate=24000), d / "day2" / "deep" / "d.mp3")
    convert(espeak_wav(SENTENCES[1], gen / "e.wav"), d / "day2" / "e.ogg")
    convert(espeak_wav(SENTENCES[2], gen / "f.wav"), d / "day2" / "f.m4a")
    one, rate = sf.read(espeak_wav(SENTENCES[0], gen / "g1.wav"), dtype="int16")
    two, _ = sf.read(espeak_wav(SENTENCES[3], gen / "g2.wav"), dtype="int16")
    pause = np.zeros(3 * rate, dtype="int16")
    sf.write(d / "two_parts.wav", np.concatenate([one, pause, two, pause[:4000]]), rate)
    (d / "day1" / "notes.txt").write_text("not audio, not an audio suffix")
    return d


def audio_files(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*") if p.suffix in (".wav", ".flac", ".mp3", ".ogg",
                                                              ".m4a"))


def asr_client(*args: str | Path, env: dict[str, str] | None = None,
               timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(BIN / "asr-client"), *map(str, args)], capture_output=True,
                          text=True, timeout=timeout, env={**os.environ, **(env or {})})


# -- library --------------------------------------------------------------------------------

def test_sync_library_sources_and_types(service: RunningService, corpus: Path) -> None:
    wav = corpus / "a.wav"
    with AsrClient(service.address) as client:
        by_path = client.transcribe(wav)
        by_bytes = client.transcribe(wav.read_bytes())
        with wav.open("rb") as f:
            by_file = client.transcribe(f)
        assert isinstance(by_path, Transcript) and by_path.text
        assert by_path.text == by_bytes.text == by_file.text
        assert by_path.file == str(wav) and by_bytes.file == ""
        assert by_path.device == "cpu" and by_path.fallback_reason == ""
        assert by_path.segments and by_path.segments[0].end_ms > by_path.segments[0].start_ms
        assert by_path.timings.audio_duration_s > 1 and by_path.timings.wall_time_s > 0
        assert by_path.model and by_path.timings.rtfx > 0

        files = audio_files(corpus)
        items = list(client.transcribe_many(files, concurrency=3))
        assert sorted(str(i.source) for i in items) == sorted(map(str, files))
        assert all(i.ok and i.transcript and i.transcript.text for i in items)

        two = corpus / "two_parts.wav"
        chunks = [two.read_bytes()[i:i + 8000] for i in range(0, two.stat().st_size, 8000)]
        results = list(client.stream(iter(chunks), vad_mode="always"))
        last = results[-1]
        assert last.is_last and last.is_final and len(last.transcript.segments) >= 2
        assert last.transcript.text == client.transcribe(two, vad_mode="always").text
        finals = [r for r in results[:-1] if r.is_final]  # per-segment finals, when sent
        if finals:
            assert last.transcript.text == " ".join(r.transcript.text for r in finals)

        status = client.status()
        ids = [w.worker_id for d in status.devices for w in d.workers]
        assert ids[0] == "cpu#0" and ids[1:] and all(i.startswith("vad#") for i in ids[1:])
        assert status.queue_capacity > 0 and isinstance(status.models, list)
        assert [r.worker_id for r in client.clear_cache().results] == ["cpu#0"]


def test_errors_are_one_type_with_the_code(service: RunningService, corpus: Path) -> None:
    with AsrClient(service.address) as client:
        with pytest.raises(AsrError) as info:
            client.transcribe(b"definitely not audio" * 100)
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert info.value.attempts == 1 and info.value.message
        with pytest.raises(AsrError) as info:  # keyword options reach the server
            client.transcribe(corpus / "a.wav", language="klingon")
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "klingon" in info.value.message
        with pytest.raises(AsrError) as info:
            client.transcribe(corpus / "a.wav", max_segment_ms=5)
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        with pytest.raises(AsrError) as info:
            client.transcribe(corpus / "a.wav", timeout=0.001)
        assert info.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        with pytest.raises(FileNotFoundError):
            client.transcribe(corpus / "missing.wav")


def test_async_client_runs_32_concurrent_transcriptions(service: RunningService,
                                                        corpus: Path) -> None:
    files = audio_files(corpus)
    with AsrClient(service.address) as sync_client:
        expected = {str(f): sync_client.transcribe(f).text for f in files}
    sources = [files[i % len(files)] for i in range(32)]

    async def main() -> tuple[list[Transcript], list[str], int]:
        async with AsyncAsrClient(service.address) as client:
            in_flight = peak = 0

            async def one(path: Path) -> Transcript:
                nonlocal in_flight, peak
                in_flight += 1
                peak = max(peak, in_flight)
                try:
                    return await client.transcribe(path, timeout=300)
                finally:
                    in_flight -= 1

            gathered = await asyncio.gather(*(one(p) for p in sources))
            many = [item async for item in client.transcribe_many(sources, concurrency=32)]
            errors = [str(i.error) for i in many if not i.ok]
            assert not errors, errors
            texts = [i.transcript.text for i in many if i.transcript]
            assert sorted(texts) == sorted(expected[str(p)] for p in sources)
            status = await client.status()
            assert status.devices
            return list(gathered), texts, peak

    gathered, texts, peak = asyncio.run(main())
    assert peak == 32 and len(gathered) == 32 == len(texts)
    assert [t.text for t in gathered] == [expected[str(p)] for p in sources]


# -- command line ---------------------------------------------------------------------------

SRT_TIME = re.compile(r"(\d\d):(\d\d):(\d\d)[,.](\d\d\d) --> (\d\d):(\d\d):(\d\d)[,.](\d\d\d)")


def cue_times(text: str) -> list[tuple[int, int]]:
    out = []
    for m in SRT_TIME.finditer(text):
        h, mi, s, ms, h2, mi2, s2, ms2 = map(int, m.groups())
        out.append(((h * 3600 + mi * 60 + s) * 1000 + ms, (h2 * 3600 + mi2 * 60 + s2) * 1000 + ms2))
    return out


def test_cli_every_format_into_a_mirrored_tree(service: RunningService, corpus: Path,
                                               tmp_path: Path) -> None:
    files = audio_files(corpus)
    rel = sorted(str(f.relative_to(corpus).with_suffix("")) for f in files)
    results: dict[str, dict[str, object]] = {}
    for fmt in ("json", "jsonl", "csv", "srt", "vtt", "text"):
        out_dir = tmp_path / fmt
        # connection options after the command, as users type them
        run = asr_client("transcribe", corpus, "--server", service.address, "--format", fmt,
                         "--output-dir", out_dir, "--vad", "always", "--concurrency", "3")
        assert run.returncode == 0, run.stderr
        assert f"transcribed {len(files)} of {len(files)} files" in run.stderr
        written = sorted(str(p.relative_to(out_dir).with_suffix("")) for p in out_dir.rglob("*")
                         if p.is_file() and not p.name.startswith("."))
        assert written == rel, (fmt, written)
        for f in files:
            doc = (out_dir / f.relative_to(corpus)).with_suffix("." + {"text": "txt"}.get(
                fmt, fmt)).read_text(encoding="utf-8")
            if fmt == "json":
                results[str(f)] = json.loads(doc)
                assert results[str(f)]["file"] == str(f)
            elif fmt == "jsonl":
                assert json.loads(doc) == results[str(f)] | {
                    "wall_time_s": json.loads(doc)["wall_time_s"],
                    "queue_time_s": json.loads(doc)["queue_time_s"],
                    "inference_time_s": json.loads(doc)["inference_time_s"],
                    "request_id": json.loads(doc)["request_id"]}
            elif fmt == "csv":
                (row,) = list(csv.DictReader(io.StringIO(doc)))
                assert row["file"] == str(f) and row["text"] == results[str(f)]["text"]
                assert row["status"] == "ok" and float(row["duration_s"]) > 1
            elif fmt in ("srt", "vtt"):
                segs = [s for s in results[str(f)]["segments"] if s["text"].strip()]
                times = cue_times(doc)
                assert times == [(s["start_ms"], s["end_ms"]) for s in segs], (f, doc)
                assert all(a < b for a, b in times)
                assert all(p[1] <= n[0] for p, n in itertools.pairwise(times))
                assert doc.startswith("WEBVTT\n\n") == (fmt == "vtt")
            else:
                assert doc == results[str(f)]["text"] + "\n"
    two = results[str(corpus / "two_parts.wav")]
    assert len([s for s in two["segments"] if s["text"].strip()]) >= 2  # multi-cue subtitles

    combined = tmp_path / "all.csv"
    run = asr_client("--server", service.address, "transcribe", corpus, "--format", "csv",
                     "-o", combined, "--vad", "always")
    assert run.returncode == 0, run.stderr
    with combined.open(newline="", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    assert sorted(r["file"] for r in rows) == sorted(map(str, files))
    for r in rows:
        assert r["text"] == results[r["file"]]["text"] and r["device"] == "cpu"
        assert r["fallback_reason"] == "" and r["status"] == "ok"
        assert float(r["inference_time_s"]) > 0 and r["language"] is not None

    single = asr_client("transcribe", corpus / "a.wav", "--server", service.address,
                        "--format", "json")
    assert single.returncode == 0, single.stderr
    record = json.loads(single.stdout)
    assert record["file"] == str(corpus / "a.wav") and record["text"]
    assert {"segments", "device", "fallback_reason"} <= set(record)


def test_cli_resume_skips_done_and_redoes_truncated(service: RunningService, corpus: Path,
                                                   tmp_path: Path) -> None:
    out = tmp_path / "out"
    args = ("transcribe", corpus, "--server", service.address, "--format", "srt",
            "--output-dir", out)
    assert asr_client(*args).returncode == 0
    outputs = sorted(p for p in out.rglob("*.srt"))
    before = {p: (p.read_bytes(), p.stat().st_mtime_ns) for p in outputs}
    truncated, deleted = outputs[0], outputs[-1]
    truncated.write_bytes(before[truncated][0][:10])
    deleted.unlink()
    run = asr_client(*args, "--resume")
    assert run.returncode == 0, run.stderr
    assert f"{len(outputs) - 2} skipped" in run.stderr
    assert "transcribed 2 of" in run.stderr
    for p in outputs:
        assert p.read_bytes() == before[p][0]
        if p not in (truncated, deleted):
            assert p.stat().st_mtime_ns == before[p][1]  # not rewritten
    assert truncated.stat().st_mtime_ns != before[truncated][1]

    combined = tmp_path / "all.csv"
    csv_args = ("transcribe", corpus, "--server", service.address, "--format", "csv",
                "-o", combined)
    assert asr_client(*csv_args).returncode == 0
    full = combined.read_text(encoding="utf-8")
    combined.write_text(full[:len(full) - 25], encoding="utf-8")  # cut into the last row
    run = asr_client(*csv_args, "--resume")
    assert run.returncode == 0, run.stderr
    assert "transcribed 1 of" in run.stderr
    with combined.open(newline="", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    assert sorted(r["file"] for r in rows) == sorted(map(str, audio_files(corpus)))
    assert all(r["status"] == "ok" for r in rows)


def test_cli_names_each_failure_and_exits_non_zero(service: RunningService, corpus: Path,
                                                  tmp_path: Path) -> None:
    mixed = tmp_path / "mixed"
    shutil.copytree(corpus / "day1", mixed)
    (mixed / "broken.wav").write_bytes(b"RIFF, but then nothing useful" * 10)
    run = asr_client("transcribe", mixed, tmp_path / "nowhere", "--server", service.address,
                     "--format", "csv", "-o", tmp_path / "out.csv")
    assert run.returncode == 1
    assert re.search(r"broken\.wav: INVALID_ARGUMENT: \S", run.stderr), run.stderr
    assert "nowhere: no such file or directory" in run.stderr
    assert "2 failed" in run.stderr
    with (tmp_path / "out.csv").open(newline="", encoding="utf-8") as fh:
        status = {Path(r["file"]).name: r["status"] for r in csv.DictReader(fh)}
    assert status == {"b.wav": "ok", "c.flac": "ok", "broken.wav": "failed",
                      "nowhere": "failed"}


def test_cli_status_fits_80_columns(service: RunningService) -> None:
    run = asr_client("status", "--server", service.address, env={"COLUMNS": "80"})
    assert run.returncode == 0, run.stderr
    lines = run.stdout.splitlines()
    assert max(map(len, lines)) <= 80, run.stdout
    assert "cpu#0" in run.stdout and "vad#0" in run.stdout and "ready" in run.stdout
    assert "…" not in "".join(line.split()[0] for line in lines if line.strip())
    as_json = asr_client("--server", service.address, "status", "--format", "json")
    data = json.loads(as_json.stdout)
    ids = {w["worker_id"] for d in data["devices"] for w in d["workers"]}
    assert "cpu#0" in ids and "vad#0" in ids and all(i == "cpu#0" or i.startswith("vad#")
                                                     for i in ids)
    assert "models" in data


def test_cli_stream_json_lines(service: RunningService, corpus: Path) -> None:
    started = time.monotonic()
    run = asr_client("stream", corpus / "two_parts.wav", "--server", service.address,
                     "--format", "json", "--vad", "always", "--realtime")
    assert run.returncode == 0, run.stderr
    duration = sf.info(str(corpus / "two_parts.wav")).duration
    assert time.monotonic() - started >= 0.9 * duration  # paced like a live source
    lines = [json.loads(line) for line in run.stdout.splitlines()]
    assert lines[-1]["is_last"] and all(line["is_final"] for line in lines)
    assert lines[-1]["text"] and lines[-1]["end_ms"] > 9000
    if len(lines) > 1:
        assert lines[-1]["text"] == " ".join(x["text"] for x in lines[:-1])


def test_node_example_transcribes_a_file(service: RunningService, corpus: Path) -> None:
    node = shutil.which("node")
    if node is None or not (NODE_DIR / "node_modules" / "@grpc" / "grpc-js").is_dir():
        pytest.skip("node or the example's packages missing: run `make node`")
    wav = corpus / "day1" / "c.flac"
    with AsrClient(service.address) as client:
        expected = client.transcribe(wav)
    run = subprocess.run([node, str(NODE_DIR / "transcribe.js"), "--server", service.address,
                          str(wav)], capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    record = json.loads(run.stdout)
    assert record["file"] == str(wav) and record["text"] == expected.text
    assert record["device"] == "cpu" and record["fallback_reason"] == ""
    assert [(s["start_ms"], s["end_ms"]) for s in record["segments"]] == [
        (s.start_ms, s.end_ms) for s in expected.segments]
    bad = subprocess.run([node, str(NODE_DIR / "transcribe.js"), "--server", service.address,
                          str(corpus / "day1" / "notes.txt")], capture_output=True, text=True,
                         timeout=120)
    assert bad.returncode == 1 and "INVALID_ARGUMENT" in bad.stderr


def test_progress_bar_on_a_terminal_only(service: RunningService, corpus: Path,
                                         tmp_path: Path) -> None:
    import pty

    master, slave = pty.openpty()
    env = {**os.environ, "COLUMNS": "100", "TERM": "xterm"}
    proc = subprocess.Popen([str(BIN / "asr-client"), "transcribe", str(corpus), "--server",
                             service.address, "--format", "csv", "-o", str(tmp_path / "a.csv")],
                            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=slave,
                            env=env)
    os.close(slave)
    chunks = []
    while True:
        try:
            data = os.read(master, 65536)
        except OSError:  # EIO: the client closed the terminal
            break
        if not data:
            break
        chunks.append(data)
    os.close(master)
    assert proc.wait(300) == 0
    seen = b"".join(chunks).decode("utf-8", "replace")
    n = len(audio_files(corpus))
    assert f"{n}/{n} files" in seen and "RTFx" in seen and "ETA" in seen, seen[-2000:]
    piped = asr_client("transcribe", corpus, "--server", service.address, "--format", "csv",
                       "-o", tmp_path / "b.csv")
    assert piped.returncode == 0 and "ETA" not in piped.stderr and "files" in piped.stderr
