"""Long-audio benchmark: our service side by side with FunASR's own VAD + ASR pipeline.

In one process tree, one variant after another on the same recordings and thread budget:

  (a) FunASR's `AutoModel(model, vad_model, vad_kwargs={"max_single_segment_time": 30000})`
      `.generate(array)`, files one after another (how FunASR users run long files);
  (b) our service (`asr-scheduler serve`), once per `--vad-workers` value: first one long
      file streamed alone (end-to-end latency of a single file), then `--files` files at once
      (aggregate throughput).

Prints RTFx (audio seconds per wall second) and the ratio to (a), and whether our text for
the single file equals FunASR's (it must, in fp32: the same VAD segments, the same model).

    python bench/long_audio.py --model models/sensevoice-small --vad-model models/fsmn-vad
    python bench/long_audio.py --model models/sensevoice-tiny --vad-model models/fsmn-vad --quick
"""

from __future__ import annotations

import argparse
import datetime
import json
import logging
import multiprocessing
import os
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import soundfile as sf

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench.common import make_clips, service_process  # noqa: E402
from client.library import AsrClient  # noqa: E402

log = logging.getLogger("bench")


@dataclass
class Row:
    label: str
    files: int
    audio_s: float
    wall_s: float

    @property
    def rtfx(self) -> float:
        return self.audio_s / self.wall_s if self.wall_s else 0.0


def write_recording(path: Path, seconds: float, phrases: list[np.ndarray], seed: int) -> Path:
    """16 kHz mono PCM16: phrases separated by 0.3-2 s pauses."""
    rng = np.random.default_rng(seed)
    parts, n = [], 0
    while n < seconds * 16000:
        clip = phrases[int(rng.integers(len(phrases)))]
        pause = np.zeros(int(16000 * rng.uniform(0.3, 2.0)), dtype=np.int16)
        parts += [clip, pause]
        n += len(clip) + len(pause)
    sf.write(path, np.concatenate(parts)[: int(seconds * 16000)], 16000, subtype="PCM_16")
    return path


def recordings(work: Path, minutes: float, files: int) -> list[Path]:
    clips = make_clips(6, 6.0, work / "phrases")
    phrases = [sf.read(c.path, dtype="int16")[0] for c in clips]
    return [write_recording(work / f"rec{i}.wav", minutes * 60, phrases, i) for i in range(files)]


def _funasr_run(model: str, vad_model: str, threads: int, paths: list[str]
                ) -> tuple[float, list[str]]:
    """In a fresh process: warm up, then FunASR's VAD + ASR on each file in turn."""
    from funasr import AutoModel
    from funasr.utils.postprocess_utils import rich_transcription_postprocess

    m = AutoModel(model=model, vad_model=vad_model, disable_update=True, disable_pbar=True,
                  disable_log=True, ncpu=threads, vad_kwargs={"max_single_segment_time": 30000})
    audio = [sf.read(p, dtype="float32")[0] for p in paths]
    m.generate(input=audio[0][: 16000 * 60])
    start = time.perf_counter()
    texts = [m.generate(input=a)[0].get("text", "") for a in audio]
    wall = time.perf_counter() - start
    return wall, [rich_transcription_postprocess(t) for t in texts]


def measure_funasr(args: argparse.Namespace, paths: list[Path]) -> tuple[Row, str]:
    ctx = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(1, mp_context=ctx) as pool:
        wall, texts = pool.submit(_funasr_run, args.model, args.vad_model, args.threads,
                                  [str(p) for p in paths]).result()
    seconds = sum(sf.info(str(p)).duration for p in paths)
    return Row("(a) FunASR VAD+ASR, files in turn", len(paths), seconds, wall), texts[0]


@contextmanager
def service(args: argparse.Namespace, vad_workers: int, vad_device: str
            ) -> Iterator[AsrClient]:
    """Our service with `vad_workers` VAD workers on `vad_device`, every worker ready."""
    serve = ["--model", args.model, "--vad-model", args.vad_model, "--vad-workers",
             str(vad_workers), "--vad-device", vad_device, "--devices", args.devices,
             "--worker-threads", str(args.threads), "--vad-split-s", str(args.vad_split_s),
             "--log-level", "WARNING"]
    log_file = args.work_dir / f"service-vad{vad_workers}-{vad_device}.log"
    with service_process(serve, log_file) as client:
        yield client


