"""A live stream's online FSMN-VAD step, with its network call handed to the caller.

`vad_step` is FunASR's `FsmnVADStreaming.inference` (funasr 1.4.16) for one streamed chunk,
written as a generator: it does what that method does with the stream's cache (the front-end's
carried samples and frames, the 200 ms sub-chunks, the dynamic end-silence schedule, the
decibels, the state machine, the segment bookkeeping) by calling the model's own methods, but
where FunASR runs the FSMN encoder it yields a `VadCall` and waits for the scores; where the
front-end (with our fbank installed, `gpu_worker.fast.features.install_online_fbank`) takes a
log-mel it yields an `FbankCall` first. Run alone (`.run()`), a step is FunASR's
`generate(input=chunk, cache=..., is_final=..., chunk_size=...)`: the same calls on the same
tensors. A live tick instead runs the calls of all its streams together (`run_vad_calls`):
one encoder pass for all `VadCall`s — the FSMN's layers work row by row (linear maps, a
per-channel convolution along time, each stream's own left context), so a stream's scores do
not depend on its neighbours, and one pass costs about what one stream's did (CPU, 20 frames:
5 ms for 1 stream, 10 ms for 16, 70 ms for 256) — and one log-mel of all `FbankCall`s' frames
(`BatchFbank.log_mel_many`: row by row too, bit for bit each stream's own on the CPU).
"""

from __future__ import annotations

from collections.abc import Generator
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from gpu_worker.engines.vad_frames import detect_frames
from gpu_worker.fast.features import online_fbank_input, set_ready_log_mel

STREAMING_CHUNK_LIMIT_MS = 15000  # FunASR: a chunk_size under this means streaming input


class VadWork:
    """Model work a VAD step hands to its caller: `run()` alone, or batched with other
    streams' work of the same `batch_key` by `run_vad_calls`."""

    def run(self) -> torch.Tensor:
        raise NotImplementedError

    def batch_key(self) -> tuple[Any, ...]:
        raise NotImplementedError

    @staticmethod
    def run_many(calls: list[Any]) -> list[torch.Tensor]:
        """Calls of one `batch_key` together: each one's result, as its `run()` gives it."""
        raise NotImplementedError


@dataclass
class FbankCall(VadWork):
    """One stream's log-mel: the waveform its front-end's next call takes frames from."""

    fbank: Any  # the front-end's `BatchFbank`
    wave: torch.Tensor  # (1, N) on the host, at the fbank's scale

    def run(self) -> torch.Tensor:
        return self.fbank.log_mel(self.wave).cpu()

    def batch_key(self) -> tuple[Any, ...]:
        return (id(self.fbank),)

    @staticmethod
    def run_many(calls: list[FbankCall]) -> list[torch.Tensor]:
        return calls[0].fbank.log_mel_many([c.wave for c in calls])


@dataclass
class VadCall(VadWork):
    """One stream's FSMN encoder pass: its features and its encoder cache (FunASR's
    `cache["encoder"]`: a left-context tensor per layer, created on the first pass)."""

    encoder: Any  # the VAD model's FSMN encoder
    feats: torch.Tensor  # (1, T, D) on the model's device
    cache: dict[str, torch.Tensor]

    def run(self) -> torch.Tensor:
        """This call alone, exactly as FunASR's `ComputeScores` runs it."""
        with torch.no_grad():
            return self.encoder(self.feats, cache=self.cache)

    def batch_key(self) -> tuple[Any, ...]:
        return (id(self.encoder), tuple(self.feats.shape[1:]), self.feats.device,
                self.feats.dtype)

    @staticmethod
    def run_many(calls: list[VadCall]) -> list[torch.Tensor]:
        """Equal-shaped passes of one encoder as one batch, each cache updated."""
        caches = [c.cache for c in calls]
        merged: dict[str, torch.Tensor] = {}
        for key in {k for c in caches for k in c}:
            seen = next(c[key] for c in caches if key in c)
            merged[key] = torch.cat([c[key] if key in c else torch.zeros_like(seen)
                                     for c in caches])
        with torch.no_grad():
            out = calls[0].encoder(torch.cat([c.feats for c in calls]), cache=merged)
        for b, cache in enumerate(caches):
            for key, value in merged.items():
                cache[key] = value[b:b + 1].clone()
        return [out[b:b + 1] for b in range(len(calls))]


VadSteps = Generator[VadWork, torch.Tensor, list[list[int]]]
# `_segments`: FunASR's list of one batch of segments (or none)
_SegmentSteps = Generator[VadWork, torch.Tensor, list[list[list[int]]]]


