"""The worker's configuration, passed by the scheduler as one JSON argument."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass


@dataclass
class WorkerConfig:
    """Settings of one worker process."""

    worker_id: str
    socket_path: str
    model: str
    role: str = "asr"  # "asr": recognition with `model`; "vad": segmentation with `model`
    torch_device: str = "cpu"  # where the model runs: "cuda:1" or "cpu"
    device_name: str = "cpu"  # what results and logs call it: "cuda:1", "sim:2", "cpu"
    threads: int = 1
    max_batch_size: int = 32
    max_batch_audio_s: float = 600.0
    max_queue_delay_ms: float = 0.0
    cache_clear_every: int = 500
    cache_clear_margin_bytes: int = 2 * 1024**3
    dtype: str = "fp32"
    parent_pid: int = 0
    log_level: str = "INFO"
    log_format: str = "text"

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, text: str) -> WorkerConfig:
        return cls(**json.loads(text))
