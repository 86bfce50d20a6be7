"""Typed results of the client: transcripts, stream results and the service status.

Plain dataclasses built from the generated protobuf messages, so callers never handle protobuf
objects. `Transcript.to_dict()` is the JSON shape `asr-client --format json` prints (keys fixed by
DESIGN.md: `file`, `text`, `segments` with `start_ms`/`end_ms`/`text`, `device`,
`fallback_reason`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from protos.asr.v1 import asr_pb2 as pb


@dataclass(frozen=True)
class Segment:
    """One timed piece of a transcript (times in ms from the start of the audio)."""

    start_ms: int
    end_ms: int
    text: str
    device: str = ""

    def to_dict(self) -> dict[str, Any]:
        """JSON form: start_ms, end_ms, text, device."""
        return {"start_ms": self.start_ms, "end_ms": self.end_ms, "text": self.text,
                "device": self.device}


@dataclass(frozen=True)
class Timings:
    """Where the time of one transcription went, in seconds."""

    audio_duration_s: float = 0.0
    queue_time_s: float = 0.0
    inference_time_s: float = 0.0
    wall_time_s: float = 0.0  # measured by the client: first byte sent to final result

    @property
    def rtfx(self) -> float:
        """Audio seconds per wall-clock second (0 when unknown)."""
        return self.audio_duration_s / self.wall_time_s if self.wall_time_s > 0 else 0.0


@dataclass(frozen=True)
class Transcript:
    """The transcript of one piece of audio, with where and how it was produced."""

    text: str
    segments: list[Segment] = field(default_factory=list)
    language: str = ""
    device: str = ""
    fallback_reason: str = ""
    model: str = ""
    timings: Timings = field(default_factory=Timings)
    request_id: str = ""
    hotwords_ignored: bool = False
    file: str = ""  # the source's name when it was a path, else ""

    @property
    def audio_duration_s(self) -> float:
        """Duration of the decoded audio in seconds (same as `timings.audio_duration_s`)."""
        return self.timings.audio_duration_s

    @classmethod
    def from_proto(cls, result: pb.RecognitionResult, *, file: str = "",
                   wall_time_s: float = 0.0) -> Transcript:
        """Build from a `RecognitionResult`; `wall_time_s` is the client's own measurement."""
        return cls(
            text=result.text,
            segments=[Segment(s.start_ms, s.end_ms, s.text, s.device) for s in result.segments],
            language=result.language, device=result.device,
            fallback_reason=result.fallback_reason, model=result.model,
            timings=Timings(result.audio_duration_s, result.queue_time_s,
                            result.inference_time_s, wall_time_s),
            request_id=result.request_id, hotwords_ignored=result.hotwords_ignored, file=file)

    def to_dict(self) -> dict[str, Any]:
        """The JSON object of one file (`asr-client transcribe --format json`)."""
        return {
            "file": self.file, "text": self.text,
            "segments": [s.to_dict() for s in self.segments],
            "device": self.device, "fallback_reason": self.fallback_reason,
            "language": self.language, "model": self.model,
            "audio_duration_s": round(self.timings.audio_duration_s, 3),
            "queue_time_s": round(self.timings.queue_time_s, 4),
            "inference_time_s": round(self.timings.inference_time_s, 4),
            "wall_time_s": round(self.timings.wall_time_s, 4),
            "hotwords_ignored": self.hotwords_ignored, "request_id": self.request_id,
        }


@dataclass(frozen=True)
class StreamResult:
    """One response of `stream()`: an interim or final result, and whether it is the last."""

    transcript: Transcript
    is_final: bool
    is_last: bool
    audio_processed_s: float = 0.0
    stability: float = 0.0  # live interim results: how likely the text is to stay
    utterance_start_ms: int = 0  # live mode: the utterance this result belongs to
    utterance_end_ms: int = 0  # live finals: its end
    resumed: bool = False  # live mode: the stream moved to another worker before this result


@dataclass(frozen=True)
class WorkerStatus:
    """One worker process of the service."""

    worker_id: str
    pid: int
    state: str
    model: str
    in_flight: int
    served: int
    restarts: int
    last_error: str = ""


@dataclass(frozen=True)
class DeviceStatus:
    """One device (GPU, simulated GPU or the CPU) and its workers."""

    name: str
    memory_used_bytes: int
    memory_total_bytes: int
    utilization_percent: int  # -1 when unknown
    accepting: bool
    workers: list[WorkerStatus]
    product: str = ""


@dataclass(frozen=True)
class ModelInfo:
    """One served model and what it supports."""

    name: str
    path: str = ""
    family: str = ""
    engine: str = ""
    languages: list[str] = field(default_factory=list)
    hotwords: bool = False
    itn: bool = False
    streaming: bool = False
    ready_workers: int = 0
    is_default: bool = False


@dataclass(frozen=True)
class FallbackCount:
    """CPU fallbacks of one reason since the service started."""

    reason: str
    count: int


@dataclass(frozen=True)
class ServiceStatus:
    """What `Admin.GetStatus` reports: devices, workers, models, queue and fallbacks."""

    devices: list[DeviceStatus]
    models: list[ModelInfo]
    queue_depth: int
    queue_capacity: int
    fallbacks: list[FallbackCount]
    model: str
    cpu_fallback: str
    version: str

    @classmethod
    def from_proto(cls, st: pb.GetStatusResponse) -> ServiceStatus:
        """Build from a `GetStatusResponse`."""
        return cls(
            devices=[DeviceStatus(
                d.name, d.memory_used_bytes, d.memory_total_bytes, d.utilization_percent,
                d.accepting,
                [WorkerStatus(w.worker_id, w.pid, w.state, w.model, w.in_flight, w.served,
                              w.restarts, w.last_error) for w in d.workers],
                d.product) for d in st.devices],
            models=[ModelInfo(m.name, m.path, m.family, m.engine, list(m.languages), m.hotwords,
                              m.itn, m.streaming, m.ready_workers, m.is_default)
                    for m in st.models],
            queue_depth=st.queue_depth, queue_capacity=st.queue_capacity,
            fallbacks=[FallbackCount(f.reason, f.count) for f in st.fallbacks],
            model=st.model, cpu_fallback=st.cpu_fallback, version=st.version)


@dataclass(frozen=True)
class CacheClearResult:
    """What a cache clear did on one worker."""

    worker_id: str
    reserved_before_bytes: int
    reserved_after_bytes: int


@dataclass(frozen=True)
class CacheClearReport:
    """The workers that cleared their allocator cache."""

    results: list[CacheClearResult]

    @classmethod
    def from_proto(cls, resp: pb.ClearCacheResponse) -> CacheClearReport:
        """Build from a `ClearCacheResponse`."""
        return cls([CacheClearResult(r.worker_id, r.reserved_before_bytes,
                                     r.reserved_after_bytes) for r in resp.results])
