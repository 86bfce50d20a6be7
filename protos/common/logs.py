"""Logging setup shared by the scheduler and worker processes: text or one JSON object a line.

Fields passed with ``extra=`` (request_id, device, audio_s, ...) become JSON keys, so a log
pipeline can follow a request id from the scheduler into the worker that ran it.
"""

from __future__ import annotations

import json
import logging
import time

_STANDARD = set(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {"message", "asctime"}


class _Formatter(logging.Formatter):
    """The default time stamp, its date and time part formatted once per second: a request
    writes a log line, and `strftime` was a tenth of that line's cost."""

    _second = -1
    _stamp = ""
    default_msec_format: str  # typeshed: `str | None`; logging.Formatter sets "%s,%03d"

    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:
        if datefmt:
            return super().formatTime(record, datefmt)
        second = int(record.created)
        if second != self._second:  # formatters run under their handler's lock
            self._stamp = time.strftime(self.default_time_format, self.converter(second))
            self._second = second
        return self.default_msec_format % (self._stamp, record.msecs)


class JsonFormatter(_Formatter):
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
    handler.setFormatter(JsonFormatter(process_tag) if fmt == "json" else _Formatter(
        f"%(asctime)s %(levelname)s [{process_tag}] %(name)s: %(message)s"))
    # What neither format shows is not gathered per record (the logging HOWTO's
    # "Optimization"): the caller's file and line (a walk up the stack), thread and process.
    logging._srcfile = None
    logging.logThreads = False
    logging.logProcesses = False
    logging.logMultiprocessing = False
    logging.basicConfig(level=level.upper(), handlers=[handler], force=True)
