"""The scheduler's configuration: one typed, validated `ServeConfig` (pydantic-settings).

Every field is a `serve` flag (``--cpu-fallback``), an environment variable
(``ASR_CPU_FALLBACK``) and a key of the YAML file named by ``--config`` / ``ASR_CONFIG``
(``cpu_fallback``). Precedence: flag, then environment, then the file, then the default. Types,
ranges and choices are checked by the model itself, so a value is refused by the same rule
wherever it comes from; `scheduler.config_sources` collects the values and names a refused one
as the user wrote it. Nothing reads the environment at import time, and ``ServeConfig(**kw)``
reads nothing but its arguments.
"""

from __future__ import annotations

import argparse
import logging
import os
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import Field, field_validator, model_validator
from pydantic_core import PydanticCustomError
from pydantic_settings import BaseSettings, NoDecode, PydanticBaseSettingsSource, SettingsConfigDict

from protos.common.event_loop import EVENT_LOOPS
from protos.common.wire import DTYPES, END_SILENCE_RANGE_MS, MAX_SEGMENT_MS_RANGE, end_silence_ok
from scheduler.config_sources import ConfigError, add_arguments, build_config

CPU_FALLBACK_POLICIES = ("never", "overflow", "always-available")
LOG_FORMATS = ("text", "json")
__all__ = ["CPU_FALLBACK_POLICIES", "DTYPES", "LOG_FORMATS", "ConfigError", "ServeConfig"]
MAX_PORT = 65535
# The gRPC transport limit is twice the unary limit and must fit gRPC's int32 option.
MAX_UNARY_BYTES = (2**31 - 1) // 2
_DEVICES = re.compile(r"auto|cpu|sim:[1-9]\d*|cuda:\d+(\s*,\s*cuda:\d+)*", re.IGNORECASE)
_LEVELS = ("CRITICAL", "ERROR", "WARNING", "INFO", "DEBUG")


def _default_cache_dir() -> str:
    return str(Path.home() / ".cache" / "asr-scheduler")


def _cross(fields: tuple[str, ...], rule: str) -> PydanticCustomError:
    """An error about several settings together; `fields` lets the CLI name each one."""
    return PydanticCustomError("cross_field", rule, {"fields": fields})


