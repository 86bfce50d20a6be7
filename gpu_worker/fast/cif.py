"""Batched CIF (continuous integrate-and-fire) for Paraformer's `CifPredictorV2`.

FunASR's batched CIF indexes past its buffer when a clip after the last firing one fires
nothing (an `IndexError`), and its tail handling without a mask depends on padding. This is
our own batched version with the same arithmetic per clip as FunASR gives a clip alone:

1. weights (alphas) from the predictor's convolution and linear layer, zero past each clip;
2. the tail: `tail_threshold` added at each clip's own end (one extra zero frame);
3. a token fires where the running sum of weights (float64 cumsum, as FunASR) crosses an
   integer; its embedding is the weighted sum of encoder frames since the previous firing,
   the fractional remainders carried over, computed within each clip only.
"""

from __future__ import annotations

from typing import Any

import torch


def predictor_weights(predictor: Any, hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """(B, T) CIF weights of `CifPredictorV2` for encoder output `hidden`, zero where `mask`
    (B, T) is False."""
    context = predictor.pad(hidden.transpose(1, 2))
    out = torch.relu(predictor.cif_conv1d(context)).transpose(1, 2)
    alphas = torch.sigmoid(predictor.cif_output(out))
    alphas = torch.relu(alphas * predictor.smooth_factor - predictor.noise_threshold)
    return alphas.squeeze(-1) * mask.to(alphas.dtype)


def add_tail(hidden: torch.Tensor, alphas: torch.Tensor, lens: torch.Tensor,
             tail: float) -> tuple[torch.Tensor, torch.Tensor]:
    """One zero frame appended, and `tail` added to each clip's weight at its own end."""
    b, t, d = hidden.shape
    alphas = torch.cat((alphas, alphas.new_zeros(b, 1)), dim=1)
    at_end = torch.arange(t + 1, device=alphas.device)[None, :] == lens[:, None]
    alphas = alphas + at_end.to(alphas.dtype) * tail
    return torch.cat((hidden, hidden.new_zeros(b, 1, d)), dim=1), alphas


def integrate(hidden: torch.Tensor, alphas: torch.Tensor, threshold: float
              ) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, L, D) fired embeddings (L = the largest rounded weight sum) and (B,) counts."""
    if threshold != 1.0:
        raise ValueError("the direct CIF supports threshold 1.0 (as CifPredictorV2 uses)")
    b, _, d = hidden.shape
    prefix = torch.cumsum(alphas, dim=1, dtype=torch.float64).to(torch.float32)
    floor = torch.floor(prefix)
    prev_floor = torch.cat((floor.new_zeros(b, 1), floor[:, :-1]), dim=1)
    fired = (floor - prev_floor) > 0  # (B, T)
    remains = prefix - floor
    weighted = torch.cumsum(alphas.unsqueeze(-1) * hidden, dim=1)
    frames = weighted[fired]  # (N, D), clip by clip in time order
    remain_frames = remains[fired].unsqueeze(-1) * hidden[fired]
    first = (torch.cumsum(fired.to(torch.int32), dim=1) == 1)[fired]  # first firing per clip
    shift_frames = torch.roll(frames, 1, dims=0)
    shift_frames[first] = 0
    shift_remain = torch.roll(remain_frames, 1, dims=0)
    shift_remain[first] = 0
    frames = frames - shift_frames + shift_remain - remain_frames
    counts = fired.sum(dim=1)
    max_len = int(torch.round(alphas.sum(-1)).int().max()) if b else 0
    max_len = max(max_len, int(counts.max()) if b else 0)
    out = hidden.new_zeros(b, max_len, d)
    slots = torch.arange(max_len, device=hidden.device)[None, :] < counts[:, None]
    out[slots] = frames
    return out, counts


def cif_predict(predictor: Any, hidden: torch.Tensor, lens: torch.Tensor
                ) -> tuple[torch.Tensor, torch.Tensor]:
    """Acoustic embeddings (B, L, D) and token counts (B,) for each clip of the batch, as
    `CifPredictorV2` gives each clip alone. Always fp32, autocast off (as FunASR's predictor:
    token counts come from sums of weights)."""
    with torch.autocast(hidden.device.type, enabled=False):
        return _cif_predict(predictor, hidden.float(), lens)


def _cif_predict(predictor: Any, hidden: torch.Tensor, lens: torch.Tensor
                 ) -> tuple[torch.Tensor, torch.Tensor]:
    mask = torch.arange(hidden.size(1), device=hidden.device)[None, :] < lens[:, None]
    alphas = predictor_weights(predictor, hidden, mask)
    if predictor.tail_threshold > 0.0:
        hidden, alphas = add_tail(hidden, alphas, lens, float(predictor.tail_threshold))
        token_num = torch.floor(alphas.sum(dim=-1))
    else:
        token_num = alphas.sum(dim=-1)
    embeds, _ = integrate(hidden, alphas, float(predictor.threshold))
    if predictor.tail_threshold > 0.0:
        embeds = embeds[:, :int(token_num.max())]
    return embeds, token_num
