"""Live streaming benchmark: N concurrent real-time streams, our service beside FunASR's own
websocket-style loop, in one run.

Each stream plays the same recording (utterances separated by 2 s pauses) at real-time pace in
100 ms chunks, staggered over the first second. Per utterance:

- time to first interim: from sending the audio where the utterance starts to the first
  interim result for it (includes the model's 600 ms chunk and its look-ahead);
- final latency after end of speech: from sending the audio where the utterance ends to its
  final result (includes FSMN-VAD's end-of-speech silence window, ~0.8 s by default).

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
import json
import logging
import os
import sys
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

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
    final_p50_ms: float
    final_p95_ms: float
    failed_streams: int = 0  # streams that ended with an error (the first is logged)


def recording(directory: Path, utterances: int) -> np.ndarray:
    clips = make_clips(utterances, 3.0, directory)
    parts: list[np.ndarray] = [np.zeros(RATE // 2, np.float32)]
    for c in clips:
        a, _ = sf.read(c.path, dtype="float32")
        parts += [a, np.zeros(2 * RATE, np.float32)]
    return np.concatenate(parts)


def pct(values: list[float], q: float) -> float:
    return float(np.percentile(values, q) * 1000) if values else float("nan")


def sent_at(sends: list[tuple[float, float]], position_s: float) -> float:
    """When the chunk holding audio position `position_s` was sent."""
    for end_s, at in sends:
        if end_s >= position_s:
            return at
    return sends[-1][1]


def run_service(client: AsrClient, audio: np.ndarray, streams: int
                ) -> tuple[list[float], list[float], int]:
    pcm = (np.clip(audio, -1, 1) * 32767).astype("<i2").tobytes()
    step = int(CHUNK_S * RATE) * 2
    firsts: list[float] = []
    finals: list[float] = []
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
        for r in client.stream(chunks(), opts, live=True, timeout=600):
            now = time.monotonic()
            with lock:
                if not r.is_final and r.utterance_start_ms not in seen:
                    seen.add(r.utterance_start_ms)
                    firsts.append(now - sent_at(sends, r.utterance_start_ms / 1000))
                elif r.is_final and not r.is_last:
                    finals.append(now - sent_at(sends, r.utterance_end_ms / 1000))

    threads = [threading.Thread(target=one, args=(k,)) for k in range(streams)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return firsts, finals, len(failed)


def run_funasr_loop(model_dir: str, vad_dir: str, audio: np.ndarray, streams: int,
                    threads: int, devices: str = "cpu") -> tuple[list[float], list[float]]:
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
    sessions = [LiveSession(vad, asr, LiveOptions(funasr_vad=True)) for _ in range(streams)]
    seen: list[set[int]] = [set() for _ in range(streams)]
    firsts: list[float] = []
    finals: list[float] = []
    t0 = time.monotonic()
    for due, k, i in chunks:  # one thread, arrival order, one stream per model call
        wait = t0 + due - time.monotonic()
        if wait > 0:
            time.sleep(wait)
        u = sessions[k].step(audio[i:i + step], i + step >= len(audio))
        now = time.monotonic()
        for f in u.finals:
            finals.append(now - (t0 + k / max(streams, 1) + f.end_ms / 1000))
        if u.interim_text and u.interim_start_ms not in seen[k]:
            seen[k].add(u.interim_start_ms)
            firsts.append(now - (t0 + k / max(streams, 1) + u.interim_start_ms / 1000))
    return firsts, finals


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
    p.add_argument("--threads", type=int, default=os.cpu_count() or 1,
                   help="torch threads of FunASR's loop (default: the cores, as the service's "
                   "single worker gets)")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    args.work_dir.mkdir(parents=True, exist_ok=True)
    audio = recording(args.work_dir / "clips", args.utterances)
    counts = [int(x) for x in args.streams.split(",") if x.strip()]
    rows: list[Row] = []
    serve = ["--model", f"live={args.model}", "--vad-model", args.vad_model, "--devices",
             args.devices, "--workers-per-device", str(args.workers_per_device),
             "--max-live-streams", str(max(counts) * 2),
             # all streams come from this one client: lift the per-client and total caps
             "--max-streams", str(max(counts) * 2),
             "--max-streams-per-client", str(max(counts) * 2)]
    variants = args.variants.split(",")
    if "service" in variants:
        with service_process(serve, args.work_dir / "serve.log") as client:
            for n in counts:
                log.info("service, %d streams", n)
                firsts, finals, failed = run_service(client, audio, n)
                rows.append(Row("service", n, len(finals), pct(firsts, 50), pct(firsts, 95),
                                pct(finals, 50), pct(finals, 95), failed))
                log.info("%s", rows[-1])  # each row as it is measured: a cut-short run keeps it
    loop_counts = counts if args.loop_streams is None else [
        int(x) for x in args.loop_streams.split(",") if x.strip()]
    for n in loop_counts if "funasr-loop" in variants else []:
        log.info("funasr loop, %d streams", n)
        firsts, finals = run_funasr_loop(args.model, args.vad_model, audio, n, args.threads,
                                         args.devices)
        rows.append(Row("funasr-loop", n, len(finals), pct(firsts, 50), pct(firsts, 95),
                        pct(finals, 50), pct(finals, 95)))
        log.info("%s", rows[-1])
    print(f"service: {args.workers_per_device} worker process(es) per device ({args.devices})")
    print(f"{'variant':<12} {'streams':>7} {'utts':>5} {'1st interim p50':>16} {'p95':>8} "
          f"{'final p50':>10} {'p95':>8}  (ms)  failed streams")
    for r in rows:
        print(f"{r.variant:<12} {r.streams:>7} {r.utterances:>5} {r.first_interim_p50_ms:>16.0f} "
              f"{r.first_interim_p95_ms:>8.0f} {r.final_p50_ms:>10.0f} {r.final_p95_ms:>8.0f}"
              f"  {r.failed_streams:>14}")
    if args.json:
        args.json.write_text(json.dumps([asdict(r) for r in rows], indent=2))
    return 1 if any(r.failed_streams for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
