"""Live streaming benchmark: N concurrent real-time streams, our service beside FunASR's own
websocket-style loop, in one run.

Each stream plays the same recording (utterances separated by 2 s pauses) at real-time pace in
100 ms chunks, staggered over the first second. Per utterance:

- time to first interim: from sending the audio where the utterance starts to the first
  interim result for it (includes the model's 600 ms chunk and its look-ahead);
- final after end of speech: from sending the audio where the utterance's speech ends (the
  last audible 10 ms of the recording inside the utterance) to its final result: the VAD's
  end-of-speech silence window (FSMN-VAD's schedule: ~2 s early in an utterance; or
  `--end-silence-ms`) plus the service's own time;
- final after endpoint: from sending the chunk with which the VAD closed the utterance (the
  audio processed when the final was made) to the final result: the service's own time.

Variants:
  (a) service: `asr-scheduler serve --model DIR --vad-model VAD`, N gRPC live streams;
  (b) funasr-loop: FunASR's websocket server pattern in-process: one thread, chunks handled
      in arrival order, each one the stream's own FunASR `generate` calls (online FSMN-VAD,
      streaming Paraformer with the stream's cache), one stream per model call, no gRPC.

    python bench/streaming.py --model models/paraformer-streaming-tiny \\
        --vad-model models/fsmn-vad --streams 1,16,64
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import math
import multiprocessing
import os
import sys
import threading
import time
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, TextIO

import numpy as np
import soundfile as sf

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench.common import baseline_device, make_clips, service_process  # noqa: E402
from client.library import AsrClient  # noqa: E402
from client.options import TranscribeOptions  # noqa: E402

log = logging.getLogger("bench")
CHUNK_S = 0.1
RATE = 16000


@dataclass
class Row:
    variant: str
    streams: int
    utterances: int
    first_interim_p50_ms: float
    first_interim_p95_ms: float
    final_p50_ms: float  # after the end of speech
    final_p95_ms: float
    failed_streams: int = 0  # streams that ended with an error (the first is logged)
    endpoint_p50_ms: float = float("nan")  # final after the VAD's endpoint
    endpoint_p95_ms: float = float("nan")
    end_silence_ms: int = 0  # the requested end-of-speech silence (0: the VAD's schedule)
    started_at: float = 0.0  # when the streams began and ended (epoch seconds)
    ended_at: float = 0.0


def recording(directory: Path, utterances: int) -> np.ndarray:
    clips = make_clips(utterances, 3.0, directory)
    parts: list[np.ndarray] = [np.zeros(RATE // 2, np.float32)]
    for c in clips:
        a, _ = sf.read(c.path, dtype="float32")
        parts += [a, np.zeros(2 * RATE, np.float32)]
    return np.concatenate(parts)


class SpeechEnds:
    """Where speech ends in a recording: the last audible 10 ms frame up to a position."""

    def __init__(self, audio: np.ndarray) -> None:
        frames = np.abs(audio[:len(audio) // 160 * 160]).reshape(-1, 160).max(axis=1)
        self.loud = np.flatnonzero(frames > 1e-3)  # espeak-ng's pauses are digital silence

    def before(self, start_ms: int, end_ms: int) -> float:
        """Seconds where the speech of the utterance [start_ms, end_ms] ends (end_ms if none
        is found in it)."""
        i = int(np.searchsorted(self.loud, end_ms // 10, side="right")) - 1
        if i < 0 or self.loud[i] < start_ms // 10:
            return end_ms / 1000
        return (int(self.loud[i]) + 1) / 100


def pct(values: list[float], q: float) -> float:
    return float(np.percentile(values, q) * 1000) if values else float("nan")


def sent_at(sends: list[tuple[float, float]], position_s: float) -> float:
    """When the chunk holding audio position `position_s` was sent."""
    for end_s, at in sends:
        if end_s >= position_s:
            return at
    return sends[-1][1]


@dataclass
class Latencies:
    firsts: list[float] = field(default_factory=list)  # first interim, s
    finals: list[float] = field(default_factory=list)  # final after end of speech, s
    endpoints: list[float] = field(default_factory=list)  # final after the VAD's endpoint, s
    failed: int = 0


def chunk_due(position_s: float) -> float:
    """When, from the start of a stream, the chunk holding audio position `position_s` is sent
    (both variants send chunk [t, t + 100 ms) at t): the loop's twin of `sent_at`."""
    return max(math.ceil(round(position_s / CHUNK_S, 6)) - 1, 0) * CHUNK_S


