"""Metric values move as the service works (scraped over HTTP from a running service)."""

from __future__ import annotations

import time
import urllib.request
from pathlib import Path

import grpc
import pytest
from prometheus_client.parser import text_string_to_metric_families

from client.library import AsrClient
from scheduler.monitor import GIB
from tests.test_cli import free_port

pytestmark = pytest.mark.integration


def scrape(port: int) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
    return {(s.name, frozenset(s.labels.items())): s.value
            for fam in text_string_to_metric_families(text) for s in fam.samples}


def value(samples: dict, name: str, **labels: str) -> float:  # type: ignore[type-arg]
    """Sum of the samples of `name` whose labels include `labels`."""
    want = set(labels.items())
    return sum(v for (n, ls), v in samples.items() if n == name and want <= ls)


def test_metrics_move_with_work(start_service, models_dir: Path,  # type: ignore[no-untyped-def]
                                speech: dict[str, Path]) -> None:
    port = free_port()
    svc = start_service(models_dir / "sensevoice-tiny", devices="sim:2", metrics_port=port,
                        max_queue_delay_ms=50)
    before = scrape(port)
    assert value(before, "asr_worker_up") == 3.0
    assert value(before, "asr_gpu_memory_total_bytes", device="sim:0") == 16 * GIB
    audio = speech["wav16k"].read_bytes()
    with AsrClient(svc.address) as client:
        from concurrent.futures import ThreadPoolExecutor

        with ThreadPoolExecutor(8) as pool:
            list(pool.map(lambda _: client.recognize_bytes(audio), range(16)))
        client.transcribe_file(speech["flac"])
        with pytest.raises(grpc.RpcError):
            client.recognize_bytes(b"")
        svc.service.monitor.set_usage("sim:0", memory_used=int(15.8 * GIB))
        svc.service.monitor.set_usage("sim:1", memory_used=int(15.8 * GIB))
        time.sleep(0.3)
        assert client.recognize_bytes(audio).fallback_reason == "gpu_memory_full"
        client.clear_cache()
    after = scrape(port)
    ok = value(after, "asr_requests_total", rpc="Recognize", mode="unary", code="OK")
    assert ok == 17.0
    assert value(after, "asr_requests_total", rpc="StreamingRecognize", mode="stream",
                 code="OK") == 1.0
    assert value(after, "asr_requests_total", code="INVALID_ARGUMENT") == 1.0
    assert value(after, "asr_cpu_fallbacks_total", reason="gpu_memory_full") == 1.0
    assert value(after, "asr_cache_clears_total", trigger="admin") == 3.0  # one per worker
    batches = value(after, "asr_batch_size_count")
    assert 0 < batches < 18, "concurrent requests should share batches"
    assert value(after, "asr_batch_size_sum") == 18.0
    assert value(after, "asr_audio_seconds_total") > 18 * 2.0
    assert value(after, "asr_request_latency_seconds_count", rpc="Recognize") == 18.0
    assert value(after, "asr_gpu_accepting", device="sim:0") == 0.0
    assert value(after, "asr_requests_in_flight") == 0.0
    assert value(after, "asr_live_streams") == 0.0
    assert value(after, "asr_stream_final_latency_seconds_count") == 1.0
