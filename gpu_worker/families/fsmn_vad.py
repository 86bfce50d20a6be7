"""FSMN-VAD: speech segmentation run by the session engine ("vad"), one state per stream.

Its segments carry start and end times; it consumes audio incrementally.
"""

from __future__ import annotations

from gpu_worker.families.base import Family, register_family
from protos.common.capabilities import SEGMENT

FSMN_VAD = register_family(Family(
    name="fsmn-vad", model_classes=("FsmnVADStreaming",), engines=("vad",),
    kind=SEGMENT, streaming=True, timestamps=True))
