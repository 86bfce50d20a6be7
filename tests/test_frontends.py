"""`serve --frontends N`: front-end processes on one port in front of one dispatcher.

Real front-end processes (SO_REUSEPORT on one loopback port), the real scheduler and an
identity-engine worker, real gRPC clients each on its own connection. Each request carries its
own id and audio length, so a reply that went to the wrong call, or twice, is seen.
"""

from __future__ import annotations

import io
import logging
import os
import threading
import time
import wave
from collections.abc import Callable, Iterator
from pathlib import Path

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from protos.asr.v1 import asr_pb2 as pb
from protos.asr.v1 import asr_pb2_grpc as pb_grpc
from tests.conftest import RunningService

pytestmark = pytest.mark.integration

RATE = 16000


def wav(seconds: float) -> bytes:
    """A 16 kHz mono PCM16 WAV of a quiet tone (identity engine: content does not matter)."""
    samples = (np.arange(int(seconds * RATE)) * 37 % 200 - 100).astype("<i2")
    out = io.BytesIO()
    with wave.open(out, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(RATE)
        w.writeframes(samples.tobytes())
    return out.getvalue()


CLIPS = {k: wav(0.5 + 0.25 * k) for k in range(8)}  # 0.5 .. 2.25 s
CHUNK = 16000


def channel(address: str) -> grpc.Channel:
    """A channel with its own connection (gRPC shares connections of equal channels)."""
    return grpc.insecure_channel(address, options=[("grpc.use_local_subchannel_pool", 1)])


def stream_messages(data: bytes, request_id: str,
                    pause_s: float = 0.0) -> Iterator[pb.StreamingRecognizeRequest]:
    yield pb.StreamingRecognizeRequest(streaming_config=pb.StreamingRecognitionConfig(
        config=pb.RecognitionConfig(vad_mode=pb.VAD_NEVER, request_id=request_id)))
    for i in range(0, len(data), CHUNK):
        if pause_s:
            time.sleep(pause_s)
        yield pb.StreamingRecognizeRequest(audio_content=data[i:i + CHUNK])


def recognize(stub: pb_grpc.RecognizerStub, k: int, request_id: str, streamed: bool,
              pause_s: float = 0.0, wait_for_ready: bool = False) -> pb.RecognitionResult:
    """One call; the final result (its id and length checked by the caller). With
    `wait_for_ready`, a call made while the channel reconnects waits for the connection
    instead of failing at once (how a client retries after UNAVAILABLE)."""
    if not streamed:
        return stub.Recognize(pb.RecognizeRequest(
            config=pb.RecognitionConfig(vad_mode=pb.VAD_NEVER, request_id=request_id),
            audio_content=CLIPS[k]), timeout=60, wait_for_ready=wait_for_ready).result
    finals = [r for r in stub.StreamingRecognize(stream_messages(CLIPS[k], request_id, pause_s),
                                                 timeout=60, wait_for_ready=wait_for_ready)
              if r.is_last]
    assert len(finals) == 1
    return finals[0].result


def expected_s(k: int) -> float:
    return 0.5 + 0.25 * k


def established(pid: int, port: int) -> int:
    """TCP connections process `pid` holds on local `port` (the clients it serves)."""
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            target = os.readlink(fd)
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[8:-1])
    count = 0
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            local_port = int(fields[1].rsplit(":", 1)[1], 16)
            if local_port == port and fields[3] == "01" and fields[9] in inodes:
                count += 1
    return count


def requests_counted(svc: RunningService, code: str) -> float:
    total = 0.0
    for metric in svc.service.metrics.registry.collect():
        if metric.name == "asr_requests":
            total += sum(s.value for s in metric.samples
                         if s.name == "asr_requests_total" and s.labels.get("code") == code)
    return total


def sample(svc: RunningService, name: str, frontend: str) -> float:
    """One front end's value of a metric, as /metrics would show it."""
    for metric in svc.service.metrics.registry.collect():
        for s in metric.samples:
            if s.name == name and s.labels.get("frontend") == frontend:
                return s.value
    raise AssertionError(f"{name}{{frontend={frontend}}} is not exported")


