"""The worker's settings: written here once, filled in by the scheduler, passed to the worker
process as one JSON argument."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, fields


@dataclass
class WorkerConfig:
    """Settings of one worker process."""

    model: str  # model directory (or hub id)
    worker_id: str = ""  # filled in per worker by the scheduler
    socket_path: str = ""  # filled in per worker by the scheduler
    model_name: str = ""  # the name requests select the model by
    # which engine runs `model` ("vad" for segmentation workers; "auto": the family's choice)
    engine: str = "generate"
    torch_device: str = "cpu"  # where the model runs: "cuda:1" or "cpu"
    device_name: str = "cpu"  # what results and logs call it: "cuda:1", "sim:2", "cpu"
    threads: int = 1
    max_batch_size: int = 32
    max_batch_audio_s: float = 600.0
    max_queue_delay_ms: float = 0.0
    cache_clear_every: int = 500
    cache_clear_margin_bytes: int = 2 * 1024**3
    dtype: str = "fp32"
    exact_argmax: bool = True  # bf16/fp16, direct engine: rows in doubt recomputed in fp32
    max_new_tokens: int = 512  # LLM decoders (Fun-ASR-Nano): default cap on generated tokens
    parent_pid: int = 0
    log_level: str = "INFO"
    log_format: str = "text"
    event_loop: str = "auto"  # protos.common.event_loop
    vad_model: str = ""  # FSMN-VAD directory for live streams (streaming models); "" none
    vad_fbank: str = "torch"  # the VAD's log-mel: "torch" (ours) or "kaldi" (FunASR's own)
    live_fbank: str = "torch"  # live decoding's log-mel: "torch" (ours, batched) or "kaldi"
    live_tick_ms: float = 0.0  # live ticks start at most this often (0: whenever steps wait)
    pcm_arena_fd: int = -1  # inherited descriptor of the scheduler's shared PCM arena; -1 none
    pcm_arena_bytes: int = 0
    work_socket_fd: int = -1  # inherited end of the scheduler's unit socket pair; -1 none
    live_socket_fd: int = -1  # inherited end of the scheduler's live socket pair; -1 none

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, text: str) -> WorkerConfig:
        data = json.loads(text)
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown worker config fields: {', '.join(unknown)}")
        return cls(**data)
