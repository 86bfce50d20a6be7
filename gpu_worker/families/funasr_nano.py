"""Fun-ASR-Nano (FunASR class ``FunASRNano``): an audio encoder and adaptor feeding a Qwen3
decoder that writes the transcript token by token.

What differs from the CTC families:

- options go into the LLM's prompt: hotwords as a list (FunASR splits a string into
  characters), the language as the prompt's word (``zh`` -> ``中文``; ``auto``: no language in
  the prompt), and ITN off as an extra clause (``itn=False``; on is FunASR's default prompt);
- decoding stops at end-of-sequence or after ``max_length`` new tokens (FunASR's default 512);
  the worker's ``--max-new-tokens`` is the default and a request may ask for another cap;
- audio goes to FunASR as torch tensors (a numpy array crashes its Nano data path);
- a list of clips with ``batch_size`` runs FunASR's batched path (left-padded prompt
  embeddings, one ``llm.generate``); left padding with explicit positions keeps each clip's
  text independent of its neighbours (checked by tests/test_nano_service.py);
- the default engine, "stepwise", decodes a running set step by step instead (finished
  sequences leave, waiting ones join); it builds the same prompt embeddings with FunASR's code.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from gpu_worker.engines.base import Utterance
from gpu_worker.families.base import Family, register_family
from protos.common.worker_config import WorkerConfig

# Language codes of the API -> the word FunASR's Nano prompt takes (`语音转写成{word}`).
PROMPT_LANGUAGES = {"zh": "中文", "en": "英文", "ja": "日文"}


def generate_kwargs(language: str, use_itn: bool, hotwords: Sequence[str],
                    max_new_tokens: int) -> dict[str, Any]:
    """FunASR `generate` keyword arguments for one set of Nano options (0 tokens: default)."""
    kwargs: dict[str, Any] = {"hotwords": list(hotwords), "itn": use_itn}
    if language not in ("", "auto"):
        word = PROMPT_LANGUAGES.get(language)
        if word is None:
            raise ValueError(f"language {language!r} is not one of Fun-ASR-Nano's: auto, "
                             f"{', '.join(PROMPT_LANGUAGES)}")
        kwargs["language"] = word
    if max_new_tokens > 0:
        kwargs["max_length"] = max_new_tokens
    return kwargs


@dataclass(frozen=True)
class FunAsrNano(Family):
    def model_kwargs(self, cfg: WorkerConfig) -> dict[str, Any]:
        """The worker's token cap becomes the model's default `max_length`."""
        return {"max_length": cfg.max_new_tokens}

    def loaded(self, model: Any) -> None:
        worker_cap(model)  # read the loaded cap before any call overwrites it

    def generate_kwargs(self, first: Utterance, batch_size: int) -> dict[str, Any]:
        kwargs = generate_kwargs(first.language, first.use_itn, first.hotwords,
                                 first.max_new_tokens)
        kwargs["batch_size"] = batch_size
        return kwargs

    def generate(self, model: Any, audios: Sequence[np.ndarray],
                 kwargs: dict[str, Any]) -> list[dict[str, Any]]:
        """FunASR's items, each with `tokens_generated` and the batch's `decode_steps`; a
        request's token cap above the worker's is lowered to it."""
        import torch

        cap = worker_cap(model)
        if cap and int(kwargs.get("max_length", cap)) > cap:
            kwargs = {**kwargs, "max_length": cap}
        tensors = [torch.from_numpy(np.ascontiguousarray(a, dtype=np.float32)) for a in audios]
        with count_tokens(model.model.llm) as counts:
            out = list(model.generate(input=tensors if len(tensors) > 1 else tensors[0],
                                      **kwargs))
        steps = max((n for _, n in counts), default=0)
        tokens = [t for batch_tokens, _ in counts for t in batch_tokens]
        if len(tokens) == len(out):
            for item, n in zip(out, tokens, strict=True):
                item["tokens_generated"] = n
                item["decode_steps"] = steps
        return out


def worker_cap(model: Any) -> int:
    """The worker's --max-new-tokens: the `max_length` the `AutoModel` was loaded with.

    FunASR's `generate` writes each call's options into `model.kwargs` and resets them only at
    the start of the next call, so `model.kwargs["max_length"]` read between calls is the
    previous request's cap. It is read once, before the first call, and kept on the model."""
    cap = getattr(model, "asr_worker_cap", None)
    if cap is None:
        cap = int(model.kwargs.get("max_length") or 0)
        model.asr_worker_cap = cap
    return int(cap)


def eos_ids(llm: Any) -> set[int]:
    """The LLM's end-of-sequence token ids (generation config first, then model config)."""
    eos = getattr(llm.generation_config, "eos_token_id", None)
    if eos is None:
        eos = llm.config.eos_token_id
    return set(eos) if isinstance(eos, (list, tuple)) else {int(eos)} if eos is not None else set()


@contextlib.contextmanager
def count_tokens(llm: Any) -> Iterator[list[tuple[list[int], int]]]:
    """While open, each `llm.generate` call FunASR makes appends (new tokens per row up to and
    including the first end-of-sequence, decoding steps) to the yielded list."""
    counts: list[tuple[list[int], int]] = []
    original = llm.generate
    eos = eos_ids(llm)

    def counting(*args: Any, **kw: Any) -> Any:
        ids = original(*args, **kw)
        steps = int(ids.shape[-1])
        rows = []
        for row in ids.tolist():
            ends = [i for i, t in enumerate(row) if t in eos]
            rows.append(ends[0] + 1 if ends else steps)
        counts.append((rows, steps))
        return ids

    llm.generate = counting
    try:
        yield counts
    finally:
        del llm.generate  # the class's method again


FUNASR_NANO = register_family(FunAsrNano(
    # "auto" picks the first: step-wise decoding (engines/nano_step.py) paid on CPU in
    # bench/nano_stepwise.py (BENCHMARKS.md); "generate" keeps FunASR's static batches.
    name="funasr-nano", model_classes=("FunASRNano",),
    engines=("stepwise", "generate", "vllm"),
    languages=tuple(PROMPT_LANGUAGES), hotwords=True, itn=True, padding_invariant=True))
