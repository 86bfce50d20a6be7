"""FSMN-VAD of one long recording on one core: FunASR's own calls vs our VAD workers' step.

In one process, alternating runs on the same recording, both fed the same 60 s chunks with a
cache as the VAD workers are: (a) FunASR's `AutoModel.generate(input=chunk, cache=...,
is_final=..., chunk_size=60000)`, what the VAD workers ran until 2026-12-07; (b) `vad_step`
with `vad_frames.detect_frames`; (c) the same with our log-mel in FunASR's front-end
(`install_online_fbank`: torch's FFT on `--device` instead of kaldi-native-fbank), what the
VAD workers run now. Prints the median wall times, audio seconds per wall second, the ratios
and whether the segments are identical (they must be).

    python bench/vad_speed.py --vad-model models/fsmn-vad --minutes 10 [--device cuda:0]
"""

from __future__ import annotations

import argparse
import datetime
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import soundfile as sf

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench.long_audio import recordings  # noqa: E402

CHUNK_MS = 60000


def funasr_run(vad: object, audio: np.ndarray) -> list[list[int]]:
    cache: dict = {}
    segments: list[list[int]] = []
    step = CHUNK_MS * 16
    for pos in range(0, len(audio), step):
        out = vad.generate(input=audio[pos:pos + step], cache=cache,  # type: ignore[attr-defined]
                           is_final=pos + step >= len(audio), chunk_size=CHUNK_MS)
        segments += [list(s) for s in out[0]["value"]] if out else []
    return segments


def ours_run(vad: object, audio: np.ndarray) -> list[list[int]]:
    from gpu_worker.engines.live_vad import run_alone, vad_step

    cache: dict = {}
    segments: list[list[int]] = []
    step = CHUNK_MS * 16
    for pos in range(0, len(audio), step):
        segments += run_alone(vad_step(vad, audio[pos:pos + step], cache,
                                       pos + step >= len(audio), CHUNK_MS))
    return segments


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--vad-model", required=True)
    p.add_argument("--minutes", type=float, default=10.0)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--device", default="cpu")
    p.add_argument("--work-dir", type=Path, default=Path("/tmp/asr-bench-vad-speed"))
    args = p.parse_args(argv)
    import torch
    from funasr import AutoModel

    torch.set_num_threads(1)
    args.work_dir.mkdir(parents=True, exist_ok=True)
    (path,) = recordings(args.work_dir, args.minutes, 1)
    audio = sf.read(path, dtype="float32")[0]
    from gpu_worker.engines.live_vad import use_fast_fbank

    def load() -> object:
        return AutoModel(model=args.vad_model, device=args.device, disable_update=True,
                         disable_pbar=True, disable_log=True, max_single_segment_time=30000)

    vad, fast = load(), load()
    if not use_fast_fbank(fast, args.device):
        raise SystemExit("our fbank does not fit this VAD model's front-end")
    runs: dict[str, tuple[object, Callable[[object, np.ndarray], list[list[int]]]]] = {
        "(a) FunASR generate, 60 s chunks": (vad, funasr_run),
        "(b) ours: vad_step + vad_frames": (vad, ours_run),
        "(c) ours + our fbank (the VAD workers)": (fast, ours_run)}
    walls: dict[str, list[float]] = {name: [] for name in runs}
    found: dict[str, list[list[int]]] = {}
    with torch.inference_mode():
        for model, run in runs.values():  # warm-up
            run(model, audio[:16000 * 60])
        for _ in range(args.repeats):
            for name, (model, run) in runs.items():
                start = time.perf_counter()
                found[name] = run(model, audio)
                walls[name].append(time.perf_counter() - start)
    seconds = len(audio) / 16000
    command = "python bench/vad_speed.py " + " ".join(sys.argv[1:] if argv is None else argv)
    print(f"{datetime.date.today()}  {command}  (device {args.device}, 1 thread)\n")
    print("| variant | wall s (median) | runs | audio s / wall s | vs (a) |")
    print("|---|---|---|---|---|")
    base = statistics.median(walls[next(iter(runs))])
    for name, w in walls.items():
        med = statistics.median(w)
        print(f"| {name} | {med:.2f} | {', '.join(f'{x:.2f}' for x in w)} | "
              f"{seconds / med:.0f} | {base / med:.2f}x |")
    first, *rest = found.values()
    same = all(other == first for other in rest)
    print(f"\nsegments identical: {same} ({len(first)} segments, {seconds:.0f} s of audio)")
    return 0 if same else 1


if __name__ == "__main__":
    raise SystemExit(main())
