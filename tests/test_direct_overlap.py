"""Host/device overlap of the direct engine on CPU: the batcher keeps two batches in flight
(one prepared or turned into text on the host thread while the model thread computes the
other), the stages really overlap in time, texts are those of one-by-one runs, and a bad clip
still fails alone."""

from __future__ import annotations

import asyncio
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from gpu_worker.device import TorchDevice
from gpu_worker.engines.base import Transcript, Utterance
from gpu_worker.engines.batcher import Batcher
from tests.audio_fixtures import espeak_wav, reference_16k_mono

pytestmark = pytest.mark.integration

TEXTS = ("hello world this is a test", "the quick brown fox jumps over the lazy dog",
         "please call me back tomorrow", "numbers like forty two are spoken here")


@pytest.fixture(scope="module")
def clips(tmp_path_factory: pytest.TempPathFactory) -> list[np.ndarray]:
    d = tmp_path_factory.mktemp("overlap")
    whole = [reference_16k_mono(espeak_wav(t, d / f"{i}.wav")).astype(np.float32)
             for i, t in enumerate(TEXTS)]
    return [c[:len(c) * k // 3] for c in whole for k in (1, 2, 3)]  # 12 clips, 12 lengths


class Timed:
    """The direct runner, recording when each stage of each batch ran and on which thread."""

    def __init__(self, runner: Any) -> None:
        self.runner = runner
        self.in_flight = 2  # as on CUDA (a CPU runner keeps one batch in flight)
        self.padding_invariant = runner.padding_invariant
        self.spans: list[tuple[str, int, float, float, str]] = []  # stage, batch, t0, t1, thread

    def _timed(self, stage: str, key: int, fn: Any, arg: Any) -> Any:
        t0 = time.monotonic()
        out = fn(arg)
        self.spans.append((stage, key, t0, time.monotonic(), threading.current_thread().name))
        return out

    def prepare(self, batch: list[Utterance]) -> Any:
        return self._timed("prepare", id(batch), self.runner.prepare, batch)

    def compute(self, prepared: Any) -> Any:
        return self._timed("compute", id(prepared.batch), self.runner.compute, prepared)

    def finish(self, computed: Any) -> list[Transcript]:
        return self._timed("finish", id(computed.batch), self.runner.finish, computed)

    def transcribe(self, batch: list[Utterance]) -> list[Transcript]:
        return self.runner.transcribe(batch)


@pytest.fixture(scope="module")
def runner(models_dir: Path) -> Any:
    from gpu_worker.fast.runner import load_direct_runner

    return load_direct_runner(str(models_dir / "sensevoice-tiny"))


async def _through_batcher(timed: Timed, utts: list[Utterance]) -> tuple[list[Any], Batcher]:
    batcher = Batcher(timed, TorchDevice("cpu", "fp32", 1), max_batch_size=2,  # type: ignore[arg-type]
                      max_queue_delay_s=0.0)
    batcher.start()
    try:
        outs = await asyncio.gather(*(batcher.submit(u) for u in utts), return_exceptions=True)
    finally:
        await batcher.stop()
    return list(outs), batcher


def test_two_batches_in_flight_overlap_and_texts_are_unchanged(runner: Any,
                                                               clips: list[np.ndarray]) -> None:
    alone = [runner.transcribe([Utterance(audio=c)])[0].text for c in clips]
    assert sum(bool(t) for t in alone) >= len(clips) // 2
    timed = Timed(runner)
    outs, batcher = asyncio.run(_through_batcher(timed, [Utterance(audio=c) for c in clips]))
    assert [o[0].text for o in outs] == alone
    assert batcher.counters.peak_in_flight == 2 and batcher.counters.batches >= 4
    threads = {(stage, name.split("_")[0]) for stage, _, _, _, name in timed.spans}
    assert threads == {("prepare", "host"), ("compute", "model"), ("finish", "host")}
    computes = [(k, a, b) for stage, k, a, b, _ in timed.spans if stage == "compute"]
    host = [(k, a, b) for stage, k, a, b, _ in timed.spans if stage != "compute"]
    overlapping = [(k1, k2) for k1, a1, b1 in computes for k2, a2, b2 in host
                   if k1 != k2 and a2 < b1 and a1 < b2]
    assert overlapping, "no host stage ran while another batch computed"


def test_a_bad_clip_in_a_staged_batch_fails_alone(runner: Any, clips: list[np.ndarray]) -> None:
    bad = clips[0].copy()
    bad[100] = np.nan
    utts = [Utterance(audio=c) for c in (clips[1], bad, clips[2], clips[3])]
    outs, _ = asyncio.run(_through_batcher(Timed(runner), utts))
    assert isinstance(outs[1], ValueError) and "NaN" in str(outs[1])
    assert [outs[i][0].text for i in (0, 2, 3)] == \
        [runner.transcribe([u])[0].text for u in (utts[0], utts[2], utts[3])]
