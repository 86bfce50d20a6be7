"""What a transcription asks for (`TranscribeOptions`), how calls are retried (`RetryPolicy`),
and how the channel is built (`ChannelOptions`: address, TLS/mTLS, token, keepalive, sizes).
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc

from protos.asr.v1 import asr_pb2 as pb

CHUNK_BYTES = 256 * 1024
RAW_SUFFIXES = (".pcm", ".raw", ".s16le")
VAD_MODES = {"auto": pb.VAD_AUTO, "always": pb.VAD_ALWAYS, "never": pb.VAD_NEVER}


@dataclass(frozen=True)
class TranscribeOptions:
    """Options of one transcription (every field maps to `asr.v1.RecognitionConfig`).

    Attributes:
        language: "auto" or a code the model takes ("zh", "en", ...).
        enable_itn: inverse text normalisation (numbers, punctuation) where supported.
        hotwords: words to bias recognition (models that support them).
        model: name of a served model (see `status().models`); "" for the default model.
        raw_pcm: the audio is headerless 16-bit PCM; None decides by the file suffix
            (.pcm, .raw, .s16le).
        sample_rate: sample rate of raw PCM in Hz (required when raw).
        channels: channel count of raw PCM.
        vad_mode: "auto", "always" or "never" (voice activity segmentation).
        max_segment_ms: longest VAD segment in ms (0: the server's default).
        request_id: id echoed in results and server logs ("" lets the server make one).
        max_new_tokens: cap on the tokens an LLM-based model (Fun-ASR-Nano) generates per
            segment (0: the server's cap, default 512; a larger value is lowered to it).
    """

    language: str = "auto"
    enable_itn: bool = False
    hotwords: tuple[str, ...] | list[str] = ()
    model: str = ""
    raw_pcm: bool | None = None
    sample_rate: int = 0
    channels: int = 1
    vad_mode: str = "auto"
    max_segment_ms: int = 0
    request_id: str = ""
    max_new_tokens: int = 0

    def to_config(self, name: str = "") -> pb.RecognitionConfig:
        """The `RecognitionConfig` for audio named `name` (a path, or "" for bytes/streams)."""
        if self.vad_mode not in VAD_MODES:
            raise ValueError(f"vad_mode must be one of {sorted(VAD_MODES)}, not {self.vad_mode!r}")
        cfg = pb.RecognitionConfig(
            language=self.language, enable_itn=self.enable_itn, hotwords=list(self.hotwords),
            model=self.model, vad_mode=VAD_MODES[self.vad_mode],
            max_segment_ms=self.max_segment_ms, request_id=self.request_id,
            enable_segment_timestamps=True, max_new_tokens=self.max_new_tokens)
        raw = self.raw_pcm if self.raw_pcm is not None else \
            Path(name).suffix.lower() in RAW_SUFFIXES
        if raw:
            cfg.encoding = pb.LINEAR16
            cfg.sample_rate_hertz = self.sample_rate
            cfg.audio_channel_count = self.channels
        return cfg


# CANCELLED too: the client never cancels a call it retries, so a CANCELLED answer comes from a
# server that stopped before finishing it (a drain cut short); transcription is idempotent.
RETRYABLE = frozenset({grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.RESOURCE_EXHAUSTED,
                       grpc.StatusCode.CANCELLED})


@dataclass(frozen=True)
class RetryPolicy:
    """Retries of idempotent calls with exponential backoff and jitter.

    A call failing with one of `codes` is tried again, at most `max_attempts` times in all,
    after `initial_backoff_s * multiplier**(n-1)` seconds (capped at `max_backoff_s`), each
    delay spread by +-`jitter` (a fraction) so that many clients do not retry in lockstep.
    When the server sends a `retry-after-s` trailer (a full queue does), the client waits at
    least that long. `RetryPolicy(max_attempts=1)` turns retries off.
    """

    max_attempts: int = 5
    initial_backoff_s: float = 0.5
    max_backoff_s: float = 10.0
    multiplier: float = 2.0
    jitter: float = 0.2
    codes: frozenset[grpc.StatusCode] = field(default_factory=lambda: RETRYABLE)

    def should_retry(self, code: grpc.StatusCode, attempt: int) -> bool:
        """Whether attempt number `attempt` (1-based) that failed with `code` is retried."""
        return code in self.codes and attempt < self.max_attempts

    def delay_s(self, attempt: int, retry_after_s: float | None = None,
                rng: random.Random | None = None) -> float:
        """Seconds to wait after failed attempt number `attempt` (1-based)."""
        base = min(self.max_backoff_s, self.initial_backoff_s * self.multiplier ** (attempt - 1))
        spread = (rng or random).uniform(-self.jitter, self.jitter)
        delay = base * (1.0 + spread)
        if retry_after_s is not None:
            delay = max(delay, retry_after_s * (1.0 + abs(spread)))
        return max(0.0, delay)


    def next_delay(self, code: grpc.StatusCode, attempt: int, retry_after_s: float | None,
                   deadline: float | None, now: float, replayable: bool = True) -> float | None:
        """Seconds to wait before the next attempt, or None to give up: the code is not
        retryable, the attempts are spent, the source cannot be read again, or the wait
        would pass the `deadline` (a `time.monotonic()` value, None for no deadline)."""
        if not (replayable and self.should_retry(code, attempt)):
            return None
        delay = self.delay_s(attempt, retry_after_s)
        if deadline is not None and now + delay >= deadline:
            return None
        return delay


NO_RETRY = RetryPolicy(max_attempts=1)


LOAD_BALANCING = ("pick_first", "round_robin")


def service_config(load_balancing: str = "pick_first") -> str:
    """The channel's service config: the balancing policy, and for round_robin client-side
    health checks (a replica whose `asr.v1.Recognizer` health is not SERVING, e.g. one that
    is draining, gets no calls)."""
    if load_balancing not in LOAD_BALANCING:
        raise ValueError(f"load balancing {load_balancing!r}: expected one of "
                         f"{', '.join(LOAD_BALANCING)}")
    config: dict[str, object] = {"loadBalancingConfig": [{load_balancing: {}}]}
    if load_balancing == "round_robin":
        config["healthCheckConfig"] = {"serviceName": "asr.v1.Recognizer"}
    return json.dumps(config)


@dataclass(frozen=True)
class ChannelOptions:
    """How to reach the service.

    Attributes:
        server: "HOST:PORT" (any gRPC target, e.g. "dns:///asr.example:50051").
        token: bearer token sent as `authorization: Bearer ...` ("" for none).
        tls: use TLS with the system's CA roots (implied by `tls_ca`).
        tls_ca: PEM file of the CA that signed the server's certificate.
        tls_cert, tls_key: PEM files of a client certificate and key (mTLS).
        tls_server_name: expected name in the server's certificate, when it differs from the
            host in `server`.
        keepalive_s: send HTTP/2 keepalive pings this often (0: gRPC's default, off).
        keepalive_timeout_s: close the connection when a ping is not answered in time.
        max_message_bytes: largest message sent or received.
        load_balancing: "pick_first" or "round_robin" (over every address of a DNS name).
    """

    server: str = "localhost:50051"
    token: str = ""
    tls: bool = False
    tls_ca: str = ""
    tls_cert: str = ""
    tls_key: str = ""
    tls_server_name: str = ""
    keepalive_s: float = 0.0
    keepalive_timeout_s: float = 20.0
    max_message_bytes: int = 64 * 1024 * 1024
    load_balancing: str = "pick_first"

    def grpc_options(self) -> list[tuple[str, str | int]]:
        """Channel arguments for `grpc.*_channel` and `grpc.aio.*_channel`."""
        opts: list[tuple[str, str | int]] = [
            ("grpc.max_receive_message_length", self.max_message_bytes),
            ("grpc.max_send_message_length", self.max_message_bytes),
            # Retries are ours (they honour retry-after-s and re-send whole files).
            ("grpc.enable_retries", 0),
            ("grpc.service_config", service_config(self.load_balancing)),
        ]
        if self.keepalive_s > 0:
            opts += [("grpc.keepalive_time_ms", int(self.keepalive_s * 1000)),
                     ("grpc.keepalive_timeout_ms", int(self.keepalive_timeout_s * 1000)),
                     ("grpc.keepalive_permit_without_calls", 1),
                     ("grpc.http2.max_pings_without_data", 0)]
        if self.tls_server_name:
            opts.append(("grpc.ssl_target_name_override", self.tls_server_name))
        return opts

    def credentials(self) -> grpc.ChannelCredentials | None:
        """TLS credentials, or None for a plaintext channel."""
        if not (self.tls or self.tls_ca or self.tls_cert):
            return None
        if bool(self.tls_cert) != bool(self.tls_key):
            raise ValueError("mTLS needs both tls_cert and tls_key")
        return grpc.ssl_channel_credentials(
            Path(self.tls_ca).read_bytes() if self.tls_ca else None,
            private_key=Path(self.tls_key).read_bytes() if self.tls_key else None,
            certificate_chain=Path(self.tls_cert).read_bytes() if self.tls_cert else None)

    def open_channel(self, aio: bool = False) -> Any:
        """A channel to `server` with these options: `grpc.Channel`, or `grpc.aio.Channel`
        with `aio`."""
        module: Any = grpc.aio if aio else grpc
        creds, opts = self.credentials(), self.grpc_options()
        return (module.secure_channel(self.server, creds, options=opts) if creds
                else module.insecure_channel(self.server, options=opts))

    def metadata(self) -> tuple[tuple[str, str], ...]:
        """Call metadata: the bearer token when there is one."""
        return (("authorization", f"Bearer {self.token}"),) if self.token else ()
