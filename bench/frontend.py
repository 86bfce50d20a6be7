"""The service's own cost per request, apart from any model: the identity engine.

Side by side in one run, on the same 10 s clips:

  (a) a bare grpc.aio server with the same proto that only receives the bytes and answers an
      empty result: the floor of what Python gRPC costs here;
  (b) the whole service (`asr-scheduler serve --engine identity`): the scheduler and its
      worker processes, with the same decode, dispatch and worker hand-off as a real model;
      with `--frontends 0,1,2`, one such service per front-end process count (`serve
      --frontends N`), all started first, then measured one after another on the same load.

For unary and streamed requests, WAV and MP3, at each concurrency, it prints requests/s,
p50/p99 latency, and the CPU milliseconds per request of every service process (read from
/proc, so the load generator's own CPU is not counted), the whole service's total, and its
ratio to (a), in CPU and in requests/s. The load generator is one asyncio process with many
concurrent calls.

    python bench/frontend.py --model models/sensevoice-tiny               # defaults
    python bench/frontend.py --concurrency 1,16,64,256 --requests 400 --json out.json
    python bench/frontend.py --frontends 0,1,2 --concurrency 16,64 --formats wav  # front ends

Targets (issue "Front end at GPU rates"): the whole service at most 1.0 ms CPU per 10 s unary
WAV request and 1.5 ms per streamed one.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import grpc

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.common import free_port, make_clips, scheduler_command, stop_process  # noqa: E402
from protos.asr.v1 import asr_pb2 as pb  # noqa: E402
from protos.asr.v1 import asr_pb2_grpc as pb_grpc  # noqa: E402

CHUNK = 64 * 1024
HZ = os.sysconf("SC_CLK_TCK")

ECHO_SERVER = """
import asyncio, sys
import grpc
from protos.asr.v1 import asr_pb2 as pb, asr_pb2_grpc as pb_grpc

class Echo(pb_grpc.RecognizerServicer):
    async def Recognize(self, request, context):
        return pb.RecognizeResponse(result=pb.RecognitionResult(
            audio_duration_s=len(request.audio_content) / 32000))

    async def StreamingRecognize(self, requests, context):
        n = 0
        async for r in requests:
            n += len(r.audio_content)
        yield pb.StreamingRecognizeResponse(result=pb.RecognitionResult(
            audio_duration_s=n / 32000), is_final=True, is_last=True)

async def main():
    server = grpc.aio.server(options=[("grpc.max_receive_message_length", 256 << 20)])
    pb_grpc.add_RecognizerServicer_to_server(Echo(), server)
    server.add_insecure_port("127.0.0.1:" + sys.argv[1])
    await server.start()
    print("ready", flush=True)
    await server.wait_for_termination()

asyncio.run(main())
"""


def cpu_ticks(pid: int) -> int:
    """utime + stime of one process (not its children)."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])


def children(pid: int) -> list[int]:
    out: list[int] = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            out += [int(c) for c in (task / "children").read_text().split()]
        except OSError:
            pass
    return out


def service_processes(pid: int) -> dict[str, int]:
    """The scheduler and its child processes, named: frontend0.., worker0.."""
    named = {"scheduler": pid}
    counts = {"frontend": 0, "worker": 0}
    for child in sorted(children(pid)):
        try:
            cmd = Path(f"/proc/{child}/cmdline").read_bytes()
        except OSError:
            continue
        kind = "frontend" if b"scheduler.frontend" in cmd else "worker"
        named[f"{kind}{counts[kind]}"] = child
        counts[kind] += 1
    return named


@dataclass
class Row:
    target: str
    kind: str
    fmt: str
    concurrency: int
    requests: int
    rps: float
    p50_ms: float
    p99_ms: float
    cpu_ms: dict[str, float] = field(default_factory=dict)  # per process, per request
    speed_ms: float = 0.0  # `speed_check()` just before the row: the machine's pace then

    @property
    def total_cpu_ms(self) -> float:
        return sum(self.cpu_ms.values())


def _requests(data: bytes, chunk: int = CHUNK) -> list[pb.StreamingRecognizeRequest]:
    msgs = [pb.StreamingRecognizeRequest(streaming_config=pb.StreamingRecognitionConfig(
        config=pb.RecognitionConfig(vad_mode=pb.VAD_NEVER)))]
    msgs += [pb.StreamingRecognizeRequest(audio_content=data[i:i + chunk])
             for i in range(0, len(data), chunk)]
    return msgs


