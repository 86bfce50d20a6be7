"""Logging setup shared by the scheduler and worker processes: text or one JSON object a line.

Fields passed with ``extra=`` (request_id, device, audio_s, ...) become JSON keys, so a log
pipeline can follow a request id from the scheduler into the worker that ran it.
"""

from __future__ import annotations

import json
import logging

_STANDARD = set(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {"message", "asctime"}


class JsonFormatter(logging.Formatter):
    def __init__(self, process_tag: str) -> None:
        super().__init__()
        self.process_tag = process_tag

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, object] = {"ts": self.formatTime(record), "level": record.levelname,
                                  "process": self.process_tag, "logger": record.name,
                                  "message": record.getMessage()}
        out.update({k: v for k, v in vars(record).items() if k not in _STANDARD})
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return json.dumps(out, default=str)


def setup_logging(level: str, fmt: str, process_tag: str) -> None:
    """Configure the root logger once per process: `fmt` is "text" or "json"."""
    handler = logging.StreamHandler()
    handler.setFormatter(JsonFormatter(process_tag) if fmt == "json" else logging.Formatter(
        f"%(asctime)s %(levelname)s [{process_tag}] %(name)s: %(message)s"))
    logging.basicConfig(level=level.upper(), handlers=[handler], force=True)
