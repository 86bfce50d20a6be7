"""Prometheus metrics of live streams, registered on the service's registry.

- `asr_live_sessions`: live-mode streams open now;
- `asr_live_first_interim_seconds`: per utterance, from the arrival of the audio where it
  starts to its first interim result (includes the model's chunk and look-ahead);
- `asr_live_final_latency_seconds`: per utterance, from the arrival of the audio where it
  ends to its final result (includes the VAD's end-of-speech silence window and, in two-pass
  mode, the offline model);
- `asr_live_endpoint_latency_seconds`: per utterance, from the arrival of the chunk with which
  the VAD closed it to its final result: the service's own part of the final latency (the
  rest is the VAD's end-of-speech silence);
- `asr_live_batch_size`: per chunk step that ran the model, how many streams were decoded in
  the same fused model call (chunks needing no model call, e.g. silence, are not counted);
- `asr_live_resumes_total`: live streams moved to another worker after a worker loss.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

LIVE_LATENCY_BUCKETS = (0.025, 0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1.0, 1.5, 2.0, 2.5, 3.0, 5.0,
                        10.0)
LIVE_BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)


class LiveMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.sessions = Gauge("asr_live_sessions", "Live-mode streams open", registry=registry)
        self.first_interim = Histogram(
            "asr_live_first_interim_seconds", "Per utterance: from the arrival of its first "
            "audio to its first interim result", buckets=LIVE_LATENCY_BUCKETS, registry=registry)
        self.final_latency = Histogram(
            "asr_live_final_latency_seconds", "Per utterance: from the arrival of the audio "
            "where it ends to its final result", buckets=LIVE_LATENCY_BUCKETS, registry=registry)
        self.endpoint_latency = Histogram(
            "asr_live_endpoint_latency_seconds", "Per utterance: from the arrival of the chunk "
            "with which the VAD closed it to its final result", buckets=LIVE_LATENCY_BUCKETS,
            registry=registry)
        self.batch_size = Histogram(
            "asr_live_batch_size", "Per live chunk step that ran the model: streams decoded in "
            "the same fused model call",
            buckets=LIVE_BATCH_BUCKETS, registry=registry)
        self.resumes = Counter("asr_live_resumes", "Live streams resumed on another worker "
                               "after a worker loss", registry=registry)
