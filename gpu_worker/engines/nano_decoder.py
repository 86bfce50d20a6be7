"""Step-wise (continuous) greedy decoding for Fun-ASR-Nano's Qwen3 decoder.

FunASR's batched path runs one `llm.generate` per batch: every clip waits until the longest one
has finished. `StepDecoder` keeps a *running set* of sequences instead and advances it one token
per `step()`: a sequence that emits end-of-sequence or reaches its own token cap leaves at once,
and waiting clips join at any step boundary.

Design (one batched KV cache, left-padded):

- A clip's prompt embeddings are FunASR's own: `FunASRNano.get_prompt`, `generate_chatml` and
  `inference_prepare` (audio encoder + adaptor output spliced into the chat prompt), called
  exactly as FunASR's `generate` calls them for one clip.
- A joining clip is prefilled alone (batch 1, no padding: the same computation as FunASR's
  one-clip `generate`), which yields its first token and its own KV cache.
- The running set shares one transformers `DynamicCache` whose rows are left-padded to a
  common length. Joining clips' caches are left-padded to the running length (or the running
  cache to theirs) and concatenated along the batch; a 2D attention mask marks the padding,
  and explicit per-row position ids keep each sequence's positions 0, 1, 2, ... whatever its
  padding, so its logits do not depend on its neighbours (up to float rounding).
- A leaving sequence's row is dropped from the cache and the mask; columns that have become
  padding in every remaining row are cut from the left, so the cache does not keep growing.
- Each step feeds every running sequence's last token (batch B, query length 1) and takes the
  argmax: greedy, as FunASR's `generate` with the model's generation config (which must not
  sample or use beams: checked at start).

Everything here runs on the worker's model thread; it is not thread-safe.
"""

from __future__ import annotations

import inspect
import re
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from gpu_worker.engines.base import StartupError
from gpu_worker.families.funasr_nano import eos_ids, generate_kwargs


@dataclass
class Running:
    """One sequence being decoded (`tag` is the caller's handle on it)."""

    tag: Any
    cap: int  # most tokens it may generate
    prompt_len: int  # real (unpadded) prompt positions in the cache
    tokens: list[int] = field(default_factory=list)
    started: float = field(default_factory=time.monotonic)
    peak_batch: int = 1  # largest running set it decoded in


