"""The engine interface, its plain data types, and the registry of engine names.

An engine owns one loaded model on one device and serves one or more request shapes:

- batched utterances (`transcribe`): whole pieces of audio, batched across requests;
- sessions (`segment`): per-stream state fed chunk by chunk (FSMN-VAD today, live
  recognition next);
- step-wise decoding (LLM models) fits behind `transcribe` too: such an engine runs its own
  decode loop instead of the dynamic batcher.

An engine states what it can do in `Capabilities`; the servicer routes each RPC to the
engine's method, and a method an engine lacks raises `Unsupported` (gRPC UNIMPLEMENTED).
Engines register a factory under their name; `WorkerConfig.engine` selects one.
"""

from __future__ import annotations

import importlib
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from protos.common.capabilities import Capabilities
from protos.common.wire import SAMPLE_RATE
from protos.common.worker_config import WorkerConfig

# Modules that register the engines shipped with the worker (imported on first lookup).
BUILTIN_ENGINE_MODULES = ("gpu_worker.engines.generate", "gpu_worker.engines.session",
                          "gpu_worker.engines.direct", "gpu_worker.engines.identity",
                          "gpu_worker.engines.nano_vllm", "gpu_worker.engines.nano_step")


class StartupError(Exception):
    """The worker cannot serve this config (unknown engine, family the engine cannot run)."""


class Unsupported(Exception):
    """The engine lacks what an RPC needs (answered UNIMPLEMENTED)."""


class WorkerUnhealthy(Exception):
    """The worker can no longer serve (e.g. a poisoned CUDA context); answered UNAVAILABLE so
    the scheduler runs the request elsewhere, and the process exits to be restarted."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True)
class Utterance:
    """One piece of 16 kHz mono float32 audio with the options that shape its batch."""

    audio: np.ndarray
    language: str = "auto"
    use_itn: bool = False
    hotwords: tuple[str, ...] = ()
    request_id: str = ""  # for logs only
    max_new_tokens: int = 0  # cap on generated tokens for LLM decoders (0: the worker's)

    def check(self) -> None:
        """Refuse audio no model can take (ValueError), the same way whatever FunASR's fbank
        backend would have failed with (kaldi-native-fbank: ValueError / RuntimeError;
        torchaudio, on the GPU machines' image: AssertionError)."""
        if len(self.audio) == 0:
            raise ValueError("empty audio")
        if not np.isfinite(self.audio).all():
            raise ValueError("audio has NaN or infinite samples")

    @property
    def options(self) -> tuple[str, bool, tuple[str, ...], int]:
        """Utterances batch together only when these are equal."""
        return (self.language, self.use_itn, self.hotwords, self.max_new_tokens)

    @property
    def audio_s(self) -> float:
        return len(self.audio) / SAMPLE_RATE


@dataclass(frozen=True)
class Transcript:
    text: str
    language: str = ""
    hotwords_ignored: bool = False
    tokens_generated: int = 0  # LLM decoders: tokens generated for this utterance
    decode_steps: int = 0  # LLM decoders: decoding steps of its batch


@dataclass(frozen=True)
class BatchStats:
    """How one utterance was run."""

    batch_size: int
    wait_s: float
    inference_s: float
    batch_id: int = 0


@dataclass(frozen=True)
class SessionChunk:
    """One chunk of a session's audio stream."""

    audio: np.ndarray
    is_final: bool = False
    max_segment_ms: int = 0  # read from the first chunk; 0: the default


@dataclass
class EngineStats:
    """Figures GetInfo reports."""

    model: str
    allocated_bytes: int = 0
    reserved_bytes: int = 0
    batches: int = 0
    oom_events: int = 0
    cache_clears: dict[str, int] = field(default_factory=dict)
    consecutive_failed_batches: int = 0
    live_model_calls: int = 0  # live engines: fused decoder calls of chunk steps
    live_model_rows: int = 0  # live engines: stream chunks decoded by them


class Engine:
    """Base of every engine: lifecycle, figures, and the request shapes it may serve."""

    name: str = ""
    capabilities: Capabilities

    def __init__(self) -> None:
        # Called once with the reason when the engine can no longer serve.
        self.on_unhealthy: Callable[[str], None] = lambda reason: None

    def start(self) -> None:
        """Start background work; called once on the running event loop."""

    async def stop(self) -> None:
        """Stop background work."""

    def stats(self) -> EngineStats:
        raise NotImplementedError

    async def transcribe(self, utt: Utterance) -> tuple[Transcript, BatchStats]:
        """Recognise one utterance (batched with others as the engine sees fit)."""
        raise Unsupported(f"engine {self.name!r} ({self.capabilities.kind}) does not "
                          "transcribe utterances")

    def segment(self, chunks: AsyncIterator[SessionChunk]
                ) -> AsyncIterator[list[tuple[int, int]]]:
        """Speech segments (start_ms, end_ms) completed by each chunk of one stream."""
        raise Unsupported(f"engine {self.name!r} ({self.capabilities.kind}) does not segment "
                          "audio streams")

    def live(self, options: Any, chunks: AsyncIterator[Any]) -> AsyncIterator[Any]:
        """Live recognition of one stream (`engines.live`): one update per chunk."""
        raise Unsupported(f"engine {self.name!r} ({self.capabilities.family}) does not "
                          "recognise live streams (a streaming model is needed)")

    async def clear_cache(self) -> tuple[int, int]:
        """Free the allocator cache; (reserved before, reserved after) bytes."""
        raise Unsupported(f"engine {self.name!r} has no device cache to clear")


EngineFactory = Callable[[WorkerConfig], Engine]
_ENGINES: dict[str, EngineFactory] = {}


def register_engine(name: str, factory: EngineFactory) -> None:
    """Make `factory` the engine selected by `WorkerConfig.engine == name`."""
    _ENGINES[name] = factory


def engine_names() -> list[str]:
    _load_builtin_engines()
    return sorted(_ENGINES)


AUTO = "auto"  # the family's preferred engine: "direct" where it can run it, else its first


def resolve_engine(cfg: WorkerConfig) -> str:
    """The engine name `cfg.engine` stands for ("auto" resolved by the model's family; a
    model that is not a local directory gets "generate")."""
    if cfg.engine != AUTO:
        return cfg.engine
    from pathlib import Path

    from gpu_worker.families import family_for_class, model_class_of

    if not Path(cfg.model).is_dir():
        return "generate"
    engines = family_for_class(model_class_of(cfg.model)).engines
    return "direct" if "direct" in engines else engines[0]


def create_engine(cfg: WorkerConfig) -> Engine:
    """Build (and load the model of) the engine `cfg.engine` names ("auto": see
    `resolve_engine`)."""
    _load_builtin_engines()
    if cfg.engine == AUTO:
        from dataclasses import replace

        cfg = replace(cfg, engine=resolve_engine(cfg))
    factory = _ENGINES.get(cfg.engine)
    if factory is None:
        raise StartupError(f"unknown engine {cfg.engine!r}; known engines: "
                           f"{', '.join(sorted(_ENGINES))}")
    return factory(cfg)


def _load_builtin_engines() -> None:
    for module in BUILTIN_ENGINE_MODULES:
        importlib.import_module(module)
