"""Throughput benchmark: our service side by side with plain FunASR and FunASR's own server.

One process tree runs, one variant after another (never two at once), on the same clips and
the same thread budget:

  (a) a plain `AutoModel.generate` loop, one clip per call: the reference;
  (b) FunASR's list-input `generate(input=[...], batch_size=B)`;
  (c) our service (`asr-scheduler serve --engine generate`) at each concurrency, once per
      --workers-per-device;
  (d) FunASR's own FastAPI server (`funasr-server`) at the same concurrencies;
  (e) our service with the `direct` engine (our batched device pipeline), like (c), once per
      --dtypes entry (bf16/fp16 apply on CUDA only);

and prints a Markdown table of RTFx (audio seconds per wall second), p50/p95 per-request
latency and each row's ratio to (a), then the CPU targets (ours at concurrency 8 >= 1.3x (a);
at concurrency 1 >= 0.95x (a); direct at concurrency 8 >= (b) and at concurrency 1 >= 0.95x
(a)). On CUDA, with bf16 in --dtypes, (b) also runs under bf16 autocast.

Fairness: (a) and (b) run in a spawned subprocess with `AutoModel(..., ncpu=T)`; our workers get
`--worker-threads T/W` (W workers per device), so every variant uses T torch threads (T = cores
unless --threads). funasr-server has no thread flag; it runs its own `main()` with `ncpu=T`
injected into `AutoModel`. Each variant is warmed up before it is timed. Latency is the time
from sending a request to its answer; for (a) the `generate` call of the clip, for (b) the call
of the batch that carried it. A closed loop keeps `concurrency` requests in flight.

On a machine without a GPU, W workers run as `--devices cpu --workers-per-device W`.

Noise: the column "other CPU" is the share of the machine other processes used during the
row (read from /proc), and on a shared machine that share makes a row slow. The same process
can also be up to ~18 % faster or slower than another identical one (CPU model speed is
bimodal per process on the 2-core dev VM), so `--repeat R` runs the whole bench R times, each
variant in fresh processes, and reports each row's upper-median round (the faster of 2, the
middle of 3); `runs` in the JSON lists every round's RTFx.

    python bench/throughput.py --model models/sensevoice-small --quick --repeat 2  # CPU
    python bench/throughput.py --model /models/SenseVoiceSmall --json out.json     # GPU

--quick: 6 clips of 10 s, concurrency 1 and 8, workers per device 1 and 2: about 1 minute
with sensevoice-tiny and 3 minutes with sensevoice-small per round on 2 quiet cores. Defaults
otherwise: 16 clips of 10 s, concurrency 1,8,32,128, workers 1,2. Each concurrency level sends
max(clips, 2 x concurrency) requests unless --requests says otherwise.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import functools
import http.client
import importlib.util
import io
import json
import logging
import multiprocessing
import os
import platform
import re
import shlex
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # run as a script from anywhere: import the project's packages
    sys.path.insert(0, str(ROOT))

import soundfile as sf  # noqa: E402
from tqdm import tqdm  # noqa: E402

from bench import nano  # noqa: E402
from bench.common import (  # noqa: E402
    Clip,
    CpuMeter,
    Measurement,
    baseline_device,
    drive,
    format_table,
    free_port,
    keep_median,
    load_average,
    make_clips,
    ratio,
    service_process,
    stop_process,
    tail,
    wait_for,
)
from client.library import AsrClient  # noqa: E402

log = logging.getLogger("bench")

TARGET_C8 = 1.3
TARGET_C1 = 0.95
ENGINE_VARIANTS = {"generate": "c", "direct": "e"}
START_TIMEOUT_S = 600.0
GENERATE_OPTIONS: dict[str, Any] = {"language": "auto", "use_itn": False}
NOISY_SHARE = 0.05
WARMUP_CALLS = 4  # the first calls of a fresh model are slow (allocator, kernel caches)


@dataclass(frozen=True)
class Settings:
    model: str
    clips: int
    clip_seconds: float
    concurrency: tuple[int, ...]
    workers: tuple[int, ...]
    devices: str
    threads: int
    batch_size: int
    requests: int  # per concurrency level; 0: max(clips, 2 x concurrency)
    max_batch_size: int
    max_queue_delay_ms: float | None
    skip_funasr_server: bool
    work_dir: Path
    json: Path | None = None
    repeat: int = 1  # rounds of the whole bench in fresh processes; the median is reported
    engines: tuple[str, ...] = ("generate", "direct")  # service rows: (c) and (e)
    dtypes: tuple[str, ...] = ("fp32",)  # service dtypes of (e); bf16 also adds a bf16 (b)
    max_new_tokens: int = 128  # Fun-ASR-Nano: the token cap of every variant
    nano: bool = False  # the model is Fun-ASR-Nano (an LLM decoder)

    @property
    def warmup_concurrency(self) -> int:
        """Warm-ups send 2x this many requests, this many at a time."""
        return max(2, min(8, max(self.concurrency)))

    def requests_at(self, concurrency: int) -> int:
        return self.requests or max(self.clips, 2 * concurrency)


def _int_list(text: str) -> tuple[int, ...]:
    values = tuple(int(v) for v in text.split(",") if v.strip())
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: expected positive integers like 1,8,32")
    return values


def parse_args(argv: list[str] | None) -> Settings:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", required=True, help="local FunASR model directory")
    p.add_argument("--clips", type=int, help="number of different clips (default 16; quick 6)")
    p.add_argument("--clip-seconds", type=float, default=10.0, help="length of each clip")
    p.add_argument("--concurrency", type=_int_list,
                   help="in-flight requests for (c) and (d) (default 1,8,32,128; quick 1,8)")
    p.add_argument("--workers-per-device", type=_int_list, default=(1, 2),
                   help="worker processes per device for (c), one service run each (default 1,2)")
    p.add_argument("--devices", default="auto", help="auto | cpu | cuda:0,... | sim:N")
    p.add_argument("--threads", type=int, default=os.cpu_count() or 1,
                   help="torch CPU threads per variant (default: all cores)")
    p.add_argument("--batch-size", type=int, default=16, help="batch_size of variant (b)")
    p.add_argument("--requests", type=int, default=0,
                   help="requests per concurrency level (default max(clips, 2 x concurrency))")
    p.add_argument("--max-batch-size", type=int, default=0, help="service flag (0: its default)")
    p.add_argument("--max-queue-delay-ms", type=float, help="service flag (default: its own)")
    p.add_argument("--repeat", type=int, default=1,
                   help="rounds of the whole bench, each in fresh processes; every row reports "
                        "its upper-median round (filters out stalls and per-process speed luck)")
    p.add_argument("--engines", default="generate,direct",
                   help="service engines to measure: generate (c), direct (e)")
    p.add_argument("--dtypes", default="fp32",
                   help="precisions of the direct rows, e.g. fp32,bf16 (CUDA only)")
    p.add_argument("--quick", action="store_true", help="few clips, concurrency 1 and 8")
    p.add_argument("--json", type=Path, help="also write the results here as JSON")
    p.add_argument("--skip-funasr-server", action="store_true", help="leave out variant (d)")
    p.add_argument("--work-dir", type=Path, help="where clips and logs go (default: temp dir)")
    p.add_argument("--max-new-tokens", type=int, default=128,
                   help="Fun-ASR-Nano: token cap of every variant (FunASR max_length, the "
                        "service's --max-new-tokens); random weights always reach it")
    a = p.parse_args(argv)
    if not Path(a.model).is_dir():
        p.error(f"--model {a.model}: not a directory (run: asr-scheduler make-models models "
                "--only sensevoice-small)")
    engines = tuple(e for e in a.engines.split(",") if e)
    if not engines or set(engines) - set(ENGINE_VARIANTS):
        p.error(f"--engines {a.engines!r}: expected a list of generate, direct")
    if nano.is_nano(a.model) and "direct" in engines:  # the direct engine has no LLM decoder
        log.info("Fun-ASR-Nano: no direct engine for it; its service rows run generate")
        engines = tuple(e for e in engines if e != "direct") or ("generate",)
    dtypes = tuple(d for d in a.dtypes.split(",") if d)
    if not dtypes or set(dtypes) - {"fp32", "bf16", "fp16"}:
        p.error(f"--dtypes {a.dtypes!r}: expected a list of fp32, bf16, fp16")
    work = a.work_dir or Path(tempfile.mkdtemp(prefix="bench-throughput-"))
    return Settings(
        model=str(Path(a.model).resolve()), clips=a.clips or (6 if a.quick else 16),
        clip_seconds=a.clip_seconds,
        concurrency=a.concurrency or ((1, 8) if a.quick else (1, 8, 32, 128)),
        workers=a.workers_per_device, devices=a.devices, threads=max(1, a.threads),
        batch_size=a.batch_size, requests=a.requests, max_batch_size=a.max_batch_size,
        max_queue_delay_ms=a.max_queue_delay_ms, skip_funasr_server=a.skip_funasr_server,
        work_dir=work.resolve(), json=a.json, repeat=max(1, a.repeat), engines=engines,
        dtypes=dtypes, max_new_tokens=max(1, a.max_new_tokens), nano=nano.is_nano(a.model))


# --- (a) and (b): plain FunASR, in a spawned subprocess -------------------------------------

def _timed_calls(variant: str, label: str, concurrency: int,
                 calls: Sequence[tuple[Callable[[], object], int]], audio_s: float,
                 root: int, tokens: Callable[[], int] | None = None) -> Measurement:
    """Run `calls` one after another; each carries n clips, which all wait for the call.
    `tokens`: a running count of generated tokens (LLM decoders), read before and after."""
    meter = CpuMeter(root)
    tokens_before = tokens() if tokens else 0
    latencies: list[float] = []
    started_at = time.time()
    start = time.perf_counter()
    for fn, n in tqdm(calls, desc=label, file=sys.stderr, leave=False, disable=None):
        t = time.perf_counter()
        fn()
        latencies += [time.perf_counter() - t] * n
    wall = time.perf_counter() - start
    m = Measurement(variant, label, concurrency, 0, len(latencies), audio_s, wall, latencies,
                    other_cpu=meter.foreign_share(),
                    tokens=tokens() - tokens_before if tokens else 0,
                    started_at=started_at, ended_at=time.time())
    log.info("%s: %.2f RTFx, p50 %.3f s (other processes used %.0f%% of the CPU)", label,
             m.rtfx, m.percentile(50), 100 * m.other_cpu)
    return m


def _plain_loop(model: Any, audio: list[Any], seconds: list[float], root: int,
                options: dict[str, Any],
                tokens: Callable[[], int] | None = None) -> Measurement:
    calls = [(functools.partial(model.generate, input=a, **options), 1) for a in audio]
    for i in range(WARMUP_CALLS):
        calls[i % len(calls)][0]()
    return _timed_calls("a", "(a) generate loop", 1, calls, sum(seconds), root, tokens)


def _list_batch(model: Any, audio: list[Any], seconds: list[float], batch_size: int,
                root: int, autocast: str = "", options: dict[str, Any] | None = None,
                tokens: Callable[[], int] | None = None) -> Measurement:
    """(b): list input; `autocast` "bf16"/"fp16" runs it under CUDA autocast."""
    import torch

    options = GENERATE_OPTIONS if options is None else options
    chunks = [audio[i:i + batch_size] for i in range(0, len(audio), batch_size)]

    def generate(c: list[Any]) -> object:
        if not autocast:
            return model.generate(input=c, batch_size=len(c), **options)
        dtype = torch.bfloat16 if autocast == "bf16" else torch.float16
        with torch.autocast("cuda", dtype=dtype):
            return model.generate(input=c, batch_size=len(c), **options)

    calls = [(functools.partial(generate, c), len(c)) for c in chunks]
    calls[0][0]()  # warm-up
    label = f"(b) generate list, batch_size={batch_size}" + (f", {autocast} autocast"
                                                            if autocast else "")
    return _timed_calls("b", label, batch_size, calls, sum(seconds), root, tokens)


def run_baselines(model_dir: str, devices: str, threads: int, wavs: list[bytes],
                  batch_size: int, root: int, autocasts: tuple[str, ...] = (),
                  max_new_tokens: int = 0) -> tuple[list[Measurement], dict[str, str]]:
    """(a) and (b) on one device with `threads` torch threads. Runs in a child process of the
    bench (pid `root`, whose process tree `CpuMeter` counts as ours). `max_new_tokens` > 0:
    the model is Fun-ASR-Nano, run with that token cap and its tokens counted."""
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    with contextlib.redirect_stdout(sys.stderr):  # FunASR prints; stdout is for the report
        import funasr
        import torch
        from funasr import AutoModel

        device = baseline_device(devices, torch.cuda.is_available())
        audio = [sf.read(io.BytesIO(w), dtype="float32")[0] for w in wavs]
        seconds = [len(a) / 16000 for a in audio]
        log.info("baselines: loading %s on %s with ncpu=%d", model_dir, device, threads)
        model = AutoModel(model=model_dir, device=device, ncpu=threads, disable_update=True,
                          disable_pbar=True, disable_log=True)
        if not max_new_tokens:
            rows = [_plain_loop(model, audio, seconds, root, GENERATE_OPTIONS),
                    _list_batch(model, audio, seconds, batch_size, root)]
            if device.startswith("cuda"):
                rows += [_list_batch(model, audio, seconds, batch_size, root, a)
                         for a in autocasts]
        else:
            rows = _nano_baselines(model, audio, seconds, batch_size, root, max_new_tokens)
    name = torch.cuda.get_device_name(device) if device.startswith("cuda") else _cpu_name()
    info = {"device": device, "device_name": name, "torch": torch.__version__,
            "funasr": funasr.__version__}
    return rows, info


def _nano_baselines(model: Any, audio: list[Any], seconds: list[float], batch_size: int,
                    root: int, max_new_tokens: int) -> list[Measurement]:
    """(a) and (b) for Fun-ASR-Nano: tensors in, the token cap, the timed part's tokens
    counted."""
    options = nano.generate_options(max_new_tokens)
    tensors = nano.as_inputs(audio)
    with nano.counted_tokens(model) as tokens:
        return [_plain_loop(model, tensors, seconds, root, options, tokens),
                _list_batch(model, tensors, seconds, batch_size, root, options=options,
                            tokens=tokens)]


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "cpu"


def measure_baselines(s: Settings, clips: list[Clip]) -> tuple[list[Measurement], dict[str, str]]:
    ctx = multiprocessing.get_context("spawn")  # a fresh process: no torch in ours
    with ProcessPoolExecutor(max_workers=1, mp_context=ctx) as pool:
        autocasts = tuple(d for d in s.dtypes if d != "fp32")
        return pool.submit(run_baselines, s.model, s.devices, s.threads,
                           [c.wav for c in clips], s.batch_size, os.getpid(),
                           autocasts, s.max_new_tokens if s.nano else 0).result()


def measure_level(s: Settings, variant: str, label: str, call: Callable[[Clip], object],
                  clips: list[Clip], concurrency: int, workers: int = 0,
                  tokens: Callable[[], float] | None = None) -> Measurement:
    """One timed closed-loop run of a server variant at one concurrency (`tokens`: a running
    count of the tokens it generated, for LLM decoders)."""
    requests = s.requests_at(concurrency)
    tokens_before = tokens() if tokens else 0.0
    meter = CpuMeter(os.getpid())
    started_at = time.time()
    wall, latencies = drive(call, clips, requests, concurrency, f"{label}, c={concurrency}")
    audio = sum(clips[i % len(clips)].seconds for i in range(requests))
    m = Measurement(variant, label, concurrency, workers, requests, audio, wall, latencies,
                    other_cpu=meter.foreign_share(),
                    tokens=round(tokens() - tokens_before) if tokens else 0,
                    started_at=started_at, ended_at=time.time())
    log.info("%s, c=%d: %.2f RTFx, p50 %.3f s (other processes used %.0f%% of the CPU)",
             label, concurrency, m.rtfx, m.percentile(50), 100 * m.other_cpu)
    return m


# --- (c): our service --------------------------------------------------------------------

def service_device_args(devices: str, workers: int, cpu_only: bool) -> list[str]:
    """Device flags for `workers` worker processes per device (the CPU being the device when
    there is no GPU)."""
    if cpu_only and not devices.startswith("sim:"):
        return ["--devices", "cpu", "--workers-per-device", str(workers)]
    return ["--devices", devices, "--workers-per-device", str(workers), "--cpu-fallback", "never"]


@contextmanager
def running_service(s: Settings, workers: int, cpu_only: bool, engine: str = "generate",
                    dtype: str = "fp32"
                    ) -> Iterator[tuple[AsrClient, Callable[[], float] | None]]:
    """`asr-scheduler serve` on a free loopback port with every worker ready."""
    per_worker = max(1, s.threads // workers)
    args = ["--model", s.model, "--worker-threads", str(per_worker), "--engine", engine,
            "--dtype", dtype, *service_device_args(s.devices, workers, cpu_only),
            # every request of the highest level in the queue at once, none refused
            "--max-queue", str(max(512, 2 * max(s.concurrency)))]
    if s.max_batch_size:
        args += ["--max-batch-size", str(s.max_batch_size)]
    if s.max_queue_delay_ms is not None:
        args += ["--max-queue-delay-ms", str(s.max_queue_delay_ms)]
    metrics_port = free_port() if s.nano else 0
    if s.nano:  # the same cap as the baselines; metrics on, to count the tokens
        args += ["--max-new-tokens", str(s.max_new_tokens), "--metrics-port", str(metrics_port)]
    with service_process(args, service_log(s, engine, dtype, workers),
                         START_TIMEOUT_S) as client:
        yield client, (lambda: nano.service_tokens(metrics_port)) if s.nano else None


def service_log(s: Settings, engine: str, dtype: str, workers: int) -> Path:
    return s.work_dir / f"service-{engine}-{dtype}-w{workers}.log"


def measure_service(s: Settings, clips: list[Clip], workers: int, cpu_only: bool,
                    engine: str = "generate", dtype: str = "fp32") -> list[Measurement]:
    """(c) (engine generate) or (e) (engine direct) at every concurrency."""
    variant = ENGINE_VARIANTS[engine]
    rows = []
    with running_service(s, workers, cpu_only, engine, dtype) as (client, tokens):
        def call(clip: Clip) -> None:
            client.recognize_bytes(clip.wav, timeout=600)

        warm = max(2 * workers, s.warmup_concurrency)
        drive(call, clips, WARMUP_CALLS * warm // 2, warm,
              f"({variant}) warm-up, {workers} worker(s)")
        label = (f"(c) ours, {workers} worker(s)/device" if variant == "c" else
                 f"(e) ours direct {dtype}, {workers} worker(s)/device")
        rows += [measure_level(s, variant, label, call, clips, c, workers, tokens)
                 for c in s.concurrency]
    return rows


# --- (d): funasr-server (FunASR's FastAPI server) ----------------------------------------

# Runs funasr-server's own main() with `ncpu` (which it has no flag for) given to AutoModel.
FUNASR_SERVER_SHIM = """
import sys
import funasr
ncpu = int(sys.argv.pop(1))
_init = funasr.AutoModel.__init__
def _with_ncpu(self, **kwargs):
    kwargs.setdefault("ncpu", ncpu)
    _init(self, **kwargs)
