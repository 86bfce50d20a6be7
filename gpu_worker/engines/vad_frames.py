"""FSMN-VAD's frame-by-frame decisions for one block of scored frames, in plain Python.

`detect_frames(model, cache, is_final)` does what FunASR's (1.4.16)
`FsmnVADStreaming.DetectCommonFrames` / `DetectLastFrames` do with a stream's cache after an
encoder pass: for each new frame, the frame state (decibels, the silence score against the
speech/noise threshold, the running noise level), the 200 ms window detector, and the state
machine that opens, extends and closes segments in `stats.output_data_buf`. It leaves the
cache exactly as FunASR's methods would (the same `stats` and `windows_detector` fields, the
same `DropCachedFrames` calls), so the two can alternate on one stream.

Why: FunASR runs those rules with a tensor index and a `.item()` per frame, a tensor slice per
speech frame and a dozen method calls per frame: on one CPU core that is a third of its VAD
time (1.1 s of 3.1 s for a 10-minute file), more than the FSMN network. Here the block's
scores and decibels become Python floats once, the rules run on local variables, and the
cache is written back once (and before each segment reset, which FunASR's own
`DropCachedFrames` does).

Only FunASR's defaults for what changes the rules' shape are covered: multiple-utterance
mode, no per-frame probability output, at least one silence pdf. `supports(model)` says so;
callers use FunASR's methods otherwise.
"""

from __future__ import annotations

import math
from typing import Any

# FunASR's enum values (funasr.models.fsmn_vad_streaming.model)
_START_NOT_DETECTED, _IN_SPEECH, _END_DETECTED = 1, 2, 3  # VadStateMachine
_MULTIPLE_UTTERANCES = 1  # VadDetectMode.kVadMutipleUtteranceDetectMode
_SIL, _SPEECH = 0, 1  # FrameState


def supports(model: Any) -> bool:
    opts = model.vad_opts
    return (opts.detect_mode == _MULTIPLE_UTTERANCES and not opts.output_frame_probs
            and len(opts.sil_pdf_ids) > 0)


def detect_frames(model: Any, cache: dict[str, Any], is_final: bool) -> None:
    """FunASR's `DetectLastFrames(cache)` if `is_final`, else `DetectCommonFrames(cache)`."""
    if not supports(model):
        (model.DetectLastFrames if is_final else model.DetectCommonFrames)(cache=cache)
        return
    stats = cache["stats"]
    if stats.vad_state_machine.value == _END_DETECTED:
        return
    _Detector(model, cache).run(is_final)


