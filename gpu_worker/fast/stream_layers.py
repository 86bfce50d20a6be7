"""Streaming Paraformer's attention layers for a batch of streams whose look-back caches differ.

FunASR's chunk layers (`EncoderLayerSANM.forward_chunk` with `MultiHeadedAttentionSANM`, and
`DecoderLayerSANM.forward_chunk` with `MultiHeadedAttentionCrossAtt`) prepend one stream's
cached keys and values to the chunk's own: a batch needs equal cache lengths. An utterance's
first chunks have shorter caches than the rest (none, then one look-back chunk, two, ...), so
here only the attention core (scores, softmax, weighted sum) runs per group of streams with
equal cache length; the projections, the FSMN memory, the norms and the feed-forward layers
run once for the whole batch. Per stream the operations are FunASR's, in FunASR's order.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any

import torch

KV = dict[str, torch.Tensor]


def _groups(caches: list[KV | None]) -> list[tuple[int, list[int]]]:
    by_len: dict[int, list[int]] = defaultdict(list)
    for row, cache in enumerate(caches):
        by_len[-1 if cache is None else int(cache["k"].shape[2])].append(row)
    return list(by_len.items())


def _take(t: torch.Tensor, rows: list[int], whole: bool) -> torch.Tensor:
    return t if whole else t[torch.tensor(rows, device=t.device)]


def _stacked(caches: list[KV | None], rows: list[int], key: str) -> torch.Tensor:
    return torch.cat([caches[r][key] for r in rows], dim=0)  # type: ignore[index]


def _attend(mod: Any, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Scaled dot-product attention as FunASR's `forward_attention` without a mask, up to (not
    including) the output projection: (B, h, T, d_k) -> (B, T, h * d_k)."""
    q = q * mod.d_k ** (-0.5)
    scores = torch.matmul(q, k.transpose(-2, -1))
    attn = mod.dropout(torch.softmax(scores, dim=-1))
    x = torch.matmul(attn, v)
    return x.transpose(1, 2).contiguous().view(x.size(0), -1, mod.h * mod.d_k)


def _scatter(parts: list[tuple[list[int], torch.Tensor]], like: torch.Tensor, width: int
             ) -> torch.Tensor:
    if len(parts) == 1:
        return parts[0][1]
    out = like.new_empty((like.size(0), like.size(2), width))
    for rows, ctx in parts:
        out[torch.tensor(rows, device=out.device)] = ctx
    return out


def encoder_self_attention(mod: Any, x: torch.Tensor, caches: list[KV | None],
                           chunk_size: list[int], look_back: int
                           ) -> tuple[torch.Tensor, list[KV | None]]:
    """`MultiHeadedAttentionSANM.forward_chunk` for rows with their own look-back caches."""
    q_h, k_h, v_h, v = mod.forward_qkv(x)
    use_cache = (chunk_size is not None and look_back > 0) or look_back == -1
    c1, c2 = chunk_size[1], chunk_size[2]
    new: list[KV | None] = list(caches)
    groups = _groups(caches)
    parts = []
    for length, rows in groups:
        whole = len(groups) == 1
        q, k, val = (_take(t, rows, whole) for t in (q_h, k_h, v_h))
        if use_cache:
            k_stride, v_stride = k[:, :, :-c2, :], val[:, :, :-c2, :]
            if length >= 0:
                ck, cv = _stacked(caches, rows, "k"), _stacked(caches, rows, "v")
                k, val = torch.cat((ck, k), dim=2), torch.cat((cv, val), dim=2)
                nk, nv = torch.cat((ck, k_stride), dim=2), torch.cat((cv, v_stride), dim=2)
                if look_back != -1:
                    nk, nv = nk[:, :, -(look_back * c1):, :], nv[:, :, -(look_back * c1):, :]
            else:
                nk, nv = k_stride, v_stride
            for j, r in enumerate(rows):
                new[r] = {"k": nk[j:j + 1], "v": nv[j:j + 1]}
        parts.append((rows, _attend(mod, q, k, val)))
    fsmn_memory = mod.forward_fsmn(v, None)
    return mod.linear_out(_scatter(parts, q_h, mod.h * mod.d_k)) + fsmn_memory, new


def encoder_layer(layer: Any, x: torch.Tensor, caches: list[KV | None], chunk_size: list[int],
                  look_back: int) -> tuple[torch.Tensor, list[KV | None]]:
    """`EncoderLayerSANM.forward_chunk` (SCAMA chunk encoder) for rows with their own caches."""
    residual = x
    if layer.normalize_before:
        x = layer.norm1(x)
    attn, new = encoder_self_attention(layer.self_attn, x, caches, chunk_size, look_back)
    x = residual + attn if layer.in_size == layer.size else attn
    if not layer.normalize_before:
        x = layer.norm1(x)
    residual = x
    if layer.normalize_before:
        x = layer.norm2(x)
    x = residual + layer.feed_forward(x)
    if not layer.normalize_before:
        x = layer.norm2(x)
    return x, new


def cross_attention(mod: Any, x: torch.Tensor, memory: torch.Tensor, caches: list[KV | None],
                    chunk_size: list[int], look_back: int
                    ) -> tuple[torch.Tensor, list[KV | None]]:
    """`MultiHeadedAttentionCrossAtt.forward_chunk` for rows with their own look-back caches
    of the encoder output."""
    q_h, k_h, v_h = mod.forward_qkv(x, memory)
    use_cache = chunk_size is not None and look_back > 0
    keep = look_back * chunk_size[1] if use_cache else 0
    new: list[KV | None] = list(caches)
    groups = _groups(caches)
    parts = []
    for length, rows in groups:
        whole = len(groups) == 1
        q, k, val = (_take(t, rows, whole) for t in (q_h, k_h, v_h))
        if use_cache:
            if length >= 0:
                k = torch.cat((_stacked(caches, rows, "k"), k), dim=2)
                val = torch.cat((_stacked(caches, rows, "v"), val), dim=2)
            nk, nv = k[:, :, -keep:, :], val[:, :, -keep:, :]
            for j, r in enumerate(rows):
                new[r] = {"k": nk[j:j + 1], "v": nv[j:j + 1]}
        parts.append((rows, _attend(mod, q, k, val)))
    return mod.linear_out(_scatter(parts, q_h, mod.h * mod.d_k)), new


def decoder_layer(layer: Any, x: torch.Tensor, memory: torch.Tensor,
                  fsmn_cache: torch.Tensor | None, caches: list[KV | None],
                  chunk_size: list[int], look_back: int
                  ) -> tuple[torch.Tensor, torch.Tensor | None, list[KV | None]]:
    """`DecoderLayerSANM.forward_chunk` for rows with their own cross-attention caches;
    `fsmn_cache` is the whole batch's FSMN cache in FunASR's layout."""
    residual = x
    tgt = layer.norm1(x) if layer.normalize_before else x
    tgt = layer.feed_forward(tgt)
    x = tgt
    if layer.self_attn:
        if layer.normalize_before:
            tgt = layer.norm2(tgt)
        x, fsmn_cache = layer.self_attn(tgt, None, fsmn_cache)
        x = residual + layer.dropout(x)
    new = caches
    if layer.src_attn is not None:
        residual = x
        if layer.normalize_before:
            x = layer.norm3(x)
        att, new = cross_attention(layer.src_attn, x, memory, caches, chunk_size, look_back)
        x = residual + att
    return x, fsmn_cache, new