async def drive(address: str, data: bytes, kind: str, concurrency: int,
                requests: int, chunk: int = CHUNK) -> tuple[float, list[float]]:
    """Closed loop: `concurrency` calls in flight over a few channels; (wall s, latencies).
    Streams send `data` in messages of `chunk` bytes after the config message."""
    channels = [grpc.aio.insecure_channel(address, options=[
        ("grpc.max_send_message_length", 256 << 20),
        ("grpc.use_local_subchannel_pool", 1)]) for _ in range(min(8, concurrency))]
    stubs = [pb_grpc.RecognizerStub(c) for c in channels]
    unary = pb.RecognizeRequest(config=pb.RecognitionConfig(vad_mode=pb.VAD_NEVER),
                                audio_content=data)
    stream_msgs = _requests(data, chunk)
    latencies: list[float] = []
    left = requests

    async def client(i: int) -> None:
        nonlocal left
        stub = stubs[i % len(stubs)]
        while left > 0:
            left -= 1
            t = time.perf_counter()
            if kind == "unary":
                await stub.Recognize(unary, timeout=120)
            else:
                async for _ in stub.StreamingRecognize(iter(stream_msgs), timeout=120):
                    pass
            latencies.append(time.perf_counter() - t)

    started = time.perf_counter()
    await asyncio.gather(*(client(i) for i in range(concurrency)))
    wall = time.perf_counter() - started
    for c in channels:
        await c.close()
    return wall, latencies


def measure(target: str, address: str, pids: dict[str, int], data: bytes, kind: str, fmt: str,
            concurrency: int, requests: int, chunk: int = CHUNK) -> Row:
    asyncio.run(drive(address, data, kind, min(concurrency, 8), min(requests, 40), chunk))
    speed = speed_check()
    before = {name: cpu_ticks(pid) for name, pid in pids.items()}
    wall, lat = asyncio.run(drive(address, data, kind, concurrency, requests, chunk))
    after = {name: cpu_ticks(pid) for name, pid in pids.items()}
    lat.sort()
    cpu = {name: (after[name] - before[name]) / HZ * 1000 / requests for name in pids}
    return Row(target, kind, fmt, concurrency, requests, requests / wall,
               statistics.median(lat) * 1000, lat[min(len(lat) - 1, int(0.99 * len(lat)))] * 1000,
               cpu, speed)


def start_echo() -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-c", ECHO_SERVER, str(port)], cwd=ROOT,
                            stdout=subprocess.PIPE, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert proc.stdout is not None and proc.stdout.readline().strip() == b"ready"
    return proc, f"127.0.0.1:{port}"


# `serve` with the identity engine on one CPU worker, no VAD, metrics off: the service's own cost.
IDENTITY_SERVE_ARGS = ["serve", "--engine", "identity", "--devices", "cpu", "--host", "127.0.0.1",
                       "--metrics-port", "0", "--vad-model", "none"]


