"""Batched Kaldi-style fbank + LFR + CMVN on the device, equal to FunASR's `WavFrontend`.

FunASR computes features one clip at a time on the CPU (kaldi-native-fbank or torchaudio's
Kaldi compliance code). This module computes the same features for a padded batch in one go
with torch on any device: frames cut with `unfold` (snip_edges), DC offset removed,
pre-emphasis 0.97, the configured window, a power spectrum of the next power-of-two FFT,
Kaldi's triangular mel banks (20 Hz .. Nyquist), log with a float epsilon floor; then LFR
stacking (first frame repeated left, last frame repeated right) and CMVN `(x + shift) * scale`.
Frames past a clip's end never mix into its features, so a clip's features do not depend on
its neighbours. Clips shorter than one window take FunASR's own path (FunASR shrinks the window
for them).

`install_online_fbank` puts the same log-mel into FSMN-VAD's streaming front-end
(`WavFrontendOnline`) in place of kaldi-native-fbank, for one front-end instance.
"""

from __future__ import annotations

import math
import types
from typing import Any

import torch

PREEMPHASIS = 0.97
LOW_FREQ = 20.0


def _mel(freq: torch.Tensor) -> torch.Tensor:
    return 1127.0 * torch.log(1.0 + freq / 700.0)


def kaldi_mel_banks(n_mels: int, n_fft: int, sample_rate: int) -> torch.Tensor:
    """(n_mels, n_fft // 2 + 1) triangular weights as Kaldi's MelBanks builds them (the
    Nyquist bin gets no weight)."""
    n_bins = n_fft // 2
    freqs = torch.arange(n_bins, dtype=torch.float64) * (sample_rate / n_fft)
    mel = _mel(freqs)
    mel_low = _mel(torch.tensor(LOW_FREQ, dtype=torch.float64))
    mel_high = _mel(torch.tensor(sample_rate / 2.0, dtype=torch.float64))
    delta = (mel_high - mel_low) / (n_mels + 1)
    banks = torch.zeros(n_mels, n_bins + 1, dtype=torch.float64)
    for b in range(n_mels):
        left, center, right = (mel_low + b * delta, mel_low + (b + 1) * delta,
                               mel_low + (b + 2) * delta)
        up = (mel - left) / (center - left)
        down = (right - mel) / (right - center)
        weight = torch.where(mel <= center, up, down)
        inside = (mel > left) & (mel < right)
        banks[b, :n_bins] = torch.where(inside, weight, torch.zeros_like(weight))
    return banks.to(torch.float32)


def kaldi_window(kind: str, size: int) -> torch.Tensor:
    """Kaldi's analysis windows (periodic=False, as `FeatureWindowFunction`)."""
    n = torch.arange(size, dtype=torch.float64)
    a = 2 * math.pi / (size - 1)
    if kind == "hamming":
        w = 0.54 - 0.46 * torch.cos(a * n)
    elif kind == "hanning":
        w = 0.5 - 0.5 * torch.cos(a * n)
    elif kind == "povey":
        w = (0.5 - 0.5 * torch.cos(a * n)) ** 0.85
    elif kind == "rectangular":
        w = torch.ones(size, dtype=torch.float64)
    else:
        raise ValueError(f"window {kind!r} is not supported by the direct front-end")
    return w.to(torch.float32)


