"""Live mode of StreamingRecognize, end to end: real scheduler, real worker processes, real
gRPC on loopback, paraformer-streaming-tiny with the real FSMN-VAD.

The reference is FunASR's own streaming loop: for each utterance the service reports, the
utterance's samples fed to `generate(input=chunk, cache=cache, is_final=...)` in the model's
600 ms chunks; the joined finals must equal it. Two-pass finals must equal the offline model's
text on the same samples.
"""

from __future__ import annotations

import itertools
import json
import os
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
import soundfile as sf

from protos.asr.v1 import asr_pb2 as pb
from protos.asr.v1 import asr_pb2_grpc as pb_grpc
from tests.audio_fixtures import espeak_wav
from tests.conftest import RunningService, make_config

pytestmark = pytest.mark.integration

CHUNK_S = 0.1
STREAM_KWARGS = {"chunk_size": [0, 10, 5], "encoder_chunk_look_back": 4,
                 "decoder_chunk_look_back": 1}


@pytest.fixture(scope="module")
def talk(tmp_path_factory: pytest.TempPathFactory) -> np.ndarray:
    """Three utterances separated by 2 s of silence, 16 kHz float32."""
    d = tmp_path_factory.mktemp("live")
    parts = []
    for i, text in enumerate(["hello world, this is the first sentence of a live test",
                              "and here comes the second one",
                              "finally the third sentence closes the stream"]):
        a, _ = sf.read(espeak_wav(text, d / f"u{i}.wav"), dtype="float32")
        parts += [np.zeros(8000 if i == 0 else 32000, np.float32), a]
    parts.append(np.zeros(16000, np.float32))
    return np.concatenate(parts)


def pcm16(x: np.ndarray) -> bytes:
    return (np.clip(x, -1, 1) * 32767).astype("<i2").tobytes()


def live_requests(audio: np.ndarray, realtime: bool = False, model: str = "",
                  final_model: str = "", sent: list[tuple[float, float]] | None = None,
                  end_silence_ms: int = 0) -> Iterator[pb.StreamingRecognizeRequest]:
    cfg = pb.RecognitionConfig(encoding=pb.LINEAR16, sample_rate_hertz=16000, model=model)
    yield pb.StreamingRecognizeRequest(streaming_config=pb.StreamingRecognitionConfig(
        config=cfg, live=True, final_model=final_model, end_silence_ms=end_silence_ms))
    step = int(CHUNK_S * 16000)
    started = time.monotonic()
    for i in range(0, len(audio), step):
        if realtime:
            ahead = i / 16000 - (time.monotonic() - started)
            if ahead > 0:
                time.sleep(ahead)
        if sent is not None:
            sent.append((min(i + step, len(audio)) / 16000, time.monotonic()))
        yield pb.StreamingRecognizeRequest(audio_content=pcm16(audio[i:i + step]))


