"""A/B of the service's own cost: two or more checkouts served side by side, load alternated.

On a shared machine whose pace drifts by more than the change being measured, two runs of
`bench/frontend.py` minutes apart cannot be compared. Here every checkout (a git worktree or
any directory holding the project) runs its own `asr-scheduler serve --engine identity`, all
started first; then, round after round, the same load goes to each in turn (each round
starting with the next checkout), so that each round's figures were taken within seconds of
each other. It prints every round, the median per checkout, and the mean of the per-round
differences against the first checkout with its standard error. For changes of a few percent,
`bench/instructions.py` (instructions, not time) is the steadier measure.

    git worktree add /tmp/base <commit>
    python bench/ab.py --trees /tmp/base,. --kinds stream,unary --concurrency 1 --rounds 10

A checkout may carry environment variables for its service: `/tmp/base|VAR=1;OTHER=2`.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.common import free_port, make_clips, stop_process  # noqa: E402
from bench.frontend import (  # noqa: E402
    HZ,
    IDENTITY_SERVE_ARGS,
    cpu_ticks,
    drive,
    service_processes,
    speed_check,
    wait_ready,
)

# The service started from a checkout's directory (its code on PYTHONPATH, not the installed one).
SERVE_IDENTITY = ["-c", "import sys; from scheduler.cli import main; sys.exit(main())",
                  *IDENTITY_SERVE_ARGS]


def checkout(spec: str) -> tuple[Path, dict[str, str]]:
    """A `--trees` entry: the checkout's directory, and the environment its service runs with
    (`DIR|VAR=1;OTHER=2` adds variables)."""
    tree, _, envs = spec.partition("|")
    path = Path(tree).resolve()
    return path, {**os.environ, "PYTHONPATH": str(path),
                  **dict(e.split("=", 1) for e in envs.split(";") if e)}


def comparison_args(description: str, trees_help: str, requests: int) -> argparse.ArgumentParser:
    """The options every side-by-side comparison of checkouts takes."""
    ap = argparse.ArgumentParser(description=description,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--trees", required=True, help=trees_help)
    ap.add_argument("--model", default=str(ROOT / "models" / "sensevoice-tiny"))
    ap.add_argument("--kinds", default="stream,unary")
    ap.add_argument("--concurrency", type=int, default=1)
    ap.add_argument("--requests", type=int, default=requests, help="per measurement")
    return ap


def start(spec: str, model: str, log: Path) -> tuple[subprocess.Popen[bytes], str]:
    tree, env = checkout(spec)
    port = free_port()
    cmd = [sys.executable, *SERVE_IDENTITY, "--model", model, "--port", str(port)]
    proc = subprocess.Popen(cmd, cwd=tree, env=env, stdout=log.open("wb"),
                            stderr=subprocess.STDOUT)
    return proc, f"127.0.0.1:{port}"


def main() -> int:
    ap = comparison_args(__doc__ or "", "checkouts, comma-separated; the first is the "
                         "baseline", 800)
    ap.add_argument("--rounds", type=int, default=10)
    args = ap.parse_args()
    specs = args.trees.split(",")
    kinds = args.kinds.split(",")
    work = Path(tempfile.mkdtemp(prefix="ab-bench-"))
    data = make_clips(1, 10.0, work)[0].path.read_bytes()
    services = [(spec, *start(spec, args.model, work / f"serve{i}.log"))
                for i, spec in enumerate(specs)]
    totals: dict[tuple[str, str], list[float]] = {}
    try:
        for _, proc, address in services:
            wait_ready(address, proc)
            asyncio.run(drive(address, data, "unary", 8, 100))  # warm up
        for r in range(args.rounds):
            # Each round starts with the next checkout: the pace drifts within a round too,
            # and a fixed order would lend the drift to the difference.
            order = services[r % len(services):] + services[:r % len(services)]
            for kind in kinds:
                for spec, proc, address in order:
                    pids = service_processes(proc.pid)
                    speed = speed_check()
                    before = {k: cpu_ticks(p) for k, p in pids.items()}
                    wall, _ = asyncio.run(drive(address, data, kind, args.concurrency,
                                                args.requests))
                    cpu = {k: (cpu_ticks(p) - before[k]) / HZ * 1000 / args.requests
                           for k, p in pids.items()}
                    total = sum(cpu.values())
                    totals.setdefault((spec, kind), []).append(total)
                    per = ", ".join(f"{k} {v:.3f}" for k, v in cpu.items())
                    print(f"round {r} {kind} {spec}: {total:.3f} ms/request ({per}); "
                          f"{args.requests / wall:.0f} req/s; speed check {speed:.0f} ms",
                          flush=True)
    finally:
        for _, proc, _ in services:
            stop_process(proc)
    print()
    for kind in kinds:
        base = totals[(specs[0], kind)]
        print(f"{kind}, concurrency {args.concurrency}, {args.rounds} rounds of "
              f"{args.requests}: {specs[0]} median {statistics.median(base):.3f} ms")
        for spec in specs[1:]:
            ours = totals[(spec, kind)]
            diff = [b - a for a, b in zip(base, ours, strict=True)]
            se = statistics.stdev(diff) / len(diff) ** 0.5 if len(diff) > 1 else 0.0
            print(f"  {spec}: median {statistics.median(ours):.3f} ms; mean difference "
                  f"{statistics.mean(diff):+.3f} ms (std. error {se:.3f})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
