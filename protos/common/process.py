"""Child processes of the scheduler (workers, front ends) end when the scheduler does."""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import logging
import os
import signal

log = logging.getLogger(__name__)


def die_with_parent() -> None:
    """Ask Linux to SIGTERM this process when its parent dies (no-op elsewhere)."""
    with contextlib.suppress(Exception):
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


async def watch_parent(parent_pid: int, stop: asyncio.Event) -> None:
    """Set `stop` once the parent is gone (this process was re-parented)."""
    while not stop.is_set():
        if parent_pid and os.getppid() != parent_pid:
            log.warning("scheduler (pid %d) is gone; exiting", parent_pid)
            stop.set()
        await asyncio.sleep(1.0)
