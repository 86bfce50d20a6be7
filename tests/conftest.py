"""Shared fixtures: test models, real speech files, and a real service on a free port."""

from __future__ import annotations

import asyncio
import os
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from pathlib import Path
from typing import Any

import pytest

from scheduler.config import ServeConfig
from scheduler.server import AsrService
from tests.audio_fixtures import speech_files

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="session", autouse=True)
def full_fp32_where_cuda() -> None:
    """Where CUDA is (the GPU tier), FunASR models the tests load themselves compute fp32 in
    full fp32, as the service's CUDA workers do (`gpu_worker.device.full_fp32_on_cuda`)."""
    import torch

    if torch.cuda.is_available():
        from gpu_worker.device import full_fp32_on_cuda

        full_fp32_on_cuda()


@pytest.fixture(scope="session")
def models_dir() -> Path:
    """The small local models (built by `make setup`; built here if missing)."""
    from gpu_worker.make_models import DEFAULT_SET, build_models

    path = Path(os.environ.get("ASR_TEST_MODELS", ROOT / "models"))
    build_models(path, DEFAULT_SET)
    return path


@pytest.fixture(scope="session")
def speech(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Real synthesized speech: 16 kHz mono WAV, 44.1 kHz stereo WAV, FLAC, MP3."""
    return speech_files(tmp_path_factory.mktemp("speech"))


class RunningService:
    """A real `AsrService` on its own event loop thread, on a free loopback port."""

    def __init__(self, config: ServeConfig, monitor: Any = None) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.service = AsrService(config, monitor)
        self.port = self.call(self.service.start())
        self.address = f"127.0.0.1:{self.port}"

    def call(self, coro: Any, timeout: float = 300) -> Any:
        fut: Future[Any] = asyncio.run_coroutine_threadsafe(coro, self.loop)
        return fut.result(timeout)

    def wait_all_ready(self, timeout: float = 300) -> None:
        self.call(self.service.wait_all_ready(timeout), timeout + 5)

    def stop(self) -> None:
        if not self.loop.is_running():
            return
        try:
            self.call(self.service.stop(2.0), 60)
        finally:
            self.loop.call_soon_threadsafe(self.loop.stop)
            self.thread.join(10)


def make_config(model: Path | str | list[str], **kw: Any) -> ServeConfig:
    base: dict[str, Any] = {"model": [str(m) for m in model] if isinstance(model, list)
                            else str(model), "devices": "cpu", "host": "127.0.0.1",
                            "port": 0, "metrics_port": 0, "worker_threads": 1,
                            "heartbeat_interval_s": 0.5, "heartbeat_timeout_s": 10.0,
                            "vad_model": "none"}
    # ASR_TEST_FRONTENDS=N runs every service of these tests behind N front-end processes
    # (the relay must be invisible to clients); tests that set `frontends` keep theirs.
    if os.environ.get("ASR_TEST_FRONTENDS"):
        base["frontends"] = int(os.environ["ASR_TEST_FRONTENDS"])
    base.update(kw)
    return ServeConfig(**base)


@pytest.fixture
def start_service() -> Iterator[Callable[..., RunningService]]:
    """Start real services (scheduler + worker processes); all are stopped afterwards."""
    started: list[RunningService] = []

    def start(model: Path | str | list[str], monitor: Any = None, wait_all: bool = True,
              **kw: Any) -> RunningService:
        svc = RunningService(make_config(model, **kw), monitor)
        started.append(svc)
        if wait_all:
            svc.wait_all_ready()
        return svc

    yield start
    for svc in started:
        svc.stop()
