"""Instructions per request of each service process, counted by valgrind's callgrind.

On the shared 2-core VM the CPU time of the same code drifts by up to 1.75x within minutes
(`bench/frontend.py`'s speed check), so a change worth 2-5 % cannot be seen in CPU time even
side by side (`bench/ab.py`). Instructions executed do not drift: two runs of the same checkout
agree to ~0.5 % on a quiet machine, so a Python-level change can be judged in one run. Each
checkout's `asr-scheduler serve --engine identity` runs under callgrind (its worker too, as a
traced child) with instrumentation off; it is switched on only while the measured requests run.

What it does not show: time in the kernel (system calls, page faults, wake-ups: a third of a
streamed request's CPU here), cache misses, and the relative cost of instructions (a `memcpy`
counts one instruction per byte copied, so it is reported apart). Background load changes the
counts a little (timing-dependent polling: ~+5-10 % under a concurrent test run), so compare
checkouts measured in the same run. Needs `valgrind` (Debian package).

    python bench/instructions.py --trees /tmp/base,. --kinds stream,unary --requests 200
"""

from __future__ import annotations

import asyncio
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import grpc

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.ab import SERVE_IDENTITY, checkout, comparison_args  # noqa: E402
from bench.common import free_port, make_clips, stop_process  # noqa: E402
from bench.frontend import CHUNK, ECHO_SERVER, drive, service_processes, wait_ready  # noqa: E402

ECHO = "echo"  # a `--trees` entry: the bare grpc.aio echo server of bench/frontend.py
MEMCPY = re.compile(r"^\s*([\d,]+) .*__mem(?:cpy|move)\S*_unaligned_erms", re.M)


def control(pid: int, *args: str) -> None:
    subprocess.run(["callgrind_control", *args, str(pid)], check=True, capture_output=True)


def collect(pid: int, out: Path) -> tuple[int, int]:
    """Dump the counts since the last dump: (instructions, of which memcpy), files removed."""
    for f in out.glob(f"cg.{pid}*"):
        f.unlink()
    control(pid, "--dump")
    deadline = time.monotonic() + 30
    while not (files := list(out.glob(f"cg.{pid}.*"))) and time.monotonic() < deadline:
        time.sleep(0.2)
    total = copies = 0
    for f in files:
        text = f.read_text(errors="replace")
        m = re.search(r"^(?:summary|totals): (\d+)", text, re.M)
        total += int(m.group(1)) if m else 0
        listing = subprocess.run(["callgrind_annotate", "--inclusive=no", str(f)],
                                 capture_output=True, text=True).stdout
        copies += sum(int(c.group(1).replace(",", "")) for c in MEMCPY.finditer(listing))
        f.unlink()
    return total, copies


def start(spec: str, model: str, out: Path, log: Path) -> tuple[subprocess.Popen[bytes], str]:
    echo = spec.partition("|")[0] == ECHO
    cwd, env = checkout(str(ROOT) + spec[len(ECHO):] if echo else spec)
    port = free_port()
    valgrind = ["valgrind", "--tool=callgrind", "--instr-atstart=no", "--trace-children=yes",
                "--trace-children-skip=*ffmpeg*,*ffprobe*",
                f"--callgrind-out-file={out}/cg.%p"]
    cmd = ([*valgrind, sys.executable, "-c", ECHO_SERVER, str(port)] if echo else
           [*valgrind, sys.executable, *SERVE_IDENTITY, "--model", model, "--port", str(port)])
    proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=log.open("wb"),
                            stderr=subprocess.STDOUT)
    address = f"127.0.0.1:{port}"
    if echo:
        with grpc.insecure_channel(address) as channel:
            grpc.channel_ready_future(channel).result(timeout=300)
    else:
        wait_ready(address, proc, timeout_s=900)
    return proc, address


def main() -> int:
    ap = comparison_args(__doc__ or "", "checkouts, comma-separated (`echo`: the bare gRPC "
                         "server); a checkout may carry `|VAR=1;OTHER=2`", 200)
    ap.add_argument("--chunk-kb", type=int, default=CHUNK // 1024)
    args = ap.parse_args()
    if shutil.which("valgrind") is None:
        raise SystemExit("valgrind is not installed (Debian: apt-get install valgrind)")
    out = Path(tempfile.mkdtemp(prefix="instructions-"))
    data = make_clips(1, 10.0, out)[0].path.read_bytes()
    chunk = args.chunk_kb * 1024
    print("M instructions per 10 s WAV request (in parentheses: without memcpy)")
    for i, spec in enumerate(args.trees.split(",")):
        proc, address = start(spec, args.model, out, out / f"serve{i}.log")
        try:
            pids = ({"echo": proc.pid} if spec.partition("|")[0] == ECHO
                    else service_processes(proc.pid))
            for kind in args.kinds.split(","):
                asyncio.run(drive(address, data, kind, args.concurrency, 30, chunk))  # warm up
                for pid in pids.values():
                    control(pid, "--instr=on")
                    collect(pid, out)  # counts from here on
                asyncio.run(drive(address, data, kind, args.concurrency, args.requests, chunk))
                parts = []
                for name, pid in pids.items():
                    total, copies = collect(pid, out)
                    control(pid, "--instr=off")
                    n = args.requests * 1e6
                    parts.append(f"{name} {total / n:.3f} ({(total - copies) / n:.3f})")
                print(f"{spec} {kind} concurrency {args.concurrency}: {', '.join(parts)}",
                      flush=True)
        finally:
            stop_process(proc)
    shutil.rmtree(out, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
