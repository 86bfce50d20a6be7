"""The lock-free per-request series expose exactly what prometheus_client's would."""

from __future__ import annotations

import pytest
from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest

from scheduler.loop_metrics import LoopCounter, LoopHistogram

BUCKETS = (0.005, 0.01, 0.1, 1.0, 2.5, 10.0)
VALUES = [0.0, 0.005, 0.0050001, 0.01, 0.3, 1.0, 2.5, 9.99, 10.0, 10.5, 1e9, -1.0]


def exposition(registry: CollectorRegistry) -> list[str]:
    return [line for line in generate_latest(registry).decode().splitlines()
            if "_created" not in line]


def test_same_exposition_as_prometheus_client() -> None:
    ours, theirs = CollectorRegistry(), CollectorRegistry()
    h1 = LoopHistogram("h_seconds", "a histogram", ["device"], buckets=BUCKETS, registry=ours)
    h2 = Histogram("h_seconds", "a histogram", ["device"], buckets=BUCKETS, registry=theirs)
    u1 = LoopHistogram("u_seconds", "unlabelled", buckets=BUCKETS, registry=ours)
    u2 = Histogram("u_seconds", "unlabelled", buckets=BUCKETS, registry=theirs)
    c1 = LoopCounter("c", "a counter", ["rpc", "code"], registry=ours)
    c2 = Counter("c", "a counter", ["rpc", "code"], registry=theirs)
    z1 = LoopHistogram("z_seconds", "never observed", buckets=BUCKETS, registry=ours)
    z2 = Histogram("z_seconds", "never observed", buckets=BUCKETS, registry=theirs)
    assert z1 and z2
    for i, v in enumerate(VALUES):
        for h in (h1, h2):
            h.labels("cuda:0" if i % 3 else "cpu").observe(v)
        for u in (u1, u2):
            u.observe(v)
        for c in (c1, c2):
            c.labels("Recognize", "OK" if i % 2 else "INTERNAL").inc(abs(v) % 7)
    assert exposition(ours) == exposition(theirs)
    assert 'h_seconds_bucket{device="cpu",le="0.01"} 2.0' in exposition(ours)  # 0.0, 0.01


def test_counters_only_go_up_and_label_counts_are_checked() -> None:
    c = LoopCounter("c", "a counter", ["rpc"], registry=None)
    with pytest.raises(ValueError):
        c.labels("Recognize").inc(-1)
    with pytest.raises(ValueError):
        c.labels("Recognize", "extra")


def test_label_values_are_text_like_prometheus_client() -> None:
    h = LoopHistogram("h", "batch sizes", ["device"], buckets=(1, 2), registry=None)
    for _ in range(3):
        h.labels(0).observe(1)  # type: ignore[arg-type]
    assert h.labels("0") is h.labels(0)  # type: ignore[arg-type]
    assert h.labels("0").counts == [3, 0, 0]
