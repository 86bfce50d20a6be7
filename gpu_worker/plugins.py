"""Worker plugins: modules named in ASR_WORKER_PLUGINS are imported at worker start.

A plugin registers model families (`gpu_worker.families.register_family`), engines
(`gpu_worker.engines.base.register_engine`) or FunASR model classes (funasr's `tables`), so a
deployment or a test adds a model family without editing the worker. The variable is read
when the worker starts, never at import time.
"""

from __future__ import annotations

import importlib
import logging
import os
from collections.abc import Mapping

from gpu_worker.engines.base import StartupError

log = logging.getLogger(__name__)

PLUGINS_ENV = "ASR_WORKER_PLUGINS"


def plugin_names(environ: Mapping[str, str] | None = None) -> list[str]:
    env = os.environ if environ is None else environ
    return [name.strip() for name in env.get(PLUGINS_ENV, "").split(",") if name.strip()]


def load_plugins(environ: Mapping[str, str] | None = None) -> list[str]:
    """Import every module ASR_WORKER_PLUGINS names (comma-separated); their names."""
    names = plugin_names(environ)
    for name in names:
        try:
            importlib.import_module(name)
        except ImportError as exc:
            raise StartupError(f"{PLUGINS_ENV}: cannot import plugin {name!r}: {exc}") from exc
        log.info("loaded worker plugin %s", name)
    return names
