"""How busy the GPU was during each step of `bench/gpu.sh`: sampled with NVML, summed per step.

A throughput figure alone does not say whether the GPU or something else (the host, the
service's own processes) was the limit; the share of time a kernel was running says which.

    python bench/gpu_util.py sample OUT.tsv [--interval-s 0.5]   # until killed
    python bench/gpu_util.py summarize OUT.tsv STEPS.tsv [--windows-json BENCH.json ...]

`sample` writes one line per GPU per interval: epoch seconds, GPU index, utilization % (NVML:
the share of the last sample period in which a kernel ran), memory used (MiB), power (W), and
the host's CPU busy % over all cores since the previous sample (/proc/stat): a GPU waiting
while the host's cores are full says the host is the limit.
`STEPS.tsv` has one line per step: name, start and end epoch seconds (`gpu.sh` writes it).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench.common import cpu_ticks  # noqa: E402


@dataclass(frozen=True)
class Sample:
    at: float
    gpu: int
    util: float
    mem_mib: float
    power_w: float
    host_cpu: float = float("nan")  # busy share of all the host's cores since the last sample, %


def sample(out: Path, interval_s: float) -> int:
    """Append NVML samples of every GPU to `out` until killed."""
    import pynvml

    pynvml.nvmlInit()
    handles = [pynvml.nvmlDeviceGetHandleByIndex(i) for i in range(pynvml.nvmlDeviceGetCount())]
    last = cpu_ticks()
    with out.open("a", buffering=1) as f:
        while True:
            now = time.time()
            cpu = cpu_ticks()
            host = 100 * (cpu[0] - last[0]) / max(cpu[1] - last[1], 1e-9)
            last = cpu
            for i, h in enumerate(handles):
                try:
                    util = pynvml.nvmlDeviceGetUtilizationRates(h).gpu
                    mem = pynvml.nvmlDeviceGetMemoryInfo(h).used / 2**20
                    power = pynvml.nvmlDeviceGetPowerUsage(h) / 1000
                except pynvml.NVMLError as exc:
                    print(f"nvml: {exc}", file=sys.stderr)
                    continue
                f.write(f"{now:.3f}\t{i}\t{util}\t{mem:.0f}\t{power:.0f}\t{host:.0f}\n")
            time.sleep(max(0.0, interval_s - (time.time() - now)))


def read_samples(path: Path) -> list[Sample]:
    out = []
    for line in path.read_text().splitlines():
        fields = line.split("\t")
        if len(fields) in (5, 6):
            out.append(Sample(float(fields[0]), int(fields[1]),
                              *(float(v) for v in fields[2:])))
    return out


def read_steps(path: Path) -> list[tuple[str, float, float]]:
    steps = []
    for line in path.read_text().splitlines():
        fields = line.split("\t")
        if len(fields) == 3:
            steps.append((fields[0], float(fields[1]), float(fields[2])))
    return steps


def measured_windows(path: Path) -> list[tuple[str, float, float]]:
    """The timed parts of `bench/throughput.py --json` (each variant and concurrency) or of
    `bench/streaming.py --json` (each variant and stream count), as steps: which one kept the
    GPU busy."""
    import json

    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return []
    if isinstance(data, dict):  # throughput.py
        return [(f"{r['label']}, c={r['concurrency']}", float(r["started_at"]),
                 float(r["ended_at"])) for r in data.get("results", []) if r.get("started_at")]
    return [(f"{r['variant']}, {r['streams']} streams", float(r["started_at"]),
             float(r["ended_at"])) for r in data if r.get("started_at")]


def summarize(samples: list[Sample], steps: list[tuple[str, float, float]]) -> str:
    """Per step and GPU: samples, mean and p90 utilization, the share of samples with a
    kernel running at all, peak memory and mean power."""
    lines = ["| step | GPU | samples | util mean % | util p90 % | busy samples % | "
             "memory peak GiB | power mean W | host CPU mean % |",
             "|---|---|---|---|---|---|---|---|---|"]
    for name, start, end in steps:
        during = [s for s in samples if start <= s.at <= end]
        for gpu in sorted({s.gpu for s in during}):
            mine = [s for s in during if s.gpu == gpu]
            utils = sorted(s.util for s in mine)
            p90 = utils[min(len(utils) - 1, int(0.9 * len(utils)))]
            busy = 100 * sum(u > 0 for u in utils) / len(utils)
            lines.append(f"| {name} | {gpu} | {len(mine)} | {statistics.fmean(utils):.0f} | "
                         f"{p90:.0f} | {busy:.0f} | "
                         f"{max(s.mem_mib for s in mine) / 1024:.1f} | "
                         f"{statistics.fmean(s.power_w for s in mine):.0f} | "
                         f"{statistics.fmean(s.host_cpu for s in mine):.0f} |")
        if not during:
            lines.append(f"| {name} | - | 0 | | | | | | |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("sample")
    s.add_argument("out", type=Path)
    s.add_argument("--interval-s", type=float, default=0.5)
    m = sub.add_parser("summarize")
    m.add_argument("samples", type=Path)
    m.add_argument("steps", type=Path)
    m.add_argument("--windows-json", type=Path, action="append", default=[],
                   help="bench/throughput.py or bench/streaming.py --json output: its timed "
                   "parts as rows too")
    args = p.parse_args(argv)
    if args.cmd == "sample":
        return sample(args.out, args.interval_s)
    steps = read_steps(args.steps)
    for path in args.windows_json:
        steps += measured_windows(path)
    print(summarize(read_samples(args.samples), steps))
    return 0


if __name__ == "__main__":
    sys.exit(main())