def measure_ours(args: argparse.Namespace, paths: list[Path], vad_workers: int,
                 vad_device: str = "cpu") -> tuple[list[Row], str]:
    seconds = [sf.info(str(p)).duration for p in paths]
    on = f", network on the {vad_device.upper()}" if vad_device != "cpu" else ""
    with service(args, vad_workers, vad_device) as client:
        warm = args.work_dir / "warm.wav"
        sf.write(warm, sf.read(paths[0], dtype="int16")[0][: 16000 * 60], 16000)
        client.transcribe_file(warm, timeout=600)
        start = time.perf_counter()
        text = client.transcribe_file(paths[0], timeout=3600).text
        split = f", VAD in {args.vad_split_s} s pieces" if args.vad_split_s else ""
        single = Row(f"(b) ours, 1 file, {vad_workers} VAD worker(s){on}{split}", 1,
                     seconds[0], time.perf_counter() - start)
        start = time.perf_counter()
        with ThreadPoolExecutor(len(paths)) as pool:
            list(pool.map(lambda p: client.transcribe_file(p, timeout=3600), paths))
        many = Row(f"(b) ours, {len(paths)} files at once, {vad_workers} VAD worker(s){on}",
                   len(paths), sum(seconds), time.perf_counter() - start)
    return [single, many], text


def table(rows: list[Row], reference: Row) -> str:
    lines = ["| variant | files | audio s | wall s | RTFx | vs (a) |", "|---|---|---|---|---|---|"]
    lines += [f"| {r.label} | {r.files} | {r.audio_s:.0f} | {r.wall_s:.2f} | {r.rtfx:.1f} "
              f"| {r.rtfx / reference.rtfx:.2f}x |" for r in rows]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True)
    p.add_argument("--vad-model", required=True)
    p.add_argument("--minutes", type=float, default=10.0, help="length of each recording")
    p.add_argument("--files", type=int, default=4, help="recordings sent at once")
    p.add_argument("--vad-workers", default="1,2", help="comma-separated values to compare")
    p.add_argument("--vad-devices", default="cpu", help="comma-separated --vad-device values "
                   "to compare (cpu, gpu), each with every --vad-workers value")
    p.add_argument("--vad-split-s", type=int, default=0,
                   help="the service's --vad-split-s: one file's VAD in pieces of this many "
                   "seconds on the VAD workers at once (0: one VAD session per file)")
    p.add_argument("--devices", default="auto")
    p.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    p.add_argument("--quick", action="store_true", help="3-minute files, 2 of them, 1 VAD worker")
    p.add_argument("--work-dir", type=Path, default=Path("/tmp/asr-bench-long"))
    p.add_argument("--json", type=Path, default=None)
    args = p.parse_args(argv)
    if args.quick:
        args.minutes, args.files, args.vad_workers = 3.0, 2, "1"
    args.model = str(Path(args.model).resolve())
    args.vad_model = str(Path(args.vad_model).resolve())
    args.work_dir.mkdir(parents=True, exist_ok=True)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", stream=sys.stderr)
    paths = recordings(args.work_dir, args.minutes, args.files)
    reference, funasr_text = measure_funasr(args, paths)
    rows = [reference]
    equal = []
    for device in args.vad_devices.split(","):
        for v in (int(x) for x in args.vad_workers.split(",")):
            ours, text = measure_ours(args, paths, v, device)
            rows += ours
            equal.append(text == funasr_text)
            log.info("%s", "\n".join(table(rows, reference).splitlines()[-2:]))
    command = "python bench/long_audio.py " + " ".join(sys.argv[1:] if argv is None else argv)
    print(f"{datetime.date.today()}  {command}\n")
    print(table(rows, reference))
    print(f"\nour text equals FunASR's for the single file: {all(equal)} ({equal})")
    if args.json:
        args.json.write_text(json.dumps({"command": command, "text_equal": equal,
                                         "rows": [{**asdict(r), "rtfx": r.rtfx} for r in rows]},
                                        indent=2))
    return 0 if all(equal) else 1


if __name__ == "__main__":
    raise SystemExit(main())