def speech_ends_ms(audio: np.ndarray) -> list[int]:
    """Where each stretch of speech ends (ms), stretches split by >= 1 s of digital silence."""
    frames = np.abs(audio[:len(audio) // 160 * 160]).reshape(-1, 160)  # 10 ms frames
    loud = np.flatnonzero(frames.max(axis=1) > 1e-3)
    ends = [int(a) for a, b in itertools.pairwise(loud) if b - a >= 100] + [int(loud[-1])]
    return [10 * (e + 1) for e in ends]


def run_stream(address: str, audio: np.ndarray, **kw: Any) -> list[pb.StreamingRecognizeResponse]:
    with grpc.insecure_channel(address) as ch:
        stub = pb_grpc.RecognizerStub(ch)
        return list(stub.StreamingRecognize(live_requests(audio, **kw), timeout=300))


def funasr_reference(model_dir: Path, audio: np.ndarray,
                     spans: list[tuple[int, int]]) -> list[str]:
    """FunASR's own streaming loop over each span's samples (the same int16 round trip)."""
    from funasr import AutoModel

    model = AutoModel(model=str(model_dir), disable_update=True, disable_pbar=True,
                      disable_log=True)
    x = np.frombuffer(pcm16(audio), dtype="<i2").astype(np.float32) / np.float32(32768.0)
    texts = []
    for start, end in spans:
        seg = x[start * 16:end * 16]
        cache: dict[str, Any] = {}
        parts = []
        for j in range(0, len(seg), 9600):
            out = model.generate(input=seg[j:j + 9600], cache=cache,
                                 is_final=j + 9600 >= len(seg), **STREAM_KWARGS)
            parts.append(out[0]["text"])
        texts.append("".join(parts))
    return texts


def offline_reference(model_dir: Path, audio: np.ndarray,
                      spans: list[tuple[int, int]]) -> list[str]:
    from funasr import AutoModel

    model = AutoModel(model=str(model_dir), disable_update=True, disable_pbar=True,
                      disable_log=True)
    x = np.frombuffer(pcm16(audio), dtype="<i2").astype(np.float32) / np.float32(32768.0)
    out = []
    for s, e in spans:
        r = model.generate(input=x[s * 16:e * 16], language="auto", use_itn=False)
        text = r[0]["text"]
        out.append(text)
    return out


@pytest.fixture(scope="module")
def live_service(models_dir: Path) -> Iterator[RunningService]:
    """One service for the module: a streaming model ("live", the default), an offline model
    ("final") beside it, two workers each (streams survive the loss of one)."""
    svc = RunningService(make_config(
        [f"live={models_dir / 'paraformer-streaming-tiny'}",
         f"final={models_dir / 'sensevoice-tiny'}"], vad_model=str(models_dir / "fsmn-vad"),
        vad_workers=1, workers_per_device=2))
    try:
        svc.wait_all_ready()
        yield svc
    finally:
        svc.stop()


def finals_of(responses: list[pb.StreamingRecognizeResponse]
              ) -> list[pb.StreamingRecognizeResponse]:
    return [r for r in responses if r.is_final and not r.is_last]


def realtime_streams_with_a_kill9(svc: RunningService, talk: np.ndarray, n: int
                                  ) -> tuple[dict[int, list[pb.StreamingRecognizeResponse]], int]:
    """`n` staggered real-time streams of `talk`; 4 s into them (inside every stream's first
    utterance) the worker holding the most is killed with SIGKILL. Every stream's responses,
    and how many streams that worker held."""
    results: dict[int, list[pb.StreamingRecognizeResponse]] = {}
    errors: list[BaseException] = []

    def one(k: int) -> None:
        time.sleep(0.05 * k)  # staggered, as real calls are
        try:
            results[k] = run_stream(svc.address, talk, realtime=True)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=one, args=(k,)) for k in range(n)]
    for t in threads:
        t.start()
    dispatcher = svc.service.dispatcher
    deadline = time.monotonic() + 60
    while sum(dispatcher.live_streams.values()) < n and time.monotonic() < deadline:
        time.sleep(0.1)
    time.sleep(4.0)  # inside the first utterance of every stream
    victim_id, held = dispatcher.live_streams.most_common(1)[0]
    victim = next(w for w in dispatcher.workers if w.spec.worker_id == victim_id)
    victim.kill()  # SIGKILL
    for t in threads:
        t.join(240)
    assert not errors, errors
    assert len(results) == n
    return results, held


def assert_finals_whole_and_right(results: dict[int, list[pb.StreamingRecognizeResponse]],
                                  models_dir: Path, talk: np.ndarray) -> None:
    """Every stream got its 3 finals, in order, none repeated, then its last response; every
    distinct utterance span of every stream has FunASR's own streaming loop's text."""
    spans_seen: set[tuple[int, int]] = set()
    for k, responses in results.items():
        finals = finals_of(responses)
        assert len(finals) == 3, (k, [(f.utterance_start_ms, f.utterance_end_ms, f.result.text)
                                      for f in finals])
        spans = [(f.utterance_start_ms, f.utterance_end_ms) for f in finals]
        assert all(a[1] <= b[0] for a, b in itertools.pairwise(spans)), spans
        spans_seen.update(spans)
        assert responses[-1].is_last
    spans = sorted(spans_seen)
    expected = dict(zip(spans, funasr_reference(models_dir / "paraformer-streaming-tiny", talk,
                                                spans), strict=True))
    for responses in results.values():
        for f in finals_of(responses):
            assert f.result.text == expected[(f.utterance_start_ms, f.utterance_end_ms)]


