"""Streaming Paraformer (ParaformerStreaming): stateful, so one clip per `generate` call.

For a whole clip given as an array it needs `is_final=True` and its chunk settings, or the
tail of the clip stays in the streaming cache and is never decoded.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from gpu_worker.families.base import Family, register_family

STREAMING_KWARGS = {"is_final": True, "chunk_size": [0, 10, 5], "encoder_chunk_look_back": 4,
                    "decoder_chunk_look_back": 1}


@dataclass(frozen=True)
class ParaformerStreaming(Family):
    def generate(self, model: Any, audios: Sequence[np.ndarray],
                 kwargs: dict[str, Any]) -> list[dict[str, Any]]:
        """Each clip alone with a fresh cache."""
        return [model.generate(input=audio, cache={}, **kwargs, **STREAMING_KWARGS)[0]
                for audio in audios]


PARAFORMER_STREAMING = register_family(ParaformerStreaming(
    name="paraformer-streaming", model_classes=("ParaformerStreaming",), streaming=True))
