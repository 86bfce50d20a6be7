"""Batched chunk steps of streaming Paraformer across many live streams.

FunASR's `ParaformerStreaming.generate(input=chunk, cache=cache, is_final=...)` decodes one
stream per call: front-end features of a 600 ms chunk, the SANM chunk encoder (positional
encoding from the stream's frame count, the previous chunk's look-ahead frames prepended, each
layer's self-attention keys/values of the last `encoder_chunk_look_back` chunks), the streaming
CIF predictor (the stream's carried weight and hidden state), and the decoder (each layer's
FSMN memory and cross-attention keys/values of the last `decoder_chunk_look_back` chunks).

`StreamingBatch.run` takes one chunk of each of many streams and runs that computation as
batched tensors: streams with the same chunk settings and input shape (feature frames, last
chunk or not; in steady state all of them) form one group, and each group is one pass through
the encoder, the CIF predictor and the decoder, one model call. Look-back caches of different
lengths (an utterance's first chunks) share the call: only the attention core runs per cache
length (`stream_layers.py`). The new caches are scattered back to each stream's
`StreamCache`. The arithmetic per stream is FunASR's: the model's own modules on stacked
tensors, the CIF loop as the same float32 sequence vectorised over streams, and the decoder's
FSMN is causal (no right context), so the zero padding of streams with fewer tokens never
reaches a real token. Features are FunASR's own front-end, per chunk (it keeps no state).
"""

from __future__ import annotations

import functools
import logging
from collections import defaultdict
from collections.abc import Hashable
from dataclasses import dataclass, field
from typing import Any

import torch

from gpu_worker.fast.stream_layers import KV, decoder_layer, encoder_layer

log = logging.getLogger(__name__)

TAIL_SAMPLES = 960  # a last chunk shorter than this decodes the cached look-ahead frames only


@dataclass
class StreamCache:
    """One stream's decoding state for its open utterance (FunASR's `init_cache` dict, in
    per-stream tensors with batch size 1)."""

    chunk_size: tuple[int, int, int]
    encoder_look_back: int
    decoder_look_back: int
    prev_samples: torch.Tensor = field(default_factory=lambda: torch.zeros(0))
    start_idx: int = 0  # frames through the positional encoding so far
    feats: torch.Tensor | None = None  # (1, c0 + c2, D) embedded look-ahead frames
    enc: list[KV | None] | None = None  # per encoder layer: self-attention look-back k/v
    cif_hidden: torch.Tensor | None = None  # (1, 1, H)
    cif_alphas: torch.Tensor | None = None  # (1, 1)
    dec_fsmn: dict[int, torch.Tensor] = field(default_factory=dict)  # layer -> (1, H, k - 1)
    dec_opt: list[KV | None] | None = None  # per decoder layer: cross-attention look-back k/v

    @property
    def stride_samples(self) -> int:
        return self.chunk_size[1] * 960


@dataclass
class ChunkJob:
    """One model chunk of one stream: `audio` (None: the tail, cached frames only)."""

    cache: StreamCache
    audio: torch.Tensor | None
    is_final: bool
    feats: torch.Tensor | None = None  # (1, T, D) on the device, filled by `run`


def unsupported_reason(automodel: Any) -> str | None:
    """Why `StreamingBatch` cannot serve this FunASR model (None: it can)."""
    model = automodel.model
    frontend = automodel.kwargs.get("frontend")
    if type(model).__name__ != "ParaformerStreaming":
        return f"model class {type(model).__name__} is not ParaformerStreaming"
    if type(frontend).__name__ != "WavFrontend":
        return f"front-end {type(frontend).__name__} keeps state between chunks"
    if getattr(model, "beam_search", None) is not None:
        return "beam search (LM or CTC weight) is configured"
    if getattr(model, "normalize", None) is not None:
        return "a separate feature normalisation layer is configured"
    if type(model.encoder).__name__ != "SANMEncoderChunkOpt" or model.encoder.interctc_layer_idx:
        return f"encoder {type(model.encoder).__name__} is not the plain SANM chunk encoder"
    if type(model.encoder.embed).__name__ != "StreamSinusoidalPositionEncoder":
        return "the encoder's input layer is not the streaming sinusoidal position encoder"
    if type(model.predictor).__name__ != "CifPredictorV2":
        return f"predictor {type(model.predictor).__name__} is not CifPredictorV2"
    for layer in _fsmn_layers(model.decoder):
        fsmn = layer.self_attn
        if tuple(fsmn.pad_fn.padding) != (fsmn.kernel_size - 1, 0):
            return "the decoder's FSMN looks ahead (right padding)"
    return None