def test_calls_through_several_front_ends_are_each_answered_once(
        start_service: Callable[..., RunningService], models_dir: Path) -> None:
    svc = start_service(models_dir / "sensevoice-tiny", engine="identity", frontends=3)
    pool = svc.service.frontends
    assert pool is not None and len({p.pid for p in pool.processes}) == 3
    clients, per_client = 18, 8
    answers: dict[str, pb.RecognitionResult] = {}
    errors: list[BaseException] = []
    lock = threading.Lock()
    channels = [channel(svc.address) for _ in range(clients)]
    for ch in channels:  # every connection open before the counts below
        grpc.channel_ready_future(ch).result(timeout=30)
    spread = [established(p.pid, svc.port) for p in pool.processes]

    def client(i: int) -> None:
        stub = pb_grpc.RecognizerStub(channels[i])
        try:
            for j in range(per_client):
                rid = f"c{i}-{j}"
                result = recognize(stub, (i + j) % len(CLIPS), rid, streamed=j % 3 == 2)
                with lock:
                    assert rid not in answers
                    answers[rid] = result
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=client, args=(i,)) for i in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not errors, errors[:3]
    assert len(answers) == clients * per_client
    for rid, result in answers.items():
        i, j = (int(x) for x in rid[1:].split("-"))
        assert result.request_id == rid
        assert result.audio_duration_s == pytest.approx(expected_s((i + j) % len(CLIPS)))
    # The kernel spread the connections over the processes; all requests were counted once.
    assert sum(spread) == clients and sum(1 for n in spread if n) >= 2, spread
    assert requests_counted(svc, "OK") == clients * per_client
    assert [sample(svc, "asr_frontend_link_calls", str(p.index)) for p in pool.processes] == [
        0, 0, 0]

    # Errors, details and health come back through the relay as the scheduler gives them.
    stub = pb_grpc.RecognizerStub(channels[0])
    with pytest.raises(grpc.RpcError) as bad:
        stub.Recognize(pb.RecognizeRequest(audio_content=b"not audio"), timeout=30)
    assert bad.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "could not decode the audio" in (bad.value.details() or "")
    health = health_pb2_grpc.HealthStub(channels[0]).Check(health_pb2.HealthCheckRequest(),
                                                           timeout=10)
    assert health.status == health_pb2.HealthCheckResponse.SERVING
    for ch in channels:
        ch.close()

    # The scheduler's private socket answers only its front ends.
    socket = pool.launch.process.dispatcher
    with grpc.insecure_channel(socket) as ch, pytest.raises(grpc.RpcError) as refused:
        pb_grpc.AdminStub(ch).GetStatus(pb.GetStatusRequest(), timeout=10)
    assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED


