"""Fun-ASR-Nano: step-wise decoding against static batches, in one process, one run.

Variants, one after another on the same clips, token caps and thread count:

  funasr-1       plain FunASR `generate`, one clip per call, each with its own cap;
  funasr-static  FunASR's batched `generate(input=[...], batch_size=C)` on C clips at a time in
                 arrival order; one call takes one `max_length`, so the batch runs to its
                 largest cap (every clip waits for the longest) and a clip's useful tokens are
                 those up to its own cap;
  ours-static    our "generate" engine (dynamic batcher + FunASR's batched path; batches only
                 clips of equal options, so one cap per batch), C requests in flight;
  ours-stepwise  our "stepwise" engine (running set, finished sequences leave and waiting ones
                 join at each step), C requests in flight.

Random weights never emit end-of-sequence, so the caps (cycled over the clips, default
8,32,128) set each clip's length. Printed per variant: clips/s, RTFx (audio seconds per wall
second), useful output tokens, ms per output token (wall / useful tokens: lower is better) and
p50 latency; the step-wise texts are checked against funasr-1's. `--repeat R` runs every
variant R times, alternating the order of the variants between rounds, and keeps each one's
fastest round (the machine may be shared); every round's clips/s is printed too.

    python bench/nano_stepwise.py --model models/funasr-nano-tiny --clips 48 --repeat 3
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import json
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from gpu_worker.engines.base import Engine, Utterance
from protos.common.wire import SAMPLE_RATE
from protos.common.worker_config import WorkerConfig

VARIANTS = ("funasr-1", "funasr-static", "ours-static", "ours-stepwise")


@dataclass
class Row:
    variant: str
    wall_s: float
    clips_per_s: float
    rtfx: float
    tokens: int
    ms_per_token: float
    p50_latency_s: float
    texts: list[str]


def make_clips(n: int, seconds: tuple[float, float] = (2.0, 8.0),
               seed: int = 0) -> list[np.ndarray]:
    """`n` seeded noise clips of `seconds` (min, max) length (random weights make any audio
    give some text)."""
    rng = np.random.default_rng(seed)
    return [(rng.standard_normal(int(SAMPLE_RATE * rng.uniform(*seconds))) * 0.1)
            .astype(np.float32) for _ in range(n)]


def _row(name: str, clips: list[np.ndarray], wall: float, tokens: int,
         latencies: list[float], texts: list[str]) -> Row:
    audio = sum(len(c) for c in clips) / SAMPLE_RATE
    return Row(name, wall, len(clips) / wall, audio / wall, tokens,
               1000.0 * wall / max(1, tokens), statistics.median(latencies), texts)


def funasr_rows(model_dir: str, clips: list[np.ndarray], caps: list[int], concurrency: int,
                threads: int, device: str = "cpu") -> list[Row]:
    """funasr-1 and funasr-static on one loaded `AutoModel`."""
    import torch
    from funasr import AutoModel

    from gpu_worker.families.funasr_nano import count_tokens

    model = AutoModel(model=model_dir, disable_update=True, device=device, disable_pbar=True,
                      disable_log=True, ncpu=threads)
    tensors = [torch.from_numpy(c) for c in clips]
    opts = {"itn": False, "hotwords": []}
    model.generate(input=tensors[0], max_length=4, **opts)  # warm-up
    texts, latencies = [], []
    with count_tokens(model.model.llm) as counts:
        start = time.monotonic()
        for t, cap in zip(tensors, caps, strict=True):
            began = time.monotonic()
            texts.append(model.generate(input=t, max_length=cap, **opts)[0]["text"])
            latencies.append(time.monotonic() - began)
        wall = time.monotonic() - start
    tokens = sum(sum(rows) for rows, _ in counts)
    rows = [_row("funasr-1", clips, wall, tokens, latencies, texts)]
    texts, latencies, tokens = [], [], 0
    with count_tokens(model.model.llm) as counts:
        start = time.monotonic()
        for i in range(0, len(clips), concurrency):
            part = slice(i, i + concurrency)
            began = time.monotonic()
            out = model.generate(input=tensors[part], batch_size=len(tensors[part]),
                                 max_length=max(caps[part]), **opts)
            latencies += [time.monotonic() - began] * len(out)
            texts += [r["text"] for r in out]
        wall = time.monotonic() - start
    for (per_row, _), i in zip(counts, range(0, len(clips), concurrency), strict=True):
        tokens += sum(min(n, cap) for n, cap in zip(per_row, caps[i:i + concurrency],
                                                    strict=True))
    rows.append(_row("funasr-static", clips, wall, tokens, latencies, texts))
    return rows


async def _closed_loop(engine: Engine, clips: list[np.ndarray], caps: list[int],
                       concurrency: int) -> tuple[float, int, list[float], list[str]]:
    """`concurrency` requests in flight until every clip is done."""
    texts = [""] * len(clips)
    latencies = [0.0] * len(clips)
    tokens = 0
    todo = iter(range(len(clips)))

    async def client() -> None:
        nonlocal tokens
        for i in todo:
            began = time.monotonic()
            t, _ = await engine.transcribe(Utterance(clips[i], max_new_tokens=caps[i]))
            latencies[i] = time.monotonic() - began
            texts[i] = t.text
            tokens += t.tokens_generated

    start = time.monotonic()
    await asyncio.gather(*(client() for _ in range(concurrency)))
    return time.monotonic() - start, tokens, latencies, texts


def engine_row(name: str, make: Callable[[], Engine], clips: list[np.ndarray],
               caps: list[int], concurrency: int) -> Row:
    async def run() -> Row:
        engine = make()
        engine.start()
        try:
            await engine.transcribe(Utterance(clips[0], max_new_tokens=4))  # warm-up
            wall, tokens, latencies, texts = await _closed_loop(engine, clips, caps,
                                                                concurrency)
        finally:
            await engine.stop()
        return _row(name, clips, wall, tokens, latencies, texts)

    return asyncio.run(run())


def run_round(a: argparse.Namespace, clips: list[np.ndarray], caps: list[int],
              ours_first: bool) -> list[Row]:
    """One round of every variant; `ours_first` runs ours before FunASR's, and step-wise
    before static (rounds alternate, so that a load change during a round favours no side)."""
    from gpu_worker.engines import generate, nano_step

    cfg = WorkerConfig(model=a.model, torch_device=a.device, threads=a.threads,
                       max_batch_size=a.concurrency, max_new_tokens=max(caps),
                       max_queue_delay_ms=a.queue_delay_ms)
    ours = [("ours-static", generate.create), ("ours-stepwise", nano_step.create)]
    if ours_first:
        ours.reverse()
    rows = [engine_row(name, functools.partial(make, cfg), clips, caps, a.concurrency)
            for name, make in ours]
    funasr = funasr_rows(a.model, clips, caps, a.concurrency, a.threads, a.device)
    return rows + funasr if ours_first else funasr + rows


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", required=True, help="Fun-ASR-Nano model directory")
    p.add_argument("--clips", type=int, default=48)
    p.add_argument("--clip-seconds", default="2,8", help="clip lengths: min,max seconds")
    p.add_argument("--caps", default="8,32,128", help="token caps, cycled over the clips")
    p.add_argument("--concurrency", type=int, default=8)
    p.add_argument("--threads", type=int, default=1, help="torch threads of every variant")
    p.add_argument("--device", default="cpu", help="torch device of every variant (cuda:0)")
    p.add_argument("--queue-delay-ms", type=float, default=5.0,
                   help="ours-static: the batcher's max queue delay")
    p.add_argument("--repeat", type=int, default=1, help="rounds; each row keeps its fastest")
    p.add_argument("--json", help="write the rows here too")
    a = p.parse_args(argv)
    cap_list = [int(c) for c in a.caps.split(",")]
    low, high = (float(x) for x in a.clip_seconds.split(","))
    clips = make_clips(a.clips, (low, high))
    caps = [cap_list[i % len(cap_list)] for i in range(len(clips))]
    best: dict[str, Row] = {}
    rounds: dict[str, list[float]] = {}
    for r in range(max(1, a.repeat)):
        for row in run_round(a, clips, caps, ours_first=r % 2 == 1):
            rounds.setdefault(row.variant, []).append(row.clips_per_s)
            if row.variant not in best or row.wall_s < best[row.variant].wall_s:
                best[row.variant] = row
    rows = [best[v] for v in VARIANTS]
    reference = best["funasr-1"].texts
    audio = sum(len(c) for c in clips) / SAMPLE_RATE
    print(f"{a.model}: {len(clips)} clips, {audio:.1f} s audio, caps {a.caps}, concurrency "
          f"{a.concurrency}, {a.threads} thread(s), {a.device}, best of {a.repeat}")
    print("| variant | clips/s | RTFx | tokens | ms/token | p50 latency s | x funasr-1 "
          "| text = funasr-1 | clips/s per round |")
    print("|---|---:|---:|---:|---:|---:|---:|---|---|")
    base = best["funasr-1"].clips_per_s
    for row in rows:
        same = sum(t == w for t, w in zip(row.texts, reference, strict=True))
        print(f"| {row.variant} | {row.clips_per_s:.2f} | {row.rtfx:.1f} | {row.tokens} | "
              f"{row.ms_per_token:.2f} | {row.p50_latency_s:.3f} | "
              f"{row.clips_per_s / base:.2f} | {same}/{len(clips)} | "
              f"{' '.join(f'{x:.2f}' for x in rounds[row.variant])} |")
    if a.json:
        Path(a.json).write_text(json.dumps([{k: v for k, v in asdict(r).items()
                                             if k != "texts"} for r in rows], indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())