def _fsmn_layers(decoder: Any) -> list[Any]:
    layers = list(decoder.decoders)[:decoder.att_layer_num]
    if decoder.num_blocks - decoder.att_layer_num > 1:
        layers += list(decoder.decoders2)
    return [layer for layer in layers if layer.self_attn is not None]


@functools.lru_cache(maxsize=128)
def _positions(upto: int, depth: int) -> torch.Tensor:
    """FunASR's streaming sinusoidal encoding of positions 1..upto on the host, computed over
    the same whole range as its `StreamSinusoidalPositionEncoder` (so every value is
    bit-identical; vectorised and scalar math paths may differ in the last bit)."""
    positions = torch.arange(1, upto + 1, dtype=torch.float32)
    step = torch.log(torch.tensor([10000.0])) / (depth / 2 - 1)
    inv = torch.exp(torch.arange(depth / 2).float() * (-step))
    scaled = positions.reshape(1, -1, 1) * inv.reshape(1, 1, -1)
    return torch.cat([torch.sin(scaled), torch.cos(scaled)], dim=2)[0]


class StreamingBatch:
    """Chunk steps of many streams of one `ParaformerStreaming` model as batched calls."""

    def __init__(self, automodel: Any, device_frontend: bool = False) -> None:
        """`device_frontend`: features of full chunks by our batched `BatchFbank` on the
        model's device (one call for all streams) instead of FunASR's front-end per chunk on
        the host; equal within float rounding, not bit for bit (see docs/live-streaming.md)."""
        reason = unsupported_reason(automodel)
        if reason is not None:
            raise ValueError(f"batched streaming steps unavailable: {reason}")
        self.model = automodel.model
        self.frontend = automodel.kwargs["frontend"]
        self.tokenizer = automodel.kwargs["tokenizer"]
        self.device = str(automodel.kwargs.get("device", "cpu"))
        self.feat_dim = int(self.frontend.n_mels) * int(self.frontend.lfr_m)
        # FunASR's `generate` sets torch's thread count to the calling model's `ncpu` each
        # call (the live VAD uses 1); the serial path's ASR calls restore it, so do we.
        self.threads = int(automodel.kwargs.get("ncpu", torch.get_num_threads()))
        self.calls = 0  # fused model calls so far (groups run)
        self.fbank: Any = None
        if device_frontend:
            from gpu_worker.fast.features import BatchFbank

            self.fbank = BatchFbank(self.frontend, self.device)

    def new_cache(self, chunk_size: tuple[int, int, int], encoder_look_back: int,
                  decoder_look_back: int) -> StreamCache:
        return StreamCache(tuple(chunk_size), encoder_look_back, decoder_look_back)  # type: ignore[arg-type]

    # -- front-end (FunASR's own, per chunk: WavFrontend keeps no state between chunks) ------

    def _features(self, job: ChunkJob) -> None:
        from funasr.utils.load_utils import extract_fbank

        if job.audio is None:
            return
        feats, _ = extract_fbank([job.audio], data_type="sound", frontend=self.frontend,
                                 cache={}, is_final=job.is_final)
        job.feats = feats.to(self.device)

    def _batch_features(self, jobs: list[ChunkJob]) -> list[ChunkJob]:
        """Full-length chunks through `BatchFbank` in one call; the rest (tails, short last
        chunks) are returned for FunASR's front-end."""
        by_len: dict[int, list[ChunkJob]] = defaultdict(list)
        for j in jobs:
            if j.audio is not None and len(j.audio) == j.cache.stride_samples:
                by_len[len(j.audio)].append(j)
        for n, full in by_len.items():
            wave = torch.stack([j.audio for j in full])  # type: ignore[misc]
            feats, _ = self.fbank(wave, torch.full((len(full),), n, dtype=torch.long))
            for i, j in enumerate(full):
                j.feats = feats[i:i + 1]
        return [j for j in jobs if j.feats is None]

    def _key(self, job: ChunkJob) -> Hashable:
        c = job.cache
        frames = -1 if job.feats is None else int(job.feats.shape[1])
        return (c.chunk_size, c.encoder_look_back, c.decoder_look_back, job.is_final,
                job.audio is None, frames)

    def run(self, jobs: list[ChunkJob]) -> tuple[list[list[str]], list[int]]:
        """Decode one chunk of each job's stream: (tokens per job, rows of the fused call that
        ran each job). Jobs must belong to different streams."""
        if self.device == "cpu" and torch.get_num_threads() != self.threads:
            torch.set_num_threads(self.threads)
        rest = self._batch_features(jobs) if self.fbank is not None else jobs
        for job in rest:
            self._features(job)
        groups: dict[Hashable, list[int]] = defaultdict(list)
        for i, job in enumerate(jobs):
            groups[self._key(job)].append(i)
        tokens: list[list[str]] = [[] for _ in jobs]
        rows = [0] * len(jobs)
        for members in groups.values():
            out = self._run_group([jobs[i] for i in members])
            self.calls += 1
            for i, toks in zip(members, out, strict=True):
                tokens[i] = toks
                rows[i] = len(members)
        return tokens, rows

    # -- one group: equal input shapes, one fused model call -----------------------------------

    def _run_group(self, jobs: list[ChunkJob]) -> list[list[str]]:
        enc = self._encode(jobs)
        embeds, counts = self._cif(enc, jobs)
        tokens: list[list[str]] = [[] for _ in jobs]
        # FunASR skips the decoder (and its caches) for a chunk without tokens.
        members = [i for i in range(len(jobs)) if counts[i] >= 1]
        if members:
            if len(members) < len(jobs):
                index = torch.tensor(members, device=enc.device)
                enc, embeds = enc[index], embeds[index]
            ids = self._decode(enc, embeds, [counts[i] for i in members],
                               [jobs[i].cache for i in members])
            for i, seq in zip(members, ids, strict=True):
                tokens[i] = self._tokens(seq)
        for job in jobs:
            if job.is_final:  # FunASR re-initialises the cache after the last chunk
                fresh = self.new_cache(job.cache.chunk_size, job.cache.encoder_look_back,
                                       job.cache.decoder_look_back)
                job.cache.__dict__.update(fresh.__dict__)
        return tokens

    def _tokens(self, ids: list[int]) -> list[str]:
        m = self.model
        ids = [t for t in ids if t not in (m.eos, m.sos, m.blank_id)]
        return list(self.tokenizer.ids2tokens(ids))

    def _encode(self, jobs: list[ChunkJob]) -> torch.Tensor:
        enc = self.model.encoder
        first = jobs[0].cache
        c0, _, c2 = first.chunk_size
        scale = enc.output_size() ** 0.5
        caches = [j.cache for j in jobs]
        if jobs[0].audio is None:  # tail: FunASR scales the cached frames in place, uses them
            x = torch.cat([self._overlap(c) for c in caches], dim=0) * scale
            for c in caches:
                c.start_idx += c0 + c2
        else:
            x = torch.cat([j.feats for j in jobs], dim=0) * scale  # type: ignore[misc]
            t, depth = x.shape[1], x.shape[2]
            pos = torch.stack([_positions(c.start_idx + t, depth)[c.start_idx:]
                               for c in caches]).to(self.device)
            x = x + pos
            for c in caches:
                c.start_idx += t
            x = torch.cat((torch.cat([self._overlap(c) for c in caches], dim=0), x), dim=1)
            for b, c in enumerate(caches):
                c.feats = x[b:b + 1, -(c0 + c2):]
        n_layers = len(enc.encoders0) + len(enc.encoders)
        olds = [c.enc if c.enc is not None else [None] * n_layers for c in caches]
        new: list[list[KV | None]] = [[None] * len(caches) for _ in range(n_layers)]
        look_back = first.encoder_look_back
        size = list(first.chunk_size)
        for i, layer in enumerate(enc.encoders0):  # FunASR stores these at index 0
            x, new[0] = encoder_layer(layer, x, [o[i] for o in olds], size, look_back)
        for j, layer in enumerate(enc.encoders):
            i = j + len(enc.encoders0)
            x, new[i] = encoder_layer(layer, x, [o[i] for o in olds], size, look_back)
        if enc.normalize_before:
            x = enc.after_norm(x)
        if look_back > 0 or look_back == -1:
            for b, c in enumerate(caches):
                c.enc = [layer_new[b] for layer_new in new]
        return x

    def _overlap(self, c: StreamCache) -> torch.Tensor:
        if c.feats is None:
            c.feats = torch.zeros((1, c.chunk_size[0] + c.chunk_size[2], self.feat_dim),
                                  device=self.device)
        return c.feats

    def _cif(self, hidden: torch.Tensor, jobs: list[ChunkJob]) -> tuple[torch.Tensor, list[int]]:
        """`CifPredictorV2.forward_chunk` for a batch: the same float32 operations per stream,
        one time step at a time for all streams together."""
        p = self.model.predictor
        caches = [j.cache for j in jobs]
        c0, c1, _ = caches[0].chunk_size
        is_final = jobs[0].is_final
        b, _, dim = hidden.shape
        out = torch.relu(p.cif_conv1d(p.pad(hidden.transpose(1, 2)))).transpose(1, 2)
        alphas = torch.sigmoid(p.cif_output(out))
        alphas = torch.nn.functional.relu(alphas * p.smooth_factor - p.noise_threshold)
        alphas = alphas.squeeze(-1)
        alphas[:, :c0] = 0.0
        if not is_final:
            alphas[:, c0 + c1:] = 0.0
        dev = hidden.device
        prev_h = [c.cif_hidden if c.cif_hidden is not None else torch.zeros(1, 1, dim)
                  for c in caches]
        prev_a = [c.cif_alphas if c.cif_alphas is not None else torch.zeros(1, 1)
                  for c in caches]
        hidden = torch.cat((torch.cat(prev_h).to(dev), hidden), dim=1)
        alphas = torch.cat((torch.cat(prev_a).to(dev), alphas), dim=1)
        if is_final:
            hidden = torch.cat((hidden, torch.zeros((b, 1, dim), device=dev)), dim=1)
            tail = torch.tile(torch.tensor([[p.tail_threshold]], device=dev), (b, 1))
            alphas = torch.cat((alphas, tail), dim=1)
        thr = p.threshold
        integrate = torch.zeros(b, device=dev)
        frames = torch.zeros((b, dim), device=dev)
        fired, fired_frames = [], []
        for t in range(alphas.shape[1]):
            a, h = alphas[:, t], hidden[:, t]
            fire = (a + integrate) >= thr
            emitted = frames + (thr - integrate)[:, None] * h
            summed = integrate + a
            after_fire = summed - thr
            frames = torch.where(fire[:, None], after_fire[:, None] * h, frames + a[:, None] * h)
            integrate = torch.where(fire, after_fire, summed)
            fired.append(fire)
            fired_frames.append(emitted)
        carried = torch.where((integrate > 0.0)[:, None], frames / integrate[:, None], frames)
        for i, c in enumerate(caches):
            c.cif_alphas = integrate[i].reshape(1, 1)
            c.cif_hidden = carried[i].reshape(1, 1, dim)
        fire_bt = torch.stack(fired, dim=1)  # (B, T)
        counts = fire_bt.sum(dim=1).tolist()
        width = max(1, max(counts))
        embeds = torch.zeros((b, width, dim), device=dev)
        rows, steps = fire_bt.nonzero(as_tuple=True)
        slots = torch.cumsum(fire_bt.long(), dim=1)[rows, steps] - 1
        embeds[rows, slots] = torch.stack(fired_frames, dim=1)[rows, steps]
        return embeds, [int(n) for n in counts]

    def _decode(self, memory: torch.Tensor, embeds: torch.Tensor, counts: list[int],
                caches: list[StreamCache]) -> list[list[int]]:
        """The decoder's chunk pass for streams with tokens; greedy ids per stream."""
        dec = self.model.decoder
        first = caches[0]
        size, look_back = list(first.chunk_size), first.decoder_look_back
        x = embeds[:, :max(counts)]
        olds = [c.dec_opt if c.dec_opt is not None else [None] * len(dec.decoders)
                for c in caches]

        def fsmn_cache(i: int, layer: Any) -> torch.Tensor | None:
            if layer.self_attn is None:
                return None
            k = layer.self_attn.kernel_size
            states = [c.dec_fsmn.get(i) for c in caches]
            zero = torch.zeros((1, x.shape[-1], k - 1), device=x.device)
            state = torch.cat([s if s is not None else zero for s in states], dim=0)
            # FunASR drops the oldest column of its cache before use: one dummy column.
            return torch.cat((state[:, :, :1], state), dim=2)

        def keep_fsmn(i: int, layer: Any, cache: torch.Tensor | None) -> None:
            if layer.self_attn is None or cache is None:
                return
            k = layer.self_attn.kernel_size
            for b, c in enumerate(caches):
                c.dec_fsmn[i] = cache[b:b + 1, :, counts[b]:counts[b] + k - 1]

        new_opt: list[list[KV | None]] = [[None] * len(caches) for _ in dec.decoders]
        for i in range(dec.att_layer_num):
            layer = dec.decoders[i]
            x, fsmn, new_opt[i] = decoder_layer(layer, x, memory, fsmn_cache(i, layer),
                                                [o[i] for o in olds], size, look_back)
            keep_fsmn(i, layer, fsmn)
        if dec.num_blocks - dec.att_layer_num > 1:
            for i, layer in enumerate(dec.decoders2):
                j = i + dec.att_layer_num
                x, memory, fsmn, _ = layer.forward_chunk(x, memory,
                                                         fsmn_cache=fsmn_cache(j, layer))
                keep_fsmn(j, layer, fsmn)
        for layer in dec.decoders3:
            x, memory, _, _ = layer.forward_chunk(x, memory)
        if dec.normalize_before:
            x = dec.after_norm(x)
        if dec.output_layer is not None:
            x = dec.output_layer(x)
        if look_back > 0 or look_back == -1:
            for b, c in enumerate(caches):
                c.dec_opt = [layer_new[b] for layer_new in new_opt]
        ids = torch.log_softmax(x, dim=-1).argmax(dim=-1).tolist()
        return [row[:n] for row, n in zip(ids, counts, strict=True)]


def split_call(cache: StreamCache, audio: torch.Tensor, is_final: bool) -> list[ChunkJob]:
    """The chunks FunASR's `inference` cuts one `generate` call's audio into (the stream's
    carried samples first; a remainder is carried to the next call unless it is the last)."""
    samples = torch.cat((cache.prev_samples, audio))
    stride = cache.stride_samples
    n = len(samples) // stride + int(is_final)
    rest = 0 if is_final else len(samples) % stride
    jobs = []
    for i in range(n):
        last = is_final and i == n - 1
        chunk = samples[i * stride:(i + 1) * stride]
        jobs.append(ChunkJob(cache, None if last and len(chunk) < TAIL_SAMPLES else chunk, last))
    cache.prev_samples = samples[-rest:] if rest > 0 else torch.zeros(0)
    return jobs