def wait_ready(address: str, proc: subprocess.Popen[bytes], timeout_s: float = 300,
               log: Path | None = None) -> None:
    """Until every worker of the service at `address` is ready; RuntimeError when the process
    exits first (with the end of its `log`) or `timeout_s` passes."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        with grpc.insecure_channel(address) as ch:
            try:
                status = pb_grpc.AdminStub(ch).GetStatus(pb.GetStatusRequest(), timeout=2)
                states = [w.state for d in status.devices for w in d.workers]
                if states and all(s == "ready" for s in states):
                    return
            except grpc.RpcError:
                pass
        if proc.poll() is not None:
            raise RuntimeError(f"asr-scheduler exited with code {proc.returncode}"
                               + (f": {log.read_text()[-2000:]}" if log else ""))
        time.sleep(0.5)
    raise RuntimeError(f"the service at {address} was not ready in {timeout_s:.0f} s")


def start_service(model: str, log: Path, extra: list[str]) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    cmd = [*scheduler_command(), *IDENTITY_SERVE_ARGS, "--model", model, "--port", str(port),
           *extra]
    with log.open("wb") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, cwd=ROOT)
    address = f"127.0.0.1:{port}"
    wait_ready(address, proc, log=log)
    return proc, address


def speed_check() -> float:
    """CPU milliseconds of a fixed pure-Python loop: how fast this machine is right now. The
    shared 2-core VM's pace drifts, by up to 1.75x within one run (91 ms, then 52 ms, on
    2026-12-06): compare rows measured at similar checks, or their ratios to the echo row
    measured just before them."""
    started = time.process_time()
    total = 0
    for i in range(2_000_000):
        total += i
    return (time.process_time() - started) * 1000


def table(rows: list[Row]) -> str:
    floor = {(r.kind, r.fmt, r.concurrency): r for r in rows if r.target == "echo"}
    lines = ["| target | kind | format | conc. | req/s | p50 ms | p99 ms | CPU ms/request "
             "(per process) | total CPU ms | CPU vs echo | req/s vs echo | speed check ms |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        base = floor.get((r.kind, r.fmt, r.concurrency))
        vs = f"{r.total_cpu_ms / base.total_cpu_ms:.1f}x" if base and base.total_cpu_ms else "-"
        rate = f"{r.rps / base.rps:.2f}" if base and base.rps else "-"
        per = ", ".join(f"{k} {v:.2f}" for k, v in r.cpu_ms.items())
        lines.append(f"| {r.target} | {r.kind} | {r.fmt} | {r.concurrency} | {r.rps:.0f} | "
                     f"{r.p50_ms:.1f} | {r.p99_ms:.1f} | {per} | {r.total_cpu_ms:.2f} | {vs} | "
                     f"{rate} | {r.speed_ms:.0f} |")
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=str(ROOT / "models" / "sensevoice-tiny"))
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--concurrency", default="1,16,64,256")
    ap.add_argument("--requests", type=int, default=300, help="per row")
    ap.add_argument("--kinds", default="unary,stream")
    ap.add_argument("--formats", default="wav,mp3")
    ap.add_argument("--frontends", default="0", help="front-end process counts to compare, "
                    "e.g. 0,1,2 (0: the scheduler serves the port itself)")
    ap.add_argument("--serve-arg", action="append", default=[],
                    help="extra `serve` argument (repeat), e.g. --serve-arg=--workers-per-device=2")
    ap.add_argument("--chunk-kb", type=int, default=CHUNK // 1024,
                    help="audio bytes per streamed message (gRPC costs ~45 us per message here)")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    chunk = args.chunk_kb * 1024
    work = Path(tempfile.mkdtemp(prefix="frontend-bench-"))
    clip = make_clips(1, args.seconds, work)[0]
    data = {"wav": clip.path.read_bytes()}
    if "mp3" in args.formats:
        mp3 = work / "clip.mp3"
        subprocess.run(["ffmpeg", "-loglevel", "error", "-y", "-i", str(clip.path), "-b:a",
                        "64k", str(mp3)], check=True)
        data["mp3"] = mp3.read_bytes()
    levels = [int(c) for c in args.concurrency.split(",")]
    speed = [speed_check()]
    rows: list[Row] = []
    echo, echo_address = start_echo()
    counts = [int(n) for n in args.frontends.split(",")]
    services = []
    try:
        for n in counts:
            extra = [*args.serve_arg, f"--frontends={n}"]
            services.append((f"service fe={n}" if n else "service",
                             *start_service(args.model, work / f"serve{n}.log", extra)))
        for kind in args.kinds.split(","):
            for fmt in args.formats.split(","):
                for c in levels:
                    floor = measure("echo", echo_address, {"echo": echo.pid}, data[fmt],
                                    kind, fmt, c, args.requests, chunk)
                    rows.append(floor)
                    for name, service, address in services:
                        rows.append(measure(name, address, service_processes(service.pid),
                                            data[fmt], kind, fmt, c, args.requests, chunk))
                        print(table([floor, rows[-1]]).splitlines()[-1], flush=True)
    finally:
        for _, service, _ in services:
            stop_process(service)
        echo.kill()
    speed.append(speed_check())
    print()
    print(f"{args.seconds:g} s clips, streamed in {args.chunk_kb} KB messages; "
          f"{os.cpu_count()} CPUs; load generator in this process; "
          f"speed check (a fixed Python loop, lower is faster): {speed[0]:.0f} ms before, "
          f"{speed[1]:.0f} ms after")
    print(table(rows))
    if args.json:
        args.json.write_text(json.dumps({
            "speed_check_ms": speed, "chunk_kb": args.chunk_kb,
            "rows": [{**asdict(r), "total_cpu_ms": r.total_cpu_ms} for r in rows]}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
