"""torch's threads in a CPU worker: the model computes in one OpenMP team on its model thread;
every other thread of the worker (the event loop's, the batcher's host thread) stays
single-threaded, and the thread the model loaded on is gone with its team
(`gpu_worker.device.one_thread_here`: a second team makes libgomp throttle the first).
Each case runs in a fresh interpreter: OpenMP's state is per process."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from gpu_worker.device import on_own_thread

ROOT = Path(__file__).resolve().parent.parent

PROBE = textwrap.dedent("""
    import asyncio, json, sys, threading
    import numpy as np
    from gpu_worker.main import load_engine
    from protos.common.worker_config import WorkerConfig

    import torch
    cfg = WorkerConfig(model=sys.argv[1], engine=sys.argv[2], torch_device="cpu", threads=2,
                       worker_id="t")
    engine = load_engine(cfg)

    async def main():
        engine.start()
        batcher = engine.batcher
        audio = (np.sin(np.arange(48000) / 9.0) * 0.1).astype(np.float32)
        from gpu_worker.engines.base import Utterance
        await batcher.submit(Utterance(audio=audio))
        model = await batcher.run_in_model_thread(torch.get_num_threads)
        host = None
        if batcher._host is not None:
            host = await asyncio.get_running_loop().run_in_executor(
                batcher._host, torch.get_num_threads)
        await engine.stop()
        return model, host

    model, host = asyncio.run(main())
    print(json.dumps({"main": torch.get_num_threads(), "model": model, "host": host,
                      "load_threads": [t.name for t in threading.enumerate()
                                       if t.name.startswith("load")]}))
""")


def _probe(model: Path, engine: str) -> dict[str, object]:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "2"}
    out = subprocess.run([sys.executable, "-c", PROBE, str(model), engine], env=env,
                         capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.integration
@pytest.mark.parametrize("engine", ["direct", "generate"])
def test_only_the_model_thread_computes_with_several_threads(models_dir: Path,
                                                             engine: str) -> None:
    seen = _probe(models_dir / "sensevoice-tiny", engine)
    assert seen["model"] == 2, seen
    assert seen["main"] == 1, seen
    if engine == "direct":  # staged: the host thread pads and writes text
        assert seen["host"] == 1, seen
    # The model loaded with 2 threads (FunASR sets them on the loading thread) on a thread
    # of its own, which ended, its OpenMP team with it.
    assert seen["load_threads"] == [], seen


def test_on_own_thread_returns_and_raises_on_the_caller() -> None:
    import threading

    assert on_own_thread(lambda: threading.current_thread().name).startswith("load")
    assert on_own_thread(lambda: threading.current_thread()) is not threading.current_thread()

    def fail() -> None:
        raise ValueError("no model here")

    with pytest.raises(ValueError, match="no model here"):
        on_own_thread(fail)
