"""Worker process entry point: load the model once, then serve on a Unix domain socket.

Started by the scheduler as ``python -m gpu_worker '<WorkerConfig JSON>'``. The socket starts
listening only after the model has loaded, so a successful `GetInfo` is the ready handshake.
The worker exits when its parent dies (PR_SET_PDEATHSIG plus a parent-pid watch): no orphans.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import logging
import os
import signal
import sys

import grpc

from gpu_worker.batcher import Batcher
from gpu_worker.runner import FunasrRunner, Runner
from gpu_worker.service import WorkerServicer
from gpu_worker.vad import VadRunner
from protos.asr.worker.v1 import worker_pb2_grpc as pb_grpc
from protos.common.logs import setup_logging
from protos.common.wire import WORKER_CHANNEL_OPTIONS
from protos.common.worker_auth import SECRET_ENV, server_interceptors
from protos.common.worker_config import WorkerConfig

log = logging.getLogger("gpu_worker")


def _die_with_parent() -> None:
    """Ask Linux to SIGTERM us when the scheduler dies (no-op elsewhere)."""
    with contextlib.suppress(Exception):
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


async def _watch_parent(parent_pid: int, stop: asyncio.Event) -> None:
    while not stop.is_set():
        if parent_pid and os.getppid() != parent_pid:
            log.warning("scheduler (pid %d) is gone; exiting", parent_pid)
            stop.set()
        await asyncio.sleep(1.0)


async def serve(cfg: WorkerConfig, runner: Runner | None, vad: VadRunner | None = None) -> None:
    batcher = None if runner is None else Batcher(
        runner, cfg.max_batch_size, cfg.max_batch_audio_s, cfg.max_queue_delay_ms / 1000.0,
        cfg.cache_clear_every, cfg.cache_clear_margin_bytes)
    server = grpc.aio.server(options=list(WORKER_CHANNEL_OPTIONS),
                             interceptors=server_interceptors(os.environ.pop(SECRET_ENV, "")))
    pb_grpc.add_WorkerServicer_to_server(WorkerServicer(batcher, cfg.device_name, vad), server)
    with contextlib.suppress(FileNotFoundError):
        os.unlink(cfg.socket_path)
    server.add_insecure_port(f"unix://{cfg.socket_path}")
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    if batcher is not None:
        batcher.start()
    await server.start()
    log.info("worker %s ready on %s (device %s, pid %d)", cfg.worker_id, cfg.socket_path,
             cfg.device_name, os.getpid())
    watcher = loop.create_task(_watch_parent(cfg.parent_pid, stop))
    await stop.wait()
    watcher.cancel()
    await server.stop(2.0)
    if batcher is not None:
        await batcher.stop()


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 1:
        print("usage: python -m gpu_worker '<WorkerConfig JSON>'", file=sys.stderr)
        return 2
    cfg = WorkerConfig.from_json(argv[0])
    _die_with_parent()
    setup_logging(cfg.log_level, cfg.log_format, cfg.worker_id)
    try:
        if cfg.engine == "vad":
            runner, vad = None, VadRunner(cfg.model, cfg.threads)
        else:
            runner, vad = FunasrRunner(cfg.model, cfg.torch_device, cfg.threads, cfg.dtype), None
    except Exception:
        log.exception("worker %s could not load model %s on %s", cfg.worker_id, cfg.model,
                      cfg.torch_device)
        return 3
    asyncio.run(serve(cfg, runner, vad))
    return 0