def test_live_finals_equal_funasr_streaming_loop(live_service: RunningService,
                                                 models_dir: Path, talk: np.ndarray) -> None:
    svc = live_service
    responses = run_stream(svc.address, talk)
    finals = finals_of(responses)
    assert responses[-1].is_last
    assert len(finals) == 3, [(f.utterance_start_ms, f.utterance_end_ms) for f in finals]
    spans = [(f.utterance_start_ms, f.utterance_end_ms) for f in finals]
    assert all(s < e for s, e in spans) and all(a[1] <= b[0] for a, b in itertools.pairwise(spans))
    # An utterance the VAD closed in silence ends where its speech does (the VAD adds up to
    # 100 ms), not where the decoder had got to when the VAD's end-silence window ran out, ~2 s
    # later (the last one is closed by the end of the stream, 1 s after its speech).
    spoken = speech_ends_ms(talk)
    assert len(spoken) == 3
    for (_, end), speech_end in zip(spans[:-1], spoken[:-1], strict=True):
        assert speech_end - 50 <= end <= speech_end + 250, (spans, spoken)
    assert spoken[-1] - 50 <= spans[-1][1] <= len(talk) // 16
    expected = funasr_reference(models_dir / "paraformer-streaming-tiny", talk, spans)
    assert [f.result.text for f in finals] == expected
    assert all(expected)
    assert responses[-1].result.text == " ".join(expected)
    # Interim results came while each utterance was spoken, each a prefix of its final.
    for f in finals:
        interims = [r for r in responses if not r.is_final
                    and r.utterance_start_ms == f.utterance_start_ms]
        assert interims, f"no interim result for the utterance at {f.utterance_start_ms} ms"
        assert all(f.result.text.startswith(r.result.text) for r in interims)
        assert all(r.stability == pytest.approx(1.0) for r in interims)
        assert interims[0].audio_processed_s * 1000 < f.utterance_end_ms + 1000


def test_live_interim_before_audio_ends_and_two_pass(live_service: RunningService,
                                                     models_dir: Path,
                                                     talk: np.ndarray) -> None:
    svc = live_service
    arrivals: list[tuple[float, pb.StreamingRecognizeResponse]] = []
    sent: list[tuple[float, float]] = []
    with grpc.insecure_channel(svc.address) as ch:
        stub = pb_grpc.RecognizerStub(ch)
        for r in stub.StreamingRecognize(live_requests(talk, realtime=True, model="live",
                                                       final_model="final", sent=sent),
                                         timeout=300):
            arrivals.append((time.monotonic(), r))
    audio_end = sent[-1][1]
    first_interim = next(t for t, r in arrivals if not r.is_final)
    assert first_interim < audio_end - 2.0  # long before the audio ended
    finals = finals_of([r for _, r in arrivals])
    assert len(finals) == 3
    spans = [(f.utterance_start_ms, f.utterance_end_ms) for f in finals]
    expected = offline_reference(models_dir / "sensevoice-tiny", talk, spans)
    assert [f.result.text for f in finals] == expected
    assert all(f.result.model == "final" for f in finals)
    interims = [r for _, r in arrivals if not r.is_final]
    assert interims and all(r.result.model == "live" and r.stability == pytest.approx(0.5)
                            for r in interims)


def test_live_end_silence_sends_finals_sooner(live_service: RunningService, models_dir: Path,
                                              talk: np.ndarray) -> None:
    """`end_silence_ms`: an utterance's final comes once that much silence followed it (the
    default schedule waits ~2 s), its text still FunASR's streaming loop on its segment; out
    of range is INVALID_ARGUMENT."""
    waits = {}
    for silence in (0, 300):
        responses = run_stream(live_service.address, talk, end_silence_ms=silence)
        finals = finals_of(responses)
        assert len(finals) == 3 if silence == 0 else len(finals) >= 3  # may cut at pauses
        # audio that had arrived after each utterance's end when its final came (the last one
        # is closed by the end of the stream)
        waits[silence] = [f.audio_processed_s * 1000 - f.utterance_end_ms for f in finals[:-1]]
        spans = [(f.utterance_start_ms, f.utterance_end_ms) for f in finals]
        expected = funasr_reference(models_dir / "paraformer-streaming-tiny", talk, spans)
        assert [f.result.text for f in finals] == expected
    assert min(waits[0]) > 1500, waits
    assert max(waits[300]) < 300 + 100, waits  # + one 100 ms chunk
    for bad in (100, 7000, -5):
        with pytest.raises(grpc.RpcError) as err:
            run_stream(live_service.address, talk[:16000], end_silence_ms=bad)
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "end_silence_ms" in err.value.details()


