"""An output layer whose argmax stays fp32's when the model runs under bf16/fp16 autocast.

Greedy decoding keeps, per frame (SenseVoice's CTC) or per token (Paraformer's decoder), the
argmax of the output layer's logits. Under autocast that layer runs in bf16: its inputs,
weights and result are rounded to 8 significant bits, and where the best two logits lie closer
than that rounding the argmax can change. Measured with CPU autocast standing in for CUDA's
(`tests/test_direct.py`): on the random-weight test models, whose logits are nearly flat (median
margin between the best two ~0.07 nats), 17 % of SenseVoice's tokens changed. Trained models
are more confident, so fewer rows are in doubt there; the bound is a worst case (every
rounding error in the same direction), so on real weights it still flags more rows than
actually flip: how many, a run with real weights will show (the worker logs the share).

`ExactArgmaxLinear` wraps such a layer: it computes the logits as autocast does, bounds each
row's rounding error, and recomputes in fp32 only the rows whose best two logits lie within
twice that bound, so every row's argmax is the one fp32 gives for the same input. Rows out of
doubt keep their low-precision logits (decoding only takes their argmax). The encoder's own
rounding is not undone: its output differs from fp32's a little, and where the logits are
nearly flat that can still move an argmax.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

# The bound per logit, in units of the format's unit roundoff u times |x|·max|w_j| + max|b|
# + max|z| (|x|·|w_j| bounds sum |x_i w_ji|): rounding x and w to the format (2u), cuBLAS's
# reduced-precision split-K reductions (allowed for bf16 and fp16 by default, at most u more),
# the bias and the result (u each, within the one factor as they are added, not multiplied).
SAFETY = 4.0


class ExactArgmaxLinear(torch.nn.Module):
    """`linear` as autocast runs it, with the rows in doubt recomputed in fp32."""

    def __init__(self, linear: torch.nn.Linear) -> None:
        super().__init__()
        self.linear = linear
        weight = linear.weight.detach().float()
        self.weight_norm = float(weight.norm(dim=1).max())
        self.bias_max = 0.0 if linear.bias is None else float(linear.bias.detach().abs().max())
        self.rows = 0  # rows seen under autocast
        self.recomputed = 0  # of them, rows recomputed in fp32

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = self.linear(x)
        if z.dtype == torch.float32:  # no autocast: already fp32's logits
            return z
        unit = torch.finfo(z.dtype).eps / 2
        # Reductions over the low-precision logits themselves (exact: they are what was
        # rounded), no full-size temporaries: the best two, and max |z| from max and min.
        best2 = z.topk(2, dim=-1).values.float()
        largest = torch.maximum(best2[..., 0].abs(), z.amin(dim=-1).float().abs())
        scale = x.float().norm(dim=-1) * self.weight_norm + self.bias_max + largest
        doubt = best2[..., 0] - best2[..., 1] <= 2 * SAFETY * unit * scale
        count = int(doubt.sum())  # one sync; the caller copies the ids to the host after it
        self.rows += doubt.numel()
        self.recomputed += count
        logits = z.float()
        if count:
            with torch.autocast(x.device.type, enabled=False):
                logits[doubt] = F.linear(x[doubt].float(), self.linear.weight.float(),
                                         None if self.linear.bias is None
                                         else self.linear.bias.float())
        return logits


def install(model: Any, family: str) -> ExactArgmaxLinear:
    """Wrap the output layer whose argmax greedy decoding takes: SenseVoice's CTC projection,
    Paraformer's decoder output layer. Returns the wrapper (its counters tell how many rows
    were recomputed)."""
    if family == "sensevoice":
        owner, name = model.ctc, "ctc_lo"
    elif family == "paraformer":
        owner, name = model.decoder, "output_layer"
    else:
        raise ValueError(f"no output layer known for family {family!r}")
    layer = getattr(owner, name)
    if isinstance(layer, ExactArgmaxLinear):
        return layer
    if not isinstance(layer, torch.nn.Linear):
        raise ValueError(f"{family}: {name} is a {type(layer).__name__}, not a Linear")
    wrapped = ExactArgmaxLinear(layer)
    setattr(owner, name, wrapped)
    return wrapped
