"""Give freed heap memory back to the operating system (glibc malloc): the scheduler and the
workers.

The scheduler allocates and frees audio-sized buffers (request bytes, decoded PCM, segment
lists) at a high rate. glibc raises its mmap threshold each time a large mmapped block is freed
(up to 32 MiB), after which such buffers come from the heap arenas and fragment them; freed
memory then stays resident. Measured with 300 mixed 1-300 s requests from 48 clients on
simulated GPUs: scheduler RSS 154 MB -> 1,115 MB (335 MB after `malloc_trim`), against
120 MB -> 163 MB with a fixed 128 KiB threshold and 149 MB after a trim. But at 128 KiB every
buffer of a 10 s request (gRPC's joined message, upb's decode arena, the `audio_content` bytes:
~320 KB each) is a fresh mmap whose pages fault in on every request: 0.6-0.9 ms of scheduler
CPU per request (`bench/frontend.py`, BENCHMARKS.md). With a 1 MiB threshold those come from
the heap, and with glibc's default of one arena per thread (up to 8 per core) the ones gRPC's
threads allocate pile up in per-thread arenas: 600 mixed requests with kills, +58 MB of
anonymous memory kept; with a single arena (`M_ARENA_MAX` 1), +1.3 MB.

`tune_malloc()` fixes the threshold (set once, at process start); `trim()` returns free heap
pages; `trim_when_idle()` calls it (and a hook of the caller's: the server gives the free pages
of the workers' PCM arenas back) after activity once the service has no call in progress, and
at most every `busy_every_s` while it stays busy. Elsewhere than glibc the malloc calls are
no-ops.
Workers only trim (measured after 600 requests with kills: six workers 513-657 MB at the
start, 513-1086 MB after, 510-605 MB after a trim); their threshold is left dynamic, since
torch's CPU tensors would pay an mmap per large allocation.
"""

from __future__ import annotations

import asyncio
import ctypes
import ctypes.util
import time
from collections.abc import Callable

M_MMAP_THRESHOLD = -3  # <malloc.h>: a fixed value also turns the dynamic threshold off
M_ARENA_MAX = -8  # <malloc.h>: how many malloc arenas threads may spread over
M_TRIM_THRESHOLD = -1  # <malloc.h>: free memory at the heap's top above this goes back at once
MMAP_THRESHOLD_BYTES = 1024 * 1024  # above a 10 s request's buffers (320 KB PCM16)
ARENA_MAX = 1  # one heap: what gRPC's threads free goes back where the event loop reuses it
# glibc keeps its default trim threshold (128 KiB) once the mmap threshold is fixed: every
# freed request buffer at the heap's top was given back to the kernel and the next one faulted
# its pages in again (a 320 KB `bytes` cost ~60 us to make instead of ~7 us; measured on the
# 2-core machine). Free memory at the top is kept up to this much while busy; `trim` (when idle)
# gives it all back.
TRIM_THRESHOLD_BYTES = 16 * 1024 * 1024


def _glibc() -> ctypes.CDLL | None:
    name = ctypes.util.find_library("c")
    if name is None:
        return None
    try:
        libc = ctypes.CDLL(name)
    except OSError:
        return None
    if not (hasattr(libc, "mallopt") and hasattr(libc, "malloc_trim")):
        return None  # musl, macOS: no such knobs
    return libc


_LIBC = _glibc()


def tune_malloc(mmap_threshold: int = MMAP_THRESHOLD_BYTES, arena_max: int = ARENA_MAX,
                trim_threshold: int = TRIM_THRESHOLD_BYTES) -> bool:
    """Fix glibc's mmap threshold, its number of arenas and its trim threshold; True when
    applied."""
    if _LIBC is None:
        return False
    return (bool(_LIBC.mallopt(ctypes.c_int(M_MMAP_THRESHOLD), ctypes.c_int(mmap_threshold)))
            and bool(_LIBC.mallopt(ctypes.c_int(M_ARENA_MAX), ctypes.c_int(arena_max)))
            and bool(_LIBC.mallopt(ctypes.c_int(M_TRIM_THRESHOLD),
                                   ctypes.c_int(trim_threshold))))


def trim() -> bool:
    """Return free heap memory to the OS; True when some was released."""
    if _LIBC is None:
        return False
    return bool(_LIBC.malloc_trim(ctypes.c_size_t(0)))


async def trim_when_idle(activity: Callable[[], int], active: Callable[[], int],
                         on_idle: Callable[[], object] | None = None,
                         check_s: float = 2.0, busy_every_s: float = 60.0) -> None:
    """Run forever (cancel to stop): once `activity()` (a count of calls started) has moved
    and then the service stayed quiet for a whole `check_s` (no call started in it, none in
    progress at its end), or every `busy_every_s` while calls keep coming, call `on_idle` (on
    the event loop) and trim the heap (in a thread). A trim made while busy is followed by
    another once quiet, even when no call started in between.

    Quiet means a whole interval, not a moment with no call in progress: under steady load
    one call at a time, such moments come between almost every two calls, and a trim (with
    the page faults that refill what it gave back) every `check_s` cost ~2 % of the
    scheduler's CPU."""
    seen = activity()
    pending = False  # calls started since the last trim made while quiet
    last = time.monotonic()
    while True:
        await asyncio.sleep(check_s)
        now_seen = activity()
        pending = pending or now_seen != seen
        quiet = now_seen == seen and not active()
        seen = now_seen
        if quiet:
            if not pending:
                continue
        elif time.monotonic() - last < busy_every_s:
            continue
        pending, last = not quiet, time.monotonic()  # a busy trim: another once quiet
        if on_idle is not None:
            on_idle()
        if _LIBC is not None:
            await asyncio.to_thread(trim)