def test_live_refuses_offline_model(live_service: RunningService, talk: np.ndarray) -> None:
    with pytest.raises(grpc.RpcError) as err:
        run_stream(live_service.address, talk[:16000], model="final")
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "streaming model" in err.value.details()


async def test_live_placement_spreads_and_refuses_beyond_the_limit() -> None:
    """Unit: live streams go to the worker with the fewest; a device at --max-live-streams
    refuses new ones (RESOURCE_EXHAUSTED) but takes a resumed one."""
    from scheduler.dispatch import Dispatcher, DispatchPolicy
    from scheduler.errors import NoCapacity
    from scheduler.monitor import GIB, SimMonitor
    from tests.test_dispatch import make_workers

    workers = make_workers(2, per_device=2, cpu=False)
    for w in workers:
        w.stub = object()  # type: ignore[assignment]
    d = Dispatcher(workers, SimMonitor(2, 16 * GIB), DispatchPolicy())
    held = [await d.place_live("", max_per_device=2) for _ in range(4)]
    assert sorted(w.spec.worker_id for w in held) == sorted(w.spec.worker_id for w in workers)
    with pytest.raises(NoCapacity) as err:
        await d.place_live("", max_per_device=2)
    assert err.value.code == grpc.StatusCode.RESOURCE_EXHAUSTED
    extra = await d.place_live("", max_per_device=2, resumed=True)
    assert extra in workers and d.live_on_device(extra.spec.device_name) == 3
    d.release_live(extra)
    d.release_live(held[0])
    again = await d.place_live("", max_per_device=2)
    assert again.spec.device_name == held[0].spec.device_name


def test_sixteen_realtime_streams_batched_and_surviving_kill9(live_service: RunningService,
                                                              models_dir: Path,
                                                              talk: np.ndarray) -> None:
    """16 concurrent real-time streams: chunk steps share fused model calls (live batch size > 1
    in the metrics, the workers' rows per call > 1), every stream's finals equal FunASR's
    streaming loop, and after kill -9 of the worker holding the most streams every stream
    continues, losing and repeating no final."""
    svc = live_service
    registry = svc.service.metrics.registry
    before = registry.get_sample_value("asr_live_resumes_total") or 0.0

    def histogram(name: str) -> tuple[float, float]:
        return (registry.get_sample_value(f"{name}_count") or 0.0,
                registry.get_sample_value(f"{name}_sum") or 0.0)

    latencies = ("asr_live_final_latency_seconds", "asr_live_endpoint_latency_seconds")
    before_latency = {n: histogram(n) for n in latencies}
    results, held = realtime_streams_with_a_kill9(svc, talk, 16)
    assert (registry.get_sample_value("asr_live_resumes_total") or 0.0) - before >= held
    resumed = [k for k, rs in results.items() if any(r.resumed for r in rs)]
    assert len(resumed) >= held
    assert_finals_whole_and_right(results, models_dir, talk)
    # Real-time streams: finals ~2 s after the end of speech (FSMN-VAD's own end-silence
    # schedule; the last utterance ~1 s, closed by the end of the stream), and the service's
    # part after the VAD's endpoint is what is left.
    (n_final, s_final), (n_end, s_end) = (
        (histogram(n)[0] - before_latency[n][0], histogram(n)[1] - before_latency[n][1])
        for n in latencies)
    assert n_final == n_end >= 48
    assert s_final / n_final > 0.8 and s_end / n_end < s_final / n_final - 0.6, (
        s_final / n_final, s_end / n_end)
    # Steps of several streams shared engine ticks.
    total = registry.get_sample_value("asr_live_batch_size_count") or 0
    alone = registry.get_sample_value("asr_live_batch_size_bucket",
                                      {"le": "1.0"}) or 0
    assert total > alone, (total, alone)
    # The workers' own figures (at their next heartbeat): fused model calls that decoded more
    # stream chunks than there were calls.

    def worker_totals() -> tuple[float, float]:
        calls = rows = 0.0
        for family in registry.collect():
            for sample in family.samples:
                if sample.name == "asr_live_model_calls_total":
                    calls += sample.value
                elif sample.name == "asr_live_model_rows_total":
                    rows += sample.value
        return calls, rows

    deadline = time.monotonic() + 60
    while worker_totals()[0] == 0 and time.monotonic() < deadline:
        time.sleep(0.5)
    calls, rows = worker_totals()
    assert 0 < calls < rows, (calls, rows)


