"""Detects a worker that can no longer serve, so it stops attracting traffic.

A worker whose every batch fails (for example after a sticky CUDA error) would otherwise stay
ready and, having the shortest queue, receive all traffic. Rules:

- an error that poisons the CUDA context (`device.is_sticky_error`) makes the worker
  unhealthy at once;
- otherwise `threshold` batches in a row in which every utterance failed, spanning at least
  two distinct requests, do (a single bad request cannot trip it);
- a batch with any success resets the count; out-of-memory failures neither count nor reset
  (they are per-request and handed back for CPU fallback).
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Sequence

from gpu_worker.device import is_oom, is_sticky_error
from gpu_worker.engines.base import Transcript, Utterance

log = logging.getLogger(__name__)

DEFAULT_THRESHOLD = 3
_anonymous = itertools.count()


def _request_of(utt: Utterance) -> str:
    """The client request an utterance belongs to (segments are "<id>/<index>")."""
    if not utt.request_id:
        return f"#anonymous-{next(_anonymous)}"
    return utt.request_id.split("/", 1)[0]


class FailureTracker:
    """Counts all-failed batches in a row and decides when the worker is unhealthy."""

    def __init__(self, threshold: int = DEFAULT_THRESHOLD) -> None:
        self.threshold = max(1, threshold)
        self.consecutive_failed = 0
        self.unhealthy: str | None = None  # why, once unhealthy
        self._requests: set[str] = set()  # distinct requests in the current streak

    def record(self, batch: Sequence[Utterance],
               outcomes: Sequence[Transcript | BaseException]) -> str | None:
        """Account one batch's outcomes; the reason when this batch makes the worker
        unhealthy, else None."""
        if self.unhealthy is not None:
            return None
        errors = [o for o in outcomes if isinstance(o, BaseException)]
        if len(errors) < len(outcomes):  # any success: the device works
            self.consecutive_failed = 0
            self._requests.clear()
        elif errors and not all(is_oom(e) for e in errors):
            self.consecutive_failed += 1
            self._requests.update(_request_of(u) for u in batch)
        sticky = next((e for e in errors if is_sticky_error(e)), None)
        if sticky is not None:
            return self._mark(f"device error: {type(sticky).__name__}: {sticky}")
        if self.consecutive_failed >= self.threshold and len(self._requests) >= 2:
            last = errors[-1]
            return self._mark(f"{self.consecutive_failed} batches in a row failed entirely "
                              f"({len(self._requests)} requests); last error "
                              f"{type(last).__name__}: {last}")
        return None

    def _mark(self, reason: str) -> str:
        self.unhealthy = reason
        log.error("worker unhealthy: %s", reason)
        return reason