def test_killing_a_front_end_loses_only_its_own_calls(
        start_service: Callable[..., RunningService], models_dir: Path) -> None:
    svc = start_service(models_dir / "sensevoice-tiny", engine="identity", frontends=2)
    pool = svc.service.frontends
    assert pool is not None
    clients = 12
    channels = [channel(svc.address) for _ in range(clients)]
    for ch in channels:
        grpc.channel_ready_future(ch).result(timeout=30)
    counts = [established(p.pid, svc.port) for p in pool.processes]
    victim = pool.processes[counts.index(max(counts))]
    held = max(counts)
    assert held >= 1, counts
    stop = threading.Event()
    lock = threading.Lock()
    ok: dict[str, int] = {}
    failures: dict[int, list[grpc.StatusCode]] = {i: [] for i in range(clients)}
    unexpected: list[BaseException] = []

    def client(i: int) -> None:
        stub = pb_grpc.RecognizerStub(channels[i])
        j = 0
        retrying = False
        while not stop.is_set():
            rid = f"k{i}-{j}"
            k = (i + j) % len(CLIPS)
            try:
                # Slow uploads: a call lasts ~0.3-0.9 s, so each client has one in flight.
                # A retry waits for the channel's new connection: should a reconnection attempt
                # fail (one that raced the kill, say), the channel backs off, and calls made
                # then fail at once without reaching any server (seen under heavy load).
                result = recognize(stub, k, rid, streamed=True, pause_s=0.1,
                                   wait_for_ready=retrying)
            except grpc.RpcError as exc:
                with lock:
                    failures[i].append(exc.code())
                retrying = True
                continue  # retried with the same id, on a new connection
            except BaseException as exc:  # reported below
                unexpected.append(exc)
                return
            retrying = False
            with lock:
                if result.request_id != rid or result.audio_duration_s != pytest.approx(
                        expected_s(k)):
                    unexpected.append(AssertionError(f"{rid}: got {result}"))
                ok[rid] = ok.get(rid, 0) + 1
            j += 1

    threads = [threading.Thread(target=client, args=(i,)) for i in range(clients)]
    for t in threads:
        t.start()
    time.sleep(2.0)
    old_pid = victim.pid
    os.kill(old_pid, 9)
    deadline = time.monotonic() + 30
    while (victim.pid in (0, old_pid) or victim.restarts < 1) and time.monotonic() < deadline:
        time.sleep(0.1)
    time.sleep(2.0)  # calls go on through the survivor and the restarted process
    stop.set()
    for t in threads:
        t.join(60)
    assert not unexpected, unexpected[:3]
    failed = {i: [c.name for c in codes] for i, codes in failures.items() if codes}
    # Only the killed process's calls failed, each UNAVAILABLE (retryable): one per client it
    # served, and at most one more where the retry's reconnection raced the kill or the
    # restart (seen once in a full run on the 2-core machine: the retried call then went on).
    assert failed, "the killed front end held calls; some must have failed"
    assert len(failed) <= held, (failed, counts)
    assert all(set(codes) == {"UNAVAILABLE"} and len(codes) <= 2
               for codes in failed.values()), f"{failed}"
    # Every call that succeeded was answered once; the others went on after the kill.
    assert all(n == 1 for n in ok.values())
    assert len(ok) >= 4 * clients
    assert victim.restarts == 1 and victim.pid not in (0, old_pid)
    assert sample(svc, "asr_frontend_restarts_total", str(victim.index)) == 1
    assert [sample(svc, "asr_frontend_up", str(p.index)) for p in pool.processes] == [1, 1]
    # The scheduler let go of the lost calls: nothing is left in flight.
    deadline = time.monotonic() + 10
    while svc.service.drain.active and time.monotonic() < deadline:
        time.sleep(0.1)
    assert svc.service.drain.active == 0
    # The restarted process serves: new connections reach it and answer.
    fresh = [channel(svc.address) for _ in range(16)]
    for n, ch in enumerate(fresh):
        result = recognize(pb_grpc.RecognizerStub(ch), n % len(CLIPS), f"after-{n}", False)
        assert result.request_id == f"after-{n}"
    assert established(victim.pid, svc.port) >= 1
    for ch in (*channels, *fresh):
        ch.close()


def test_tokens_and_orderly_stop_through_front_ends(
        start_service: Callable[..., RunningService], models_dir: Path, tmp_path: Path) -> None:
    token = tmp_path / "token"
    token.write_text("s3cret\n")
    svc = start_service(models_dir / "sensevoice-tiny", engine="identity", frontends=2,
                        auth_token_file=str(token))
    pool = svc.service.frontends
    assert pool is not None
    pids = [p.pid for p in pool.processes]
    with channel(svc.address) as ch:
        stub = pb_grpc.RecognizerStub(ch)
        request = pb.RecognizeRequest(config=pb.RecognitionConfig(vad_mode=pb.VAD_NEVER),
                                      audio_content=CLIPS[0])
        with pytest.raises(grpc.RpcError) as missing:
            stub.Recognize(request, timeout=30)
        assert missing.value.code() == grpc.StatusCode.UNAUTHENTICATED
        with pytest.raises(grpc.RpcError) as wrong:
            stub.Recognize(request, timeout=30, metadata=[("authorization", "Bearer nope")])
        assert wrong.value.code() == grpc.StatusCode.PERMISSION_DENIED
        # A stream refused while the client still sends: its own code every time (grpc.aio
        # had turned about half of these into INTERNAL; scheduler/grpc_fixes.py).
        for _ in range(20):
            with pytest.raises(grpc.RpcError) as refused:
                list(stub.StreamingRecognize(stream_messages(wav(3.0), "refused"), timeout=30,
                                             metadata=[("authorization", "Bearer nope")]))
            assert refused.value.code() == grpc.StatusCode.PERMISSION_DENIED, \
                refused.value.details()
        good = stub.Recognize(request, timeout=30, metadata=[("authorization", "Bearer s3cret"),
                                                             ("x-request-id", "tok-1")])
        assert good.result.request_id == "tok-1"
        assert good.result.audio_duration_s == pytest.approx(expected_s(0))
    assert requests_counted(svc, "UNAUTHENTICATED") == 1
    assert requests_counted(svc, "PERMISSION_DENIED") == 21
    svc.stop()  # drain, then the front ends, then the workers: no process is left behind
    for pid in pids:
        assert not Path(f"/proc/{pid}").exists()  # exited and reaped


