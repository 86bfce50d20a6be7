"""Shared pieces of the benchmark scripts: speech clips, a closed-loop load driver, results.

Nothing here prints: progress goes through `logging` and tqdm (stderr), and the scripts print
the final report themselves.
"""

from __future__ import annotations

import itertools
import logging
import os
import shlex
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import soundfile as sf
from tqdm import tqdm

from bench.audio_store import synthesized
from client.library import AsrClient

log = logging.getLogger("bench")

SAMPLE_RATE = 16000
SENTENCES = (
    "hello world, this is a test of the speech recognition service.",
    "the quick brown fox jumps over the lazy dog.",
    "please call me back tomorrow morning at nine.",
    "numbers like forty two and seven hundred are spoken here.",
    "the meeting about the new budget starts after lunch on thursday.",
    "a call centre records thousands of hours of audio every single week.",
    "she sells sea shells by the sea shore in the early summer.",
    "transcription on graphics cards should be much faster than real time.",
)
WORDS_PER_SECOND = 3.2  # a little more than espeak-ng says at its default 175 words/minute


@dataclass(frozen=True)
class Clip:
    """One benchmark clip: a 16 kHz mono 16-bit WAV file, its bytes and its length."""

    path: Path
    wav: bytes
    seconds: float


def _clip_text(index: int, seconds: float) -> str:
    words: list[str] = []
    for k in itertools.count(index):
        words += SENTENCES[k % len(SENTENCES)].split()
        if len(words) >= seconds * WORDS_PER_SECOND:
            return " ".join(words)
    raise AssertionError("unreachable")


def baseline_device(devices: str, cuda_available: bool) -> str:
    """The one device a plain-FunASR baseline uses for a service's `--devices`."""
    spec = devices.strip().lower()
    if spec.startswith("cuda"):
        return spec.split(",")[0]
    if spec == "auto" and cuda_available:
        return "cuda:0"
    return "cpu"


