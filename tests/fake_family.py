"""A fake model family served as a worker plugin (ASR_WORKER_PLUGINS=tests.fake_family).

One module holds both halves a real family needs: a FunASR model class, registered in funasr's
`tables` so that `AutoModel(model=DIR)` loads it from a directory `write_model_dir` writes, and
the family rules, registered with `register_family`. Its text is derived from the clip: "<|xx|>"
language tag, then the number of samples. A directory written with `poison_device="sim:0"`
makes the worker on that device fail every call with a sticky CUDA error (fault injection).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from funasr.register import tables

from gpu_worker.families import Family, register_family
from protos.common.worker_config import WorkerConfig

MODEL_CLASS = "FakeLengthModel"
STICKY_ERROR = "CUDA error: an illegal memory access was encountered (fake)"


@tables.register("model_classes", MODEL_CLASS)
class FakeLengthModel(torch.nn.Module):
    """Transcribes a clip as its length in samples; fails on its poisoned device."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__()
        self.scale = torch.nn.Parameter(torch.ones(1))  # FunASR reads the device off a weight
        self.poisoned = bool(kwargs.get("poison_device")) and (
            kwargs.get("poison_device") == kwargs.get("worker_device_name"))

    def inference(self, data_in: list[Any], data_lengths: Any = None, key: list[str] | None = None,
                  **kwargs: Any) -> tuple[list[dict[str, Any]], dict[str, Any]]:
        if self.poisoned:
            raise RuntimeError(STICKY_ERROR)
        keys = key or [f"clip{i}" for i in range(len(data_in))]
        return [{"key": k, "text": f"<|xx|>{len(x)} samples"}
                for k, x in zip(keys, data_in, strict=True)], {}


@dataclass(frozen=True)
class FakeFamily(Family):
    def model_kwargs(self, cfg: WorkerConfig) -> dict[str, Any]:
        return {"worker_device_name": cfg.device_name}

    def postprocess(self, raw: str) -> tuple[str, str]:
        return raw.removeprefix("<|xx|>"), "xx"


FAKE = register_family(FakeFamily(name="fake-length", model_classes=(MODEL_CLASS,),
                                  languages=("xx",), padding_invariant=True))


def expected_text(num_samples: int) -> str:
    return f"{num_samples} samples"


def write_model_dir(path: Path, poison_device: str = "") -> Path:
    """A model directory AutoModel loads as FakeLengthModel (config.yaml + model.pt)."""
    path.mkdir(parents=True, exist_ok=True)
    lines = [f"model: {MODEL_CLASS}", "model_conf: {}", "tokenizer: null",
             "tokenizer_conf: {}", "frontend: null", "frontend_conf: {}"]
    if poison_device:
        lines.append(f"poison_device: '{poison_device}'")
    (path / "config.yaml").write_text("\n".join(lines) + "\n", encoding="utf-8")
    torch.save({"scale": torch.ones(1)}, path / "model.pt")
    return path