def run_vad_calls(calls: list[VadWork]) -> list[torch.Tensor]:
    """The VAD work of many streams, one batched call per kind and `batch_key` (one log-mel
    per fbank, one encoder pass per encoder and feature shape): each call's result, in order."""
    groups: dict[tuple[Any, ...], list[int]] = {}
    for i, c in enumerate(calls):
        groups.setdefault((type(c), *c.batch_key()), []).append(i)
    results: dict[int, torch.Tensor] = {}
    for members in groups.values():
        group = [calls[i] for i in members]
        out = [group[0].run()] if len(group) == 1 else type(group[0]).run_many(group)
        results.update(zip(members, out, strict=True))
    return [results[i] for i in range(len(calls))]


def run_alone(steps: VadSteps) -> list[list[int]]:
    """A step's encoder passes run one by one as FunASR runs them: its segments."""
    try:
        call = next(steps)
        while True:
            call = steps.send(call.run())
    except StopIteration as stop:
        return stop.value


def _segments(model: Any, feats: torch.Tensor, waveform: torch.Tensor, is_final: bool,
              cache: dict[str, Any], is_streaming_input: bool) -> _SegmentSteps:
    """`FsmnVADStreaming.forward`, the encoder pass yielded."""
    if feats.numel() == 0:
        return []
    stats = cache["stats"]
    stats.waveform = waveform
    model.ComputeDecibel(frame_count=feats.shape[1], cache=cache)
    scores = yield VadCall(model.encoder, feats, cache["encoder"])  # ComputeScores' pass
    assert scores.shape[1] == feats.shape[1], "The shape between feats and scores does not match"
    model.vad_opts.nn_eval_block_size = scores.shape[1]
    stats.frm_cnt += scores.shape[1]
    stats.scores = scores if stats.scores is None else torch.cat((stats.scores, scores), dim=1)
    detect_frames(model, cache, is_final)  # FunASR's DetectCommonFrames / DetectLastFrames
    model.DropCachedFrames(stats.data_buf_start_frame, cache=cache)
    batch: list[list[int]] = []
    for i in range(stats.output_data_buf_offset, len(stats.output_data_buf)):
        buf = stats.output_data_buf[i]
        if is_streaming_input:  # [beg, -1], [], [-1, end], [beg, end]
            if not buf.contain_seg_start_point:
                continue
            if not stats.next_seg and not buf.contain_seg_end_point:
                continue
            start_ms = buf.start_ms if stats.next_seg else -1
            if buf.contain_seg_end_point:
                end_ms = buf.end_ms
                stats.next_seg = True
                stats.output_data_buf_offset += 1
            else:
                end_ms = -1
                stats.next_seg = False
            batch.append([start_ms, end_ms])
        else:  # [beg, end]
            if not is_final and (not buf.contain_seg_start_point
                                 or not buf.contain_seg_end_point):
                continue
            batch.append([buf.start_ms, buf.end_ms])
            stats.output_data_buf_offset += 1
    return [batch] if batch else []


def _base_kwargs(vad: Any) -> dict[str, Any]:
    """The kwargs FunASR's `AutoModel.inference` starts a call with: its snapshot of the
    model's own, not `vad.kwargs` as an earlier `generate(**cfg)` left them (it merges a call's
    options into them, e.g. `max_end_silence_time`, and resets them only at its next call)."""
    base = getattr(vad, "_base_kwargs_map", {}).get("kwargs")
    return dict(base if base is not None else vad.kwargs)


def use_fast_fbank(vad: Any, device: str) -> bool:
    """Our log-mel (`gpu_worker.fast.features.install_online_fbank`, on `device`) in `vad`'s
    streaming front-end: the one `vad_step` takes and the one FunASR's own calls use; True
    when installed in both."""
    from gpu_worker.fast.features import install_online_fbank

    fronts = {id(f): f for f in (vad.kwargs.get("frontend"), _base_kwargs(vad).get("frontend"))
              if f is not None}
    return bool(fronts) and all([install_online_fbank(f, device) for f in fronts.values()])


def speech_frontier_ms(cache: dict[str, Any]) -> int | None:
    """Where the open segment's speech reaches so far (ms of the VAD session), or None when no
    segment is open: audio after it is silence the VAD is still timing, which may end the
    segment there."""
    stats = cache.get("stats")
    if stats is None or not stats.output_data_buf:
        return None
    buf = stats.output_data_buf[-1]
    if buf.contain_seg_start_point and not buf.contain_seg_end_point:
        return int(buf.end_ms)
    return None