def test_realtime_streams_through_front_ends_survive_kill9(models_dir: Path,
                                                          talk: np.ndarray) -> None:
    """Behind front ends (their live inputs lingering on the Link, several streams' chunks in
    one message to a worker): 8 real-time streams, kill -9 of the worker holding the most;
    every stream goes on, resumed where it was held, its finals whole and right."""
    svc = RunningService(make_config(
        [f"live={models_dir / 'paraformer-streaming-tiny'}"],
        vad_model=str(models_dir / "fsmn-vad"), vad_workers=1, workers_per_device=2,
        frontends=2))
    try:
        svc.wait_all_ready()
        results, held = realtime_streams_with_a_kill9(svc, talk, 8)
        assert held >= 1
        resumed = [k for k, rs in results.items() if any(r.resumed for r in rs)]
        assert len(resumed) >= held
        assert_finals_whole_and_right(results, models_dir, talk)
        registry = svc.service.metrics.registry
        assert (registry.get_sample_value("asr_live_resumes_total") or 0.0) >= held
    finally:
        svc.stop()


def test_cli_stream_live_json_and_stdin(live_service: RunningService, talk: np.ndarray,
                                        tmp_path: Path) -> None:
    """`asr-client stream FILE --live --realtime --format json` (a WAV container) and raw PCM
    from stdin (`arecord ... | asr-client stream - --live --sample-rate 16000`): one JSON line
    per response with is_final and text; interim lines before the finals."""
    import json
    import os
    import subprocess
    import sys

    wav = tmp_path / "talk.wav"
    sf.write(wav, np.frombuffer(pcm16(talk), dtype="<i2"), 16000, subtype="PCM_16")
    cli = [sys.executable, "-c", "import sys; from client.cli import main; sys.exit(main())",
           "--server", live_service.address, "stream"]
    root, path = str(Path(__file__).resolve().parent.parent), os.environ.get("PYTHONPATH")
    env = {**os.environ, "PYTHONPATH": f"{root}{os.pathsep}{path}" if path else root}
    out = subprocess.run([*cli, str(wav), "--live", "--realtime", "--format", "json"],
                         capture_output=True, text=True, timeout=180, env=env, check=True)
    lines = [json.loads(x) for x in out.stdout.splitlines()]
    finals = [x for x in lines if x["is_final"] and not x["is_last"]]
    assert len(finals) == 3 and lines[-1]["is_last"]
    assert lines[-1]["text"] == " ".join(x["text"] for x in finals)
    first_final = next(i for i, x in enumerate(lines) if x["is_final"])
    assert any(not x["is_final"] and x["text"] for x in lines[:first_final])
    raw = subprocess.run([*cli, "-", "--live", "--sample-rate", "16000", "--format", "json"],
                         input=pcm16(talk), capture_output=True, timeout=180, env=env,
                         check=True)
    raw_lines = [json.loads(x) for x in raw.stdout.decode().splitlines()]
    assert [x["text"] for x in raw_lines if x["is_final"]] == \
        [x["text"] for x in lines if x["is_final"]]
    # --end-silence-ms reaches the VAD: each utterance closed in silence is final once 300 ms
    # of silence (+ a 100 ms chunk) followed it, not ~2 s
    quick = subprocess.run([*cli, "-", "--live", "--sample-rate", "16000", "--format", "json",
                            "--end-silence-ms", "300"], input=pcm16(talk),
                           capture_output=True, timeout=180, env=env, check=True)
    quick_finals = [x for x in map(json.loads, quick.stdout.decode().splitlines())
                    if x["is_final"] and not x["is_last"]]
    assert len(quick_finals) >= 3
    waits = [x["audio_processed_s"] * 1000 - x["end_ms"] for x in quick_finals[:-1]]
    assert max(waits) <= 400, waits


