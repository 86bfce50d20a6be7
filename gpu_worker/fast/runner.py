"""`DirectRunner`: the batcher's runner for the `direct` engine.

FunASR loads the model (weights, tokenizer, front-end config); the runner then runs its own
pipeline per batch in three stages that the batcher overlaps across batches (`prepare` on a
host thread: waveforms padded into one host buffer, on CUDA pinned and copied to the device
without blocking on a side stream; `compute` on the model thread; `finish` on the host thread:
token ids to text), so the host readies batch k+1 and writes batch k-1's text while the device
runs batch k. Per batch: batched features (`BatchFbank`), the family's network with correct
masks (`networks`), token ids back in one copy, and token ids to text on the CPU exactly as
FunASR's `inference` does. No allocator cache clear on the hot path: the batcher's cache-clear
policy stays in charge.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from gpu_worker.device import TorchDevice
from gpu_worker.engines.base import Transcript, Utterance
from gpu_worker.families import Family
from gpu_worker.fast import exact_argmax
from gpu_worker.fast.features import BatchFbank
from gpu_worker.fast.networks import net_for
from protos.common.worker_config import WorkerConfig

log = logging.getLogger(__name__)


@dataclass
class Prepared:
    """A batch padded on the host (and on CUDA already being copied to the device)."""

    batch: list[Utterance]
    host: torch.Tensor
    lengths: torch.Tensor
    wave: torch.Tensor | None = None  # on the device, written by the copy stream
    copied: Any = None  # torch.cuda.Event recorded after the copy


@dataclass
class Computed:
    """A batch's token ids, back on the host."""

    batch: list[Utterance]
    ids: list[list[int]]


