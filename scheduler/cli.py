"""`asr-scheduler`: run the service (`serve`) or write local test models (`make-models`)."""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys
from pathlib import Path

from protos.common.event_loop import run as run_loop
from protos.common.logs import setup_logging
from protos.common.memory import tune_malloc
from scheduler.config import ConfigError, ServeConfig
from scheduler.models import ModelError, run_model_builder
from scheduler.server import AsrService

log = logging.getLogger("scheduler")


async def _serve(config: ServeConfig) -> None:
    """Serve until SIGTERM/SIGINT, then drain within `shutdown_grace_s`; a second signal
    ends the drain at once."""
    service = AsrService(config)
    stop, abort = asyncio.Event(), asyncio.Event()
    loop = asyncio.get_running_loop()

    def on_signal(name: str) -> None:
        if stop.is_set():
            log.warning("%s again: stopping at once", name)
            abort.set()
        else:
            log.info("%s: draining (grace %.1f s)", name, config.shutdown_grace_s)
            stop.set()

    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, on_signal, sig.name)
    try:
        await service.start()
        await stop.wait()
    finally:
        await service.stop(abort=abort)
        log.info("stopped")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="asr-scheduler", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    serve = sub.add_parser("serve", help="run the gRPC service")
    ServeConfig.add_arguments(serve)
    make = sub.add_parser("make-models", help="write small local FunASR model directories")
    make.add_argument("dir", type=Path)
    make.add_argument("--only", nargs="+", default=None, help="model names to build")
    make.add_argument("--all", action="store_true", help="also build sensevoice-small (234M)")
    make.add_argument("--force", action="store_true", help="rebuild existing directories")
    args = parser.parse_args(argv)
    if args.command == "make-models":
        return run_model_builder(args.dir, args.only, args.all, args.force)
    try:
        config = ServeConfig.from_args(args)
    except ConfigError as exc:  # one line per refused setting, named as the user gave it
        sys.stderr.write("".join(f"asr-scheduler serve: invalid setting: {line}\n"
                                 for line in exc.problems))
        return 2
    setup_logging(config.log_level, config.log_format, "scheduler")
    tune_malloc()  # before serving: audio-sized buffers must not fragment the heap
    try:
        run_loop(_serve(config), config.event_loop)
    except ModelError as exc:
        log.error("%s", exc)
        return 2
    except (ValueError, OSError) as exc:
        log.error("cannot start: %s", exc)
        return 2
    return 0