def test_arena_holds_raw_bytes_and_checks_bounds() -> None:
    from protos.common.pcm_arena import PcmArena, supported
    if not supported():
        pytest.skip("no memfd on this platform")
    arena = PcmArena.create(4096)
    message = pb.RecognizeRequest(audio_content=b"\x01\x02" * 700).SerializeToString()
    block = arena.put_bytes(message)
    assert block is not None and block.num_bytes == len(message)
    assert arena.put_bytes(b"x" * 4096) is None  # no room: the caller sends it inline
    view = arena.view(block.offset, block.num_bytes)
    parsed = pb.RecognizeRequest.FromString(view)
    view.release()
    arena.free(block)
    assert arena.put_bytes(b"\xff" * len(message)) is not None  # the block is reused ...
    assert parsed.audio_content == b"\x01\x02" * 700  # ... and the parsed message kept a copy
    with pytest.raises(ValueError):
        arena.view(4000, 200)
    arena.close()


@pytest.fixture
def decoded_here(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """One entry per audio decoded by the scheduler's pipeline itself (FFmpeg/libsndfile)."""
    import scheduler.pipeline

    calls: list[int] = []
    real = scheduler.pipeline.decode_audio

    def counting(*args: object, **kw: object) -> object:
        calls.append(1)
        return real(*args, **kw)  # type: ignore[arg-type]

    monkeypatch.setattr(scheduler.pipeline, "decode_audio", counting)
    return calls


def test_front_ends_decode_audio_exactly_as_the_scheduler(
        start_service: Callable[..., RunningService], models_dir: Path,
        speech: dict[str, Path], decoded_here: list[int]) -> None:
    """A real model: the same text, times and errors whether the scheduler decodes (no front
    ends) or the front-end processes do; with front ends the scheduler decodes nothing."""
    model = models_dir / "sensevoice-tiny"
    results: dict[int, list[tuple[object, ...]]] = {}
    for frontends in (0, 2):
        svc = start_service(model, frontends=frontends)
        decoded_here.clear()
        out = []
        with channel(svc.address) as ch:
            stub = pb_grpc.RecognizerStub(ch)
            for name in ("wav16k", "wav44k_stereo", "flac", "mp3"):
                r = stub.Recognize(pb.RecognizeRequest(audio_content=speech[name].read_bytes()),
                                   timeout=120).result
                out.append((name, r.text, r.language, round(r.audio_duration_s, 4),
                            [(s.start_ms, s.end_ms, s.text) for s in r.segments]))
            with pytest.raises(grpc.RpcError) as bad:
                stub.Recognize(pb.RecognizeRequest(audio_content=b"RIFF0000WAVEjunk" * 8),
                               timeout=60)
            out.append(("bad", bad.value.code(), bad.value.details()))
        results[frontends] = out
        # Without front ends the scheduler decoded FLAC and MP3 itself; with them, nothing.
        assert (len(decoded_here) >= 2) if frontends == 0 else decoded_here == [], decoded_here
        svc.stop()
    assert results[0] == results[2]
    assert all(text for _, text, *_ in results[0][:4])  # the model said something for each


def link_requests(svc: RunningService, rpc: str) -> float:
    """Calls of `rpc` the front ends relayed on their Links, all together."""
    for metric in svc.service.metrics.registry.collect():
        if metric.name == "asr_frontend_link_requests":
            return sum(s.value for s in metric.samples
                       if s.name.endswith("_total") and s.labels.get("rpc") == rpc)
    raise AssertionError("asr_frontend_link_requests is not exported")


def test_streamed_uploads_answer_alike_with_and_without_front_ends(
        start_service: Callable[..., RunningService], models_dir: Path,
        speech: dict[str, Path], decoded_here: list[int]) -> None:
    """An upload that a front end reads whole rides its Link: every response (VAD segments'
    results as they finish, then the file's) equals the scheduler's own answer to the same
    stream, errors included; it is counted as a stream, and the scheduler decodes nothing."""
    model = models_dir / "sensevoice-tiny"
    results: dict[int, list[object]] = {}
    for frontends in (0, 2):
        svc = start_service(model, frontends=frontends, vad_model=str(models_dir / "fsmn-vad"))
        decoded_here.clear()
        out: list[object] = []
        with channel(svc.address) as ch:
            stub = pb_grpc.RecognizerStub(ch)
            for name in ("wav16k", "mp3"):
                for vad in (pb.VAD_NEVER, pb.VAD_ALWAYS):
                    data = speech[name].read_bytes()
                    config = pb.RecognitionConfig(vad_mode=vad, request_id=f"{name}-{vad}")
                    messages = [pb.StreamingRecognizeRequest(
                        streaming_config=pb.StreamingRecognitionConfig(config=config)), *(
                        pb.StreamingRecognizeRequest(audio_content=data[i:i + 8000])
                        for i in range(0, len(data), 8000))]
                    responses = list(stub.StreamingRecognize(iter(messages), timeout=120))
                    out.append([(r.is_final, r.is_last, r.result.text, r.result.request_id,
                                 round(r.audio_processed_s, 4), [(s.start_ms, s.end_ms, s.text)
                                                                 for s in r.result.segments])
                                for r in responses])
            with pytest.raises(grpc.RpcError) as bad:
                list(stub.StreamingRecognize(iter([
                    pb.StreamingRecognizeRequest(streaming_config=pb.StreamingRecognitionConfig()),
                    pb.StreamingRecognizeRequest(audio_content=b"RIFF0000WAVEjunk" * 8)]),
                    timeout=60))
            out.append(("bad", bad.value.code(), bad.value.details()))
        results[frontends] = out
        # Without front ends the scheduler decoded the MP3 streams itself; with them, nothing.
        assert (len(decoded_here) >= 2) if frontends == 0 else decoded_here == [], decoded_here
        if frontends:
            assert link_requests(svc, "StreamingRecognize") == 5
            assert requests_counted(svc, "OK") == 4
        svc.stop()
    assert results[0] == results[2]
    vad_cut = results[0][1]
    assert isinstance(vad_cut, list) and len(vad_cut) >= 2  # segment result(s), then the file's
    assert all(run[-1][2] for run in results[0][:4])  # the model said something for each


def test_uploads_the_link_does_not_take_are_relayed_as_calls(
        start_service: Callable[..., RunningService], models_dir: Path) -> None:
    """Longer than the stream buffer, a config sent twice, a client that stalls, a client
    over its stream limit: what the scheduler would answer, whether the front end read part
    of the stream first (then relayed it, those messages first) or decided itself."""
    svc = start_service(models_dir / "sensevoice-tiny", engine="identity", frontends=1,
                        stream_buffer_mib=1, stream_idle_timeout_s=1.0,
                        max_streams_per_client=1)
    with channel(svc.address) as ch:
        stub = pb_grpc.RecognizerStub(ch)
        long = wav(40.0)  # 1.28 MB: over the 1 MiB buffer
        finals = [r for r in stub.StreamingRecognize(stream_messages(long, "long"), timeout=120)
                  if r.is_last]
        assert [(r.result.request_id, round(r.result.audio_duration_s, 3)) for r in finals] == [
            ("long", 40.0)]
        assert link_requests(svc, "StreamingRecognize") == 0
        assert recognize(stub, 2, "short", streamed=True).audio_duration_s == pytest.approx(1.0)
        assert link_requests(svc, "StreamingRecognize") == 1

        def twice() -> Iterator[pb.StreamingRecognizeRequest]:
            yield from stream_messages(CLIPS[0], "twice")
            yield pb.StreamingRecognizeRequest(streaming_config=pb.StreamingRecognitionConfig())
        with pytest.raises(grpc.RpcError) as again:
            list(stub.StreamingRecognize(twice(), timeout=30))
        assert again.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "only be sent once" in (again.value.details() or "")

        # Stalls: the config, then nothing for longer than the idle timeout.
        release = threading.Event()

        def stalled() -> Iterator[pb.StreamingRecognizeRequest]:
            yield next(stream_messages(b"", "stalled"))
            release.wait(30)

        with pytest.raises(grpc.RpcError) as idle:
            list(stub.StreamingRecognize(stalled(), timeout=30))
        assert idle.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        assert "--stream-idle-timeout-s" in (idle.value.details() or "")
        release.set()

        # One stream per client: a second while the first is still being read is refused.
        hold = threading.Event()

        def slow() -> Iterator[pb.StreamingRecognizeRequest]:
            messages = stream_messages(CLIPS[0], "first")
            yield next(messages)
            hold.wait(30)
            yield from messages

        first = stub.StreamingRecognize(slow(), timeout=30)
        time.sleep(0.5)  # the first stream is open in the front end
        with pytest.raises(grpc.RpcError) as over:
            recognize(stub, 1, "second", streamed=True)
        assert over.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "--max-streams-per-client 1" in (over.value.details() or "")
        hold.set()
        assert [r.result.request_id for r in first if r.is_last] == ["first"]
        assert recognize(stub, 1, "third", streamed=True).request_id == "third"


def test_without_shared_memory_front_ends_relay_requests_inline(
        start_service: Callable[..., RunningService], models_dir: Path) -> None:
    """`--pcm-arena-mib 0`: no arenas; requests (too big for the unary limit included) travel
    inside the Link messages and are answered the same way."""
    svc = start_service(models_dir / "sensevoice-tiny", engine="identity", frontends=1,
                        pcm_arena_mib=0, max_unary_bytes=100_000)
    pool = svc.service.frontends
    assert pool is not None and pool.processes[0].arena is None
    with channel(svc.address) as ch:
        stub = pb_grpc.RecognizerStub(ch)
        for k in (0, 3):
            result = recognize(stub, k, f"inline-{k}", streamed=False)
            assert result.request_id == f"inline-{k}"
            assert result.audio_duration_s == pytest.approx(expected_s(k))
        with pytest.raises(grpc.RpcError) as big:
            stub.Recognize(pb.RecognizeRequest(audio_content=wav(4.0)), timeout=30)
        assert big.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "limit of Recognize" in (big.value.details() or "")


def test_the_client_library_rides_out_a_front_end_kill(
        start_service: Callable[..., RunningService], models_dir: Path,
        caplog: pytest.LogCaptureFixture) -> None:
    """`AsrClient` retries UNAVAILABLE: a user transcribing through front ends sees no error
    when the front end holding its connection is killed."""
    from client.library import AsrClient

    svc = start_service(models_dir / "sensevoice-tiny", engine="identity", frontends=2)
    pool = svc.service.frontends
    assert pool is not None
    stop = threading.Event()
    done: list[float] = []
    errors: list[BaseException] = []
    with AsrClient(svc.address) as client:
        client.transcribe(CLIPS[0], timeout=30)  # connected
        holder = next(p for p in pool.processes if established(p.pid, svc.port))

        def loop(k: int) -> None:
            while not stop.is_set():
                try:
                    t = client.transcribe(CLIPS[k], timeout=60)
                    done.append(t.audio_duration_s)
                except BaseException as exc:  # reported below
                    errors.append(exc)
                    return

        threads = [threading.Thread(target=loop, args=(k,)) for k in range(6)]
        for t in threads:
            t.start()
        time.sleep(1.0)
        caplog.set_level(logging.INFO, logger="client.library")
        os.kill(holder.pid, 9)
        time.sleep(2.0)
        stop.set()
        for t in threads:
            t.join(60)
    assert not errors, errors[:3]
    retried = [r for r in caplog.records if "retry" in r.getMessage()]
    assert retried, "calls were in flight on the killed front end and were retried"
    assert all("UNAVAILABLE" in r.getMessage() for r in retried), retried[0].getMessage()
    assert holder.restarts == 1
    assert len(done) > 12 and all(d in {expected_s(k) for k in range(6)} for d in done)