def test_live_session_memory_stays_bounded(models_dir: Path, talk: np.ndarray) -> None:
    """In-process: a stream of the talk repeated 8 times (~2 min) keeps only the open
    utterance (or the silence look-back) and a bounded VAD buffer; 24 finals."""
    from funasr import AutoModel

    from gpu_worker.engines.live_session import SILENCE_LOOK_BACK_MS, LiveOptions, LiveSession

    kw = {"disable_update": True, "disable_pbar": True, "disable_log": True}
    vad = AutoModel(model=str(models_dir / "fsmn-vad"), max_single_segment_time=30000, **kw)
    asr = AutoModel(model=str(models_dir / "paraformer-streaming-tiny"), **kw)
    session = LiveSession(vad, asr, LiveOptions())
    audio = np.concatenate([np.concatenate([talk, np.zeros(32000, np.float32)])] * 8)
    kept_max = vad_max = 0
    finals = []
    step = 3200
    for i in range(0, len(audio), step):
        u = session.step(audio[i:i + step], i + step >= len(audio))
        finals += u.finals
        kept_max = max(kept_max, session.kept_samples)
        stats = session._vad_cache.get("stats")
        if stats is not None and stats.data_buf_all is not None:
            vad_max = max(vad_max, len(stats.data_buf_all))
    longest = max(f.end_ms - f.start_ms for f in finals)
    assert len(finals) == 24
    bound = (longest + SILENCE_LOOK_BACK_MS + 1000) * 16
    assert kept_max <= bound, (kept_max, bound)
    assert vad_max <= bound, (vad_max, bound)
    assert session._asr_cache == {}


def test_service_default_end_silence_fills_only_unset_requests() -> None:
    """Unit: `--live-end-silence-ms` applies to streams whose request leaves it 0."""
    from scheduler.live import LiveRecognizer, LiveRequest
    from scheduler.workers_client import LiveSettings

    def recognizer(default: int) -> LiveRecognizer:
        return LiveRecognizer(None, None, None, 8, end_silence_ms=default)  # type: ignore[arg-type]

    unset = LiveRequest("r1")
    asked = LiveRequest("r2", settings=LiveSettings(end_silence_ms=700))
    assert recognizer(300).with_defaults(unset).settings.end_silence_ms == 300
    assert recognizer(300).with_defaults(asked).settings.end_silence_ms == 700
    assert recognizer(0).with_defaults(unset).settings.end_silence_ms == 0


def test_async_client_live_two_pass_with_end_silence(live_service: RunningService,
                                                     models_dir: Path, talk: np.ndarray) -> None:
    """`AsyncAsrClient.stream(..., live=True, final_model=..., end_silence_ms=...)`: the same
    finals as the blocking client's with the same settings, from the offline model on the
    streaming worker's segments."""
    import asyncio

    from client import AsrClient, AsyncAsrClient
    from client.options import TranscribeOptions

    pcm = pcm16(talk)
    chunks = [pcm[i:i + 3200] for i in range(0, len(pcm), 3200)]
    opts = TranscribeOptions(raw_pcm=True, sample_rate=16000)
    kw = {"live": True, "final_model": "final", "end_silence_ms": 300}

    async def run() -> list[tuple[int, int, str, str]]:
        async with AsyncAsrClient(live_service.address) as client:
            return [(r.utterance_start_ms, r.utterance_end_ms, r.transcript.text,
                     r.transcript.model)
                    async for r in client.stream(chunks, opts, timeout=120, **kw)
                    if r.is_final and not r.is_last]

    got = asyncio.run(run())
    with AsrClient(live_service.address) as client:
        want = [(r.utterance_start_ms, r.utterance_end_ms, r.transcript.text, r.transcript.model)
                for r in client.stream(iter(chunks), opts, timeout=120, **kw)
                if r.is_final and not r.is_last]
    assert got == want and len(got) >= 3 and all(m == "final" for *_, m in got)
    spans = [(s, e) for s, e, _, _ in got]
    assert [t for _, _, t, _ in got] == offline_reference(models_dir / "sensevoice-tiny", talk,
                                                          spans)


