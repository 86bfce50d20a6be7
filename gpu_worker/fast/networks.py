"""The networks of the direct path: FunASR's loaded modules run batched with correct masks.

Each class takes a batch of features (B, T, D) with their lengths, already on the device, and
returns per clip the token ids FunASR's own `inference` would decode, computed on the device
for the whole batch (greedy CTC for SenseVoice, CIF predictor + non-autoregressive decoder for
Paraformer). Token ids go back to the host in one copy; turning them into text is the
runner's (CPU) job.
"""

from __future__ import annotations

from typing import Any, Protocol

import torch

from gpu_worker.fast.cif import cif_predict


class TokenNet(Protocol):
    """A family's network on the direct path."""

    def tokens(self, feats: torch.Tensor, lens: torch.Tensor, language: str,
               use_itn: bool) -> list[list[int]]:
        """Token ids per clip of the batch."""
        ...


def _lengths_mask(lens: torch.Tensor, max_len: int) -> torch.Tensor:
    return torch.arange(max_len, device=lens.device)[None, :] < lens[:, None]


class SenseVoiceNet:
    """SenseVoiceSmall: four query embeddings (language, event, emotion, ITN) before the
    features, the encoder, then greedy CTC (argmax, collapse repeats, drop blanks)."""

    EVENT_EMOTION = (1, 2)  # the fixed event and emotion query ids of SenseVoice

    def __init__(self, model: Any) -> None:
        self.model = model
        self.blank = int(model.blank_id)

    def query_ids(self, language: str, use_itn: bool) -> list[int]:
        lid = self.model.lid_dict.get(language, 0)
        itn = self.model.textnorm_dict["withitn" if use_itn else "woitn"]
        return [lid, *self.EVENT_EMOTION, itn]

    def tokens(self, feats: torch.Tensor, lens: torch.Tensor, language: str,
               use_itn: bool) -> list[list[int]]:
        model = self.model
        ids = torch.tensor([self.query_ids(language, use_itn)], device=feats.device)
        queries = model.embed(ids).expand(feats.size(0), -1, -1)
        speech = torch.cat((queries.to(feats.dtype), feats), dim=1)
        enc, enc_lens = model.encoder(speech, lens.to(torch.int32) + ids.size(1))
        if isinstance(enc, tuple):
            enc = enc[0]
        best = model.ctc.log_softmax(enc).argmax(dim=-1)  # (B, T)
        return ctc_collapse(best, enc_lens, self.blank)


def ctc_collapse(best: torch.Tensor, lens: torch.Tensor, blank: int) -> list[list[int]]:
    """Greedy CTC on the device: keep a frame's id when it starts a run, is not blank and lies
    within the clip; one host copy for the whole batch."""
    first = torch.ones_like(best[:, :1], dtype=torch.bool)
    starts = torch.cat((first, best[:, 1:] != best[:, :-1]), dim=1)
    keep = starts & (best != blank) & _lengths_mask(lens, best.size(1))
    counts = keep.sum(dim=1).tolist()
    flat = best[keep].tolist()
    out, pos = [], 0
    for n in counts:
        out.append(flat[pos:pos + n])
        pos += n
    return out


class ParaformerNet:
    """Paraformer (offline): encoder, encoder output zeroed past each clip's end (the CIF
    predictor's convolution would otherwise read the padding), our batched CIF (`cif`),
    decoder, argmax over each clip's predicted token count; sos/eos/blank dropped."""

    def __init__(self, model: Any) -> None:
        self.model = model
        self.drop = {int(model.sos), int(model.eos), int(model.blank_id)}

    def tokens(self, feats: torch.Tensor, lens: torch.Tensor, language: str,
               use_itn: bool) -> list[list[int]]:
        model = self.model
        enc, enc_lens = model.encode(feats, lens.to(torch.int32))
        if isinstance(enc, tuple):
            enc = enc[0]
        enc = enc * _lengths_mask(enc_lens, enc.size(1))[..., None].to(enc.dtype)
        if type(model.predictor).__name__ == "CifPredictorV2":
            embeds, token_num = cif_predict(model.predictor, enc, enc_lens)
        else:  # other predictors: FunASR's own (masked input, so per clip as alone)
            embeds, token_num, _, _ = model.calc_predictor(enc, enc_lens)
        token_len = token_num.round().long()
        if int(token_len.max()) < 1:
            return [[] for _ in range(feats.size(0))]
        dec = model.cal_decoder_with_predictor(enc, enc_lens, embeds, token_len)[0]
        best = dec.argmax(dim=-1)
        keep = _lengths_mask(token_len, best.size(1))
        counts = keep.sum(dim=1).tolist()
        flat = best[keep].tolist()
        out, pos = [], 0
        for n in counts:
            out.append([t for t in flat[pos:pos + n] if t not in self.drop])
            pos += n
        return out


def net_for(family: str, model: Any) -> TokenNet:
    """The direct-path network for a model family ("sensevoice" or "paraformer")."""
    if family == "sensevoice":
        return SenseVoiceNet(model)
    if family == "paraformer":
        return ParaformerNet(model)
    raise ValueError(f"the direct engine has no network for family {family!r}")
