"""VAD of one long file: one VAD session vs pieces in parallel on the VAD workers.

In one run, the same recording through two services that differ only in `--vad-split-s`
(0: one session per file; N: parallel VAD in N-second pieces), both with the same number of
VAD workers and the `identity` engine (recognition costs nothing), so a request's wall time is
decoding plus VAD. Prints the wall times, their ratio, the CPU seconds per file of the
scheduler and of the VAD workers (from /proc), and whether the segments are identical (they
must be). `--inline` adds a third service: pieces again, with `--pcm-arena-mib 0` (the VAD
workers' chunks inline in their gRPC messages, as before 2026-12-07, instead of in a shared
PCM arena).

    python bench/vad_split.py --model models/sensevoice-tiny --vad-model models/fsmn-vad
"""

from __future__ import annotations

import argparse
import datetime
import json
import logging
import os
import statistics
import sys
import time
from pathlib import Path

import soundfile as sf

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench.common import make_clips, service_process  # noqa: E402
from bench.live_cpu import cpu_by_role  # noqa: E402
from bench.long_audio import write_recording  # noqa: E402

log = logging.getLogger("bench")


def measure(args: argparse.Namespace, wav: Path, split_s: int, arena: bool = True
            ) -> tuple[list[float], list[tuple[int, int]], dict[str, float]]:
    """Wall seconds of each repeat, the segments, and CPU seconds per file of each part of
    the service, through a service with `split_s` (`arena`: False, `--pcm-arena-mib 0`)."""
    serve = ["--model", args.model, "--engine", "identity", "--vad-model", args.vad_model,
             "--vad-workers", str(args.vad_workers), "--vad-split-s", str(split_s),
             "--devices", "cpu", "--log-level", "WARNING",
             *([] if arena else ["--pcm-arena-mib", "0"])]
    name = f"service-split{split_s}{'' if arena else '-inline'}.log"
    with service_process(serve, args.work_dir / name) as client:
        client.transcribe_file(wav, timeout=3600)  # warm-up: every VAD worker's first call
        walls, segments = [], []
        before = cpu_by_role(os.getpid())
        for _ in range(args.repeats):
            start = time.perf_counter()
            result = client.transcribe_file(wav, timeout=3600)
            walls.append(time.perf_counter() - start)
            segments = [(s.start_ms, s.end_ms) for s in result.segments]
        after = cpu_by_role(os.getpid())
    return walls, segments, {r: (after[r] - before[r]) / args.repeats for r in after}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True, help="any recognition model (run as identity)")
    p.add_argument("--vad-model", required=True)
    p.add_argument("--minutes", type=float, default=20.0)
    p.add_argument("--vad-workers", type=int, default=2)
    p.add_argument("--split-s", type=int, default=300, help="piece length of the parallel run")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--work-dir", type=Path, default=Path("/tmp/asr-bench-vad-split"))
    p.add_argument("--inline", action="store_true",
                   help="also pieces with --pcm-arena-mib 0 (chunks inline in gRPC messages)")
    p.add_argument("--json", type=Path, default=None)
    args = p.parse_args(argv)
    args.model = str(Path(args.model).resolve())
    args.vad_model = str(Path(args.vad_model).resolve())
    args.work_dir.mkdir(parents=True, exist_ok=True)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", stream=sys.stderr)
    clips = make_clips(6, 6.0, args.work_dir / "phrases")
    phrases = [sf.read(c.path, dtype="int16")[0] for c in clips]
    wav = write_recording(args.work_dir / "rec.wav", args.minutes * 60, phrases, 0)
    one, one_segments, one_cpu = measure(args, wav, 0)
    par, par_segments, par_cpu = measure(args, wav, args.split_s)
    audio_s = args.minutes * 60
    rows = [("one VAD session", one, one_cpu),
            (f"pieces of {args.split_s} s in parallel", par, par_cpu)]
    equal = one_segments == par_segments
    if args.inline:
        inl, inl_segments, inl_cpu = measure(args, wav, args.split_s, arena=False)
        rows.append((f"pieces of {args.split_s} s, chunks inline (no PCM arena)", inl, inl_cpu))
        equal = equal and inl_segments == par_segments
    command = "python bench/vad_split.py " + " ".join(sys.argv[1:] if argv is None else argv)
    print(f"{datetime.date.today()}  {command}\n")
    print(f"| VAD of one {args.minutes:g}-min file, {args.vad_workers} VAD workers | wall s "
          "(median of runs) | runs | audio s / wall s | CPU s per file: scheduler | VAD "
          "workers |\n|---|---|---|---|---|---|")
    for label, walls, cpu in rows:
        med = statistics.median(walls)
        print(f"| {label} | {med:.2f} | {', '.join(f'{w:.2f}' for w in walls)} "
              f"| {audio_s / med:.0f} | {cpu['scheduler']:.3f} | {cpu['VAD workers']:.2f} |")
    speedup = statistics.median(one) / statistics.median(par)
    print(f"\nspeed-up {speedup:.2f}x; segments identical: {equal} ({len(one_segments)} "
          "segments)")
    if args.json:
        args.json.write_text(json.dumps({"command": command, "one_pass_s": one,
                                         "parallel_s": par, "speedup": speedup,
                                         "cpu_s_per_file": {label: cpu for label, _, cpu in rows},
                                         "segments_equal": equal}, indent=2))
    return 0 if equal else 1


if __name__ == "__main__":
    raise SystemExit(main())
