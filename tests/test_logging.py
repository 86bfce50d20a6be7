"""Structured logs: a client's request id reaches the worker's JSON log line."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest

from client.library import AsrClient
from protos.asr.v1 import asr_pb2 as pb
from protos.common.logs import JsonFormatter

pytestmark = pytest.mark.integration


def test_request_id_from_metadata_reaches_worker_json_logs(
        start_service, models_dir: Path, speech: dict[str, Path],  # type: ignore[no-untyped-def]
        capfd: pytest.CaptureFixture[str]) -> None:
    svc = start_service(models_dir / "sensevoice-tiny", log_format="json")
    with AsrClient(svc.address) as client:
        req = pb.RecognizeRequest(audio_content=speech["wav16k"].read_bytes())
        result = client.recognizer.Recognize(req, metadata=[("x-request-id", "call-42")],
                                             timeout=60).result
    assert result.request_id == "call-42"
    lines = [json.loads(line) for line in capfd.readouterr().err.splitlines()
             if line.startswith("{")]
    batch_lines = [x for x in lines if "call-42" in x.get("request_ids", [])]
    assert batch_lines, "the worker logged the batch with the request id"
    assert batch_lines[0]["process"] == "cpu#0" and batch_lines[0]["level"] == "INFO"


def test_json_formatter_carries_extra_fields() -> None:
    record = logging.LogRecord("scheduler.recognition", logging.INFO, __file__, 1,
                               "request %s done", ("r1",), None)
    record.request_id = "r1"
    record.audio_s = 2.5
    out = json.loads(JsonFormatter("scheduler").format(record))
    assert out["message"] == "request r1 done" and out["request_id"] == "r1"
    assert out["audio_s"] == 2.5 and out["process"] == "scheduler"