def test_live_streams_ride_the_front_ends_link(live_service: RunningService, models_dir: Path,
                                              talk: np.ndarray) -> None:
    """Behind front-end processes a live stream goes on a front end's Link (its audio as
    tagged inputs): the same finals as the scheduler's own, streams of several clients at
    once each answered alike, counted on the Link; a second config refused as the scheduler
    refuses it; a client that goes away ends its stream on the scheduler too."""
    from tests.test_frontends import link_requests

    def finals(rs: list[pb.StreamingRecognizeResponse]) -> list[tuple[Any, ...]]:
        return [(r.result.text, r.utterance_start_ms, r.utterance_end_ms, r.is_last)
                for r in rs if r.is_final]

    def refused(address: str) -> tuple[grpc.StatusCode, str]:
        twice = [*itertools.islice(live_requests(talk), 3), next(live_requests(talk))]
        with grpc.insecure_channel(address) as ch, pytest.raises(grpc.RpcError) as err:
            list(pb_grpc.RecognizerStub(ch).StreamingRecognize(iter(twice), timeout=60))
        return err.value.code(), err.value.details()

    direct = finals(run_stream(live_service.address, talk))
    assert len(direct) == 4
    svc = RunningService(make_config(
        [f"live={models_dir / 'paraformer-streaming-tiny'}",
         f"final={models_dir / 'sensevoice-tiny'}"], vad_model=str(models_dir / "fsmn-vad"),
        vad_workers=1, workers_per_device=1, frontends=2))
    try:
        svc.wait_all_ready()
        results: dict[int, list[tuple[Any, ...]]] = {}
        errors: list[BaseException] = []

        def one(k: int) -> None:
            try:
                results[k] = finals(run_stream(svc.address, talk))
            except BaseException as exc:
                errors.append(exc)

        threads = [threading.Thread(target=one, args=(k,)) for k in range(3)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(240)
        assert not errors, errors
        assert [results[k] for k in range(3)] == [direct] * 3
        assert link_requests(svc, "StreamingRecognize") == 3
        assert svc.service.frontends is not None  # `--live-input-linger-ms` reached them
        for proc in svc.service.frontends.processes:
            cmdline = Path(f"/proc/{proc.pid}/cmdline").read_bytes().split(b"\0")
            assert json.loads(cmdline[-2])["live_input_linger_s"] == 0.01
        for w in svc.service.dispatcher.workers:  # and `--live-tick-ms` the workers
            assert w.process is not None
            cmdline = Path(f"/proc/{w.process.pid}/cmdline").read_bytes().split(b"\0")
            assert json.loads(cmdline[-2])["live_tick_ms"] == 20
        assert refused(svc.address) == refused(live_service.address)
        assert refused(svc.address)[0] == grpc.StatusCode.INVALID_ARGUMENT

        gauge = svc.service.metrics.live_streams
        with grpc.insecure_channel(svc.address) as ch:
            call = pb_grpc.RecognizerStub(ch).StreamingRecognize(
                live_requests(talk, realtime=True), timeout=120)
            next(call)  # the first interim: the stream is open on a worker
            assert gauge._value.get() == 1
            call.cancel()
        deadline = time.monotonic() + 10
        while (gauge._value.get() or sum(svc.service.dispatcher.live_streams.values())) \
                and time.monotonic() < deadline:
            time.sleep(0.05)
        assert gauge._value.get() == 0
        assert sum(svc.service.dispatcher.live_streams.values()) == 0

        # A front end killed (-9) under live streams: their clients see UNAVAILABLE, the
        # scheduler ends the streams it carried for it (their worker sessions too).
        assert svc.service.frontends is not None
        pids = [p.pid for p in svc.service.frontends.processes]
        codes: list[grpc.StatusCode] = []

        def doomed() -> None:
            try:
                run_stream(svc.address, talk, realtime=True)
            except grpc.RpcError as exc:
                codes.append(exc.code())

        victims = [threading.Thread(target=doomed) for _ in range(2)]
        for t in victims:
            t.start()
        deadline = time.monotonic() + 30
        while gauge._value.get() < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert gauge._value.get() == 2
        for pid in pids:
            os.kill(pid, signal.SIGKILL)
        for t in victims:
            t.join(60)
        assert codes == [grpc.StatusCode.UNAVAILABLE] * 2
        deadline = time.monotonic() + 10
        while (gauge._value.get() or sum(svc.service.dispatcher.live_streams.values())) \
                and time.monotonic() < deadline:
            time.sleep(0.05)
        assert gauge._value.get() == 0
        assert sum(svc.service.dispatcher.live_streams.values()) == 0
    finally:
        svc.stop()
