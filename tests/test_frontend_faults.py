"""Load through front-end processes while they and the workers are kill -9'd (slow tier).

`serve --frontends 3 --devices sim:2` with the real sensevoice-tiny model; 24 clients, each on
its own connection, send 1-20 s WAV and MP3 files (unary, which the front ends decode) and
chunked streams; every few seconds a front-end process or a worker is killed in turn. A call
lost with its front end fails UNAVAILABLE and the client retries it with the same request id
(what a gRPC retry policy or Envoy does). Every request ends answered exactly once with its
idle-server text; no other status code is seen; the killed front ends are back; nothing is left
in flight in the scheduler. ASR_FRONTEND_SOAK_S sets the length (default 120 s)."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from protos.asr.v1 import asr_pb2 as pb
from protos.asr.v1 import asr_pb2_grpc as pb_grpc
from tests.long_audio import speech_clips, write_recording
from tests.rss import children
from tests.serve_proc import ServeProcess

pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.timeout(3600),
              pytest.mark.skipif(
    os.environ.get("ASR_SLOW_TESTS") != "1", reason="slow tier: set ASR_SLOW_TESTS=1")]

SOAK_S = float(os.environ.get("ASR_FRONTEND_SOAK_S", "120"))
CLIENTS = 24
LENGTHS = (1.0, 5.0, 20.0)
RETRIES = 6


def _upload(data: bytes, request_id: str) -> Iterator[pb.StreamingRecognizeRequest]:
    yield pb.StreamingRecognizeRequest(streaming_config=pb.StreamingRecognitionConfig(
        config=pb.RecognitionConfig(request_id=request_id)))
    for i in range(0, len(data), 32 * 1024):
        yield pb.StreamingRecognizeRequest(audio_content=data[i:i + 32 * 1024])


def _kind(pid: int) -> str:
    cmd = Path(f"/proc/{pid}/cmdline").read_bytes()
    return "frontend" if b"scheduler.frontend" in cmd else "worker"


def test_load_while_front_ends_and_workers_are_killed(models_dir: Path, tmp_path: Path) -> None:
    clips = speech_clips(tmp_path)
    files: dict[tuple[float, str], bytes] = {}
    for s in LENGTHS:
        wav = write_recording(tmp_path / f"{s:g}s.wav", s, clips, seed=int(s))
        mp3 = tmp_path / f"{s:g}s.mp3"
        subprocess.run(["ffmpeg", "-loglevel", "error", "-y", "-i", str(wav), str(mp3)],
                       check=True)
        files[(s, "wav")], files[(s, "mp3")] = wav.read_bytes(), mp3.read_bytes()
    svc = ServeProcess(models_dir / "sensevoice-tiny", "--devices", "sim:2", "--frontends", "3",
                       "--max-queue", "4096", "--queue-timeout-s", "120", "--max-attempts", "8",
                       log_path=tmp_path / "serve.log")
    try:
        svc.wait_serving()
        channels = [grpc.insecure_channel(svc.address,
                                          options=[("grpc.use_local_subchannel_pool", 1)])
                    for _ in range(CLIENTS)]

        def once(i: int, key: tuple[float, str], streamed: bool, rid: str) -> pb.RecognitionResult:
            stub = pb_grpc.RecognizerStub(channels[i])
            if streamed:
                *_, last = stub.StreamingRecognize(_upload(files[key], rid), timeout=600)
                assert last.is_last
                return last.result
            return stub.Recognize(pb.RecognizeRequest(
                config=pb.RecognitionConfig(request_id=rid), audio_content=files[key]),
                timeout=600).result

        idle = {(key, streamed): once(0, key, streamed, "idle").text
                for key in files for streamed in (False, True)}
        assert all(idle.values())
        stop = threading.Event()
        kills: list[str] = []
        lock = threading.Lock()
        answers: dict[str, int] = {}
        retried: list[str] = []
        wrong: list[str] = []

        def killer() -> None:
            turn = 0
            while not stop.wait(4.0):
                kids = sorted(children(svc.proc.pid))
                fronts = [k for k in kids if _kind(k) == "frontend"]
                workers = [k for k in kids if _kind(k) == "worker"]
                # Two front ends, then a worker; only once every process is back.
                if len(fronts) < 3 or not workers:
                    continue
                kind = "worker" if turn % 3 == 2 else "frontend"
                pool = workers if kind == "worker" else fronts
                try:
                    os.kill(pool[turn % len(pool)], signal.SIGKILL)
                    kills.append(kind)
                except ProcessLookupError:
                    pass
                turn += 1

        def client(i: int) -> None:
            rng = random.Random(i)
            n = 0
            while not stop.is_set():
                key = (rng.choice(LENGTHS), rng.choice(("wav", "mp3")))
                streamed = rng.random() < 0.25
                rid = f"c{i}-{n}"
                for attempt in range(RETRIES):
                    try:
                        result = once(i, key, streamed, rid)
                        break
                    except grpc.RpcError as exc:
                        if exc.code() != grpc.StatusCode.UNAVAILABLE or attempt == RETRIES - 1:
                            with lock:
                                wrong.append(f"{rid}: {exc.code().name} {exc.details()}")
                            return
                        with lock:
                            retried.append(rid)
                        time.sleep(0.2)
                with lock:
                    answers[rid] = answers.get(rid, 0) + 1
                    if result.request_id != rid or result.text != idle[(key, streamed)]:
                        wrong.append(f"{rid}: {result.request_id} {result.text!r}")
                n += 1

        threads = [threading.Thread(target=killer, daemon=True)]
        threads += [threading.Thread(target=client, args=(i,)) for i in range(CLIENTS)]
        for t in threads:
            t.start()
        time.sleep(SOAK_S)
        stop.set()
        for t in threads[1:]:
            t.join(900)
        assert not wrong, wrong[:5]
        assert all(n == 1 for n in answers.values())
        fronts, workers = kills.count("frontend"), kills.count("worker")
        print(f"\n{len(answers)} requests answered in {SOAK_S:g} s, {len(retried)} retried "
              f"after UNAVAILABLE; {fronts} front-end and {workers} worker kills")
        assert fronts >= 4 and workers >= 2, kills
        assert retried, "some calls were on the killed front ends"
        # Every front end is back and the scheduler holds nothing for the lost calls.
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            kids = children(svc.proc.pid)
            if (sum(_kind(k) == "frontend" for k in kids) == 3
                    and svc.metric("asr_requests_in_flight") == 0):
                break
            time.sleep(0.5)
        assert sum(_kind(k) == "frontend" for k in children(svc.proc.pid)) == 3
        assert svc.metric("asr_requests_in_flight") == 0
        for ch in channels:
            ch.close()
    finally:
        svc.stop()
