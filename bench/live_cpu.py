"""What live streams cost each process of the service: without and with front-end processes.

In one run, for each `--frontends` value (0: the scheduler serves the clients' calls itself;
N: N front-end processes hold them and carry live streams on their Link), a service with
`paraformer-streaming` on `--workers-per-device` workers plays the same N real-time streams
(`bench/streaming.py`'s recording and client processes), and the CPU time each process of
the service spent over the run is read from /proc: the scheduler, the front ends, the
recognition workers, the VAD workers. The scheduler is the one process there is only one of:
its CPU per stream is what caps the streams one machine can hold. Latencies are printed too
(they must not suffer).

    python bench/live_cpu.py --model models/paraformer-streaming-tiny \\
        --vad-model models/fsmn-vad --streams 64 --workers-per-device 2 --frontends 0,2
"""

from __future__ import annotations

import argparse
import datetime
import logging
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench.common import service_process  # noqa: E402
from bench.streaming import Latencies, pct, recording, run_service_processes  # noqa: E402

log = logging.getLogger("bench")
ROLES = ("scheduler", "front ends", "workers", "VAD workers")


def _role(pid: int) -> str | None:
    """Which part of the service process `pid` is (None: not one, e.g. a client)."""
    try:
        cmd = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(
            errors="replace")
    except OSError:
        return None
    if "scheduler.frontend" in cmd:
        return "front ends"
    if "gpu_worker" in cmd:
        return "VAD workers" if '"engine": "vad"' in cmd else "workers"
    if "asr-scheduler" in cmd or "scheduler.cli" in cmd:
        return "scheduler"
    return None


def _descendants(root: int) -> list[int]:
    parent: dict[int, int] = {}
    for name in os.listdir("/proc"):
        if name.isdigit():
            try:
                fields = Path(f"/proc/{name}/stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            parent[int(name)] = int(fields[1])
    out = []
    for pid in parent:
        p = pid
        while p > 1 and p != root:
            p = parent.get(p, 0)
        if p == root and pid != root:
            out.append(pid)
    return out


def cpu_by_role(root: int) -> dict[str, float]:
    """CPU seconds (user + system) so far of each part of the service under `root`."""
    hz = os.sysconf("SC_CLK_TCK")
    out = dict.fromkeys(ROLES, 0.0)
    for pid in _descendants(root):
        role = _role(pid)
        if role is None:
            continue
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        out[role] += (int(fields[11]) + int(fields[12])) / hz
    return out


@dataclass
class Run:
    frontends: int
    wall_s: float
    cpu_s: dict[str, float]
    got: Latencies


def measure(args: argparse.Namespace, frontends: int, audio: np.ndarray) -> Run:
    serve = ["--model", f"live={args.model}", "--vad-model", args.vad_model, "--devices",
             args.devices, "--workers-per-device", str(args.workers_per_device),
             "--frontends", str(frontends), "--max-live-streams", str(args.streams * 2),
             "--max-streams", str(args.streams * 2),
             "--max-streams-per-client", str(args.streams * 2)]
    with service_process(serve, args.work_dir / f"serve-fe{frontends}.log") as client:
        procs = -(-args.streams // max(args.streams_per_client_process, 1))
        address = client.channel_options.server
        run_service_processes(address, audio, min(args.streams, 4), 0, 1)  # warm-up
        before = cpu_by_role(os.getpid())
        start = time.monotonic()
        got = run_service_processes(address, audio, args.streams, args.end_silence_ms, procs)
        wall = time.monotonic() - start
        after = cpu_by_role(os.getpid())
    return Run(frontends, wall, {r: after[r] - before[r] for r in ROLES}, got)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True, help="paraformer-streaming model directory")
    p.add_argument("--vad-model", required=True)
    p.add_argument("--streams", type=int, default=64)
    p.add_argument("--frontends", default="0,2", help="comma-separated values to compare")
    p.add_argument("--devices", default="cpu")
    p.add_argument("--workers-per-device", type=int, default=2)
    p.add_argument("--streams-per-client-process", type=int, default=32)
    p.add_argument("--end-silence-ms", type=int, default=0)
    p.add_argument("--utterances", type=int, default=3)
    p.add_argument("--work-dir", type=Path, default=Path("build/bench-live-cpu"))
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    args.work_dir.mkdir(parents=True, exist_ok=True)
    audio = recording(args.work_dir / "clips", args.utterances)
    runs = [measure(args, int(n), audio) for n in args.frontends.split(",")]
    command = "python bench/live_cpu.py " + " ".join(sys.argv[1:] if argv is None else argv)
    print(f"{datetime.date.today()}  {command}\n")
    print(f"{args.streams} real-time live streams, {len(audio) / 16000:.1f} s each; CPU "
          "seconds of each part of the service over the run (share of one core)\n")
    print("| front ends | wall s | scheduler | scheduler ms per stream-second | front ends "
          "| workers | VAD workers | final p50 / p95 ms | failed |")
    print("|---|---|---|---|---|---|---|---|---|")
    base = runs[0].cpu_s["scheduler"]
    for r in runs:
        c = r.cpu_s
        per = 1000 * c["scheduler"] / (args.streams * r.wall_s)
        print(f"| {r.frontends} | {r.wall_s:.1f} | {c['scheduler']:.2f} "
              f"({100 * c['scheduler'] / r.wall_s:.0f} %, {c['scheduler'] / base:.2f}x) "
              f"| {per:.2f} | {c['front ends']:.2f} | {c['workers']:.2f} "
              f"| {c['VAD workers']:.2f} | {pct(r.got.finals, 50):.0f} / "
              f"{pct(r.got.finals, 95):.0f} | {r.got.failed} |")
    return 1 if any(r.got.failed for r in runs) else 0


if __name__ == "__main__":
    raise SystemExit(main())