def vad_step(vad: Any, audio: np.ndarray, cache: dict[str, Any], is_final: bool,
             chunk_size: int, end_silence_ms: int = 0) -> VadSteps:
    """One streamed chunk through the online FSMN-VAD (`vad`: FunASR's `AutoModel`): the
    segments `vad.generate(input=audio, cache=cache, is_final=is_final,
    chunk_size=chunk_size)[0]["value"]` returns, the encoder passes yielded as `VadCall`s.
    `end_silence_ms` > 0: the silence that ends a segment, fixed, as FunASR's
    `generate(..., max_end_silence_time=end_silence_ms)` (which would also write it into the
    shared model's options; here it stays in this stream's cache); 0: FunASR's dynamic
    schedule (2 s early in an utterance, shorter as it grows)."""
    from funasr.models.fsmn_vad_streaming.model import DEFAULT_SILENCE_SCHEDULE
    from funasr.utils.load_utils import extract_fbank, load_audio_text_image_video

    model = vad.model
    kwargs = {k: v for k, v in _base_kwargs(vad).items() if k != "cache"}
    kwargs.update(is_final=is_final, chunk_size=chunk_size)
    frontend = kwargs["frontend"]
    if len(cache) == 0:
        model.init_cache(cache, **kwargs)
        if end_silence_ms > 0:  # what init_cache(max_end_silence_time=...) puts in the stats
            cache["stats"].max_end_sil_frame_cnt_thresh = (
                end_silence_ms - model.vad_opts.speech_to_sil_time_thres)
    stride = int(chunk_size * frontend.fs / 1000)
    is_streaming_input = kwargs.get("is_streaming_input", chunk_size < STREAMING_CHUNK_LIMIT_MS)
    cfg = {"is_final": is_final, "is_streaming_input": is_streaming_input}
    samples = load_audio_text_image_video([audio], fs=frontend.fs,
                                          audio_fs=kwargs.get("fs", 16000),
                                          data_type=kwargs.get("data_type", "sound"),
                                          tokenizer=None, cache=cfg)
    final, is_streaming_input = cfg["is_final"], cfg["is_streaming_input"]
    if len(samples) == 0 or (hasattr(samples[0], "__len__") and len(samples[0]) == 0):
        return []
    sample = torch.cat((cache["prev_samples"], samples[0]))
    n = int(len(sample) // stride + int(final))
    m = int(len(sample) % stride * (1 - int(final)))
    segments: list[list[int]] = []
    dynamic = kwargs.get("dynamic_silence", kwargs.get("max_end_silence_time") is None
                         and end_silence_ms <= 0)
    schedule = kwargs.get("silence_schedule", DEFAULT_SILENCE_SCHEDULE)
    speech_to_sil_ms = model.vad_opts.speech_to_sil_time_thres
    accumulated_ms = cache.get("_dynamic_accumulated_ms", 0)
    in_speech = cache.get("_dynamic_in_speech", False)
    fe_kwargs = {"return_waveform": True} if getattr(frontend, "supports_aligned_waveforms",
                                                      False) else {}
    for i in range(n):
        last = final and i == n - 1
        piece = sample[i * stride:(i + 1) * stride]
        if dynamic and "stats" in cache:
            if cache["stats"].vad_state_machine.value == 2 or in_speech:
                accumulated_ms += chunk_size
                in_speech = True
            for limit_ms, silence_ms in schedule:
                if accumulated_ms <= limit_ms:
                    cache["stats"].max_end_sil_frame_cnt_thresh = max(
                        silence_ms - speech_to_sil_ms, 0)
                    cache["stats"].speech_noise_thres = 0.5
                    break
            cache["_dynamic_accumulated_ms"] = accumulated_ms
            cache["_dynamic_in_speech"] = in_speech
        wave = online_fbank_input(frontend, cache["frontend"], piece[None, :])
        if wave is not None:  # our fbank: its log-mel computed by the caller
            set_ready_log_mel(cache["frontend"], (yield FbankCall(frontend.batch_fbank, wave)))
        with torch.no_grad():  # as FunASR's `AutoModel.inference` runs it
            speech, _ = extract_fbank([piece], data_type=kwargs.get("data_type", "sound"),
                                      frontend=frontend, cache=cache["frontend"], is_final=last,
                                      **fe_kwargs)
        speech = speech.to(device=kwargs["device"])
        waveform = cache["frontend"].get("aligned_waveforms")
        if waveform is None or waveform.numel() == 0:
            waveform = cache["frontend"].get("waveforms")
        if speech.numel() > 0 and (waveform is None or waveform.numel() == 0):
            raise RuntimeError("Streaming VAD frontend must provide aligned_waveforms or "
                               "waveforms when emitting feature frames")
        found = yield from _segments(model, speech, waveform, last, cache, is_streaming_input)
        if found:
            segments.extend(*found)
            if dynamic:
                accumulated_ms, in_speech = 0, False
                cache["_dynamic_accumulated_ms"] = 0
                cache["_dynamic_in_speech"] = False
    cache["prev_samples"] = sample[-m:] if m > 0 else torch.empty(0)
    if final:
        model.init_cache(cache)
    return segments
