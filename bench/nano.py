"""Fun-ASR-Nano in the throughput bench: how its variants differ from the CTC models'.

- plain FunASR takes Nano audio as torch tensors (numpy arrays crash its data path) and the
  same prompt options the service sends by default (no language, ITN off, no hotwords), with
  `max_length` set to the bench's token cap, which the service gets as `--max-new-tokens`;
- tokens are counted wherever they are generated: around FunASR's `llm.generate` for the
  baselines (the counter the worker itself uses), and from the service's
  `asr_generated_tokens_total` metric for ours, so every row can report time per output token;
- funasr-server is left out: it has no token cap, and random weights never stop before 512.
"""

from __future__ import annotations

import contextlib
import re
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

NANO_CLASS = "FunASRNano"
SERVER_NOTE = ("not run for Fun-ASR-Nano: funasr-server has no token cap (random weights "
               "decode 512 tokens a clip)")
_TOKENS = re.compile(r"^asr_generated_tokens_total\{[^}]*\}\s+([0-9.eE+-]+)$", re.MULTILINE)


def is_nano(model_dir: str) -> bool:
    """Whether `model_dir` holds a Fun-ASR-Nano model (config.yaml `model: FunASRNano`)."""
    import yaml

    cfg = yaml.safe_load((Path(model_dir) / "config.yaml").read_text(encoding="utf-8")) or {}
    return isinstance(cfg, dict) and cfg.get("model") == NANO_CLASS


def generate_options(max_new_tokens: int) -> dict[str, Any]:
    """FunASR `generate` options equal to the service's default request on Nano."""
    return {"max_length": max_new_tokens, "itn": False, "hotwords": []}


def as_inputs(audio: list[Any]) -> list[Any]:
    """16 kHz float32 numpy clips as the torch tensors FunASR's Nano path accepts."""
    import numpy as np
    import torch

    return [torch.from_numpy(np.ascontiguousarray(a, dtype=np.float32)) for a in audio]


@contextlib.contextmanager
def counted_tokens(model: Any) -> Iterator[Callable[[], int]]:
    """While open, the function yielded says how many tokens `model` has generated."""
    from gpu_worker.families.funasr_nano import count_tokens

    with count_tokens(model.model.llm) as counts:
        yield lambda: sum(sum(rows) for rows, _ in counts)


def service_tokens(metrics_port: int) -> float:
    """asr_generated_tokens_total summed over its series, read from a running service."""
    with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=10) as r:
        text = r.read().decode()
    return sum(float(v) for v in _TOKENS.findall(text))