def run_service(client: AsrClient, audio: np.ndarray, streams: int, end_silence_ms: int = 0,
                part: Sequence[int] | None = None) -> Latencies:
    """`streams` real-time streams (or only those numbered in `part`), stream k starting k /
    streams seconds after the call."""
    pcm = (np.clip(audio, -1, 1) * 32767).astype("<i2").tobytes()
    step = int(CHUNK_S * RATE) * 2
    ends = SpeechEnds(audio)
    out = Latencies()
    lock = threading.Lock()
    opts = TranscribeOptions(raw_pcm=True, sample_rate=RATE)
    failed: list[BaseException] = []

    def one(k: int) -> None:
        try:
            play(k)
        except Exception as exc:  # counted in the row, the first one logged
            with lock:
                failed.append(exc)
                if len(failed) == 1:
                    log.error("stream %d of %d failed: %s", k, streams, exc)

    def play(k: int) -> None:
        time.sleep(k / max(streams, 1))
        sends: list[tuple[float, float]] = []

        def chunks() -> Any:
            started = time.monotonic()
            for i in range(0, len(pcm), step):
                ahead = i / (2 * RATE) - (time.monotonic() - started)
                if ahead > 0:
                    time.sleep(ahead)
                sends.append((min(i + step, len(pcm)) / (2 * RATE), time.monotonic()))
                yield pcm[i:i + step]

        seen: set[int] = set()
        for r in client.stream(chunks(), opts, live=True, timeout=600,
                               end_silence_ms=end_silence_ms):
            now = time.monotonic()
            with lock:
                if not r.is_final and r.utterance_start_ms not in seen:
                    seen.add(r.utterance_start_ms)
                    out.firsts.append(now - sent_at(sends, r.utterance_start_ms / 1000))
                elif r.is_final and not r.is_last:
                    spoken = ends.before(r.utterance_start_ms, r.utterance_end_ms)
                    out.finals.append(now - sent_at(sends, spoken))
                    out.endpoints.append(now - sent_at(sends, r.audio_processed_s))

    threads = [threading.Thread(target=one, args=(k,))
               for k in (range(streams) if part is None else part)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    out.failed = len(failed)
    return out


def _play_part(address: str, audio: np.ndarray, streams: int, end_silence_ms: int,
               part: list[int], start_at: float) -> Latencies:
    """One client process's streams (a process of `run_service_processes`)."""
    client = AsrClient(address)
    try:
        time.sleep(max(0.0, start_at - time.time()))
        return run_service(client, audio, streams, end_silence_ms, part)
    finally:
        client.close()


def run_service_processes(address: str, audio: np.ndarray, streams: int, end_silence_ms: int,
                          processes: int) -> Latencies:
    """`run_service` with the streams dealt over several client processes, all starting at
    one wall-clock moment: one Python process's gRPC client threads (~0.3 % of a core per
    real-time stream on the dev machine) would otherwise become what is measured."""
    parts = [list(range(i, streams, processes)) for i in range(processes)]
    start_at = time.time() + 5.0  # after every process has imported and connected
    ctx = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(len(parts), mp_context=ctx) as pool:
        done = [pool.submit(_play_part, address, audio, streams, end_silence_ms, p, start_at)
                for p in parts if p]
        got = [f.result() for f in done]
    return Latencies([x for g in got for x in g.firsts], [x for g in got for x in g.finals],
                     [x for g in got for x in g.endpoints], sum(g.failed for g in got))


def run_funasr_loop(model_dir: str, vad_dir: str, audio: np.ndarray, streams: int,
                    threads: int, devices: str = "cpu", end_silence_ms: int = 0
                    ) -> Latencies:
    import torch
    from funasr import AutoModel

    from gpu_worker.engines.live_session import LiveOptions, LiveSession

    device = baseline_device(devices, torch.cuda.is_available())
    kw = {"disable_update": True, "disable_pbar": True, "disable_log": True}
    asr = AutoModel(model=model_dir, ncpu=threads, device=device, **kw)  # as the worker's
    vad = AutoModel(model=vad_dir, max_single_segment_time=30000, ncpu=1, device=device,
                    **kw)  # FunASR's websocket server puts both on its --device
    step = int(CHUNK_S * RATE)
    chunks = [(k / max(streams, 1) + i / RATE, k, i) for k in range(streams)
              for i in range(0, len(audio), step)]
    chunks.sort()
    # FunASR's calls only: its VAD `generate` too (the service batches the VAD's passes)
    options = LiveOptions(funasr_vad=True, end_silence_ms=end_silence_ms)
    sessions = [LiveSession(vad, asr, options) for _ in range(streams)]
    seen: list[set[int]] = [set() for _ in range(streams)]
    ends = SpeechEnds(audio)
    out = Latencies()
    t0 = time.monotonic()
    for due, k, i in chunks:  # one thread, arrival order, one stream per model call
        wait = t0 + due - time.monotonic()
        if wait > 0:
            time.sleep(wait)
        u = sessions[k].step(audio[i:i + step], i + step >= len(audio))
        now = time.monotonic()
        began = t0 + k / max(streams, 1)
        for f in u.finals:
            out.finals.append(now - (began + chunk_due(ends.before(f.start_ms, f.end_ms))))
            out.endpoints.append(now - (began + chunk_due(u.processed_ms / 1000)))
        if u.interim_text and u.interim_start_ms not in seen[k]:
            seen[k].add(u.interim_start_ms)
            out.firsts.append(now - (began + chunk_due(u.interim_start_ms / 1000)))
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True, help="paraformer-streaming model directory")
    p.add_argument("--vad-model", required=True)
    p.add_argument("--streams", default="1,16,64", help="comma-separated stream counts")
    p.add_argument("--loop-streams", default=None,
                   help="stream counts of the funasr-loop variant (default: --streams); one "
                   "thread serving hundreds of streams falls behind real time and runs long")
    p.add_argument("--utterances", type=int, default=3)
    p.add_argument("--devices", default="cpu")
    p.add_argument("--workers-per-device", type=int, default=1,
                   help="the service's worker processes per device: live streams are spread "
                   "over them, each runs its streams' VAD and ticks on its own core")
    p.add_argument("--work-dir", type=Path, default=Path("build/bench-streaming"))
    p.add_argument("--json", type=Path, default=None, help="write the rows here too")
    p.add_argument("--variants", default="service,funasr-loop")
    p.add_argument("--frontends", type=int, default=0,
                   help="the service's --frontends: front-end processes hold the clients' "
                   "calls and carry live streams to the scheduler on their Links")
    p.add_argument("--streams-per-client-process", type=int, default=64,
                   help="the service's streams are played by ceil(streams / this) client "
                   "processes (one process for up to this many)")
    p.add_argument("--end-silence-ms", default="0",
                   help="comma-separated end-of-speech silences to run (each a row set); 0: "
                   "FSMN-VAD's own schedule (~2 s early in an utterance)")
    p.add_argument("--threads", type=int, default=os.cpu_count() or 1,
                   help="torch threads of FunASR's loop (default: the cores, as the service's "
                   "single worker gets)")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    report = sys.stdout  # the table; FunASR's own prints (it announces its version) to stderr
    with contextlib.redirect_stdout(sys.stderr):
        return _measure(args, report)


