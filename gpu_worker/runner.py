"""Model runners: the only code in the worker that touches FunASR and torch.

`Runner` is the interface the batcher drives; `FunasrRunner` holds one FunASR `AutoModel` on
one device. Tests inject other runners (e.g. one that raises OOM above a batch size).
"""

from __future__ import annotations

import contextlib
import logging
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np

log = logging.getLogger(__name__)

_SENSEVOICE_LANG = re.compile(r"^<\|([a-z]{2,3}|nospeech)\|>")
HOTWORD_MODELS = ("SeacoParaformer", "ContextualParaformer")
# Models whose text was checked to be independent of padding (tests/test_batching.py).
PADDING_INVARIANT_MODELS = ("SenseVoiceSmall",)
DTYPES = ("fp32", "bf16", "fp16")
MEMORY_HEADROOM = 0.8  # share of free memory a batch may plan to use
F32LE = 1  # worker.proto SampleFormat.F32LE (S16LE is 0)
# Streaming Paraformer decodes a whole clip only with these (else its tail stays in the cache).
STREAMING_KWARGS = {"is_final": True, "chunk_size": [0, 10, 5], "encoder_chunk_look_back": 4,
                    "decoder_chunk_look_back": 1}


@dataclass(frozen=True)
class Utterance:
    """One piece of 16 kHz mono float32 audio with the options that shape its batch."""

    audio: np.ndarray
    language: str = "auto"
    use_itn: bool = False
    hotwords: tuple[str, ...] = ()
    request_id: str = ""  # for logs only

    @property
    def options(self) -> tuple[str, bool, tuple[str, ...]]:
        """Utterances batch together only when these are equal."""
        return (self.language, self.use_itn, self.hotwords)


@dataclass(frozen=True)
class Transcript:
    text: str
    language: str = ""
    hotwords_ignored: bool = False


class Runner(Protocol):
    """Runs batches of utterances through one model on one device."""

    device: str
    model_name: str
    supports_hotwords: bool
    # True when a clip's text does not depend on the other clips' lengths in its batch
    # (checked by tests); otherwise the batcher only batches clips of equal length.
    padding_invariant: bool
    # True when the device has an allocator cache worth clearing (CUDA).
    has_cache: bool

    def transcribe(self, batch: list[Utterance]) -> list[Transcript]:
        """Transcripts in the order of `batch`; all utterances share one `options`."""
        ...

    def memory(self) -> tuple[int, int]:
        """(allocated, reserved) allocator bytes; (0, 0) on CPU."""
        ...

    def clear_cache(self) -> None:
        """Return cached allocator blocks to the driver."""
        ...

    def audio_capacity_s(self) -> float | None:
        """Most audio seconds one batch may hold given free device memory (None: no limit)."""
        ...


def decode_pcm(pcm: bytes, fmt: int) -> np.ndarray:
    """16 kHz mono samples from the wire to float32 in [-1, 1] (FunASR expects float32)."""
    if fmt == F32LE:
        return np.frombuffer(pcm, dtype="<f4").astype(np.float32, copy=False)
    return np.frombuffer(pcm, dtype="<i2").astype(np.float32) / np.float32(32768.0)


def postprocess_text(model_class: str, raw: str) -> tuple[str, str]:
    """FunASR's own post-processing of a model's raw text: (text, language)."""
    if model_class.startswith("SenseVoice"):
        from funasr.utils.postprocess_utils import rich_transcription_postprocess

        m = _SENSEVOICE_LANG.match(raw)
        return rich_transcription_postprocess(raw), (m.group(1) if m else "")
    return raw, ""