class _Detector:
    """One block's pass: the cache's state in locals, written back at the end."""

    def __init__(self, model: Any, cache: dict[str, Any]) -> None:
        self.model, self.cache = model, cache
        self.opts = opts = model.vad_opts
        self.stats = stats = cache["stats"]
        self.win = win = cache["windows_detector"]
        self.enums = type(stats.vad_state_machine), type(win.pre_frame_state)
        self.frame_ms = opts.frame_in_ms
        self.shift = int(opts.frame_in_ms * opts.sample_rate / 1000)
        self.max_seg_frames = opts.max_single_segment_time / opts.frame_in_ms
        self.latency = win.GetWinSize() + (
            int(opts.lookback_time_start_point / opts.frame_in_ms) if opts.do_extend else 0)
        self._load()

    # -- the cache <-> locals -------------------------------------------------------------
    def _load(self) -> None:
        s, w = self.stats, self.win
        self.sm = s.vad_state_machine.value
        self.data_start = s.data_buf_start_frame
        self.latest_speech = s.latest_confirmed_speech_frame
        self.latest_sil = s.lastest_confirmed_silence_frame
        self.cont_sil = s.continous_silence_frame_count
        self.conf_start, self.conf_end = s.confirmed_start_frame, s.confirmed_end_frame
        self.n_end = s.number_end_time_detected
        self.last_drop = s.last_drop_frames
        self.len_all = 0 if s.data_buf_all is None else len(s.data_buf_all)
        self.buf_len = 0 if s.data_buf is None else len(s.data_buf)
        self.buf_from: int | None = None  # data_buf re-sliced at this start frame, pending
        self.win_sum, self.win_state, self.win_pos = w.win_sum, w.win_state, w.cur_win_pos
        self.win_pre = w.pre_frame_state.value

    def _store(self) -> None:
        s, w = self.stats, self.win
        state_enum, frame_enum = self.enums
        s.vad_state_machine = state_enum(self.sm)
        s.data_buf_start_frame = self.data_start
        s.latest_confirmed_speech_frame = self.latest_speech
        s.lastest_confirmed_silence_frame = self.latest_sil
        s.continous_silence_frame_count = self.cont_sil
        s.confirmed_start_frame, s.confirmed_end_frame = self.conf_start, self.conf_end
        s.number_end_time_detected = self.n_end
        if self.buf_from is not None:
            s.data_buf = s.data_buf_all[(self.buf_from - self.last_drop) * self.shift:]
            self.buf_from = None
        w.win_sum, w.win_state, w.cur_win_pos = self.win_sum, self.win_state, self.win_pos
        w.pre_frame_state = frame_enum(self.win_pre)

    # -- the block ------------------------------------------------------------------------
    def frame_states(self, first: int, count: int) -> list[int]:
        """`GetFrameState` of frames first .. first+count-1 (absolute), in order (it updates
        the noise level as it goes)."""
        opts, s = self.opts, self.stats
        rel = first - self.last_drop
        decibel = s.decibel[rel:rel + count]  # FunASR: a frame without decibels is silence
        ids = s.sil_pdf_ids
        block = s.scores[0, rel:rel + count]
        if len(block) < count:
            raise IndexError("VAD frames without scores")  # as FunASR's indexing would
        if len(ids) == 1:
            sil_scores: list[float] = block[:, ids[0]].tolist()
        else:
            sil_scores = [sum(r) for r in block[:, list(ids)].tolist()]
        noise = s.noise_average_decibel
        thres, ratio = s.speech_noise_thres, opts.speech_2_noise_ratio
        db_thres, snr_thres = opts.decibel_thres, opts.snr_thres
        n_noise = opts.noise_frame_num_used_for_snr
        exp, log = math.exp, math.log
        out = []
        for i, sil in enumerate(sil_scores):
            if i >= len(decibel):
                out.append(_SIL)
                continue
            db = decibel[i]
            if db < db_thres:
                out.append(_SIL)
                continue
            snr = db - noise
            noise_prob = log(sil) * ratio
            speech_prob = log(1.0 - sil)
            if exp(speech_prob) >= exp(noise_prob) + thres:
                out.append(_SPEECH if snr >= snr_thres and db >= db_thres else _SIL)
            else:
                out.append(_SIL)
                noise = db if noise < -99.9 else (db + noise * (n_noise - 1)) / n_noise
        s.noise_average_decibel = noise
        return out

    def run(self, is_final: bool) -> None:
        s = self.stats
        count = self.opts.nn_eval_block_size
        first = s.frm_cnt - count
        states = self.frame_states(first, count)
        last = first + count - 1
        speech_ok = math.fabs(1.0) > self.opts.fe_prior_thres
        for f, state in enumerate(states, start=first):
            if state == _SPEECH and not speech_ok:
                state = _SIL
            self.one_frame(state, f, is_final and f == last)
        self._store()

    def window_step(self, state: int) -> int:
        """The window detector: 0 speech->speech, 1 speech->sil, 2 sil->sil, 3 sil->speech
        (FunASR's AudioChangeState values)."""
        w = self.win
        pos = self.win_pos
        self.win_sum += state - self.win_state[pos]
        self.win_state[pos] = state
        self.win_pos = (pos + 1) % w.win_size_frame
        if self.win_pre == _SIL:
            if self.win_sum >= w.sil_to_speech_frmcnt_thres:
                self.win_pre = _SPEECH
                return 3
            return 2
        if self.win_sum <= w.speech_to_sil_frmcnt_thres:
            self.win_pre = _SIL
            return 1
        return 0

    def one_frame(self, state: int, f: int, is_final_frame: bool) -> None:
        """FunASR's `FsmnVADStreaming.DetectOneFrame`."""
        change = self.window_step(state)
        sm = self.sm
        if change == 3:  # silence -> speech
            self.cont_sil = 0
            if sm == _START_NOT_DETECTED:
                start = max(self.data_start, f - self.latency)
                self.voice_start(start, fake=False)
                self.sm = _IN_SPEECH
                for t in range(start + 1, f + 1):
                    self.voice_detected(t)
            elif sm == _IN_SPEECH:
                for t in range(self.latest_speech + 1, f):
                    self.voice_detected(t)
                self.in_speech(f, is_final_frame)
        elif change == 1 or change == 0:  # speech -> silence, speech -> speech
            self.cont_sil = 0
            if sm == _IN_SPEECH:
                self.in_speech(f, is_final_frame, continued=change == 0)
        else:  # silence -> silence
            self.cont_sil += 1
            if sm == _START_NOT_DETECTED:
                if is_final_frame and self.n_end == 0:
                    for t in range(self.latest_sil + 1, f):
                        self.silence_detected(t)
                    self.voice_start(0, fake=True)
                    self.voice_end(0, fake=True, is_last=False)
                    self.sm = _END_DETECTED
                elif f >= self.latency:
                    self.silence_detected(f - self.latency)
            elif sm == _IN_SPEECH:
                thresh = self.stats.max_end_sil_frame_cnt_thresh
                if self.cont_sil * self.frame_ms >= thresh:
                    lookback = int(thresh / self.frame_ms)
                    if self.opts.do_extend:
                        lookback -= int(self.opts.lookahead_time_end_point / self.frame_ms)
                        lookback = max(0, lookback - 1)
                    self.voice_end(f - lookback, fake=False, is_last=False)
                    self.sm = _END_DETECTED
                elif f - self.conf_start + 1 > self.max_seg_frames:
                    self.voice_end(f, fake=False, is_last=False)
                    self.sm = _END_DETECTED
                elif self.opts.do_extend and not is_final_frame:
                    if self.cont_sil <= int(self.opts.lookahead_time_end_point / self.frame_ms):
                        self.voice_detected(f)
                elif is_final_frame:
                    self.voice_end(f, fake=False, is_last=True)
                    self.sm = _END_DETECTED
        if self.sm == _END_DETECTED:
            self.reset_detection()

    def in_speech(self, f: int, is_final_frame: bool, continued: bool = False) -> None:
        """The common tail of a frame inside a segment: cut at the maximum length (marked as a
        time-out when the speech went on), extend, or close at the last frame."""
        if f - self.conf_start + 1 > self.max_seg_frames:
            if continued:
                self.stats.max_time_out = True
            self.voice_end(f, fake=False, is_last=False)
            self.sm = _END_DETECTED
        elif not is_final_frame:
            self.voice_detected(f)
        else:
            self.voice_end(f, fake=False, is_last=True)
            self.sm = _END_DETECTED

    # -- FunASR's callbacks ----------------------------------------------------------------
    def pop_till(self, frame: int) -> None:
        """`PopDataBufTillFrame`: the buffer's start moves frame by frame while a frame of
        audio is left (FunASR loops forever otherwise; here that is an error)."""
        if self.data_start >= frame:
            return
        if self.data_start < self.last_drop:
            raise RuntimeError("VAD buffer start before its dropped frames")
        last_step = frame - 1
        if self.buf_len < self.shift or (
                last_step > self.data_start
                and self.len_all - (last_step - self.last_drop) * self.shift < self.shift):
            raise RuntimeError(f"VAD audio buffer ends before frame {frame}")
        self.data_start = frame
        self.buf_from = frame
        self.buf_len = max(self.len_all - (frame - self.last_drop) * self.shift, 0)

    def pop_to_output(self, start_frm: int, first_is_start: bool, last_is_end: bool) -> None:
        """`PopDataToOutputBuf(start_frm, 1, ...)`: the segment reaches one frame further."""
        self.pop_till(start_frm)
        out = self.stats.output_data_buf
        if not out or first_is_start:
            from funasr.models.fsmn_vad_streaming.model import E2EVadSpeechBufWithDoa

            seg = E2EVadSpeechBufWithDoa()
            seg.start_ms = seg.end_ms = start_frm * self.frame_ms
            out.append(seg)
        seg = out[-1]
        seg.doa = 0
        self.data_start += 1
        seg.end_ms = (start_frm + 1) * self.frame_ms
        if first_is_start:
            seg.contain_seg_start_point = True
        if last_is_end:
            seg.contain_seg_end_point = True

    def silence_detected(self, frame: int) -> None:
        self.latest_sil = frame
        if self.sm == _START_NOT_DETECTED:
            self.pop_till(frame)

    def voice_detected(self, frame: int) -> None:
        self.latest_speech = frame
        self.pop_to_output(frame, False, False)

    def voice_start(self, frame: int, fake: bool) -> None:
        if self.conf_start == -1:
            self.conf_start = frame
        if not fake and self.sm == _START_NOT_DETECTED:
            self.pop_to_output(self.conf_start, True, False)

    def voice_end(self, frame: int, fake: bool, is_last: bool) -> None:
        for t in range(self.latest_speech + 1, frame):
            self.voice_detected(t)
        if self.conf_end == -1:
            self.conf_end = frame
        if not fake:
            self.stats.sil_frame = 0
            self.pop_to_output(self.conf_end, False, True)
        self.n_end += 1

    def reset_detection(self) -> None:
        """`ResetDetection`: a new segment may start; frames before the last segment's end
        are dropped from the cache (FunASR's own `DropCachedFrames`)."""
        self.cont_sil = 0
        self.latest_speech, self.latest_sil = 0, -1
        self.conf_start = self.conf_end = -1
        self.sm = _START_NOT_DETECTED
        w = self.win
        w.Reset()
        self.win_sum, self.win_state, self.win_pos = w.win_sum, w.win_state, w.cur_win_pos
        self.win_pre = w.pre_frame_state.value
        s = self.stats
        s.sil_frame = 0
        s.frame_probs = []
        if s.output_data_buf:
            assert s.output_data_buf[-1].contain_seg_end_point
            self._store()
            self.model.DropCachedFrames(int(s.output_data_buf[-1].end_ms / self.frame_ms),
                                        cache=self.cache)
            self.last_drop = s.last_drop_frames
            self.len_all = len(s.data_buf_all)
            self.buf_len = len(s.data_buf)