class BatchFbank:
    """FunASR `WavFrontend` features for a padded batch of waveforms on `device`."""

    def __init__(self, frontend: Any, device: str = "cpu") -> None:
        """`frontend`: FunASR's loaded `WavFrontend` (its settings and CMVN are read)."""
        if getattr(frontend, "dither", 0.0) != 0.0:
            raise ValueError("the direct front-end needs dither 0 (frontend_conf.dither)")
        if not getattr(frontend, "snip_edges", True):
            raise ValueError("the direct front-end needs snip_edges")
        self.frontend = frontend
        self.device = torch.device(device)
        self.fs = int(frontend.fs)
        self.win = int(self.fs * frontend.frame_length / 1000)
        self.shift = int(self.fs * frontend.frame_shift / 1000)
        self.n_fft = 1 << (self.win - 1).bit_length()
        self.lfr_m, self.lfr_n = int(frontend.lfr_m), int(frontend.lfr_n)
        self.scale = float(1 << 15) if frontend.upsacle_samples else 1.0
        self.window = kaldi_window(frontend.window, self.win).to(self.device)
        self.banks = kaldi_mel_banks(int(frontend.n_mels), self.n_fft, self.fs).to(self.device)
        cmvn = frontend.cmvn
        self.cmvn = None if cmvn is None else cmvn.to(self.device, torch.float32)

    def num_frames(self, num_samples: int) -> int:
        """Feature frames (after LFR) of a clip of `num_samples` samples."""
        if num_samples < self.win:
            return 1 if num_samples > 0 else 0
        return math.ceil((1 + (num_samples - self.win) // self.shift) / self.lfr_n)

    def __call__(self, wave: torch.Tensor, lengths: torch.Tensor
                 ) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, N) float waveforms in [-1, 1] padded with any finite values (padded frames
        are masked by a product: NaN would stay), (B,) sample counts (best on the host) ->
        (B, T, D) features zero-padded past each clip's end, (B,) frame counts."""
        # From host lengths: no device sync.
        short = [i for i, n in enumerate(lengths.tolist()) if n < self.win]
        with self._fp32():
            return self._features(wave, lengths, short)

    def _fp32(self) -> Any:
        """Features in fp32 also where the model runs under autocast (`--dtype bf16|fp16`),
        as FunASR's, computed on the CPU, are: a bf16 mel product and log would move them by
        up to ~0.02 after CMVN (`tests/test_direct.py`)."""
        return torch.autocast(self.device.type, enabled=False)

    def _features(self, wave: torch.Tensor, lengths: torch.Tensor, short: list[int]
                  ) -> tuple[torch.Tensor, torch.Tensor]:
        wave = wave.to(self.device, torch.float32)
        lengths = lengths.to(self.device, torch.long)
        if wave.size(1) < self.win:
            wave = torch.nn.functional.pad(wave, (0, self.win - wave.size(1)))
        mel = self._log_mel(wave * self.scale)  # (B, F, n_mels)
        n_frames = torch.clamp((lengths - self.win) // self.shift + 1, min=0)
        feats, lfr_lens = self._lfr(mel, n_frames)
        if self.cmvn is not None:
            dim = feats.size(-1)
            feats = (feats + self.cmvn[0, :dim]) * self.cmvn[1, :dim]
        valid = torch.arange(feats.size(1), device=self.device)[None, :] < lfr_lens[:, None]
        feats = feats * valid[..., None]
        if short:
            feats, lfr_lens = self._with_short_clips(feats, lfr_lens, wave, lengths, short)
        return feats, lfr_lens

    def log_mel(self, wave: torch.Tensor) -> torch.Tensor:
        """(B, N) waveforms at the front-end's scale -> (B, F, n_mels) Kaldi log-mel (snip_edges:
        F = 1 + (N - window) // shift), on this object's device."""
        return self._log_mel(wave.to(self.device, torch.float32))

    def log_mel_many(self, waves: list[torch.Tensor]) -> list[torch.Tensor]:
        """Several (1, N_i) waveforms at the front-end's scale -> each one's (1, F_i, n_mels)
        log-mel on the host, as `log_mel` gives it, computed as one batch of frames on this
        object's device (one FFT and one mel product for all: what a live tick's streams
        share)."""
        frames = [w.reshape(-1).unfold(0, self.win, self.shift) for w in waves]
        mel = self._frames_log_mel(torch.cat(frames).to(self.device, torch.float32)).cpu()
        return [m.clone()[None] for m in mel.split([f.size(0) for f in frames])]

    def _log_mel(self, wave: torch.Tensor) -> torch.Tensor:
        return self._frames_log_mel(wave.unfold(1, self.win, self.shift))  # (B, F, win)

    def _frames_log_mel(self, frames: torch.Tensor) -> torch.Tensor:
        """(..., win) frames -> (..., n_mels) log-mel, in fp32 under any autocast."""
        with self._fp32():
            frames = frames - frames.mean(dim=-1, keepdim=True)
            prev = torch.cat((frames[..., :1], frames[..., :-1]), dim=-1)
            frames = (frames - PREEMPHASIS * prev) * self.window
            spec = torch.fft.rfft(frames, n=self.n_fft)
            power = spec.real.square() + spec.imag.square()
            energies = torch.matmul(power, self.banks.t())
            return torch.log(torch.clamp(energies, min=torch.finfo(torch.float32).eps))

    def _lfr(self, mel: torch.Tensor, n_frames: torch.Tensor
             ) -> tuple[torch.Tensor, torch.Tensor]:
        """Stack `lfr_m` frames every `lfr_n`, repeating each clip's first and last frame."""
        lfr_lens = torch.div(n_frames + self.lfr_n - 1, self.lfr_n, rounding_mode="floor")
        if self.lfr_m == 1 and self.lfr_n == 1:
            return mel, lfr_lens
        b, f, d = mel.shape
        t_out = max(1, math.ceil(f / self.lfr_n))
        base = torch.arange(t_out, device=self.device)[:, None] * self.lfr_n
        offs = torch.arange(self.lfr_m, device=self.device)[None, :] - (self.lfr_m - 1) // 2
        idx = (base + offs)[None, :, :]  # (1, T, m)
        last = torch.clamp(n_frames - 1, min=0)[:, None, None]
        idx = torch.minimum(torch.clamp(idx, min=0), last)  # (B, T, m)
        gathered = torch.gather(mel, 1, idx.reshape(b, -1, 1).expand(-1, -1, d))
        return gathered.reshape(b, t_out, self.lfr_m * d), lfr_lens

    def _with_short_clips(self, feats: torch.Tensor, lens: torch.Tensor, wave: torch.Tensor,
                          lengths: torch.Tensor, short: list[int]
                          ) -> tuple[torch.Tensor, torch.Tensor]:
        """Clips shorter than one window through FunASR's own front-end (it shrinks the
        window to the clip)."""
        for i in short:
            n = int(lengths[i])
            if n == 0:
                lens[i] = 0
                continue
            clip = wave[i, :n].float().cpu()[None, :]
            mat, mat_lens = self.frontend(clip, [n])
            t = int(mat_lens[0])
            if t > feats.size(1):
                feats = torch.nn.functional.pad(feats, (0, 0, 0, t - feats.size(1)))
            feats[i] = 0
            feats[i, :t] = mat[0, :t].to(self.device)
            lens[i] = t
        return feats, lens


def install_online_fbank(frontend: Any, device: str = "cpu") -> bool:
    """Compute `frontend`'s (FunASR's `WavFrontendOnline`, FSMN-VAD's streaming front-end)
    log-mel with `BatchFbank.log_mel` on `device` instead of kaldi-native-fbank; True when
    installed (False, and the front-end untouched, where this module cannot reproduce its
    settings). Only the fbank step changes: FunASR's own code still keeps the sample and
    frame caches and does LFR and CMVN, on the CPU (its CMVN with the rows broadcast,
    `broadcast_cmvn`: bit for bit FunASR's, without numpy tiling on every call).

    Why: kaldi-native-fbank took 1.08 s of 2.52 s of FSMN-VAD over a 10-minute recording on
    one core, torch's batched FFT 0.15-0.35 s (BENCHMARKS.md, `bench/vad_speed.py`). The
    features equal kaldi's within float rounding, not bit for bit; `tests/test_vad_frames.py`
    checks that the VAD's segments stay FunASR's."""
    if type(frontend).__name__ != "WavFrontendOnline":
        return False
    try:
        fbank = BatchFbank(frontend, device)
    except (ValueError, AttributeError):
        return False
    size, shift = frontend.frame_sample_length, frontend.frame_shift_sample_length
    if (size, shift) != (fbank.win, fbank.shift):
        return False

    def forward_fbank(self: Any, input: torch.Tensor, input_lengths: torch.Tensor,
                      cache: dict[str, Any] | None = None, **kwargs: Any
                      ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        # FunASR's `WavFrontendOnline.forward_fbank` (batch of one), the fbank call ours.
        if cache is None:
            cache = {}
        ready = cache.pop(READY_LOG_MEL, None)
        input, frame_num = _online_input(self, cache, input)
        cache["input_cache"] = input[:, -(input.shape[-1] - frame_num * shift):]
        waveforms = feats = lengths = torch.empty(0)
        if frame_num:
            waveforms = input[:, :(frame_num - 1) * shift + size]
            if ready is not None and ready.size(1) == frame_num:
                feats = ready
            else:
                feats = fbank.log_mel(waveforms * (1 << 15)).cpu()
            lengths = torch.as_tensor([feats.size(1)] * feats.size(0))
        cache["fbanks"] = feats
        cache["fbanks_lens"] = lengths.clone()  # FunASR deep-copies it: the same, slower
        return waveforms, feats, lengths

    frontend.forward_fbank = types.MethodType(forward_fbank, frontend)
    frontend.batch_fbank = fbank
    if isinstance(frontend.cmvn, torch.Tensor):
        frontend.apply_cmvn = broadcast_cmvn
    return True


def broadcast_cmvn(inputs: torch.Tensor, cmvn: torch.Tensor) -> torch.Tensor:
    """FunASR's `WavFrontendOnline.apply_cmvn` (in place: add the shift row, multiply by the
    scale row) with the rows broadcast instead of tiled to every frame with numpy on each
    call: the same float32 operations, bit for bit."""
    dim = inputs.shape[-1]
    inputs += cmvn[0:1, :dim].to(inputs.device, inputs.dtype)
    inputs *= cmvn[1:2, :dim].to(inputs.device, inputs.dtype)
    return inputs.type(torch.float32)


READY_LOG_MEL = "ready_log_mel"  # a front-end cache's log-mel computed ahead (`online_fbank_input`)


def _online_input(frontend: Any, cache: dict[str, Any], piece: torch.Tensor
                  ) -> tuple[torch.Tensor, int]:
    """`WavFrontendOnline.forward_fbank`'s input: the carried samples and `piece` ((1, N)),
    and how many frames it cuts from them."""
    joined = torch.cat((cache["input_cache"], piece), dim=1)
    return joined, frontend.compute_frame_num(joined.shape[-1], frontend.frame_sample_length,
                                              frontend.frame_shift_sample_length)


def online_fbank_input(frontend: Any, cache: dict[str, Any], piece: torch.Tensor
                       ) -> torch.Tensor | None:
    """For a front-end with our fbank installed: the waveform (at the fbank's scale) whose
    log-mel its next call with `piece` ((1, N), cache `cache`) will take, so that a caller can
    compute it ahead, for many streams at once (`BatchFbank.log_mel_many`), and hand it over
    with `set_ready_log_mel`. None when the call takes no frames or the front-end is FunASR's.
    An empty `cache` is initialised as the front-end's first call would."""
    if getattr(frontend, "batch_fbank", None) is None:
        return None
    if not cache:
        frontend.init_cache(cache)
    joined, frame_num = _online_input(frontend, cache, piece)
    if not frame_num:
        return None
    size, shift = frontend.frame_sample_length, frontend.frame_shift_sample_length
    return joined[:, :(frame_num - 1) * shift + size] * (1 << 15)


def set_ready_log_mel(cache: dict[str, Any], log_mel: torch.Tensor) -> None:
    """The log-mel of `online_fbank_input`'s waveform, for the front-end's next call (used
    once; a call that cuts a different number of frames computes its own)."""
    cache[READY_LOG_MEL] = log_mel
