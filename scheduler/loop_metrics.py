"""Counters and histograms observed on the event loop's thread, without a lock per update.

prometheus_client's `Counter` and `Histogram` take a mutex for every increment (a histogram
two: its sum and its bucket) and scan their buckets one by one: ~1 us per observation on the
2-core machine, and a request makes about ten. Everything that observes these lives on the
scheduler's event loop, so one writer is guaranteed; the scrape (prometheus_client's HTTP
thread) only reads. An observation is a few plain attribute updates (~0.2 us), which the GIL
keeps whole; a scrape taken in the middle of one may show a histogram's `_sum` one observation
ahead of its buckets, which Prometheus tolerates (as it does across two scrapes).

The exposition is the same as prometheus_client's for these types (`_total`, `_bucket{le}`,
`_count`, `_sum`), without the `_created` series.
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Iterator, Sequence

from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, HistogramMetricFamily
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString


class CounterSeries:
    __slots__ = ("value",)

    def __init__(self) -> None:
        self.value = 0.0

    def inc(self, amount: float = 1.0) -> None:
        if amount < 0:
            raise ValueError("counters can only be incremented by non-negative amounts")
        self.value += amount


class HistogramSeries:
    __slots__ = ("_bounds", "counts", "sum")

    def __init__(self, bounds: list[float]) -> None:
        self._bounds = bounds
        self.counts = [0] * len(bounds)  # per bucket, not cumulative
        self.sum = 0.0

    def observe(self, amount: float) -> None:
        # The first bound >= amount: Prometheus buckets are "less than or equal".
        self.counts[bisect.bisect_left(self._bounds, amount)] += 1
        self.sum += amount


class _Family(Collector):
    """A metric family: one series per set of label values, made on first use."""

    def __init__(self, name: str, documentation: str, labelnames: Sequence[str],
                 registry: CollectorRegistry | None) -> None:
        self.name, self.documentation = name, documentation
        self.labelnames = tuple(labelnames)
        self._series: dict[tuple[str, ...], object] = {}
        if not self.labelnames:
            self._get(())  # shown at zero from the start, as prometheus_client does
        if registry is not None:
            registry.register(self)

    def _new(self) -> object:
        raise NotImplementedError

    def _get(self, values: tuple[str, ...]) -> object:
        series = self._series.get(values)
        if series is None:  # new, or values that are not strings yet (as text, like labels())
            if len(values) != len(self.labelnames):
                raise ValueError(f"{self.name}: {len(self.labelnames)} label values expected")
            key = tuple(str(v) for v in values)
            series = self._series.get(key)
            if series is None:
                series = self._series[key] = self._new()
        return series

    def _snapshot(self) -> list[tuple[tuple[str, ...], object]]:
        return list(self._series.items())  # a copy: the loop may add series meanwhile


class LoopCounter(_Family):
    def _new(self) -> CounterSeries:
        return CounterSeries()

    def labels(self, *values: str) -> CounterSeries:
        return self._get(values)  # type: ignore[return-value]

    def inc(self, amount: float = 1.0) -> None:
        self.labels().inc(amount)

    def collect(self) -> Iterator[CounterMetricFamily]:
        family = CounterMetricFamily(self.name, self.documentation, labels=self.labelnames)
        for values, series in self._snapshot():
            family.add_metric(list(values), series.value)  # type: ignore[attr-defined]
        yield family


class LoopHistogram(_Family):
    def __init__(self, name: str, documentation: str, labelnames: Sequence[str] = (), *,
                 buckets: Sequence[float], registry: CollectorRegistry | None = None) -> None:
        bounds = sorted(float(b) for b in buckets)
        if bounds[-1] != math.inf:
            bounds.append(math.inf)
        self._bounds = bounds
        self._le = [floatToGoString(b) for b in bounds]
        super().__init__(name, documentation, labelnames, registry)

    def _new(self) -> HistogramSeries:
        return HistogramSeries(self._bounds)

    def labels(self, *values: str) -> HistogramSeries:
        return self._get(values)  # type: ignore[return-value]

    def observe(self, amount: float) -> None:
        self.labels().observe(amount)

    def collect(self) -> Iterator[HistogramMetricFamily]:
        family = HistogramMetricFamily(self.name, self.documentation, labels=self.labelnames)
        for values, series in self._snapshot():
            counts = list(series.counts)  # type: ignore[attr-defined]
            cumulative, buckets = 0, []
            for le, count in zip(self._le, counts, strict=True):
                cumulative += count
                buckets.append((le, cumulative))
            family.add_metric(list(values), buckets, series.sum)  # type: ignore[attr-defined]
        yield family