funasr.AutoModel.__init__ = _with_ncpu
from funasr.bin.server import main
sys.argv[0] = "funasr-server"
main()
"""


def funasr_server_unavailable() -> str:
    """Why funasr-server cannot run here ("" when it can)."""
    if importlib.util.find_spec("funasr.bin.server") is None:
        return "this funasr has no funasr.bin.server (funasr-server)"
    missing = [name for name, mods in (("fastapi", ("fastapi",)), ("uvicorn", ("uvicorn",)),
                                       ("python-multipart", ("python_multipart", "multipart")))
               if not any(importlib.util.find_spec(m) for m in mods)]
    if missing:
        return (f"funasr-server needs {', '.join(missing)}, not installed "
                f"(pip install {' '.join(missing)})")
    return ""


class HttpTranscriber:
    """POSTs a clip to funasr-server's OpenAI-style endpoint; one keep-alive connection per
    client thread."""

    def __init__(self, port: int) -> None:
        self.port = port
        self._local = threading.local()

    @staticmethod
    def _body(clip: Clip) -> tuple[bytes, str]:
        b = uuid.uuid4().hex
        parts = [f'--{b}\r\nContent-Disposition: form-data; name="{k}"\r\n\r\n{v}\r\n'.encode()
                 for k, v in (("model", "custom"), ("response_format", "json"))]
        parts.append(f'--{b}\r\nContent-Disposition: form-data; name="file"; '
                     f'filename="{clip.path.name}"\r\nContent-Type: audio/wav\r\n\r\n'.encode()
                     + clip.wav + b"\r\n")
        parts.append(f"--{b}--\r\n".encode())
        return b"".join(parts), f"multipart/form-data; boundary={b}"

    def _post(self, body: bytes, content_type: str) -> tuple[int, bytes]:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            conn = self._local.conn = http.client.HTTPConnection("127.0.0.1", self.port,
                                                                 timeout=900)
        conn.request("POST", "/v1/audio/transcriptions", body=body,
                     headers={"Content-Type": content_type})
        resp = conn.getresponse()
        return resp.status, resp.read()

    def __call__(self, clip: Clip) -> str:
        body, content_type = self._body(clip)
        try:
            status, data = self._post(body, content_type)
        except (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError):
            self._local.conn = None  # the server closed an idle keep-alive connection
            status, data = self._post(body, content_type)
        if status != 200:
            raise RuntimeError(f"funasr-server answered {status}: {data[:300]!r}")
        return str(json.loads(data)["text"])

    def healthy(self) -> bool:
        try:
            conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=2)
            conn.request("GET", "/health")
            ok = conn.getresponse().status == 200
            conn.close()
            return ok
        except OSError:
            return False


def measure_funasr_server(s: Settings, clips: list[Clip], device: str) -> list[Measurement]:
    label = "(d) funasr-server"
    reason = "skipped (--skip-funasr-server)" if s.skip_funasr_server else \
        nano.SERVER_NOTE if s.nano else funasr_server_unavailable()
    if reason:
        log.info("%s: n/a: %s", label, reason)
        return [Measurement("d", label, c, unavailable=reason) for c in s.concurrency]
    port = free_port()
    cmd = [sys.executable, "-c", FUNASR_SERVER_SHIM, str(s.threads), "--host", "127.0.0.1",
           "--port", str(port), "--device", device, "--model-path", s.model]
    log_path = s.work_dir / "funasr-server.log"
    log.info("(d) starting funasr-server (main() with ncpu=%d) on %s (log %s)", s.threads,
             device, log_path)
    with log_path.open("wb") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, cwd=s.work_dir)
    http_call = HttpTranscriber(port)
    rows = []
    try:
        wait_for(http_call.healthy, proc, START_TIMEOUT_S, "funasr-server")
        warm = s.warmup_concurrency
        drive(http_call, clips, WARMUP_CALLS * warm // 2, warm, "(d) warm-up")
        for c in s.concurrency:
            rows.append(measure_level(s, "d", label, http_call, clips, c))
    except Exception as exc:  # its failure is a finding to report, not a crash of the bench
        why = f"{type(exc).__name__}: {exc}".splitlines()[0][:200]
        log.warning("%s failed: %s\n%s", label, why, tail(log_path))
        done = {m.concurrency for m in rows}
        rows += [Measurement("d", label, c, unavailable=f"failed: {why}; see {log_path}")
                 for c in s.concurrency if c not in done]
    finally:
        stop_process(proc)
    return rows


# --- report --------------------------------------------------------------------------------

def target_lines(rows: list[Measurement], reference: Measurement) -> list[str]:
    """The CPU targets: ours at concurrency 8 >= 1.3x (a); at concurrency 1 >= 0.95x (a)."""
    ours = [m for m in rows if m.variant == "c" and not m.unavailable]
    lines = []
    c1 = [m for m in ours if m.concurrency == 1 and m.workers == 1]
    if c1:
        r = ratio(c1[0], reference)
        verdict = "met" if r >= TARGET_C1 else f"MISSED by {TARGET_C1 - r:.2f}x"
        lines.append(f"target: ours at concurrency 1 (1 worker) >= {TARGET_C1:.2f}x (a): "
                     f"{r:.2f}x -> {verdict}")
    c8 = [m for m in ours if m.concurrency == 8]
    if c8:
        best = max(c8, key=lambda m: m.rtfx)
        r = ratio(best, reference)
        verdict = "met" if r >= TARGET_C8 else f"MISSED by {TARGET_C8 - r:.2f}x"
        lines.append(f"target: ours at concurrency 8 >= {TARGET_C8:.2f}x (a): best {r:.2f}x "
                     f"({best.workers} worker(s)/device) -> {verdict}")
    return lines + direct_target_lines(rows, reference)


def direct_target_lines(rows: list[Measurement], reference: Measurement) -> list[str]:
    """Direct (e) at concurrency 8 >= list batching (b); at concurrency 1 >= 0.95x (a)."""
    direct = [m for m in rows if m.variant == "e" and not m.unavailable]
    lists = [m for m in rows if m.variant == "b" and not m.unavailable]
    lines = []
    c1 = [m for m in direct if m.concurrency == 1 and m.workers == 1]
    if c1:
        r = ratio(c1[0], reference)
        verdict = "met" if r >= TARGET_C1 else f"MISSED by {TARGET_C1 - r:.2f}x"
        lines.append(f"target: direct at concurrency 1 (1 worker) >= {TARGET_C1:.2f}x (a): "
                     f"{r:.2f}x -> {verdict}")
    c8 = [m for m in direct if m.concurrency == 8]
    if c8 and lists:
        best, fastest_list = max(c8, key=lambda m: m.rtfx), max(lists, key=lambda m: m.rtfx)
        r = best.rtfx / fastest_list.rtfx if fastest_list.rtfx > 0 else 0.0
        verdict = "met" if r >= 1.0 else f"MISSED by {1.0 - r:.2f}x"
        lines.append(f"target: direct at concurrency 8 >= (b) list batching: best {r:.2f}x of "
                     f"{fastest_list.label} ({best.workers} worker(s)/device) -> {verdict}")
    return lines


def report(s: Settings, rows: list[Measurement], info: dict[str, str], command: str,
           started_load: float) -> tuple[str, dict[str, Any]]:
    reference = next(m for m in rows if m.variant == "a")
    meta = {"date": datetime.date.today().isoformat(), "command": command,
            "host_cores": os.cpu_count(), "threads_per_variant": s.threads,
            "model": s.model, "clips": s.clips, "clip_seconds": s.clip_seconds,
            "load_avg_at_start": round(started_load, 2), **info}
    head = [f"date {meta['date']}; device {info['device']} ({info['device_name']}); "
            f"{os.cpu_count()} cores, {s.threads} torch threads per variant; torch "
            f"{info['torch']}, funasr {info['funasr']}",
            f"model {s.model}; {s.clips} clips of {s.clip_seconds:g} s",
            f"command: {command}", ""]
    if s.repeat > 1:
        head.insert(-1, f"{s.repeat} rounds in fresh processes; each row is its upper-median "
                        "round (--json 'runs' lists every round's RTFx)")
    noisy = max((m.other_cpu for m in rows), default=0.0)
    if noisy > NOISY_SHARE:
        head.insert(0, f"WARNING: other processes used up to {noisy:.0%} of the CPU during a "
                       "measurement (column 'other CPU'); those rows are noisy")
    exact = [f"{k.removeprefix('exact_argmax_')}: {v}" for k, v in info.items()
             if k.startswith("exact_argmax_")]
    if exact:
        head.insert(-1, "bf16/fp16 direct: output-layer rows recomputed in fp32 (exact argmax; "
                        "random weights' flat logits put nearly all in doubt): "
                        + "; ".join(exact))
    text = "\n".join([*head, format_table(rows, reference), "", *target_lines(rows, reference)])
    data = {"meta": meta, "results": [m.to_dict(reference) for m in rows]}
    return text, data


def run_once(s: Settings, clips: list[Clip]) -> tuple[list[Measurement], dict[str, str]]:
    """Every variant once, each in fresh processes, one after another."""
    rows, info = measure_baselines(s, clips)
    cpu_only = info["device"] == "cpu"
    if "generate" in s.engines:
        for workers in s.workers:
            rows += measure_service(s, clips, workers, cpu_only)
    rows += measure_funasr_server(s, clips, info["device"])
    if "direct" in s.engines:
        for dtype in s.dtypes:
            for workers in s.workers:
                rows += measure_service(s, clips, workers, cpu_only, "direct", dtype)
                if dtype != "fp32":
                    info[f"exact_argmax_{dtype}_w{workers}"] = exact_argmax_note(
                        service_log(s, "direct", dtype, workers))
    return rows, info


EXACT_ARGMAX = re.compile(r"(\d+) of (\d+) output-layer rows recomputed in fp32")


def exact_argmax_note(log_path: Path) -> str:
    """What share of the output layer's rows a bf16/fp16 `direct` service recomputed in fp32
    (rows whose best two logits lay within the rounding's bound: nearly all of them on random
    weights, whose logits are nearly flat; fewer on trained ones), from a worker's last count
    in the service log."""
    try:
        found = EXACT_ARGMAX.findall(log_path.read_text(errors="replace"))
    except OSError:
        found = []
    if not found:
        return "no count in the service log"
    done, rows = (int(v) for v in found[-1])
    return f"{done} of {rows} rows ({done / max(rows, 1):.0%})"


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", stream=sys.stderr)
    started_load = load_average()
    args = sys.argv[1:] if argv is None else argv
    s = parse_args(args)
    command = shlex.join(["python", "bench/throughput.py", *args])
    log.info("writing %d clips of %g s to %s", s.clips, s.clip_seconds, s.work_dir)
    clips = make_clips(s.clips, s.clip_seconds, s.work_dir / "clips")
    runs: list[list[Measurement]] = []
    for r in range(s.repeat):
        if s.repeat > 1:
            log.info("round %d of %d", r + 1, s.repeat)
        rows, info = run_once(s, clips)
        runs.append(rows)
    rows = keep_median(runs)
    text, data = report(s, rows, info, command, started_load)
    print(text)
    if s.json:
        s.json.parent.mkdir(parents=True, exist_ok=True)
        s.json.write_text(json.dumps(data, indent=2) + "\n")
        log.info("results written to %s", s.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
