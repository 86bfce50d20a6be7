"""One live stream's state: online FSMN-VAD plus incremental streaming-Paraformer decoding.

Audio arrives in small chunks (60-200 ms). Each chunk goes to the VAD in online mode (its own
cache); while the VAD says someone speaks, the utterance's audio goes to the streaming model
with the stream's own decoding cache, so the text grows chunk by chunk (interim results).
When the VAD sees the end of speech, the rest of the utterance is decoded with
`is_final=True` and the utterance's final text is the text of every call joined, exactly what
FunASR's own streaming loop (`generate(input=chunk, cache=cache, is_final=...)`) gives for the
utterance's samples. The decoding cache is then reset, so memory stays bounded however long
the stream stays open: only audio since the last safe point (the open utterance's start, or a
short look-back in silence) is kept.

A step is written as a generator (`steps`): it yields each decoder call it needs and gets the
call's text back, so that a tick can run the decoder calls of many streams as one batched
model call (`gpu_worker/engines/live_batch.py`); `step` runs the calls one by one through
FunASR's `generate`. Everything here runs on the engine's model thread; no locks.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Generator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from gpu_worker.engines.live_vad import VadWork, speech_frontier_ms, vad_step
from protos.common.wire import SAMPLES_PER_MS

log = logging.getLogger(__name__)

DEFAULT_CHUNK_SIZE = (0, 10, 5)  # 600 ms chunks, 300 ms look-ahead (FunASR's default)
DEFAULT_ENCODER_LOOK_BACK = 4
DEFAULT_DECODER_LOOK_BACK = 1
VAD_CHUNK_MS = 200  # online FSMN-VAD step (FunASR's websocket server uses the same order)
SILENCE_LOOK_BACK_MS = 3000  # audio kept in silence: the VAD reports starts this far back at most
FRAME_SAMPLES = 960  # one 60 ms frame of the streaming model's chunk_size


@dataclass(frozen=True)
class LiveOptions:
    """Decoding settings of one stream."""

    chunk_size: tuple[int, int, int] = DEFAULT_CHUNK_SIZE
    encoder_look_back: int = DEFAULT_ENCODER_LOOK_BACK
    decoder_look_back: int = DEFAULT_DECODER_LOOK_BACK
    offset_ms: int = 0  # position of the first sample in the caller's timeline
    # Silence that ends an utterance (END_SILENCE_RANGE_MS); 0: FunASR's dynamic schedule
    # for online FSMN-VAD (2 s early in an utterance, shorter as it grows).
    end_silence_ms: int = 0
    # The VAD through FunASR's own `generate` (bench/streaming.py's reference loop) instead of
    # `vad_step` (the same computation, its encoder pass yielded to be batched by a tick).
    funasr_vad: bool = False

    def generate_kwargs(self) -> dict[str, Any]:
        return {"chunk_size": list(self.chunk_size),
                "encoder_chunk_look_back": self.encoder_look_back,
                "decoder_chunk_look_back": self.decoder_look_back}

    @property
    def stride_samples(self) -> int:
        """Samples the model decodes per call (its chunk)."""
        return self.chunk_size[1] * FRAME_SAMPLES


@dataclass(frozen=True)
class Utterance:
    start_ms: int
    end_ms: int
    text: str


@dataclass(frozen=True)
class DecodeCall:
    """One decoder call a step needs: FunASR's `generate(input=audio, cache=cache,
    is_final=is_final, **kwargs)` for the stream (or the same computation batched)."""

    audio: np.ndarray
    is_final: bool
    cache: dict[str, Any]  # the stream's decoding cache for its open utterance
    kwargs: dict[str, Any]

    def generate(self, asr_model: Any) -> str:
        """Run this call alone through FunASR; the text of the chunk(s)."""
        out = asr_model.generate(input=self.audio, cache=self.cache, is_final=self.is_final,
                                 **self.kwargs)
        return str(out[0].get("text", "")) if out else ""


@dataclass
class LiveUpdate:
    """What one chunk changed."""

    finals: list[Utterance] = field(default_factory=list)
    interim_text: str = ""
    interim_start_ms: int = -1
    safe_ms: int = 0
    processed_ms: int = 0
    tick_streams: int = 0  # rows of the (largest) model call that decoded this chunk; 0: none
    step_s: float = 0.0


# A step yields the VAD's encoder passes (send back the scores) and the decoder calls (send
# back the text); a tick runs each kind for all its streams together.
StepRun = Generator["DecodeCall | VadWork", "str | torch.Tensor", "LiveUpdate"]


class LiveSession:
    """One stream: VAD cache, decoding cache, and the audio not yet safe to forget."""

    def __init__(self, vad_model: Any, asr_model: Any, options: LiveOptions) -> None:
        self.vad_model = vad_model
        self.asr_model = asr_model
        self.options = options
        self._kwargs = options.generate_kwargs()
        self._vad_cache: dict[str, Any] = {}
        self._asr_cache: dict[str, Any] = {}
        self._buf: list[np.ndarray] = []  # audio from sample `_buf_start` on (session samples)
        self._buf_start = 0
        self._received = 0  # session samples received
        self._utt_start: int | None = None  # session sample where the open utterance began
        self._fed = 0  # session samples of the open utterance given to the decoder
        self._texts: list[str] = []  # decoder output per call of the open utterance
        self._last_end = 0  # session sample where the last utterance ended
        self.closed = False

    # -- time ---------------------------------------------------------------------------------

    def _abs_ms(self, sample: int) -> int:
        return self.options.offset_ms + sample // SAMPLES_PER_MS

    # -- audio kept ---------------------------------------------------------------------------

    def _slice(self, a: int, b: int) -> np.ndarray:
        """Session samples [a, b) that are still kept."""
        a, b = max(a, self._buf_start), min(b, self._received)
        if a >= b:
            return np.zeros(0, dtype=np.float32)
        whole = np.concatenate(self._buf) if len(self._buf) != 1 else self._buf[0]
        self._buf = [whole]
        return whole[a - self._buf_start:b - self._buf_start]

    def _drop_before(self, sample: int) -> None:
        if sample <= self._buf_start or not self._buf:
            return
        whole = np.concatenate(self._buf) if len(self._buf) != 1 else self._buf[0]
        cut = min(sample, self._received) - self._buf_start
        self._buf = [whole[cut:]]
        self._buf_start += cut

    @property
    def safe_sample(self) -> int:
        if self._utt_start is not None:
            return self._utt_start
        return max(self._last_end, self._received - SILENCE_LOOK_BACK_MS * SAMPLES_PER_MS)

    # -- decoding -----------------------------------------------------------------------------

    def _decode(self, upto: int, is_final: bool) -> Generator[DecodeCall, str, None]:
        """Give the decoder the open utterance's audio up to session sample `upto`."""
        audio = self._slice(self._fed, upto)
        if not len(audio) and not is_final:
            return
        text = yield DecodeCall(audio, is_final, self._asr_cache, self._kwargs)
        self._fed = max(self._fed, upto)
        if text:
            self._texts.append(text)

    def _decode_ready(self) -> Generator[DecodeCall, str, None]:
        """Decode the open utterance's whole chunks up to the VAD's speech frontier (the open
        segment's end so far, ~40-200 ms behind the audio while someone speaks). The VAD
        reports the end of speech late, after its end-silence window: the silence it is still
        timing stays out of the decoder, so an utterance's text is exactly the decoding of its
        VAD segment, and the end is decoded when the VAD reports it."""
        assert self._utt_start is not None
        stride = self.options.stride_samples
        frontier = speech_frontier_ms(self._vad_cache)
        if frontier is None:  # no open segment (cannot happen while an utterance is open)
            return
        limit = min(self._received, frontier * SAMPLES_PER_MS)
        chunks = (limit - self._utt_start) // stride
        upto = self._utt_start + chunks * stride
        if upto > self._fed:
            yield from self._decode(upto, is_final=False)

    def _finish_utterance(self, end: int) -> Generator[DecodeCall, str, Utterance]:
        """Decode the rest of the open utterance up to session sample `end` in whole chunks,
        the last one final (the chunks FunASR's own loop gives the segment), and close it."""
        assert self._utt_start is not None
        end = max(end, self._fed)
        stride = self.options.stride_samples
        while end - self._fed > stride:
            before = self._fed
            yield from self._decode(before + stride, is_final=False)
            if self._fed == before:  # nothing kept to decode (cannot happen while open)
                break
        yield from self._decode(end, is_final=True)
        utt = Utterance(self._abs_ms(self._utt_start), self._abs_ms(end), "".join(self._texts))
        self._asr_cache = {}
        self._texts = []
        self._utt_start = None
        self._last_end = end
        return utt

    def steps(self, audio: np.ndarray, is_final: bool) -> StepRun:
        """Feed one chunk (float32, 16 kHz): yields each decoder call it needs (send back the
        call's text), returns what the chunk changed. The VAD runs here, per stream."""
        started = time.perf_counter()
        update = LiveUpdate()
        if len(audio):
            self._buf.append(np.ascontiguousarray(audio, dtype=np.float32))
            self._received += len(audio)
        if len(audio) or is_final:
            silence = self.options.end_silence_ms
            if self.options.funasr_vad:
                fixed = {"max_end_silence_time": silence} if silence > 0 else {}
                out = self.vad_model.generate(input=audio, cache=self._vad_cache,
                                              is_final=is_final, chunk_size=VAD_CHUNK_MS,
                                              **fixed)
                segments = out[0]["value"] if out else []
            else:
                segments = yield from vad_step(self.vad_model, audio, self._vad_cache,
                                               is_final, VAD_CHUNK_MS, silence)
            for beg_ms, end_ms in segments:
                if beg_ms >= 0 and self._utt_start is None:
                    self._utt_start = min(max(int(beg_ms) * SAMPLES_PER_MS, self._last_end),
                                          self._received)
                    self._fed = self._utt_start
                if end_ms >= 0 and self._utt_start is not None:
                    end = min(max(int(end_ms) * SAMPLES_PER_MS, self._utt_start), self._received)
                    update.finals.append((yield from self._finish_utterance(end)))
        if self._utt_start is not None:
            if is_final:
                update.finals.append((yield from self._finish_utterance(self._received)))
            else:
                yield from self._decode_ready()
        if is_final:
            self.closed = True
            self._vad_cache = {}
        self._drop_before(self.safe_sample)
        if self._utt_start is not None:
            update.interim_text = "".join(self._texts)
            update.interim_start_ms = self._abs_ms(self._utt_start)
        update.safe_ms = self._abs_ms(self.safe_sample)
        update.processed_ms = self._abs_ms(self._received)
        update.step_s = time.perf_counter() - started
        return update

    def step(self, audio: np.ndarray, is_final: bool) -> LiveUpdate:
        """Feed one chunk and decode it alone: each decoder call is FunASR's own
        `generate(input=..., cache=..., is_final=...)` for this stream (batch size 1)."""
        run = self.steps(audio, is_final)
        calls = 0
        try:
            call = next(run)
            while True:
                if isinstance(call, VadWork):
                    call = run.send(call.run())
                    continue
                calls += 1
                call = run.send(call.generate(self.asr_model))
        except StopIteration as stop:
            update: LiveUpdate = stop.value
        update.tick_streams = 1 if calls else 0
        return update

    @property
    def kept_samples(self) -> int:
        """Audio held for this stream (bounded: the open utterance or the look-back)."""
        return self._received - self._buf_start
