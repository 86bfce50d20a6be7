"""The scheduler's configuration: one typed dataclass, built from flags and ``ASR_*`` env vars.

Every field of `ServeConfig` is a `serve` flag (``--cpu-fallback``) and an environment variable
(``ASR_CPU_FALLBACK``). Precedence: flag, then environment, then the default. Nothing reads the
environment at import time; `ServeConfig.from_args` is the one place that does.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

CPU_FALLBACK_POLICIES = ("never", "overflow", "always-available")
LOG_FORMATS = ("text", "json")
DTYPES = ("fp32", "bf16", "fp16")


def _default_cache_dir() -> str:
    return str(Path.home() / ".cache" / "asr-scheduler")


def _f(default: Any, help: str, **kw: Any) -> Any:
    """A config field with its help text (shown by --help and in the README)."""
    if callable(default):
        return field(default_factory=default, metadata={"help": help, **kw})
    return field(default=default, metadata={"help": help, **kw})


@dataclass
class ServeConfig:
    """Settings of `asr-scheduler serve`."""

    model: str = _f("demo", "FunASR model: a local model directory, a hub id, or 'demo' "
                    "(builds and serves the offline sensevoice-tiny model)")
    devices: str = _f("auto", "Devices: auto | cpu | cuda:0,cuda:1 | sim:N (N simulated GPUs "
                      "whose workers run on CPU)")
    host: str = _f("[::]", "Address to listen on")
    port: int = _f(50051, "Public gRPC port (0 picks a free one)")
    metrics_port: int = _f(9400, "Prometheus /metrics HTTP port (0 disables)")
    cpu_fallback: str = _f("overflow", "CPU fallback policy: never | overflow (CPU worker takes "
                           "work no GPU can) | always-available (CPU worker competes with GPUs)",
                           choices=CPU_FALLBACK_POLICIES)
    workers_per_device: int = _f(1, "Worker processes per GPU, or per CPU when the CPU is the "
                                 "device (more for small models)")
    memory_floor_fraction: float = _f(0.10, "A GPU whose free memory falls below this fraction "
                                      "of its total takes no new work (0.10: over 90% used)")
    max_queue: int = _f(512, "Requests accepted but not yet finished before RESOURCE_EXHAUSTED")
    queue_timeout_s: float = _f(30.0, "How long a request waits for a device before "
                                "RESOURCE_EXHAUSTED")
    max_batch_size: int = _f(32, "Largest batch a worker runs")
    max_batch_audio_s: float = _f(600.0, "Most audio seconds in one batch")
    cpu_max_batch_size: int = _f(4, "Largest batch on a CPU worker (big padded batches of long "
                                 "segments run up to 3x slower on CPU; see BENCHMARKS.md)")
    max_queue_delay_ms: float = _f(0.0, "Longest a worker holds a request to grow a batch "
                                   "(0: none; batches still form from requests that arrive "
                                   "while the previous batch runs)")
    cache_clear_every: int = _f(500, "Clear a GPU worker's allocator cache after this many "
                                "requests (0: never; the WebUI clears every 5 files)")
    cache_clear_margin_mib: int = _f(2048, "Clear when reserved exceeds allocated GPU memory by "
                                     "more than this (0: never)")
    dtype: str = _f("fp32", "Inference precision on CUDA: fp32 | bf16 | fp16 (autocast)",
                    choices=DTYPES)
    vad_model: str = _f("auto", "FSMN-VAD model directory for long audio; 'auto' builds the "
                        "real FSMN-VAD into the cache; 'none' disables segmentation")
    vad_workers: int = _f(0, "VAD worker processes on CPU (0: a quarter of the cores, 1-4)")
    max_segment_ms: int = _f(30000, "Longest VAD segment, ms (requests may ask for another)")
    stream_buffer_mib: int = _f(8, "A stream up to this size is decoded whole; longer streams "
                                "are decoded and segmented as they arrive")
    max_unary_bytes: int = _f(64 * 1024 * 1024, "Largest audio in one Recognize message; "
                              "bigger files must use StreamingRecognize")
    max_stream_bytes: int = _f(2 * 1024**3, "Largest audio accepted on one stream")
    worker_start_timeout_s: float = _f(600.0, "Time a worker may take to load its model")
    heartbeat_interval_s: float = _f(2.0, "Seconds between worker liveness checks")
    heartbeat_timeout_s: float = _f(20.0, "A worker silent this long is killed and replaced")
    max_attempts: int = _f(4, "Times a request is retried on another worker after worker loss")
    sim_memory_gib: float = _f(16.0, "Memory of each simulated GPU (devices sim:N)")
    worker_threads: int = _f(0, "torch CPU threads per worker (0: cores / workers)")
    cache_dir: str = _f(_default_cache_dir, "Where built demo models and wheels are cached")
    runtime_dir: str = _f("", "Directory for worker sockets (default: a fresh temp dir)")
    tls_cert: str = _f("", "PEM certificate: turns TLS on (with --tls-key)")
    tls_key: str = _f("", "PEM private key of --tls-cert")
    tls_client_ca: str = _f("", "PEM CA: require client certificates it signed (mTLS)")
    auth_token_file: str = _f("", "File holding the bearer token Recognizer calls must carry")
    admin_token_file: str = _f("", "File holding the bearer token Admin calls must carry "
                               "(default: the auth token)")
    shutdown_grace_s: float = _f(30.0, "On SIGTERM: seconds to finish accepted requests and "
                                 "streams (health NOT_SERVING, new calls UNAVAILABLE) before "
                                 "the rest is cut and the process exits; a second signal "
                                 "stops at once")
    log_level: str = _f("INFO", "Logging level")
    log_format: str = _f("text", "Log format: text | json", choices=LOG_FORMATS)

    def __post_init__(self) -> None:
        if self.cpu_fallback not in CPU_FALLBACK_POLICIES:
            raise ValueError(f"cpu_fallback={self.cpu_fallback!r}: expected one of "
                             f"{', '.join(CPU_FALLBACK_POLICIES)}")
        if self.workers_per_device < 1:
            raise ValueError(f"workers_per_device={self.workers_per_device}: must be >= 1")
        if not 0.0 <= self.memory_floor_fraction < 1.0:
            raise ValueError(f"memory_floor_fraction={self.memory_floor_fraction}: must be in "
                             "[0, 1)")
        if self.shutdown_grace_s < 0:
            raise ValueError(f"shutdown_grace_s={self.shutdown_grace_s}: must be >= 0")
        if self.max_queue < 1 or self.max_batch_size < 1:
            raise ValueError("max_queue and max_batch_size must be >= 1")

    @staticmethod
    def env_name(name: str) -> str:
        return "ASR_" + name.upper()

    @classmethod
    def add_arguments(cls, parser: argparse.ArgumentParser) -> None:
        """Add one flag per field; defaults stay None so env and defaults can fill in later."""
        for f in dataclasses.fields(cls):
            flag = "--" + f.name.replace("_", "-")
            kind = _field_type(f)
            text = f"{f.metadata['help']} (env {cls.env_name(f.name)})".replace("%", "%%")
            parser.add_argument(flag, dest=f.name, type=kind, default=None,
                                choices=f.metadata.get("choices"), help=text)

    @classmethod
    def from_args(cls, args: argparse.Namespace | None = None,
                  environ: Mapping[str, str] | None = None) -> ServeConfig:
        """Flag, else ``ASR_<NAME>`` from the environment, else the default."""
        environ = os.environ if environ is None else environ
        values: dict[str, Any] = {}
        for f in dataclasses.fields(cls):
            given = getattr(args, f.name, None) if args is not None else None
            if given is not None:
                values[f.name] = given
            elif cls.env_name(f.name) in environ:
                raw = environ[cls.env_name(f.name)]
                try:
                    values[f.name] = _field_type(f)(raw)
                except ValueError as exc:
                    raise ValueError(f"{cls.env_name(f.name)}={raw!r}: {exc}") from exc
        return cls(**values)

    @classmethod
    def parse(cls, argv: Sequence[str], environ: Mapping[str, str] | None = None) -> ServeConfig:
        parser = argparse.ArgumentParser(prog="asr-scheduler serve")
        cls.add_arguments(parser)
        return cls.from_args(parser.parse_args(list(argv)), environ)


def _field_type(f: dataclasses.Field[Any]) -> type:
    name = f.type if isinstance(f.type, str) else getattr(f.type, "__name__", "str")
    return {"int": int, "float": float, "str": str}[name]
