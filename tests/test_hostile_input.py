"""Hostile input against the live service: random bytes and fuzzed protobuf messages get
INVALID_ARGUMENT (or a result, for bytes that happen to be a valid request), never UNKNOWN or
INTERNAL, never a traceback in the log; every refused call is counted; the service keeps
serving. ASR_FUZZ_EXAMPLES scales the run (default a few hundred; thousands before release)."""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from protos.asr.v1 import asr_pb2 as pb
from protos.asr.v1 import asr_pb2_grpc as pb_grpc
from tests.test_metrics import scrape, value

pytestmark = pytest.mark.integration

EXAMPLES = int(os.environ.get("ASR_FUZZ_EXAMPLES", "150"))
ALLOWED = {grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.RESOURCE_EXHAUSTED,
           grpc.StatusCode.OK}


class _Tracebacks(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        if record.exc_info or record.levelno >= logging.ERROR:
            self.records.append(record)


@pytest.fixture(scope="module")
def live(models_dir: Path):  # type: ignore[no-untyped-def]
    from tests.conftest import RunningService, make_config
    from tests.test_cli import free_port

    port = free_port()
    svc = RunningService(make_config(models_dir / "sensevoice-tiny", metrics_port=port))
    svc.wait_all_ready()
    catcher = _Tracebacks()
    for name in ("scheduler", "grpc"):
        logging.getLogger(name).addHandler(catcher)
    channel = grpc.insecure_channel(svc.address)
    yield svc, channel, catcher, port
    channel.close()
    for name in ("scheduler", "grpc"):
        logging.getLogger(name).removeHandler(catcher)
    svc.stop()


def _code(call: object) -> grpc.StatusCode:
    try:
        call()  # type: ignore[operator]
    except grpc.RpcError as exc:
        return exc.code()  # type: ignore[attr-defined,no-any-return]
    return grpc.StatusCode.OK


def _raw_unary(channel: grpc.Channel, blob: bytes) -> grpc.StatusCode:
    call = channel.unary_unary("/asr.v1.Recognizer/Recognize",
                               request_serializer=lambda b: b,
                               response_deserializer=lambda b: b)
    return _code(lambda: call(blob, timeout=60))


def _raw_stream(channel: grpc.Channel, blobs: list[bytes]) -> grpc.StatusCode:
    call = channel.stream_stream("/asr.v1.Recognizer/StreamingRecognize",
                                 request_serializer=lambda b: b,
                                 response_deserializer=lambda b: b)
    return _code(lambda: list(call(iter(blobs), timeout=60)))


configs = st.builds(
    pb.RecognitionConfig, encoding=st.integers(-5, 10), sample_rate_hertz=st.integers(-10, 10**7),
    audio_channel_count=st.integers(-3, 300), language=st.text(max_size=40),
    enable_itn=st.booleans(), hotwords=st.lists(st.text(max_size=30), max_size=5),
    max_segment_ms=st.integers(-10, 10**7), request_id=st.text(max_size=200),
    vad_mode=st.integers(-3, 6), model=st.text(max_size=30))


@settings(max_examples=EXAMPLES, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(blob=st.one_of(st.binary(max_size=2048),
                      configs.map(lambda c: pb.RecognizeRequest(config=c).SerializeToString()
                                  [: len(pb.RecognizeRequest(config=c).SerializeToString()) - 1])))
def test_random_and_truncated_unary_messages(live, blob: bytes) -> None:  # type: ignore[no-untyped-def]
    _, channel, catcher, _ = live
    code = _raw_unary(channel, blob)
    assert code in ALLOWED, code
    assert not catcher.records, catcher.records[0].getMessage()


@settings(max_examples=EXAMPLES, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(config=configs, audio=st.binary(max_size=4096), garbage=st.binary(max_size=64))
def test_fuzzed_messages_and_streams(live, config: pb.RecognitionConfig, audio: bytes,  # type: ignore[no-untyped-def]
                                     garbage: bytes) -> None:
    _, channel, catcher, _ = live
    rec = pb_grpc.RecognizerStub(channel)
    code = _code(lambda: rec.Recognize(pb.RecognizeRequest(config=config, audio_content=audio),
                                       timeout=60))
    assert code in ALLOWED, code

    def stream() -> Iterator[bytes]:
        yield pb.StreamingRecognizeRequest(streaming_config=pb.StreamingRecognitionConfig(
            config=config)).SerializeToString()
        yield pb.StreamingRecognizeRequest(audio_content=audio).SerializeToString()
        yield garbage
    code = _raw_stream(channel, list(stream()))
    assert code in ALLOWED, code
    assert not catcher.records, catcher.records[0].getMessage()


def settled(port: int) -> dict:  # type: ignore[type-arg]
    """/metrics once no call is in flight: a call is counted just after its status is sent,
    so the client can see the status before the count moves."""
    for _ in range(100):
        samples = scrape(port)
        if value(samples, "asr_requests_in_flight") == 0:
            return samples
        time.sleep(0.05)
    raise AssertionError("calls still in flight after 5 s")


def test_still_serving_and_refusals_counted(live, speech: dict[str, Path]) -> None:  # type: ignore[no-untyped-def]
    _, channel, catcher, port = live
    assert _raw_unary(channel, b"\xff\xff\xff\xff") == grpc.StatusCode.INVALID_ARGUMENT
    before = value(settled(port), "asr_requests_total", rpc="Recognize",
                   code="INVALID_ARGUMENT")
    assert _raw_unary(channel, b"\x0a\x05\x08") == grpc.StatusCode.INVALID_ARGUMENT
    assert value(settled(port), "asr_requests_total", rpc="Recognize",
                 code="INVALID_ARGUMENT") == before + 1
    # Long values are not echoed back whole; a newline in a request id cannot reach the log.
    rec = pb_grpc.RecognizerStub(channel)
    with pytest.raises(grpc.RpcError) as info:
        rec.Recognize(pb.RecognizeRequest(config=pb.RecognitionConfig(model="m" * 1_000_000),
                                          audio_content=b"x"), timeout=60)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert len(info.value.details()) <= 1000
    with pytest.raises(grpc.RpcError) as info:
        rec.Recognize(pb.RecognizeRequest(config=pb.RecognitionConfig(
            request_id="abc\nFAKE LOG LINE"), audio_content=b"x"), timeout=60)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "request id" in info.value.details() and "FAKE" not in info.value.details()
    with pytest.raises(grpc.RpcError) as info:  # HTTP/2 allows no newline in metadata; length
        rec.Recognize(pb.RecognizeRequest(audio_content=b"x"), timeout=60,
                      metadata=(("x-request-id", "r" * 5000),))
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    result = rec.Recognize(pb.RecognizeRequest(audio_content=speech["wav16k"].read_bytes()),
                           timeout=120).result
    assert result.text
    assert not catcher.records
