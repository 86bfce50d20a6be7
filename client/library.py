"""A small library over the generated stubs: transcribe files, read status, clear caches.

Files are sent over `StreamingRecognize` in chunks read from disk, so a large file never sits
whole in the client's memory. Retries of UNAVAILABLE (a restarting or draining service) are
declared in the channel's service config, as gRPC recommends, not hand-written.

Several replicas without a proxy: `load_balancing="round_robin"` with a target naming every
replica (`dns:///asr-scheduler-headless.asr.svc.cluster.local:50051`, a Kubernetes headless
Service, or `ipv4:10.0.0.1:50051,10.0.0.2:50051`) spreads calls over all of them, skips a
replica whose health reads NOT_SERVING (client-side health checking), and retries a refused
or cut call on the next one.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import grpc

from protos.asr.v1 import asr_pb2 as pb
from protos.asr.v1 import asr_pb2_grpc as pb_grpc

CHUNK_BYTES = 256 * 1024
RAW_SUFFIXES = (".pcm", ".raw", ".s16le")

LOAD_BALANCING = ("pick_first", "round_robin")
_METHOD_CONFIG = [{
    "name": [{"service": "asr.v1.Recognizer"}, {"service": "asr.v1.Admin"}],
    "retryPolicy": {"maxAttempts": 5, "initialBackoff": "0.2s", "maxBackoff": "5s",
                    "backoffMultiplier": 2, "retryableStatusCodes": ["UNAVAILABLE"]},
}]


def service_config(load_balancing: str = "pick_first") -> str:
    """The channel's service config: retries, and for round_robin client-side health checks
    (a replica whose `asr.v1.Recognizer` health is not SERVING gets no calls)."""
    if load_balancing not in LOAD_BALANCING:
        raise ValueError(f"load balancing {load_balancing!r}: expected one of "
                         f"{', '.join(LOAD_BALANCING)}")
    config: dict[str, object] = {"methodConfig": _METHOD_CONFIG}
    if load_balancing == "round_robin":
        config["loadBalancingConfig"] = [{"round_robin": {}}]
        config["healthCheckConfig"] = {"serviceName": "asr.v1.Recognizer"}
    return json.dumps(config)


@dataclass
class TranscribeOptions:
    language: str = "auto"
    enable_itn: bool = False
    hotwords: list[str] = field(default_factory=list)
    sample_rate: int = 0  # for raw PCM files
    channels: int = 1


def result_to_dict(path: str, result: pb.RecognitionResult) -> dict[str, object]:
    """The JSON shape of one file's result (keys fixed by DESIGN.md)."""
    return {
        "file": path, "text": result.text,
        "segments": [{"start_ms": s.start_ms, "end_ms": s.end_ms, "text": s.text}
                     for s in result.segments],
        "device": result.device, "fallback_reason": result.fallback_reason,
        "language": result.language, "audio_duration_s": round(result.audio_duration_s, 3),
        "queue_time_s": round(result.queue_time_s, 4),
        "inference_time_s": round(result.inference_time_s, 4),
        "hotwords_ignored": result.hotwords_ignored, "request_id": result.request_id,
    }


class AsrClient:
    """Connection to one service endpoint."""

    def __init__(self, server: str, token: str = "", tls_ca: str = "", tls_cert: str = "",
                 tls_key: str = "", load_balancing: str = "pick_first") -> None:
        """`tls_ca` turns TLS on; `tls_cert`/`tls_key` add a client certificate (mTLS);
        `load_balancing="round_robin"` spreads calls over every address `server` resolves to."""
        options = [("grpc.service_config", service_config(load_balancing)),
                   ("grpc.enable_retries", 1),
                   ("grpc.max_receive_message_length", 64 * 1024 * 1024)]
        if tls_ca:
            creds = grpc.ssl_channel_credentials(
                Path(tls_ca).read_bytes(),
                private_key=Path(tls_key).read_bytes() if tls_key else None,
                certificate_chain=Path(tls_cert).read_bytes() if tls_cert else None)
            self.channel = grpc.secure_channel(server, creds, options=options)
        else:
            self.channel = grpc.insecure_channel(server, options=options)
        self.metadata: list[tuple[str, str]] = [("authorization", f"Bearer {token}")] if token \
            else []
        self.recognizer = pb_grpc.RecognizerStub(self.channel)
        self.admin = pb_grpc.AdminStub(self.channel)

    def close(self) -> None:
        self.channel.close()

    def __enter__(self) -> AsrClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @staticmethod
    def config_for(path: Path, opts: TranscribeOptions) -> pb.RecognitionConfig:
        cfg = pb.RecognitionConfig(language=opts.language, enable_itn=opts.enable_itn,
                                   hotwords=opts.hotwords, enable_segment_timestamps=True)
        if path.suffix.lower() in RAW_SUFFIXES:
            cfg.encoding = pb.LINEAR16
            cfg.sample_rate_hertz = opts.sample_rate
            cfg.audio_channel_count = opts.channels
        return cfg

    @staticmethod
    def _file_requests(path: Path, config: pb.RecognitionConfig
                       ) -> Iterator[pb.StreamingRecognizeRequest]:
        yield pb.StreamingRecognizeRequest(
            streaming_config=pb.StreamingRecognitionConfig(config=config))
        with path.open("rb") as f:
            while chunk := f.read(CHUNK_BYTES):
                yield pb.StreamingRecognizeRequest(audio_content=chunk)

    def stream_file(self, path: Path, opts: TranscribeOptions | None = None,
                    timeout: float | None = None) -> Iterator[pb.StreamingRecognizeResponse]:
        """Every response of a stream (per-segment finals, then the last, whole result)."""
        config = self.config_for(path, opts or TranscribeOptions())
        yield from self.recognizer.StreamingRecognize(self._file_requests(path, config),
                                                      timeout=timeout, metadata=self.metadata)

    def transcribe_file(self, path: Path, opts: TranscribeOptions | None = None,
                        timeout: float | None = None) -> pb.RecognitionResult:
        """The whole-file result of one file."""
        last = None
        for resp in self.stream_file(path, opts, timeout):
            if resp.is_last:
                last = resp.result
        if last is None:
            raise RuntimeError(f"{path}: the stream ended without a final result")
        return last

    def recognize_bytes(self, audio: bytes, config: pb.RecognitionConfig | None = None,
                        timeout: float | None = None) -> pb.RecognitionResult:
        """Unary Recognize of audio held in memory."""
        req = pb.RecognizeRequest(config=config or pb.RecognitionConfig(), audio_content=audio)
        return self.recognizer.Recognize(req, timeout=timeout, metadata=self.metadata).result

    def status(self) -> pb.GetStatusResponse:
        return self.admin.GetStatus(pb.GetStatusRequest(), timeout=10, metadata=self.metadata)

    def clear_cache(self, device: str = "") -> pb.ClearCacheResponse:
        return self.admin.ClearCache(pb.ClearCacheRequest(device=device), timeout=60,
                                     metadata=self.metadata)


def default_server() -> str:
    return os.environ.get("ASR_SERVER", "localhost:50051")
