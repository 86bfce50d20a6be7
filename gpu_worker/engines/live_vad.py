"""A live stream's online FSMN-VAD step, with its network call handed to the caller.

`vad_step` is FunASR's `FsmnVADStreaming.inference` (funasr 1.4.16) for one streamed chunk,
written as a generator: it does what that method does with the stream's cache (the front-end's
carried samples and frames, the 200 ms sub-chunks, the dynamic end-silence schedule, the
decibels, the state machine, the segment bookkeeping) by calling the model's own methods, but
where FunASR runs the FSMN encoder it yields a `VadCall` and waits for the scores. Run alone
(`VadCall.run`), a step is FunASR's `generate(input=chunk, cache=..., is_final=...,
chunk_size=...)`: the same calls on the same tensors. A live tick instead runs the `VadCall`s
of all its streams as one encoder pass (`run_vad_calls`): the FSMN's layers work row by row
(linear maps, a per-channel convolution along time, each stream's own left context), so a
stream's scores do not depend on its neighbours, and one pass costs about what one stream's
did (CPU, 20 frames: 5 ms for 1 stream, 10 ms for 16, 70 ms for 256).
"""

from __future__ import annotations

from collections.abc import Generator
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from gpu_worker.engines.vad_frames import detect_frames

STREAMING_CHUNK_LIMIT_MS = 15000  # FunASR: a chunk_size under this means streaming input


@dataclass
class VadCall:
    """One stream's FSMN encoder pass: its features and its encoder cache (FunASR's
    `cache["encoder"]`: a left-context tensor per layer, created on the first pass)."""

    encoder: Any  # the VAD model's FSMN encoder
    feats: torch.Tensor  # (1, T, D) on the model's device
    cache: dict[str, torch.Tensor]

    def run(self) -> torch.Tensor:
        """This call alone, exactly as FunASR's `ComputeScores` runs it."""
        with torch.no_grad():
            return self.encoder(self.feats, cache=self.cache)


VadSteps = Generator[VadCall, torch.Tensor, list[list[int]]]


def run_vad_calls(calls: list[VadCall]) -> list[torch.Tensor]:
    """The encoder passes of many streams, one batched pass per encoder and feature shape;
    each stream's cache is updated as its own pass would have."""
    scores: list[torch.Tensor | None] = [None] * len(calls)
    groups: dict[tuple[Any, ...], list[int]] = {}
    for i, c in enumerate(calls):
        key = (id(c.encoder), tuple(c.feats.shape[1:]), c.feats.device, c.feats.dtype)
        groups.setdefault(key, []).append(i)
    for members in groups.values():
        if len(members) == 1:
            scores[members[0]] = calls[members[0]].run()
            continue
        encoder = calls[members[0]].encoder
        caches = [calls[i].cache for i in members]
        merged: dict[str, torch.Tensor] = {}
        for key in {k for c in caches for k in c}:
            seen = next(c[key] for c in caches if key in c)
            merged[key] = torch.cat([c[key] if key in c else torch.zeros_like(seen)
                                     for c in caches])
        with torch.no_grad():
            out = encoder(torch.cat([calls[i].feats for i in members]), cache=merged)
        for b, i in enumerate(members):
            scores[i] = out[b:b + 1]
            for key, value in merged.items():
                calls[i].cache[key] = value[b:b + 1].clone()
    done = [s for s in scores if s is not None]
    assert len(done) == len(calls), "every call belongs to one group"
    return done


def run_alone(steps: VadSteps) -> list[list[int]]:
    """A step's encoder passes run one by one as FunASR runs them: its segments."""
    try:
        call = next(steps)
        while True:
            call = steps.send(call.run())
    except StopIteration as stop:
        return stop.value


def _segments(model: Any, feats: torch.Tensor, waveform: torch.Tensor, is_final: bool,
              cache: dict[str, Any], is_streaming_input: bool) -> VadSteps:
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
