"""The identity engine answers "" at once, with the family's capabilities, loading no model."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from gpu_worker.engines.base import StartupError, Utterance, create_engine
from protos.common.worker_config import WorkerConfig


async def test_identity_answers_empty_with_family_capabilities(models_dir: Path) -> None:
    engine = create_engine(WorkerConfig(model=str(models_dir / "sensevoice-tiny"),
                                        engine="identity"))
    transcript, stats = await engine.transcribe(Utterance(np.zeros(16000, np.float32)))
    assert transcript.text == "" and stats.batch_size == 1 and stats.batch_id == 1
    caps = engine.capabilities
    assert (caps.engine, caps.family) == ("identity", "sensevoice") and "en" in caps.languages
    assert engine.stats().batches == 1


def test_identity_refuses_a_vad_model(models_dir: Path) -> None:
    with pytest.raises(StartupError, match="stands in for recognition"):
        create_engine(WorkerConfig(model=str(models_dir / "fsmn-vad"), engine="identity"))