class DirectRunner:
    """One FunASR model of a supported family on one device, run batched by our code."""

    # Masks are correct for every supported family: a clip's text does not depend on the
    # lengths of its neighbours, so the batcher mixes lengths.
    padding_invariant = True
    # The device computes padded frames: the batcher's audio cap counts size x longest clip.
    padded_budget = True
    # Batches in flight at once: on CUDA two, one being prepared or turned into text on the
    # host while the device computes the other (`prepare` -> `compute` -> `finish`). On the
    # CPU one: host and "device" share the same cores, so there is nothing to overlap, and a
    # second batch taken while the first computes only splits the queue into smaller batches
    # (measured: 16 requests at concurrency 8 ran as batches of 1, 4, 3, 1, 4, 2).
    in_flight = 2

    def __init__(self, model_dir: str, family: Family, device: TorchDevice,
                 cfg: WorkerConfig | None = None) -> None:
        from funasr import AutoModel

        self.family = family
        self.device = device
        self.model_name = model_dir
        self.supports_hotwords = family.hotwords
        extra = family.model_kwargs(cfg or WorkerConfig(model=model_dir, torch_device=device.name))
        auto = AutoModel(model=model_dir, device=device.name, disable_update=True,
                         disable_pbar=True, disable_log=True, ncpu=device.threads, **extra)
        self.model = auto.model.eval()
        self.tokenizer = auto.kwargs["tokenizer"]
        self.frontend = auto.kwargs["frontend"]
        self.net = net_for(family.name, self.model)
        # Under bf16/fp16 autocast, the output layer's rows in doubt are recomputed in fp32,
        # so greedy decoding takes the argmax fp32 would (`exact_argmax`; `--exact-argmax`).
        exact = cfg is None or cfg.exact_argmax
        self.exact = (exact_argmax.install(self.model, family.name)
                      if exact and device.dtype != "fp32" else None)
        self._batches = 0
        self.fbank = BatchFbank(self.frontend, device.name)
        self._pin = device.name.startswith("cuda") and torch.cuda.is_available()
        self._copy_stream = torch.cuda.Stream(device.name) if self._pin else None
        self.in_flight = 2 if self._pin else 1
        log.info("direct engine: %s (%s, family %s) on %s", model_dir,
                 type(self.model).__name__, family.name, device.name)

    def prepare(self, batch: list[Utterance]) -> Prepared:
        """Host stage (while the device runs the previous batch): check the clips and pad them
        into one host buffer; on CUDA a pinned one, copied to the device without blocking on
        a side stream, so the copy too overlaps the previous batch's compute."""
        for u in batch:  # FunASR refuses these too ("n must be > 0", "mel energy is nan")
            u.check()
        audios = [u.audio for u in batch]
        longest = max(len(a) for a in audios)
        # Written once: each clip, then only its row's padding zeroed (not the whole buffer
        # first: a batch of 256 clips of 10 s is 164 MB, ~20 % of this stage's time).
        host = torch.empty((len(audios), max(longest, 1)), dtype=torch.float32,
                           pin_memory=self._pin)
        for i, a in enumerate(audios):
            host[i, :len(a)] = torch.from_numpy(np.asarray(a, dtype=np.float32))
            host[i, len(a):] = 0.0
        lengths = torch.tensor([len(a) for a in audios], dtype=torch.long)
        prepared = Prepared(batch, host, lengths)
        if self._copy_stream is not None:
            with torch.cuda.stream(self._copy_stream):
                prepared.wave = host.to(self.fbank.device, non_blocking=True)
                prepared.copied = torch.cuda.Event()
                prepared.copied.record(self._copy_stream)
        return prepared

    def _on_device(self, p: Prepared) -> torch.Tensor:
        if p.wave is None:
            return p.host.to(self.fbank.device, non_blocking=True)
        assert p.copied is not None
        stream = torch.cuda.current_stream(self.fbank.device)
        stream.wait_event(p.copied)
        p.wave.record_stream(stream)  # its memory is reused only after this stream's use
        return p.wave

    def features(self, audios: list[np.ndarray]) -> tuple[torch.Tensor, torch.Tensor]:
        """Pad the clips into one host buffer, copy it to the device, compute features."""
        p = self.prepare([Utterance(audio=a) for a in audios])
        return self.fbank(self._on_device(p), p.lengths)

    def compute(self, p: Prepared) -> Computed:
        """Device stage (the model thread): features, network, token ids (one host copy)."""
        first = p.batch[0]
        with self.device.inference(int(p.lengths.sum())):
            feats, lens = self.fbank(self._on_device(p), p.lengths)
            ids = self.net.tokens(feats, lens, first.language, first.use_itn)
        self._batches += 1
        if self.exact is not None and self._batches & (self._batches - 1) == 0:
            log.info("%s: %d of %d output-layer rows recomputed in fp32 (best two logits within "
                     "%s rounding), %d batches", self.model_name, self.exact.recomputed,
                     self.exact.rows, self.device.dtype, self._batches)
        return Computed(p.batch, ids)

    def finish(self, c: Computed) -> list[Transcript]:
        """Host stage (while the device runs the next batch): token ids to text."""
        ignored = bool(c.batch[0].hotwords) and not self.family.hotwords
        results = []
        for ids in c.ids:
            text, lang = self.family.postprocess(self.text(ids))
            results.append(Transcript(text=text, language=lang, hotwords_ignored=ignored))
        return results

    def token_ids(self, batch: list[Utterance]) -> list[list[int]]:
        """Token ids per utterance (all share one `options`), computed batched."""
        return self.compute(self.prepare(batch)).ids

    def text(self, ids: list[int]) -> str:
        """Token ids to FunASR's raw text (before the family's post-processing)."""
        if self.family.name == "sensevoice":
            return str(self.tokenizer.decode(ids))
        tokens = self.tokenizer.ids2tokens(ids)
        text = self.tokenizer.tokens2text(tokens)
        if not hasattr(self.tokenizer, "bpemodel"):
            from funasr.utils import postprocess_utils

            text, _ = postprocess_utils.sentence_postprocess(tokens)
        return str(text)

    def transcribe(self, batch: list[Utterance]) -> list[Transcript]:
        """The three stages in a row (the batcher overlaps them across batches instead)."""
        if not batch:
            return []
        return self.finish(self.compute(self.prepare(batch)))


def load_direct_runner(model_dir: str, device: str = "cpu", threads: int = 1,
                       dtype: str = "fp32") -> DirectRunner:
    """A direct runner for `model_dir` on `device` (for tests and benchmarks)."""
    from gpu_worker.families import family_for

    cfg = WorkerConfig(model=model_dir, torch_device=device, threads=threads, dtype=dtype)
    return DirectRunner(model_dir, family_for(model_dir, "direct"),
                        TorchDevice(device, dtype, threads), cfg)

