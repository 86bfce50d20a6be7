"""SenseVoice (SenseVoiceSmall): language hints, ITN, rich-transcription tags in its raw text."""

from __future__ import annotations

import re
from dataclasses import dataclass

from gpu_worker.families.base import Family, register_family

_LANGUAGE_TAG = re.compile(r"^<\|([a-z]{2,3}|nospeech)\|>")


@dataclass(frozen=True)
class SenseVoice(Family):
    def postprocess(self, raw: str) -> tuple[str, str]:
        """FunASR's rich-transcription post-processing; the language from the leading tag."""
        from funasr.utils.postprocess_utils import rich_transcription_postprocess

        m = _LANGUAGE_TAG.match(raw)
        return rich_transcription_postprocess(raw), (m.group(1) if m else "")


SENSEVOICE = register_family(SenseVoice(
    name="sensevoice", model_classes=("SenseVoiceSmall",), engines=("generate", "direct"),
    languages=("zh", "en", "yue", "ja", "ko", "nospeech"), itn=True,
    padding_invariant=True))  # checked by tests/test_batching.py
