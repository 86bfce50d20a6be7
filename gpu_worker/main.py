"""Worker process entry point: build the engine (loading its model) once, then serve on a Unix
domain socket.

Started by the scheduler as ``python -m gpu_worker '<WorkerConfig JSON>'``. The socket starts
listening only after the model has loaded, so a successful `GetInfo` is the ready handshake.
The worker exits when its parent dies (PR_SET_PDEATHSIG plus a parent-pid watch): no orphans.

Exit codes: 0 stopped; 2 usage; 3 cannot start (unknown engine, model family the engine
cannot run, model that does not load; the reason is on stderr); 4 became unhealthy while
serving (e.g. a poisoned CUDA context), so the supervisor restarts it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import socket
import sys

import grpc

from gpu_worker.device import (
    bind_cuda_device,
    full_fp32_on_cuda,
    on_own_thread,
    one_thread_here,
)
from gpu_worker.engines.base import Engine, StartupError, create_engine
from gpu_worker.plugins import load_plugins
from gpu_worker.service import WorkerServicer
from protos.asr.worker.v1 import worker_pb2 as wpb
from protos.asr.worker.v1 import worker_pb2_grpc as pb_grpc
from protos.common import framed
from protos.common.event_loop import run as run_loop
from protos.common.logs import setup_logging
from protos.common.memory import trim_when_idle
from protos.common.pcm_arena import PcmArena
from protos.common.process import die_with_parent, watch_parent
from protos.common.wire import WORKER_CHANNEL_OPTIONS
from protos.common.worker_auth import SECRET_ENV, server_interceptors
from protos.common.worker_config import WorkerConfig

log = logging.getLogger("gpu_worker")

EXIT_USAGE = 2
EXIT_STARTUP = 3
EXIT_UNHEALTHY = 4
UNHEALTHY_EXIT_DELAY_S = 0.5  # time to answer waiting calls (and GetInfo) before exiting


async def serve(cfg: WorkerConfig, engine: Engine) -> int:
    """Serve `engine` until stopped; the process exit code."""
    server = grpc.aio.server(options=list(WORKER_CHANNEL_OPTIONS),
                             interceptors=server_interceptors(os.environ.pop(SECRET_ENV, "")))
    arena = (PcmArena.attach(cfg.pcm_arena_fd, cfg.pcm_arena_bytes)
             if cfg.pcm_arena_fd >= 0 else None)
    servicer = WorkerServicer(engine, cfg.device_name, arena)
    pb_grpc.add_WorkerServicer_to_server(servicer, server)
    with contextlib.suppress(FileNotFoundError):
        os.unlink(cfg.socket_path)
    server.add_insecure_port(f"unix://{cfg.socket_path}")
    stop = asyncio.Event()
    exit_code = 0
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)

    def unhealthy(reason: str) -> None:
        nonlocal exit_code
        exit_code = EXIT_UNHEALTHY
        log.error("worker %s on %s is unhealthy (%s); exiting with code %d in %.1f s so it is "
                  "restarted", cfg.worker_id, cfg.device_name, reason, EXIT_UNHEALTHY,
                  UNHEALTHY_EXIT_DELAY_S, extra={"reason": reason})
        loop.call_later(UNHEALTHY_EXIT_DELAY_S, stop.set)

    engine.on_unhealthy = unhealthy
    engine.start()
    await server.start()
    caps = engine.capabilities
    log.info("worker %s ready on %s (device %s, pid %d, engine %s, family %s)", cfg.worker_id,
             cfg.socket_path, cfg.device_name, os.getpid(), caps.engine, caps.family)
    watcher = loop.create_task(watch_parent(cfg.parent_pid, stop))
    units = (loop.create_task(serve_work_socket(
        servicer, socket.socket(fileno=cfg.work_socket_fd))) if cfg.work_socket_fd >= 0 else None)
    live = (loop.create_task(serve_live_socket(
        servicer, socket.socket(fileno=cfg.live_socket_fd))) if cfg.live_socket_fd >= 0 else None)
    # Freed batch tensors stay in the heap after load; give them back once idle.
    trimmer = loop.create_task(trim_when_idle(lambda: servicer.served, lambda: servicer.active))
    await stop.wait()
    watcher.cancel()
    trimmer.cancel()
    for task in (units, live):
        if task is not None:
            task.cancel()
    await server.stop(2.0)
    await engine.stop()
    return exit_code


async def serve_work_socket(servicer: WorkerServicer, sock: socket.socket) -> None:
    """The scheduler's units over the socket pair end this process inherited: the `Work`
    call's messages as frames (`protos.common.framed`), served by the same code."""
    await framed.serve(sock, wpb.WorkRequest.FromString,
                       lambda units: servicer.Work(units, None), "the unit socket")


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 1:
        print("usage: python -m gpu_worker '<WorkerConfig JSON>'", file=sys.stderr)
        return EXIT_USAGE
    cfg = WorkerConfig.from_json(argv[0])
    die_with_parent()
    setup_logging(cfg.log_level, cfg.log_format, cfg.worker_id)
    try:
        load_plugins()
        engine = load_engine(cfg)
    except StartupError as exc:
        log.error("worker %s cannot start: %s", cfg.worker_id, exc)
        print(f"gpu_worker: cannot start: {exc}", file=sys.stderr)
        return EXIT_STARTUP
    except Exception as exc:
        log.exception("worker %s could not load model %s on %s", cfg.worker_id, cfg.model,
                      cfg.torch_device)
        print(f"gpu_worker: could not load model {cfg.model} with engine {cfg.engine!r} on "
              f"{cfg.torch_device}: {type(exc).__name__}: {exc}", file=sys.stderr)
        return EXIT_STARTUP
    return run_loop(serve(cfg, engine), cfg.event_loop)


def load_engine(cfg: WorkerConfig) -> Engine:
    """The engine, its model loaded. On the CPU the model computes on its model thread in an
    OpenMP team; this (the event loop's) thread stays single-threaded and the model loads on
    a thread of its own that ends afterwards, so no other team is left to make libgomp
    throttle the model thread's (`gpu_worker.device.one_thread_here`). On CUDA the host does
    little torch work, and engines such as vLLM's expect to load on the main thread. Every
    CUDA worker (recognition, live, VAD) computes fp32 in full fp32 (`full_fp32_on_cuda`), its
    device current on every thread that works with it (`bind_cuda_device`; here the main)."""
    if cfg.torch_device != "cpu":
        full_fp32_on_cuda()
        bind_cuda_device(cfg.torch_device)
        return create_engine(cfg)
    one_thread_here()
    return on_own_thread(lambda: create_engine(cfg))


async def serve_live_socket(servicer: WorkerServicer, sock: socket.socket) -> None:
    """The scheduler's live streams over the live socket pair end this process inherited:
    the `LiveLink` call's messages as frames, served by the same code."""
    await framed.serve(sock, wpb.LiveLinkRequest.FromString,
                       lambda requests: servicer.LiveLink(requests, None), "the live socket")
