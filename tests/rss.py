"""Peak resident memory of a process tree, sampled from /proc (Linux)."""

from __future__ import annotations

import threading
import time
from pathlib import Path


def children(pid: int) -> list[int]:
    """Direct child processes of `pid`."""
    out = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            out += [int(c) for c in (task / "children").read_text().split()]
        except OSError:
            pass
    return out


def tree_rss(pids: list[int]) -> dict[int, int]:
    """RSS in bytes of each process in the trees rooted at `pids`."""
    seen: dict[int, int] = {}
    stack = list(pids)
    while stack:
        pid = stack.pop()
        if pid in seen:
            continue
        try:
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    seen[pid] = int(line.split()[1]) * 1024
                    break
        except OSError:
            continue
        stack += children(pid)
    return seen


class PeakSampler:
    """Samples the trees every `interval_s`; keeps each process's and the total's peak."""

    def __init__(self, pids: list[int], interval_s: float = 0.1) -> None:
        self.pids = pids
        self.interval_s = interval_s
        self.peak_total = 0
        self.peak_by_pid: dict[int, int] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            rss = tree_rss(self.pids)
            self.peak_total = max(self.peak_total, sum(rss.values()))
            for pid, value in rss.items():
                self.peak_by_pid[pid] = max(self.peak_by_pid.get(pid, 0), value)
            time.sleep(self.interval_s)

    def __enter__(self) -> PeakSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
