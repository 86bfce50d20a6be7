"""Live ticks, fused vs serial: model-thread time per tick for N concurrent streams, one run.

N streams play the same recording (utterances separated by 2 s pauses) in 100 ms chunks,
their starts staggered over the first second (different phases). Every tick takes the next
chunk of every stream and runs it twice, on two sets of sessions fed identically:

  (a) serial: each stream's step alone, its VAD and decoder calls FunASR's `generate`
      (batch 1), as the worker did before fused ticks;
  (b) fused: the same steps with the VAD encoder passes of all streams batched
      (`run_vad_calls`) and their decoder work batched (`run_tick_fused`: one `StreamingBatch`
      pass per group of equal input shapes); the rest of each stream's VAD (front-end, state
      machine) still runs per stream.

Reported per N: mean
model-thread ms per tick (all of it, and the decoder part alone), p95, the speed-up, fused
model calls per tick and streams per call, and how many updates differed between (a) and (b)
(must be 0 with FunASR's front-end; `--device-frontend` computes the fused path's features
with our batched front-end, equal only within float rounding). `--vad-fbank torch` puts our
fbank into the VAD's front-end for both paths, as the worker does; the fused path then also
computes all streams' VAD log-mels as one batch (bit-equal on the CPU: 0 differences). The
order of (a) and (b) alternates per tick, so machine load hits both alike.

    python bench/live_batch.py --model models/paraformer-streaming-tiny \\
        --vad-model models/fsmn-vad --streams 1,16,64
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench.streaming import recording  # noqa: E402

log = logging.getLogger("bench")
RATE = 16000


@dataclass
class Row:
    streams: int
    ticks: int
    serial_ms: float
    serial_p95_ms: float
    fused_ms: float
    fused_p95_ms: float
    speedup: float
    serial_decode_ms: float
    fused_decode_ms: float
    decode_speedup: float
    calls_per_tick: float
    streams_per_call: float
    mismatches: int


class TimedModel:
    """The ASR AutoModel with `generate` timed (the serial decoder part)."""

    def __init__(self, model: Any) -> None:
        self.model = model
        self.seconds = 0.0

    def generate(self, **kw: Any) -> Any:
        t = time.perf_counter()
        try:
            return self.model.generate(**kw)
        finally:
            self.seconds += time.perf_counter() - t


def timed_batch(batch: Any) -> Any:
    """Wrap `StreamingBatch.run` to add up its time (the fused decoder part)."""
    run = batch.run
    batch.seconds = 0.0

    def timed(jobs: Any) -> Any:
        t = time.perf_counter()
        try:
            return run(jobs)
        finally:
            batch.seconds += time.perf_counter() - t

    batch.run = timed
    return batch


def same(a: Any, b: Any) -> bool:
    if isinstance(a, BaseException) or isinstance(b, BaseException):
        return False
    return ([(f.start_ms, f.end_ms, f.text) for f in a.finals], a.interim_text) == \
        ([(f.start_ms, f.end_ms, f.text) for f in b.finals], b.interim_text)


def run(asr: Any, vad: Any, audio: np.ndarray, streams: int, chunk: int,
        device_frontend: bool) -> Row:
    import torch

    from gpu_worker.engines.live_batch import TickItem, run_tick_fused, run_tick_serial
    from gpu_worker.engines.live_session import LiveOptions, LiveSession
    from gpu_worker.fast.streaming import StreamingBatch

    timed = TimedModel(asr)
    batch = timed_batch(StreamingBatch(asr, device_frontend=device_frontend))
    serial = [LiveSession(vad, timed, LiveOptions(funasr_vad=True)) for _ in range(streams)]
    fused = [LiveSession(vad, asr, LiveOptions()) for _ in range(streams)]
    ticks_per_s = RATE // chunk
    start = [k * ticks_per_s // max(streams, 1) for k in range(streams)]  # over 1 s
    total = max(start) + -(-len(audio) // chunk)
    t_serial: list[float] = []
    t_fused: list[float] = []
    calls = rows = mismatches = 0
    with torch.inference_mode():
        for tick in range(total):
            todo = [k for k in range(streams) if 0 <= (tick - start[k]) * chunk < len(audio)]
            if not todo:
                continue
            pieces = {k: audio[(tick - start[k]) * chunk:(tick - start[k] + 1) * chunk]
                      for k in todo}
            last = {k: (tick - start[k] + 1) * chunk >= len(audio) for k in todo}
            results: dict[str, Any] = {}
            for mode in (("serial", "fused") if tick % 2 else ("fused", "serial")):
                sessions = serial if mode == "serial" else fused
                items = [TickItem(sessions[k], pieces[k], last[k]) for k in todo]
                t = time.perf_counter()
                if mode == "serial":
                    results[mode], _ = run_tick_serial(items)
                    t_serial.append(time.perf_counter() - t)
                else:
                    results[mode], stats = run_tick_fused(batch, items)
                    t_fused.append(time.perf_counter() - t)
                    calls += stats.model_calls
                    rows += stats.rows
            mismatches += sum(not same(a, b) for a, b in zip(results["serial"], results["fused"],
                                                             strict=True))
    n = len(t_serial)
    serial_ms, fused_ms = 1000 * sum(t_serial) / n, 1000 * sum(t_fused) / n
    dec_s, dec_f = 1000 * timed.seconds / n, 1000 * batch.seconds / n
    return Row(streams, n, serial_ms, float(np.percentile(t_serial, 95) * 1000), fused_ms,
               float(np.percentile(t_fused, 95) * 1000), serial_ms / fused_ms, dec_s, dec_f,
               dec_s / dec_f if dec_f else float("nan"), calls / n,
               rows / calls if calls else 0.0, mismatches)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True, help="paraformer-streaming model directory")
    p.add_argument("--vad-model", required=True)
    p.add_argument("--streams", default="1,16,64", help="comma-separated stream counts")
    p.add_argument("--utterances", type=int, default=3)
    p.add_argument("--chunk-ms", type=int, default=100)
    p.add_argument("--device", default="cpu")
    p.add_argument("--device-frontend", action="store_true",
                   help="fused path: features of full chunks by our batched front-end on the "
                   "device (default: FunASR's front-end per chunk, bit-exact)")
    p.add_argument("--vad-fbank", choices=("kaldi", "torch"), default="kaldi",
                   help="the VAD front-end's fbank in both paths: FunASR's kaldi-native-fbank, "
                   "or ours (what the worker runs, `--vad-fbank torch`; the fused path then "
                   "batches the streams' log-mels too)")
    p.add_argument("--threads", type=int, default=os.cpu_count() or 1,
                   help="torch threads of the model (the VAD uses 1, as in the worker)")
    p.add_argument("--work-dir", type=Path, default=Path("build/bench-live-batch"))
    p.add_argument("--json", type=Path, default=None, help="write the rows here too")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    from funasr import AutoModel

    kw = {"disable_update": True, "disable_pbar": True, "disable_log": True}
    asr = AutoModel(model=args.model, device=args.device, ncpu=args.threads, **kw)
    vad = AutoModel(model=args.vad_model, device="cpu", max_single_segment_time=30000, ncpu=1,
                    **kw)
    if args.vad_fbank == "torch":
        from gpu_worker.engines.live_vad import use_fast_fbank

        if not use_fast_fbank(vad, "cpu"):
            p.error("our fbank does not fit this VAD's front-end")
    audio = recording(args.work_dir / "clips", args.utterances)
    rows = []
    for n in [int(x) for x in args.streams.split(",") if x.strip()]:
        log.info("%d streams", n)
        rows.append(run(asr, vad, audio, n, RATE * args.chunk_ms // 1000,
                        args.device_frontend))
    print(f"{'streams':>7} {'ticks':>5} {'serial ms/tick':>14} {'p95':>7} {'fused ms/tick':>13} "
          f"{'p95':>7} {'x':>6} {'decoder serial':>14} {'fused':>7} {'x':>6} "
          f"{'calls/tick':>10} {'streams/call':>12} {'diff':>4}")
    for r in rows:
        print(f"{r.streams:>7} {r.ticks:>5} {r.serial_ms:>14.1f} {r.serial_p95_ms:>7.1f} "
              f"{r.fused_ms:>13.1f} {r.fused_p95_ms:>7.1f} {r.speedup:>6.2f} "
              f"{r.serial_decode_ms:>14.1f} {r.fused_decode_ms:>7.1f} {r.decode_speedup:>6.2f} "
              f"{r.calls_per_tick:>10.2f} {r.streams_per_call:>12.1f} {r.mismatches:>4}")
    if args.json:
        args.json.write_text(json.dumps([asdict(r) for r in rows], indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