class StepDecoder:
    """The running set of one Fun-ASR-Nano model (a FunASR `AutoModel` holding `FunASRNano`)."""

    def __init__(self, automodel: Any) -> None:
        import torch

        self._torch = torch
        self.model = automodel.model
        self.llm = self.model.llm
        self.kwargs = dict(automodel.kwargs)
        self.tokenizer = self.kwargs["tokenizer"]
        self.eos = eos_ids(self.llm)
        self._check_greedy()
        params = inspect.signature(self.llm.forward).parameters
        self._cache_arg = "cache" if "cache" in params else "past_key_values"
        self._check_cache_api()
        self._cache: Any = None
        self._mask: Any = None  # (B, T) long: 1 on real positions
        self.running: list[Running] = []
        self.steps = 0  # batched decode forwards so far

    def _check_greedy(self) -> None:
        gc = self.llm.generation_config
        sampling = bool(getattr(gc, "do_sample", False))
        beams = int(getattr(gc, "num_beams", 1) or 1)
        penalty = float(getattr(gc, "repetition_penalty", 1.0) or 1.0)
        if sampling or beams > 1 or penalty != 1.0:
            raise StartupError("the step-wise decoder is greedy, but this model's generation "
                               f"config samples or searches (do_sample={sampling}, num_beams="
                               f"{beams}, repetition_penalty={penalty}); use --engine generate")

    def _check_cache_api(self) -> None:
        """The running cache is edited per layer (`DynamicCache.layers[i].keys/.values`), an
        API of transformers >= 4.56; older versions are refused at start, not mid-request."""
        from transformers import DynamicCache

        try:
            probe = DynamicCache(config=self.llm.config)
        except TypeError:
            probe = None
        if probe is None or not hasattr(probe, "layers"):
            import transformers

            raise StartupError(f"the step-wise decoder needs transformers >= 4.56 (per-layer "
                               f"KV caches), not {transformers.__version__}; upgrade it or "
                               "use --engine generate")

    @property
    def size(self) -> int:
        return len(self.running)

    def prompt_embeds(self, audio: np.ndarray, language: str, use_itn: bool,
                      hotwords: Sequence[str]) -> Any:
        """(1, T, D) prompt embeddings of one clip, built by FunASR's own Nano code."""
        torch = self._torch
        options = generate_kwargs(language, use_itn, hotwords, 0)
        prompt = self.model.get_prompt(options["hotwords"], options.get("language"),
                                       options["itn"])
        clip = torch.from_numpy(np.ascontiguousarray(audio, dtype=np.float32))
        chat = self.model.generate_chatml(prompt, clip)
        # The loaded model's kwargs carry the tokenizer, frontend and device, as in `generate`.
        embeds, *_ = self.model.inference_prepare([chat], None, None, **self.kwargs)
        return embeds.to(self.llm.dtype)

    def _forward(self, cache: Any, **inputs: Any) -> Any:
        return self.llm(**inputs, **{self._cache_arg: cache}, use_cache=True, logits_to_keep=1)

    def join(self, tag: Any, embeds: Any, cap: int) -> Running | None:
        """Prefill one clip and add it to the running set; the finished sequence at once when
        its first token already ends it (end-of-sequence or a cap of 1), else None."""
        from transformers import DynamicCache

        torch = self._torch
        seq = Running(tag=tag, cap=max(1, cap), prompt_len=int(embeds.shape[1]))
        length = seq.prompt_len
        cache = DynamicCache(config=self.llm.config)
        mask = torch.ones(1, length, dtype=torch.long, device=embeds.device)
        positions = torch.arange(length, device=embeds.device).unsqueeze(0)
        out = self._forward(cache, inputs_embeds=embeds, attention_mask=mask,
                            position_ids=positions)
        seq.tokens.append(int(out.logits[0, -1].argmax()))
        if self._done(seq):
            return seq
        self._merge(cache, mask)
        self.running.append(seq)
        return None

    def _merge(self, cache: Any, mask: Any) -> None:
        """Append a one-row cache to the running cache, left-padding the shorter one."""
        torch = self._torch
        if self._cache is None:
            self._cache, self._mask = cache, mask
            return
        width = max(self._mask.shape[1], mask.shape[1])
        for old, new in zip(self._cache.layers, cache.layers, strict=True):
            old.keys = torch.cat([_pad_left(old.keys, width, 2), _pad_left(new.keys, width, 2)])
            old.values = torch.cat([_pad_left(old.values, width, 2),
                                    _pad_left(new.values, width, 2)])
        self._mask = torch.cat([_pad_left(self._mask, width, 1), _pad_left(mask, width, 1)])

    def step(self) -> list[Running]:
        """One greedy token for every running sequence; the sequences that finished with it
        (they have left the running set)."""
        torch = self._torch
        if not self.running:
            return []
        device = self._mask.device
        last = torch.tensor([[s.tokens[-1]] for s in self.running], device=device)
        positions = torch.tensor([[s.prompt_len + len(s.tokens) - 1] for s in self.running],
                                 device=device)
        mask = torch.cat([self._mask, torch.ones_like(self._mask[:, :1])], dim=1)
        out = self._forward(self._cache, input_ids=last, attention_mask=mask,
                            position_ids=positions)
        self._mask = mask
        self.steps += 1
        size = len(self.running)
        for seq, token in zip(self.running, out.logits[:, -1].argmax(-1).tolist(), strict=True):
            seq.tokens.append(int(token))
            seq.peak_batch = max(seq.peak_batch, size)
        finished = [s for s in self.running if self._done(s)]
        if finished:
            self.remove(finished)
        return finished

    def remove(self, leaving: Sequence[Running]) -> None:
        """Drop sequences from the running set (finished, or their caller went away)."""
        gone = {id(s) for s in leaving}
        keep = [i for i, s in enumerate(self.running) if id(s) not in gone]
        if len(keep) == len(self.running):
            return
        self.running = [self.running[i] for i in keep]
        if not keep:
            self._cache = self._mask = None
            return
        torch = self._torch
        rows = torch.tensor(keep, device=self._mask.device)
        mask = self._mask.index_select(0, rows)
        first = int(mask.any(dim=0).long().argmax())  # leading columns padded in every row
        self._mask = mask[:, first:]
        for layer in self._cache.layers:
            layer.keys = layer.keys.index_select(0, rows)[:, :, first:]
            layer.values = layer.values.index_select(0, rows)[:, :, first:]

    def reset(self) -> list[Running]:
        """Drop every running sequence (after a failed step); the dropped ones."""
        dropped, self.running = self.running, []
        self._cache = self._mask = None
        return dropped

    def _done(self, seq: Running) -> bool:
        return seq.tokens[-1] in self.eos or len(seq.tokens) >= seq.cap

    def text(self, seq: Running) -> str:
        """The sequence's text as FunASR's Nano `inference` writes it."""
        raw = self.tokenizer.decode(seq.tokens, skip_special_tokens=True)
        return re.sub(r"\s+", " ", raw.replace("/sil", " "))

    def tokens_generated(self, seq: Running) -> int:
        """Tokens up to and including the first end-of-sequence (as `count_tokens` counts)."""
        return len(seq.tokens)


def _pad_left(x: Any, width: int, dim: int) -> Any:
    """`x` zero-padded on the left of dimension `dim` to `width`."""
    missing = width - x.shape[dim]
    if missing <= 0:
        return x
    shape = list(x.shape)
    shape[dim] = missing
    import torch

    return torch.cat([x.new_zeros(shape), x], dim=dim)
