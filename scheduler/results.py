"""Result types of the scheduler: one `Segment` for every timed piece of a transcript, and the
whole-request `RecognitionOutcome` assembled from them."""

from __future__ import annotations

import collections
from dataclasses import dataclass, field

from protos.common.wire import SAMPLE_RATE


@dataclass(frozen=True)
class Segment:
    """One recognised unit of audio; times in ms from the start of the request's audio."""

    start_ms: int
    end_ms: int
    text: str
    device: str = ""
    fallback_reason: str = ""
    language: str = ""
    queue_time_s: float = 0.0
    inference_time_s: float = 0.0
    hotwords_ignored: bool = False
    index: int = 0  # position in time order within the request


@dataclass
class RecognitionOutcome:
    """The result of one request."""

    text: str
    segments: list[Segment] = field(default_factory=list)
    language: str = ""
    device: str = ""
    fallback_reason: str = ""
    audio_duration_s: float = 0.0
    queue_time_s: float = 0.0
    inference_time_s: float = 0.0
    hotwords_ignored: bool = False
    model: str = ""
    request_id: str = ""


def _unique(values: list[str]) -> str:
    return ",".join(dict.fromkeys(v for v in values if v))


def assemble(units: list[Segment], num_samples: int, model: str, request_id: str,
             with_segments: bool = True) -> RecognitionOutcome:
    """The whole-audio result from its units (any order in, time order out; texts joined by a
    space, as FunASR joins VAD segments)."""
    units = sorted(units, key=lambda u: u.index)
    languages = collections.Counter(u.language for u in units if u.language)
    return RecognitionOutcome(
        text=" ".join(u.text for u in units),
        segments=list(units) if with_segments else [],
        language=languages.most_common(1)[0][0] if languages else "",
        device=_unique([u.device for u in units]),
        fallback_reason=_unique([u.fallback_reason for u in units]),
        audio_duration_s=num_samples / SAMPLE_RATE,
        queue_time_s=sum(u.queue_time_s for u in units),
        inference_time_s=sum(u.inference_time_s for u in units),
        hotwords_ignored=any(u.hotwords_ignored for u in units), model=model,
        request_id=request_id)
