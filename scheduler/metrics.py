"""Prometheus metrics of the whole service, exposed by the scheduler on `--metrics-port`.

Everything lives in the scheduler process, so nothing needs prometheus_client's multiprocess
mode: request figures are observed where requests pass; per-batch figures are observed once per
batch (workers number their batches); GPU figures are read from the monitor at scrape time;
worker figures (up, restarts, torch memory, OOMs, cache clears) come from the worker handles,
whose counters survive worker restarts. Names follow Prometheus conventions: `asr_` prefix,
units in names, `_total` counters.
"""

from __future__ import annotations

import collections
import logging
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

if TYPE_CHECKING:
    from scheduler.dispatch import Dispatcher
    from scheduler.workers import WorkerHandle

log = logging.getLogger(__name__)

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
                   120.0, 300.0, 600.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)
AUDIO_BUCKETS = (0.5, 1, 2, 5, 10, 20, 30, 60, 120, 300, 600, 1800, 3600, 7200)
RTF_BUCKETS = (0.0002, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0)
SEEN_BATCHES = 4096


class Metrics:
    """The service's metrics on their own registry."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.requests = Counter("asr_requests", "Finished requests by RPC, mode and status code",
                                ["rpc", "mode", "code"], registry=r)
        self.in_flight = Gauge("asr_requests_in_flight", "Requests being handled", registry=r)
        self.latency = Histogram("asr_request_latency_seconds", "End-to-end request latency",
                                 ["rpc"], buckets=LATENCY_BUCKETS, registry=r)
        self.queue_wait = Histogram("asr_queue_wait_seconds",
                                    "Time from acceptance to the start of inference",
                                    ["device"], buckets=LATENCY_BUCKETS, registry=r)
        self.batch_inference = Histogram("asr_batch_inference_seconds",
                                         "Model time per batch", ["device", "model"],
                                         buckets=LATENCY_BUCKETS, registry=r)
        self.batch_size = Histogram("asr_batch_size", "Requests per batch", ["device", "model"],
                                    buckets=BATCH_BUCKETS, registry=r)
        self.request_audio = Histogram("asr_request_audio_seconds", "Audio length per request",
                                       buckets=AUDIO_BUCKETS, registry=r)
        self.rtf = Histogram("asr_real_time_factor",
                             "Processing seconds per audio second (lower is faster)",
                             ["device"], buckets=RTF_BUCKETS, registry=r)
        self.audio_seconds = Counter("asr_audio_seconds", "Audio seconds transcribed",
                                     ["device", "model"], registry=r)
        self.live_streams = Gauge("asr_live_streams", "Open StreamingRecognize streams",
                                  registry=r)
        self.stream_final_latency = Histogram(
            "asr_stream_final_latency_seconds",
            "Time from a stream's last audio to its final result", buckets=LATENCY_BUCKETS,
            registry=r)
        self.fallbacks = Counter("asr_cpu_fallbacks", "Requests run on CPU, by reason",
                                 ["reason"], registry=r)
        self.queue_depth = Gauge("asr_queue_depth", "Requests waiting for a device", registry=r)
        self._seen: collections.OrderedDict[tuple[str, int], None] = collections.OrderedDict()
        self._http: Any = None

    def attach(self, dispatcher: Dispatcher,
               vad_workers: list[WorkerHandle] | None = None) -> None:
        """Read GPU and worker figures from `dispatcher` at every scrape (each worker under
        the name of the model it serves)."""
        self.queue_depth.set_function(lambda: dispatcher.waiting)
        self._zero_series(sorted({(w.spec.device_name, w.spec.model)
                                  for w in dispatcher.workers}))
        self.registry.register(_StateCollector(dispatcher, vad_workers or []))

    def _zero_series(self, pairs: list[tuple[str, str]]) -> None:
        """Create known label sets at zero, so that rate() sees their first event."""
        from scheduler.dispatch import FALLBACK_REASONS

        for dev, model in pairs:
            self.audio_seconds.labels(dev, model)
            self.batch_size.labels(dev, model)
            self.batch_inference.labels(dev, model)
            self.queue_wait.labels(dev)
            self.rtf.labels(dev)
        for reason in FALLBACK_REASONS:
            self.fallbacks.labels(reason)
        for rpc, mode in (("Recognize", "unary"), ("StreamingRecognize", "stream")):
            self.latency.labels(rpc)
            for code in ("OK", "INVALID_ARGUMENT", "CANCELLED", "RESOURCE_EXHAUSTED",
                         "UNAVAILABLE", "DEADLINE_EXCEEDED", "INTERNAL"):
                self.requests.labels(rpc, mode, code)

    def serve(self, port: int, host: str = "") -> None:
        """Serve /metrics over HTTP in a background thread until `close()`."""
        self._http, _ = start_http_server(port, addr=host or "0.0.0.0", registry=self.registry)
        log.info("metrics on http://%s:%d/metrics", host or "0.0.0.0", port)

    def close(self) -> None:
        if self._http is not None:
            self._http.shutdown()
            self._http.server_close()
            self._http = None

    def observe_batch(self, worker_id: str, batch_id: int, device: str, model: str,
                      size: int, seconds: float) -> None:
        """Once per batch, however many of its requests report it."""
        key = (worker_id, batch_id)
        if batch_id <= 0 or key in self._seen:
            return
        self._seen[key] = None
        if len(self._seen) > SEEN_BATCHES:
            self._seen.popitem(last=False)
        self.batch_size.labels(device, model).observe(size)
        self.batch_inference.labels(device, model).observe(seconds)

    def observe_result(self, device: str, model: str, audio_s: float, queue_s: float,
                       wall_s: float, fallback_reason: str) -> None:
        self.queue_wait.labels(device).observe(queue_s)
        self.request_audio.observe(audio_s)
        self.audio_seconds.labels(device, model).inc(audio_s)
        if audio_s > 0:
            self.rtf.labels(device).observe(wall_s / audio_s)
        if fallback_reason:
            self.fallbacks.labels(fallback_reason).inc()

    def track(self, rpc: str) -> Callable[[str, float], None]:
        """Count a request in flight; the returned function records how it ended."""
        self.in_flight.inc()
        mode = "stream" if rpc.startswith("Streaming") else "unary"

        def done(code: str, seconds: float) -> None:
            self.in_flight.dec()
            self.requests.labels(rpc, mode, code).inc()
            self.latency.labels(rpc).observe(seconds)
        return done


class _StateCollector(Collector):
    """GPU (NVML or simulated) and worker figures, read at scrape time."""

    def __init__(self, dispatcher: Dispatcher, vad_workers: list[WorkerHandle]) -> None:
        self.dispatcher = dispatcher
        self.vad_workers = vad_workers

    def collect(self) -> Iterator[GaugeMetricFamily | CounterMetricFamily]:
        d = self.dispatcher
        gpu = {n: GaugeMetricFamily(f"asr_gpu_memory_{n}_bytes", f"GPU memory {n} (NVML)",
                                    labels=["device"]) for n in ("used", "total", "free")}
        util = GaugeMetricFamily("asr_gpu_utilization_ratio", "GPU compute utilisation, 0-1",
                                 labels=["device"])
        accepting = GaugeMetricFamily("asr_gpu_accepting", "1 when the GPU takes new work "
                                      "(free memory above the floor)", labels=["device"])
        for info in d.devices().values():
            gpu["used"].add_metric([info.name], info.memory_used)
            gpu["total"].add_metric([info.name], info.memory_total)
            gpu["free"].add_metric([info.name], info.memory_free)
            if info.utilization >= 0:
                util.add_metric([info.name], info.utilization / 100.0)
            accepting.add_metric([info.name], 1.0 if d.accepting(info.name) else 0.0)
        yield from (*gpu.values(), util, accepting)
        labels = ["worker", "device", "model"]
        up = GaugeMetricFamily("asr_worker_up", "1 when the worker is ready", labels=labels)
        restarts = CounterMetricFamily("asr_worker_restarts", "Worker restarts", labels=labels)
        alloc = GaugeMetricFamily("asr_worker_torch_allocated_bytes",
                                  "torch allocator memory allocated", labels=labels)
        reserved = GaugeMetricFamily("asr_worker_torch_reserved_bytes",
                                     "torch allocator memory reserved", labels=labels)
        in_flight = GaugeMetricFamily("asr_worker_in_flight", "Requests on the worker",
                                      labels=labels)
        ooms = CounterMetricFamily("asr_oom_events", "CUDA out-of-memory errors caught",
                                   labels=labels)
        clears = CounterMetricFamily("asr_cache_clears", "Allocator cache clears by trigger",
                                     labels=[*labels, "trigger"])
        for w in (*d.workers, *self.vad_workers):
            key = [w.spec.worker_id, w.spec.device_name,
                   "fsmn-vad" if w.spec.role == "vad" else w.spec.model]
            up.add_metric(key, 1.0 if w.ready else 0.0)
            restarts.add_metric(key, w.restarts)
            alloc.add_metric(key, w.allocated_bytes)
            reserved.add_metric(key, w.reserved_bytes)
            in_flight.add_metric(key, w.in_flight)
            ooms.add_metric(key, w.totals["oom"])
            for trigger in ("periodic", "fragmentation", "oom", "admin"):
                clears.add_metric([*key, trigger], w.totals[f"clear:{trigger}"])
        yield from (up, restarts, alloc, reserved, in_flight, ooms, clears)
