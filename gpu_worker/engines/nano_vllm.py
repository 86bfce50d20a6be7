"""The "vllm" engine: Fun-ASR-Nano's LLM decoder on vLLM (FunASR's `AutoModelVLLM`), on CUDA.

The audio encoder and adaptor run in torch; the Qwen3 decoder runs in vLLM from prompt
embeddings (bf16, greedy), which batches sequences continuously inside one `generate` call.
FunASR writes the decoder's weights to ``DIR/Qwen3-0.6B-vllm/`` on first use, so the model
directory must be writable.

It starts only where vLLM is importable and the worker's device is an available CUDA device;
otherwise the worker stops at once with exit code 3 and says why (`check_available`). This
path has not been run in this project's CI (no GPU there): the availability check is tested,
the decoding is FunASR's.
"""

from __future__ import annotations

import importlib.util
import logging

import numpy as np

from gpu_worker.device import TorchDevice
from gpu_worker.engines.base import StartupError, Transcript, Utterance, register_engine
from gpu_worker.engines.batched import BatchedEngine
from gpu_worker.families import family_for
from gpu_worker.families.funasr_nano import generate_kwargs
from protos.common.worker_config import WorkerConfig

log = logging.getLogger(__name__)

ENGINE = "vllm"
GPU_MEMORY_UTILIZATION = 0.6  # vLLM's share of the GPU; the encoder and batches need the rest


def check_available(torch_device: str) -> None:
    """Raise StartupError unless vLLM is installed and `torch_device` is a usable CUDA device."""
    if importlib.util.find_spec("vllm") is None:
        raise StartupError("engine 'vllm' needs the vllm package (pip install 'vllm>=0.12'), "
                           "which is not installed; use --engine generate")
    if not torch_device.startswith("cuda"):
        raise StartupError(f"engine 'vllm' runs on CUDA devices only, not {torch_device!r}; use "
                           "--engine generate on CPU")
    import torch

    if not torch.cuda.is_available():
        raise StartupError("engine 'vllm' needs CUDA, which torch cannot use here; use "
                           "--engine generate")


class VllmRunner:
    """Batches of utterances through FunASR's `AutoModelVLLM` (one option set per batch)."""

    padding_invariant = True  # vLLM decodes each sequence on its own

    def __init__(self, cfg: WorkerConfig) -> None:
        from funasr.auto.auto_model_vllm import AutoModelVLLM

        self.max_new_tokens = cfg.max_new_tokens
        self._model = AutoModelVLLM(model=cfg.model, device=cfg.torch_device,
                                    dtype="bf16" if cfg.dtype == "fp32" else cfg.dtype,
                                    gpu_memory_utilization=GPU_MEMORY_UTILIZATION)
        log.info("loaded %s on vLLM (%s)", cfg.model, cfg.torch_device)

    def transcribe(self, batch: list[Utterance]) -> list[Transcript]:
        import torch

        first = batch[0]
        kwargs = generate_kwargs(first.language, first.use_itn, first.hotwords,
                                 first.max_new_tokens or self.max_new_tokens)
        kwargs["max_new_tokens"] = kwargs.pop("max_length")
        tensors = [torch.from_numpy(np.ascontiguousarray(u.audio, dtype=np.float32))
                   for u in batch]
        out = self._model.generate(tensors, **kwargs)
        if len(out) != len(batch):
            raise RuntimeError(f"vLLM returned {len(out)} results for {len(batch)} inputs")
        return [Transcript(text=str(item.get("text", ""))) for item in out]


def create(cfg: WorkerConfig) -> BatchedEngine:
    family = family_for(cfg.model, ENGINE)
    check_available(cfg.torch_device)
    device = TorchDevice(cfg.torch_device, "fp32", cfg.threads)
    return BatchedEngine(ENGINE, VllmRunner(cfg), device, family.capabilities(ENGINE),
                         cfg.model, cfg)


register_engine(ENGINE, create)
