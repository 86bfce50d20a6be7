"""Device matters for every engine: memory figures, cache clears, OOM and sticky-error
detection, the inference context (inference_mode plus autocast) and the thread count.

`TorchDevice` is the only place in the worker that calls `torch.cuda`. Engines and the batcher
take any object with the `Device` shape, so tests inject a fake one.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Protocol, TypeVar

from protos.common.wire import DTYPES, SAMPLE_RATE

log = logging.getLogger(__name__)

MEMORY_HEADROOM = 0.8  # share of free memory a batch may plan to use
# Messages of CUDA errors after which the context is poisoned: every later call fails too.
_STICKY_MARKERS = ("cuda error", "device-side assert", "illegal memory access",
                   "cublas_status", "cudnn_status", "unspecified launch failure")


T = TypeVar("T")


def one_thread_here() -> None:
    """Make torch compute single-threaded on the calling thread, for good.

    Why threads other than the model thread must not start OpenMP teams (measured on the
    2-core machine, SenseVoiceSmall on a 10 s clip, 2 torch threads): libgomp counts every
    thread of every thread's team, and once that count exceeds the cores it lets idle team
    threads spin only briefly before sleeping on a futex, so each of the model's many small
    parallel regions waits for a wake-up. A worker that had loaded its model with 2 threads
    on the main thread and computed on its model thread ran the clip in 0.80-0.91 s, a plain
    loop on the main thread in 0.66-0.78 s; the second team thread spun 77 % of the time
    instead of 100 %. torch applies its global thread count to a thread lazily, at its first
    parallel op; `get_num_threads` does that now, so later changes elsewhere leave this
    thread at one."""
    import torch

    torch.set_num_threads(1)
    torch.get_num_threads()


def on_own_thread(fn: Callable[[], T]) -> T:
    """`fn()` on a new thread that ends when it returns, taking its OpenMP team with it (see
    `one_thread_here`): for loading a model, which FunASR does with the model's thread count.
    Its exception, if any, is raised here."""
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="load") as pool:
        return pool.submit(fn).result()


def is_oom(exc: BaseException) -> bool:
    """True for CUDA out-of-memory errors (torch's type or its message)."""
    return type(exc).__name__ == "OutOfMemoryError" or "out of memory" in str(exc).lower()


def is_sticky_error(exc: BaseException) -> bool:
    """True for device errors that poison the CUDA context (only a new process recovers)."""
    if is_oom(exc):
        return False
    if type(exc).__name__ == "AcceleratorError":  # torch >= 2.8 raises this for CUDA errors
        return True
    text = str(exc).lower()
    return any(marker in text for marker in _STICKY_MARKERS)


class Device(Protocol):
    """What engines need of the device their model runs on."""

    name: str  # torch device, e.g. "cuda:1" or "cpu"
    # True when the device has an allocator cache worth clearing (CUDA).
    has_cache: bool

    def memory(self) -> tuple[int, int]:
        """(allocated, reserved) allocator bytes; (0, 0) without an allocator cache."""
        ...

    def clear_cache(self) -> None:
        """Return cached allocator blocks to the driver."""
        ...

    def audio_capacity_s(self) -> float | None:
        """Most audio seconds one batch may hold given free device memory (None: no limit)."""
        ...

    def set_threads(self) -> None:
        """Set the intra-op thread count on the calling thread (call it on the model thread);
        on CUDA also the thread's current device."""
        ...


def full_fp32_on_cuda() -> None:
    """fp32 work on CUDA in full fp32, for this process: PyTorch lets cuDNN convolutions use
    TF32 (a 10-bit mantissa) by default (its matrix products not), and the models' FSMN
    memory blocks (SenseVoice, Paraformer, FSMN-VAD) are convolutions. With TF32 their output
    moves by ~1e-3, enough to flip argmaxes and VAD decisions that lie close, so `--dtype fp32`
    would not give the CPU's (and FunASR's CPU) results. Lower precision only where `--dtype`
    asks for it (autocast). The legacy flags: PyTorch refuses to read them once they are
    mixed with its per-backend `fp32_precision` settings, and FunASR's code may read them."""
    import torch

    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False


def bind_cuda_device(name: str) -> None:
    """Make `name` ("cuda:N") the calling thread's current CUDA device. CUDA's current device
    is per host thread and 0 by default, so work with an implicit device on any other thread
    (a pinned host buffer's allocation, a bare `torch.cuda` call in FunASR) would create a
    context on GPU 0 from every worker process of a multi-GPU machine: PyTorch's DataLoader
    binds its pin-memory thread for the same reason. Nothing on the CPU, or without CUDA."""
    if not name.startswith("cuda"):
        return
    import torch

    if torch.cuda.is_available():
        torch.cuda.set_device(torch.device(name))


class TorchDevice:
    """One torch device: CUDA memory bookkeeping, precision and threads."""

    def __init__(self, name: str = "cpu", dtype: str = "fp32", threads: int = 1) -> None:
        import torch

        if dtype not in DTYPES:
            raise ValueError(f"dtype {dtype!r}: expected one of {', '.join(DTYPES)}")
        if dtype != "fp32" and not name.startswith("cuda"):
            log.warning("dtype %s applies on CUDA only; running fp32 on %s", dtype, name)
            dtype = "fp32"
        self._torch = torch
        self.name = name
        self.dtype = dtype
        self.threads = max(1, threads)
        self.has_cache = name.startswith("cuda")
        if self.has_cache:
            full_fp32_on_cuda()
        self._bytes_per_audio_s = 0.0  # peak allocator growth per audio second, learnt
        self.set_threads()

    def set_threads(self) -> None:
        """The calling thread's torch threads, and on CUDA its current device (the model
        thread's work then never lands on GPU 0 by default: `bind_cuda_device`)."""
        bind_cuda_device(self.name)
        self._torch.set_num_threads(self.threads)
        # Applied to this thread now: torch would otherwise apply its global count (which
        # `one_thread_here` on another thread may have changed since) at the first op.
        self._torch.get_num_threads()

    def memory(self) -> tuple[int, int]:
        if not self.has_cache:
            return (0, 0)
        cuda = self._torch.cuda
        return (cuda.memory_allocated(self.name), cuda.memory_reserved(self.name))

    def clear_cache(self) -> None:
        if self.has_cache:
            self._torch.cuda.empty_cache()

    def audio_capacity_s(self) -> float | None:
        if not self.has_cache or self._bytes_per_audio_s <= 0:
            return None
        free, _ = self._torch.cuda.mem_get_info(self.name)
        allocated, reserved = self.memory()
        return MEMORY_HEADROOM * (free + reserved - allocated) / self._bytes_per_audio_s

    def _autocast(self) -> Any:
        if self.dtype == "fp32":
            return contextlib.nullcontext()
        torch = self._torch
        return torch.autocast("cuda", dtype=torch.bfloat16 if self.dtype == "bf16"
                              else torch.float16)

    @contextlib.contextmanager
    def inference(self, num_samples: int) -> Iterator[None]:
        """Run model code under inference_mode and the configured autocast; on CUDA, learn
        the peak memory growth per audio second of `num_samples` samples (for batch caps)."""
        torch = self._torch
        cuda = torch.cuda if self.has_cache else None
        base = 0
        if cuda is not None:
            cuda.reset_peak_memory_stats(self.name)
            base = cuda.memory_allocated(self.name)
        with torch.inference_mode(), self._autocast():
            yield
        if cuda is not None and num_samples > 0:
            grown = cuda.max_memory_allocated(self.name) - base
            audio_s = num_samples / SAMPLE_RATE
            self._bytes_per_audio_s = max(self._bytes_per_audio_s, grown / audio_s)
