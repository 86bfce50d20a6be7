"""One tick of live streams on the model thread: every stream's chunk step, decoder calls fused.

A tick holds the next chunk of each of many streams. Each stream's step (`LiveSession.steps`)
runs its own online VAD and yields the decoder calls it needs; `run_tick_fused` cuts each call
into the model's chunks exactly as FunASR's `ParaformerStreaming.inference` does (the stream's
carried samples first, a tail chunk on the last call) and runs round after round: in each
round the next chunk of every stream with a call in progress goes into one
`StreamingBatch.run`, a batched pass of encoder, CIF predictor and decoder over all of them
(one model call per group of equal cache shapes). A call's text is FunASR's post-processing
of its tokens, sent back to the stream's step, which may then need another call (an utterance
ended and the next began in the same chunk) or finish with its update.

`run_tick_serial` is the fallback for models `StreamingBatch` does not serve: each stream's
calls go through FunASR's `generate` one by one.

Each step's VAD hands its log-mel and its network pass to the tick (`live_vad.FbankCall`,
`live_vad.VadCall`); the tick runs those of all its streams as one call each (`run_vad_calls`)
before the decoder rounds.

A failure inside one stream's step (its VAD's front-end or state machine, say) fails that
stream only; a failure of a fused VAD pass or model call fails the streams in that call.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from gpu_worker.engines.live_session import DecodeCall, LiveSession, LiveUpdate, StepRun
from gpu_worker.engines.live_vad import VadWork, run_vad_calls

log = logging.getLogger(__name__)

FUSED_CACHE_KEY = "fused"  # where a stream's batched decoding state lives in its cache dict
Outcome = LiveUpdate | BaseException


@dataclass
class TickItem:
    """One stream's chunk in a tick."""

    session: LiveSession
    audio: np.ndarray
    is_final: bool


@dataclass
class TickStats:
    """What a tick cost in model calls (fused mode: batched calls; serial: generate calls)."""

    model_calls: int = 0
    rows: int = 0  # stream chunks decoded by those calls
    largest: int = 0


def run_tick_serial(tick: list[TickItem]) -> tuple[list[Outcome], TickStats]:
    """Each stream's step with its decoder calls through FunASR, one stream at a time."""
    out: list[Outcome] = []
    stats = TickStats()
    for item in tick:
        try:
            update = item.session.step(item.audio, item.is_final)
        except Exception as exc:
            log.exception("live step failed")
            out.append(exc)
            continue
        if update.tick_streams:
            stats.model_calls += 1
            stats.rows += 1
            stats.largest = 1
        out.append(update)
    return out, stats


@dataclass
class _Pending:
    """A decoder call of one stream in progress: chunks still to run, tokens so far."""

    jobs: list[Any]
    tokens: list[str] = field(default_factory=list)


class _FusedTick:
    def __init__(self, batch: Any, tick: list[TickItem]) -> None:
        self.batch = batch
        self.outcomes: list[Outcome | None] = [None] * len(tick)
        self.rows = [0] * len(tick)
        self.runs: list[StepRun] = [item.session.steps(item.audio, item.is_final)
                                    for item in tick]
        self.pending: dict[int, _Pending] = {}
        self.vad: dict[int, VadWork] = {}  # streams waiting for VAD work (log-mel, encoder pass)
        self.stats = TickStats()

    def advance(self, i: int, value: Any) -> None:
        """Resume stream `i`'s step (with the result of what it last asked for: VAD scores or
        a decoder call's text) until it needs a VAD pass or a call that has model chunks, or
        finishes."""
        import torch
        from funasr.utils.postprocess_utils import sentence_postprocess

        from gpu_worker.fast.streaming import split_call

        while True:
            try:
                call: DecodeCall | VadWork = (next(self.runs[i]) if value is None
                                              else self.runs[i].send(value))
            except StopIteration as stop:
                update: LiveUpdate = stop.value
                update.tick_streams = self.rows[i]
                self.outcomes[i] = update
                return
            except Exception as exc:
                log.exception("live step failed")
                self.outcomes[i] = exc
                return
            if isinstance(call, VadWork):
                self.vad[i] = call
                return
            state = call.cache.get(FUSED_CACHE_KEY)
            if state is None:
                kw = call.kwargs
                state = self.batch.new_cache(tuple(kw["chunk_size"]),
                                             int(kw["encoder_chunk_look_back"]),
                                             int(kw["decoder_chunk_look_back"]))
                call.cache[FUSED_CACHE_KEY] = state
            jobs = split_call(state, torch.from_numpy(call.audio), call.is_final)
            if jobs:
                self.pending[i] = _Pending(jobs)
                return
            value = str(sentence_postprocess([])[0])  # no whole chunk yet: FunASR's empty text

    def run_vad(self) -> None:
        """The VAD work of every stream waiting for some, batched by kind."""
        ids = list(self.vad)
        calls = [self.vad.pop(i) for i in ids]
        try:
            scores = run_vad_calls(calls)
        except Exception as exc:
            log.exception("fused live VAD pass failed (%d streams)", len(ids))
            for i in ids:
                self.runs[i].close()
                self.outcomes[i] = exc
            return
        for i, s in zip(ids, scores, strict=True):
            self.advance(i, s)

    def run(self) -> tuple[list[Outcome], TickStats]:
        from funasr.utils.postprocess_utils import sentence_postprocess

        for i in range(len(self.runs)):
            self.advance(i, None)
        while self.vad or self.pending:
            if self.vad:  # a stream's VAD comes before its decoding: run those first
                self.run_vad()
                continue
            ids = list(self.pending)
            jobs = [self.pending[i].jobs.pop(0) for i in ids]
            calls_before = self.batch.calls
            try:
                tokens, rows = self.batch.run(jobs)
            except Exception as exc:
                log.exception("fused live model call failed (%d streams)", len(ids))
                for i in ids:
                    del self.pending[i]
                    self.runs[i].close()
                    self.outcomes[i] = exc
                continue
            self.stats.model_calls += self.batch.calls - calls_before
            self.stats.rows += len(ids)
            self.stats.largest = max([self.stats.largest, *rows])
            for i, toks, n in zip(ids, tokens, rows, strict=True):
                p = self.pending[i]
                p.tokens.extend(toks)
                self.rows[i] = max(self.rows[i], n)
                if not p.jobs:
                    del self.pending[i]
                    self.advance(i, str(sentence_postprocess(p.tokens)[0]))
        done = [o if o is not None else RuntimeError("live step did not finish")
                for o in self.outcomes]
        return done, self.stats


def run_tick_fused(batch: Any, tick: list[TickItem]) -> tuple[list[Outcome], TickStats]:
    """Every stream's step of the tick, the decoder calls of all streams batched
    (`batch`: a `gpu_worker.fast.streaming.StreamingBatch`)."""
    return _FusedTick(batch, tick).run()
