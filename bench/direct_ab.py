"""Interleaved A/B of the two recognition runners in one process: FunASR `generate` against
our `direct` pipeline, on the same clips, one call of each in turn.

On a shared machine, back-to-back variants see different loads from other tenants; running A
and B alternately in one process makes their ratio robust to that. Reports the median call time
per clip for batch 1 (`generate` one clip per call, like the plain loop) and for one batch of
all clips (`generate(input=[...], batch_size=N)`, like list batching), and the ratios.

    python bench/direct_ab.py --model models/sensevoice-small --clips 6 --rounds 5
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import io  # noqa: E402

import soundfile as sf  # noqa: E402

from bench.common import make_clips  # noqa: E402
from gpu_worker.engines.base import Utterance  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", required=True)
    p.add_argument("--clips", type=int, default=6)
    p.add_argument("--clip-seconds", type=float, default=10.0)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--device", default="cpu")
    a = p.parse_args(argv)
    from gpu_worker.engines.generate import GenerateRunner, load_runner
    from gpu_worker.fast.runner import DirectRunner, load_direct_runner

    work = Path(tempfile.mkdtemp(prefix="direct-ab-"))
    clips = make_clips(a.clips, a.clip_seconds, work)
    utts = [Utterance(sf.read(io.BytesIO(c.wav), dtype="float32")[0]) for c in clips]
    runners: dict[str, GenerateRunner | DirectRunner] = {
        "generate": load_runner(a.model, a.device, a.threads),
        "direct": load_direct_runner(a.model, a.device, a.threads)}
    times: dict[tuple[str, str], list[float]] = {}
    for r in range(a.rounds + 1):  # round 0 warms up
        for shape in ("batch 1", f"batch {len(utts)}"):
            for name, runner in runners.items():
                batches = [[u] for u in utts] if shape == "batch 1" else [utts]
                start = time.perf_counter()
                texts = [t.text for b in batches for t in runner.transcribe(b)]
                per_clip = (time.perf_counter() - start) / len(utts)
                if r:
                    times.setdefault((shape, name), []).append(per_clip)
                assert len(texts) == len(utts)
    audio_s = a.clip_seconds
    print(f"model {a.model}; {a.clips} clips of {a.clip_seconds:g} s; {a.threads} threads; "
          f"{a.rounds} interleaved rounds on {a.device}\n")
    print("| shape | runner | median s per clip | RTFx | direct / generate |")
    print("|---|---|---|---|---|")
    for shape in ("batch 1", f"batch {len(utts)}"):
        gen = statistics.median(times[(shape, "generate")])
        for name in runners:
            med = statistics.median(times[(shape, name)])
            print(f"| {shape} | {name} | {med:.3f} | {audio_s / med:.2f} | "
                  f"{gen / med:.2f}x |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