def make_clips(count: int, seconds: float, directory: Path) -> list[Clip]:
    """`count` different clips of exactly `seconds` of espeak-ng speech (padded with silence
    or cut), 16 kHz mono 16-bit WAV. Each clip rotates the sentence list, the speaking rate
    and (every 8 clips) the pitch, so no two of the first 96 clips are the same."""
    directory.mkdir(parents=True, exist_ok=True)
    clips = []
    for i in range(count):
        path = directory / f"clip{i:03d}.wav"
        # The sentence rotation repeats every 8 clips: the pitch changes with each round.
        rate, text = str(160 + 10 * (i % 4)), _clip_text(i, seconds)
        pitch = str(30 + 5 * (i // len(SENTENCES) % 12))  # distinct up to 96 clips

        def make(out: Path, rate: str = rate, text: str = text, pitch: str = pitch) -> None:
            with tempfile.TemporaryDirectory() as tmp:
                raw = Path(tmp) / "espeak.wav"
                subprocess.run(["espeak-ng", "-s", rate, "-p", pitch, "-w", str(raw), text],
                               check=True, capture_output=True, timeout=120)
                subprocess.run(["sox", "-R", str(raw), "-r", str(SAMPLE_RATE), "-c", "1", "-b",
                                "16", str(out), "pad", "0", f"{seconds:g}", "trim", "0",
                                f"{seconds:g}"], check=True, capture_output=True, timeout=120)

        synthesized(path, f"clip|{rate}|{pitch}|{seconds:g}|{text}", make)
        info = sf.info(str(path))
        clips.append(Clip(path, path.read_bytes(), info.frames / info.samplerate))
    return clips


@dataclass
class Measurement:
    """One timed variant at one concurrency: what ran, how long, and each request's latency."""

    # "a" plain loop, "b" list batch, "c" our service (generate), "d" funasr-server,
    # "e" our service (direct)
    variant: str
    label: str
    concurrency: int = 1
    workers: int = 0  # worker processes of our service; 0 for the others
    requests: int = 0
    audio_s: float = 0.0
    wall_s: float = 0.0
    latencies_s: list[float] = field(default_factory=list)
    unavailable: str = ""  # why it could not run ("" when it ran)
    other_cpu: float = 0.0  # share of all CPUs other processes used meanwhile (noise)
    runs: list[float] = field(default_factory=list)  # RTFx of every round
    tokens: int = 0  # tokens an LLM decoder generated in the timed part (0: not an LLM)
    # When the timed part ran (epoch seconds): to match other records, e.g. GPU samples
    started_at: float = 0.0
    ended_at: float = 0.0

    @property
    def ms_per_token(self) -> float:
        """Wall milliseconds per generated token (LLM decoders; 0 when none were counted)."""
        return 1000 * self.wall_s / self.tokens if self.tokens else 0.0

    @property
    def rtfx(self) -> float:
        """Audio seconds per wall second."""
        return self.audio_s / self.wall_s if self.wall_s > 0 else 0.0

    def percentile(self, q: float) -> float:
        return float(np.percentile(self.latencies_s, q)) if self.latencies_s else 0.0

    def to_dict(self, reference: Measurement | None) -> dict[str, object]:
        out = asdict(self)
        out.pop("latencies_s")
        out.update(rtfx=round(self.rtfx, 3), p50_s=round(self.percentile(50), 4),
                   p95_s=round(self.percentile(95), 4),
                   ratio_vs_a=round(ratio(self, reference), 3) if not self.unavailable else None,
                   ms_per_token=round(self.ms_per_token, 3))
        return out


def keep_median(rounds: Sequence[Sequence[Measurement]]) -> list[Measurement]:
    """One row per variant and level (in first-round order): its upper-median round by RTFx
    (the only one for 1 round, the faster of 2, the middle of 3), with every round's RTFx in
    `runs`. Rows that could not run in any round stay as they are."""
    groups: dict[tuple[str, str, int, int], list[Measurement]] = {}
    for rows in rounds:
        for m in rows:
            groups.setdefault((m.variant, m.label, m.concurrency, m.workers), []).append(m)
    kept = []
    for group in groups.values():
        ran = [m for m in group if not m.unavailable]
        if not ran:
            kept.append(group[0])
            continue
        chosen = sorted(ran, key=lambda m: m.rtfx)[len(ran) // 2]
        chosen.runs = [round(m.rtfx, 3) for m in ran]
        kept.append(chosen)
    return kept


def ratio(m: Measurement, reference: Measurement | None) -> float:
    """RTFx of `m` over RTFx of the reference (the plain generate loop)."""
    if reference is None or reference.rtfx <= 0:
        return 0.0
    return m.rtfx / reference.rtfx


def cpu_ticks() -> tuple[int, int]:
    """(busy, total) ticks of all CPUs since boot (/proc/stat; busy: all but idle and iowait)."""
    with open("/proc/stat") as f:
        v = [int(x) for x in f.readline().split()[1:]]
    return sum(v) - v[3] - v[4], sum(v)


class CpuMeter:
    """How much of the machine's CPU processes outside one process tree used meanwhile.

    Reads /proc (Linux): busy time of all CPUs from /proc/stat minus the CPU time of `root` and
    its descendants. On a shared machine this says how noisy a measurement was. Elsewhere it
    reads 0.
    """

    def __init__(self, root: int) -> None:
        self.root = root
        self._start = self._sample()

    def _tree_ticks(self) -> int:
        parent: dict[int, int] = {}
        ticks: dict[int, int] = {}
        for name in os.listdir("/proc"):
            if not name.isdigit():
                continue
            try:
                with open(f"/proc/{name}/stat") as f:
                    fields = f.read().rsplit(")", 1)[1].split()
            except OSError:
                continue
            parent[int(name)] = int(fields[1])
            ticks[int(name)] = sum(int(x) for x in fields[11:15])  # utime stime cutime cstime
        total = 0
        for pid, t in ticks.items():
            p = pid
            while p > 1 and p != self.root:
                p = parent.get(p, 0)
            total += t if p == self.root else 0
        return total

    def _sample(self) -> tuple[float, int, int]:
        try:
            return time.monotonic(), cpu_ticks()[0], self._tree_ticks()
        except OSError:
            return time.monotonic(), 0, 0

    def foreign_share(self) -> float:
        """Share (0-1) of all CPUs that other processes used since this meter started."""
        t0, busy0, ours0 = self._start
        t1, busy1, ours1 = self._sample()
        hz = os.sysconf("SC_CLK_TCK")
        capacity = (t1 - t0) * (os.cpu_count() or 1) * hz
        if capacity <= 0 or busy1 == 0:
            return 0.0
        return min(max(((busy1 - busy0) - (ours1 - ours0)) / capacity, 0.0), 1.0)


def load_average() -> float:
    try:
        return os.getloadavg()[0]
    except OSError:
        return 0.0


def drive(call: Callable[[Clip], object], clips: Sequence[Clip], requests: int,
          concurrency: int, desc: str) -> tuple[float, list[float]]:
    """Closed loop: `concurrency` threads each send the next clip as soon as their previous
    request returns, until `requests` requests are done (clips are reused in turn).

    Returns (wall seconds, per-request latencies). The first error stops the run and is raised.
    """
    lock = threading.Lock()
    counter = itertools.count()
    latencies = [0.0] * requests
    failed = threading.Event()
    bar = tqdm(total=requests, desc=desc, file=sys.stderr, leave=False, mininterval=1.0,
               disable=None)  # bars only on a terminal

    def client() -> None:
        while not failed.is_set():
            with lock:
                i = next(counter)
            if i >= requests:
                return
            start = time.perf_counter()
            try:
                call(clips[i % len(clips)])
            except BaseException:
                failed.set()
                raise
            latencies[i] = time.perf_counter() - start
            bar.update(1)

    start = time.perf_counter()
    try:
        with ThreadPoolExecutor(max_workers=concurrency, thread_name_prefix="client") as pool:
            futures = [pool.submit(client) for _ in range(min(concurrency, requests))]
            for f in futures:
                f.result()
    finally:
        bar.close()
    return time.perf_counter() - start, latencies


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_for(ready: Callable[[], bool], proc: subprocess.Popen[bytes], timeout_s: float,
             what: str) -> None:
    """Poll `ready()` until it is true; raise if `proc` exits or time runs out."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited with code {proc.returncode} while starting")
        if ready():
            return
        time.sleep(0.25)
    raise TimeoutError(f"{what} not ready within {timeout_s:.0f} s")


def stop_process(proc: subprocess.Popen[bytes], timeout_s: float = 30.0) -> None:
    """SIGTERM, then SIGKILL if it does not exit in time."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)


def tail(path: Path, lines: int = 15) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


def format_table(rows: Sequence[Measurement], reference: Measurement | None) -> str:
    """A Markdown table: one line per measurement with RTFx, p50/p95 and the ratio to (a)."""
    llm = any(m.tokens for m in rows)  # LLM decoders: tokens and wall ms per token too
    head = ("| variant | concurrency | workers | requests | audio s | wall s | RTFx | p50 s "
            "| p95 s | other CPU | vs (a) |" + (" tokens | ms/token |" if llm else ""))
    lines = [head, "|" + "---|" * (13 if llm else 11)]
    for m in rows:
        if m.unavailable:
            lines.append(f"| {m.label} | {m.concurrency} | - | - | - | - | - | - | - | - "
                         f"| n/a ({m.unavailable}) |" + (" - | - |" if llm else ""))
            continue
        workers = str(m.workers) if m.workers else "-"
        lines.append(
            f"| {m.label} | {m.concurrency} | {workers} | {m.requests} | {m.audio_s:.0f} "
            f"| {m.wall_s:.2f} | {m.rtfx:.2f} | {m.percentile(50):.3f} | {m.percentile(95):.3f} "
            f"| {m.other_cpu:.0%} | {ratio(m, reference):.2f}x |"
            + (f" {m.tokens} | {m.ms_per_token:.2f} |" if llm else ""))
    return "\n".join(lines)


RECOGNIZER = "asr.v1.Recognizer"


def _serving(address: str) -> bool:
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    with grpc.insecure_channel(address) as channel:
        try:
            status = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(service=RECOGNIZER), timeout=1).status
        except grpc.RpcError:
            return False
    return status == health_pb2.HealthCheckResponse.SERVING


def _all_workers_ready(client: AsrClient) -> bool:
    import grpc

    try:
        status = client.status()
    except grpc.RpcError:
        return False
    states = [w.state for d in status.devices for w in d.workers]
    return bool(states) and all(state == "ready" for state in states)


def scheduler_command() -> list[str]:
    script = Path(sys.executable).parent / "asr-scheduler"
    if script.exists():
        return [str(script)]
    return [sys.executable, "-c", "import sys; from scheduler.cli import main; sys.exit(main())"]


@contextmanager
def service_process(serve_args: Sequence[str], log_path: Path,
                    timeout_s: float = 600.0) -> Iterator[AsrClient]:
    """`asr-scheduler serve SERVE_ARGS` on a free loopback port (no metrics port), its output in
    `log_path`; yields a client once health says SERVING and every worker is ready."""
    port = free_port()
    cmd = [*scheduler_command(), "serve", "--host", "127.0.0.1", "--port", str(port),
           "--metrics-port", "0", *serve_args]
    log.info("starting: %s (log %s)", shlex.join(cmd), log_path)
    with log_path.open("wb") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT,
                                cwd=Path(__file__).resolve().parent.parent)
    address = f"127.0.0.1:{port}"
    client = AsrClient(address)
    try:
        wait_for(lambda: _serving(address), proc, timeout_s, "asr-scheduler serve")
        wait_for(lambda: _all_workers_ready(client), proc, timeout_s, "its workers")
        yield client
    except Exception as exc:
        raise RuntimeError(f"{exc}; last lines of {log_path}:\n{tail(log_path)}") from exc
    finally:
        client.close()
        stop_process(proc)