def _measure(args: argparse.Namespace, report: TextIO) -> int:
    args.work_dir.mkdir(parents=True, exist_ok=True)
    audio = recording(args.work_dir / "clips", args.utterances)
    counts = [int(x) for x in args.streams.split(",") if x.strip()]
    rows: list[Row] = []
    serve = ["--model", f"live={args.model}", "--vad-model", args.vad_model, "--devices",
             args.devices, "--workers-per-device", str(args.workers_per_device),
             "--frontends", str(args.frontends), "--max-live-streams", str(max(counts) * 2),
             # all streams come from this one client: lift the per-client and total caps
             "--max-streams", str(max(counts) * 2),
             "--max-streams-per-client", str(max(counts) * 2)]
    variants = args.variants.split(",")
    silences = [int(x) for x in args.end_silence_ms.split(",") if x.strip()]

    print(f"service: {args.workers_per_device} worker process(es) per device ({args.devices}); "
          "final: after the end of speech / after the VAD's endpoint", file=report)
    print(f"{'variant':<12} {'end sil':>7} {'streams':>7} {'utts':>5} {'1st interim p50':>16} "
          f"{'p95':>6} {'final p50':>10} {'p95':>6} {'endpoint p50':>13} {'p95':>6}  (ms)  "
          "failed streams", file=report, flush=True)

    def row(variant: str, n: int, silence: int, started_at: float, got: Latencies) -> Row:
        """The row of one run, printed and written (`--json`) at once: a run cut short by a
        time limit keeps every row before it."""
        r = Row(variant, n, len(got.finals), pct(got.firsts, 50), pct(got.firsts, 95),
                pct(got.finals, 50), pct(got.finals, 95), got.failed,
                pct(got.endpoints, 50), pct(got.endpoints, 95), silence, started_at, time.time())
        print(f"{r.variant:<12} {r.end_silence_ms or 'vad':>7} {r.streams:>7} "
              f"{r.utterances:>5} {r.first_interim_p50_ms:>16.0f} {r.first_interim_p95_ms:>6.0f} "
              f"{r.final_p50_ms:>10.0f} {r.final_p95_ms:>6.0f} {r.endpoint_p50_ms:>13.0f} "
              f"{r.endpoint_p95_ms:>6.0f}  {r.failed_streams:>14}", file=report, flush=True)
        rows.append(r)
        if args.json:
            args.json.write_text(json.dumps([asdict(x) for x in rows], indent=2))
        return r

    # FunASR's loop first: its rows are few and short; the service's largest count comes last,
    # so a run cut short by a time limit there keeps every other row.
    loop_counts = counts if args.loop_streams is None else [
        int(x) for x in args.loop_streams.split(",") if x.strip()]
    for silence in silences if "funasr-loop" in variants else []:
        for n in loop_counts:
            log.info("funasr loop, %d streams, end silence %d ms", n, silence)
            started_at = time.time()
            log.info("%s", row("funasr-loop", n, silence, started_at, run_funasr_loop(
                args.model, args.vad_model, audio, n, args.threads, args.devices, silence)))
    if "service" in variants:
        with service_process(serve, args.work_dir / "serve.log") as client:
            for silence in silences:
                for n in counts:
                    procs = -(-n // max(args.streams_per_client_process, 1))
                    log.info("service, %d streams (%d client processes), end silence %d ms",
                             n, procs, silence)
                    started_at = time.time()
                    got = (run_service(client, audio, n, silence) if procs == 1 else
                           run_service_processes(client.channel_options.server, audio, n,
                                                 silence, procs))
                    log.info("%s", row("service", n, silence, started_at, got))
    return 1 if any(r.failed_streams for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