class ServeConfig(BaseSettings):
    """Settings of `asr-scheduler serve`."""

    model_config = SettingsConfigDict(env_prefix="ASR_", env_ignore_empty=True, extra="forbid",
                                      validate_assignment=True, allow_inf_nan=False)

    model: Annotated[list[str], NoDecode] = Field(
        default_factory=lambda: ["demo"], min_length=1,
        description="FunASR model: a local model directory, a hub id, or 'demo' (builds and "
        "serves the offline sensevoice-tiny model); repeat the flag (or separate entries by "
        "commas or spaces in ASR_MODEL) for several models, each NAME=DIR")
    devices: str = Field("auto", description="Devices: auto | cpu | cuda:0,cuda:1 | sim:N (N "
                         "simulated GPUs whose workers run on CPU)")
    host: str = Field("[::]", min_length=1, description="Address to listen on")
    port: int = Field(50051, ge=0, le=MAX_PORT, description="Public gRPC port (0 picks a free "
                      "one)")
    frontends: int = Field(0, ge=0, le=64, description="Front-end processes on the public port "
                           "(0: the scheduler serves it itself); N >= 1: N processes share "
                           "the port (SO_REUSEPORT), receive the calls and relay them to the "
                           "scheduler, which then only dispatches: for machines where one "
                           "process's gRPC receiving is the limit")
    metrics_port: int = Field(9400, ge=0, le=MAX_PORT, description="Prometheus /metrics HTTP "
                              "port (0 disables); must differ from --port")
    metrics_host: str = Field("", description="Address /metrics listens on (default: the "
                              "same as --host; e.g. 127.0.0.1 to keep it on this machine, or "
                              "the pod IP in Kubernetes)")
    cpu_fallback: Literal[CPU_FALLBACK_POLICIES] = Field(  # type: ignore[valid-type]
        "overflow", description="CPU fallback policy: never | overflow (CPU worker takes work "
        "no GPU can) | always-available (CPU worker competes with GPUs)")
    workers_per_device: int = Field(1, ge=1, description="Worker processes per GPU, or per CPU "
                                    "when the CPU is the device (more for small models)")
    memory_floor_fraction: float = Field(0.10, ge=0.0, lt=1.0, description="A GPU whose free "
                                         "memory falls below this fraction of its total takes "
                                         "no new work (0.10: over 90% used); 0 <= f < 1")
    max_queue: int = Field(512, ge=1, description="Requests accepted but not yet finished "
                           "before RESOURCE_EXHAUSTED")
    queue_timeout_s: float = Field(30.0, gt=0, description="How long a request waits for a "
                                   "device before RESOURCE_EXHAUSTED")
    max_batch_size: int = Field(32, ge=1, description="Largest batch a worker runs")
    max_batch_audio_s: float = Field(600.0, gt=0, description="Most audio seconds in one batch")
    cpu_max_batch_size: int = Field(4, ge=1, description="Largest batch on a CPU worker (big "
                                    "padded batches of long segments run up to 3x slower on "
                                    "CPU; see BENCHMARKS.md)")
    max_queue_delay_ms: float = Field(0.0, ge=0, description="Longest a worker holds a request "
                                      "to grow a batch (0: none; batches still form from "
                                      "requests that arrive while the previous batch runs)")
    cache_clear_every: int = Field(500, ge=0, description="Clear a GPU worker's allocator cache "
                                   "after this many requests (0: never; the WebUI clears every "
                                   "5 files)")
    cache_clear_margin_mib: int = Field(2048, ge=0, description="Clear when reserved exceeds "
                                        "allocated GPU memory by more than this (0: never)")
    engine: str = Field("auto", pattern=r"^[a-z][a-z0-9_-]{0,31}$", description="Recognition "
                        "engine: auto (direct for SenseVoice and offline Paraformer, stepwise "
                        "for Fun-ASR-Nano, generate for every other model) | generate (FunASR "
                        "AutoModel.generate) | direct (our batched device pipeline) | stepwise "
                        "(Fun-ASR-Nano: step-wise decoding of a running set) | vllm "
                        "(Fun-ASR-Nano's decoder on vLLM; CUDA and the vllm package needed, "
                        "else the worker stops with a "
                        "message) | identity (no model: measures the service's own cost); per "
                        "model: --model NAME=DIR?engine=E")
    dtype: Literal[DTYPES] = Field(  # type: ignore[valid-type]
        "fp32", description="Inference precision on CUDA: fp32 | bf16 | fp16 (autocast)")
    exact_argmax: Literal["on", "off"] = Field(
        "on", description="With --dtype bf16|fp16 and the direct engine: on (output-layer "
        "rows whose best two logits lie within the rounding are recomputed in fp32, so "
        "decoding takes fp32's argmax there) | off (plain autocast, as FunASR's)")
    max_new_tokens: int = Field(512, ge=1, le=32768, description="Most tokens an LLM decoder "
                                "(Fun-ASR-Nano) generates per segment; requests may ask for "
                                "fewer")
    vad_model: str = Field("auto", min_length=1, description="FSMN-VAD model directory for "
                           "long audio; 'auto' builds the real FSMN-VAD into the cache; 'none' "
                           "disables segmentation")
    vad_workers: int = Field(0, ge=0, description="VAD worker processes on CPU (0: a quarter of "
                             "the cores, at least 2 where there are 2 cores, at most 4)")
    vad_device: Literal["cpu", "gpu"] = Field(
        "cpu", description="Where the VAD workers run FSMN-VAD's fbank and network: cpu | gpu "
        "(spread over the recognition GPUs, a small CUDA context each; LFR, CMVN and the "
        "frame rules stay on their own CPU core; cpu where no CUDA GPU serves)")
    vad_fbank: Literal["torch", "kaldi"] = Field(
        "torch", description="The VAD's log-mel features: torch (our fbank, on the VAD's "
        "device; ~40 % of FSMN-VAD's CPU time saved) | kaldi (FunASR's own kaldi-native-fbank, "
        "bit for bit; the segments were equal on every test recording either way)")
    live_fbank: Literal["torch", "kaldi"] = Field(
        "torch", description="Live streams' decoder features: torch (our fbank, the full "
        "chunks of a tick's streams in one batch on the worker's device) | kaldi (FunASR's "
        "own Kaldi fbank per stream and chunk, bit for bit; the finals were equal on "
        "every test recording either way)")
    vad_split_s: int = Field(0, ge=0, description="Parallel VAD of one long file: audio "
                             "longer than this (plus a 60 s chunk) is cut here, every this "
                             "many seconds, into pieces segmented at once on the VAD workers "
                             "and joined so the segments equal one pass; a multiple of 60; "
                             "0: one VAD session per file")
    max_segment_ms: int = Field(30000, ge=MAX_SEGMENT_MS_RANGE[0], le=MAX_SEGMENT_MS_RANGE[1],
                                description="Longest VAD segment, ms (requests may ask for "
                                "another)")
    stream_buffer_mib: int = Field(8, ge=0, description="A stream up to this size is decoded "
                                   "whole; longer streams are decoded and segmented as they "
                                   "arrive")
    max_live_streams: int = Field(256, ge=1, description="Live-mode streams one device holds "
                                  "at most (more get RESOURCE_EXHAUSTED)")
    live_tick_ms: float = Field(20.0, ge=0, le=100, description="Live workers start a tick "
                                "(one step of every stream with audio waiting, batched) at "
                                "most this often, so that the chunks of streams arriving "
                                "meanwhile share it (0: a tick whenever a step waits)")
    live_input_linger_ms: float = Field(10.0, ge=0, le=50, description="With front ends: a "
                                        "live stream's audio waits up to this long on a front "
                                        "end's link to the scheduler for other streams', so "
                                        "that one message carries many (0: sent at once)")
    live_end_silence_ms: int = Field(0, ge=0, le=END_SILENCE_RANGE_MS[1], description="Live "
                                     "mode: silence after speech that ends an utterance for "
                                     "streams whose request does not set end_silence_ms (0: "
                                     "FSMN-VAD's own schedule, ~2 s)")
    max_unary_bytes: int = Field(64 * 1024 * 1024, gt=0, le=MAX_UNARY_BYTES,
                                 description="Largest audio in one Recognize message; bigger "
                                 "files must use StreamingRecognize")
    max_stream_bytes: int = Field(2 * 1024**3, gt=0, description="Largest audio accepted on "
                                  "one stream")
    max_streams: int = Field(1000, ge=1, description="Open StreamingRecognize streams in "
                             "total; more get RESOURCE_EXHAUSTED")
    max_streams_per_client: int = Field(100, ge=1, description="Open streams per client (its "
                                        "bearer token, else its address); more get "
                                        "RESOURCE_EXHAUSTED")
    stream_idle_timeout_s: float = Field(60.0, gt=0, le=3600, description="A stream that sends "
                                         "no message for this long is closed "
                                         "(DEADLINE_EXCEEDED)")
    max_stream_buffers_mib: int = Field(512, ge=0, description="Bytes all stream buffers may "
                                        "hold in memory together; beyond, streams spool to "
                                        "disk at once")
    max_decoded_audio_mib: int = Field(1024, ge=1, description="Decoded audio the scheduler "
                                       "holds for recognition units in flight, all requests "
                                       "together; beyond, new units wait (then "
                                       "RESOURCE_EXHAUSTED)")
    worker_start_timeout_s: float = Field(600.0, gt=0, description="Time a worker may take to "
                                          "load its model")
    heartbeat_interval_s: float = Field(2.0, gt=0, description="Seconds between worker "
                                        "liveness checks")
    heartbeat_timeout_s: float = Field(20.0, gt=0, description="A worker silent this long is "
                                       "killed and replaced; must exceed the interval")
    max_attempts: int = Field(4, ge=1, description="Times a request is tried, on another worker "
                              "after a worker loss (1: no retry)")
    sim_memory_gib: float = Field(16.0, gt=0, description="Memory of each simulated GPU "
                                  "(devices sim:N)")
    worker_threads: int = Field(0, ge=0, description="torch CPU threads per worker (0: cores / "
                                "workers)")
    cache_dir: str = Field(default_factory=_default_cache_dir, min_length=1,
                           description="Where built demo models and wheels are cached")
    runtime_dir: str = Field("", description="Directory for worker sockets (default: a fresh "
                             "temp dir)")
    pcm_arena_mib: int = Field(64, ge=0, le=65536, description="Shared memory per recognition "
                               "or VAD worker for handing it audio without copying it through gRPC "
                               "(only what is in flight is touched); 0: audio goes in the "
                               "message")
    tls_cert: str = Field("", description="PEM certificate: turns TLS on (with --tls-key)")
    tls_key: str = Field("", description="PEM private key of --tls-cert")
    tls_client_ca: str = Field("", description="PEM CA: require client certificates it signed "
                               "(mTLS; needs --tls-cert)")
    auth_token_file: str = Field("", description="File holding the bearer token Recognizer "
                                 "calls must carry")
    admin_token_file: str = Field("", description="File holding the bearer token Admin calls "
                                  "must carry (default: the auth token)")
    shutdown_grace_s: float = Field(30.0, ge=0, description="On SIGTERM: seconds to finish "
                                    "accepted requests and streams (health NOT_SERVING, new "
                                    "calls UNAVAILABLE) before the rest is cut and the process "
                                    "exits; a second signal stops at once")
    log_level: str = Field("INFO", description="Logging level: " + " | ".join(_LEVELS)
                           + " (any case)")
    log_format: Literal[LOG_FORMATS] = Field(  # type: ignore[valid-type]
        "text", description="Log format: text | json (one JSON object a line)")
    event_loop: Literal[EVENT_LOOPS] = Field(  # type: ignore[valid-type]
        "auto", description="Event loop of the scheduler, its workers and front ends: auto "
        "(uvloop when installed) | uvloop | asyncio")

    @classmethod
    def settings_customise_sources(
            cls, settings_cls: type[BaseSettings], init_settings: PydanticBaseSettingsSource,
            env_settings: PydanticBaseSettingsSource,
            dotenv_settings: PydanticBaseSettingsSource,
            file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        """Keyword arguments only: flags, env and file are merged by `from_args`."""
        return (init_settings,)

    @field_validator("model", mode="before")
    @classmethod
    def _one_model_is_a_list(cls, value: Any) -> Any:
        if isinstance(value, (str, os.PathLike)):
            return [os.fspath(value)]
        return value

    @field_validator("model")
    @classmethod
    def _models_not_blank(cls, value: list[str]) -> list[str]:
        value = [v.strip() for v in value]
        if not all(value):
            raise ValueError("a model entry is empty")
        return value

    @field_validator("devices")
    @classmethod
    def _devices_spec(cls, value: str) -> str:
        if not _DEVICES.fullmatch(value.strip()):
            raise ValueError("expected auto, cpu, sim:N (N >= 1) or a list like cuda:0,cuda:1")
        return value.strip()

    @field_validator("vad_split_s")
    @classmethod
    def _whole_vad_chunks(cls, value: int) -> int:
        if value % 60:
            raise ValueError("expected a multiple of 60 (the VAD chunk, seconds), or 0 (off)")
        return value

    @field_validator("live_end_silence_ms")
    @classmethod
    def _end_silence(cls, value: int) -> int:
        if not end_silence_ok(value):
            low, high = END_SILENCE_RANGE_MS
            raise ValueError(f"expected 0 (the VAD's own schedule) or {low}-{high}")
        return value

    @field_validator("log_level")
    @classmethod
    def _logging_level(cls, value: str) -> str:
        level = value.strip().upper()
        if not isinstance(logging.getLevelName(level), int):
            raise ValueError(f"expected a logging level: {', '.join(_LEVELS)} (any case)")
        return level

    @model_validator(mode="after")
    def _settings_agree(self) -> ServeConfig:
        if self.metrics_port and self.metrics_port == self.port:
            raise _cross(("port", "metrics_port"), "the gRPC port and the metrics port are "
                         "equal; give them different ports (or metrics port 0: off)")
        if self.heartbeat_timeout_s <= self.heartbeat_interval_s:
            raise _cross(("heartbeat_timeout_s", "heartbeat_interval_s"), "the heartbeat "
                         "timeout must be longer than the heartbeat interval")
        if bool(self.tls_cert) != bool(self.tls_key):
            raise _cross(("tls_cert", "tls_key"), "TLS needs both a certificate and its key")
        if self.tls_client_ca and not self.tls_cert:
            raise _cross(("tls_client_ca", "tls_cert"), "a client CA (mTLS) needs TLS: give "
                         "a certificate and key too")
        return self

    @staticmethod
    def env_name(name: str) -> str:
        return "ASR_" + name.upper()

    @staticmethod
    def flag_name(name: str) -> str:
        return "--" + name.replace("_", "-")

    @classmethod
    def add_arguments(cls, parser: argparse.ArgumentParser) -> None:
        """One flag per field, plus ``--config FILE``; defaults stay None so that env, file and
        defaults fill in later, and values stay strings so that the model checks them all."""
        add_arguments(cls, parser)

    @classmethod
    def from_args(cls, args: argparse.Namespace | None = None,
                  environ: Mapping[str, str] | None = None) -> ServeConfig:
        """Flag, else ``ASR_<NAME>`` from `environ` (default: the process environment), else the
        YAML file, else the default. Raises `ConfigError` naming each refused setting."""
        return build_config(cls, args, os.environ if environ is None else environ)

    @classmethod
    def parse(cls, argv: Sequence[str], environ: Mapping[str, str] | None = None) -> ServeConfig:
        parser = argparse.ArgumentParser(prog="asr-scheduler serve")
        cls.add_arguments(parser)
        return cls.from_args(parser.parse_args(list(argv)), environ)