class FunasrRunner:
    """One FunASR `AutoModel` on one torch device."""

    def __init__(self, model_dir: str, device: str = "cpu", threads: int = 1,
                 dtype: str = "fp32") -> None:
        import torch
        from funasr import AutoModel

        if not Path(model_dir).is_dir():
            raise FileNotFoundError(f"model directory {model_dir} does not exist")
        if dtype not in DTYPES:
            raise ValueError(f"dtype {dtype!r}: expected one of {', '.join(DTYPES)}")
        if dtype != "fp32" and not device.startswith("cuda"):
            log.warning("dtype %s applies on CUDA only; running fp32 on %s", dtype, device)
            dtype = "fp32"
        self.dtype = dtype
        self.device = device
        self.has_cache = device.startswith("cuda")
        self._bytes_per_audio_s = 0.0  # peak allocator growth per audio second, learnt
        self.model_name = model_dir
        self.threads = max(1, threads)
        torch.set_num_threads(self.threads)
        self._model = AutoModel(model=model_dir, device=device, disable_update=True,
                                disable_pbar=True, disable_log=True, ncpu=self.threads)
        self.model_class = type(self._model.model).__name__
        self.supports_hotwords = self.model_class in HOTWORD_MODELS
        self.padding_invariant = self.model_class in PADDING_INVARIANT_MODELS
        self._torch = torch
        log.info("loaded %s (%s) on %s", model_dir, self.model_class, device)

    def transcribe(self, batch: list[Utterance]) -> list[Transcript]:
        if not batch:
            return []
        first = batch[0]
        kwargs: dict[str, object] = {"batch_size": len(batch), "language": first.language,
                                     "use_itn": first.use_itn}
        ignored = bool(first.hotwords) and not self.supports_hotwords
        if first.hotwords and self.supports_hotwords:
            kwargs["hotword"] = " ".join(first.hotwords)
        out = self._generate(batch, kwargs)
        if len(out) != len(batch):
            raise RuntimeError(f"FunASR returned {len(out)} results for {len(batch)} inputs")
        results = []
        for item in out:  # FunASR may give list inputs one shared key: match by order
            text, lang = postprocess_text(self.model_class, str(item.get("text", "")))
            results.append(Transcript(text=text, language=lang, hotwords_ignored=ignored))
        return results

    def _generate(self, batch: list[Utterance], kwargs: dict[str, object]) -> list[dict]:
        """FunASR's generate under inference_mode (and autocast for bf16/fp16 on CUDA)."""
        torch = self._torch
        cuda = torch.cuda if self.has_cache else None
        if cuda is not None:
            cuda.reset_peak_memory_stats(self.device)
            base = cuda.memory_allocated(self.device)
        autocast = (torch.autocast("cuda", dtype=torch.bfloat16 if self.dtype == "bf16"
                                   else torch.float16)
                    if self.dtype != "fp32" else contextlib.nullcontext())
        with torch.inference_mode(), autocast:
            if self.model_class == "ParaformerStreaming":  # stateful: one clip per call
                out = [self._model.generate(input=u.audio, cache={}, **kwargs,
                                            **STREAMING_KWARGS)[0] for u in batch]
            else:
                out = self._model.generate(input=[u.audio for u in batch], **kwargs)
        if cuda is not None:
            audio_s = sum(len(u.audio) for u in batch) / 16000
            grown = cuda.max_memory_allocated(self.device) - base
            if audio_s > 0:
                self._bytes_per_audio_s = max(self._bytes_per_audio_s, grown / audio_s)
        return out

    def audio_capacity_s(self) -> float | None:
        if not self.has_cache or self._bytes_per_audio_s <= 0:
            return None
        free, _ = self._torch.cuda.mem_get_info(self.device)
        allocated, reserved = self.memory()
        return MEMORY_HEADROOM * (free + reserved - allocated) / self._bytes_per_audio_s

    def memory(self) -> tuple[int, int]:
        if not self.device.startswith("cuda"):
            return (0, 0)
        cuda = self._torch.cuda
        return (cuda.memory_allocated(self.device), cuda.memory_reserved(self.device))

    def clear_cache(self) -> None:
        if self.device.startswith("cuda"):
            self._torch.cuda.empty_cache()
