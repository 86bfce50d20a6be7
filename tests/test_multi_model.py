"""Several models in one service: each request gets its own model's FunASR text, per-model
pools on shared (simulated) GPUs, status and metrics per model."""

from __future__ import annotations

from pathlib import Path

import grpc
import pytest

from protos.asr.v1 import asr_pb2 as pb
from protos.asr.v1 import asr_pb2_grpc as pb_grpc
from tests.test_metrics import scrape, value
from tests.test_service_e2e import funasr_text

pytestmark = pytest.mark.integration


def test_two_models_side_by_side(start_service, models_dir: Path,  # type: ignore[no-untyped-def]
                                 speech: dict[str, Path]) -> None:
    from tests.test_cli import free_port

    port = free_port()
    svc = start_service([f"a={models_dir / 'sensevoice-tiny'}",
                         f"b={models_dir / 'paraformer-tiny'}"], devices="sim:2",
                        metrics_port=port)
    audio = speech["wav16k"].read_bytes()
    with grpc.insecure_channel(svc.address) as channel:
        rec = pb_grpc.RecognizerStub(channel)

        def recognize(model: str) -> pb.RecognitionResult:
            return rec.Recognize(pb.RecognizeRequest(
                config=pb.RecognitionConfig(model=model), audio_content=audio), timeout=120).result

        a, b, default = recognize("a"), recognize("b"), recognize("")
        assert a.text == funasr_text(models_dir / "sensevoice-tiny", speech["wav16k"])
        assert b.text == funasr_text(models_dir / "paraformer-tiny", speech["wav16k"])
        assert a.text != b.text
        assert (a.model, b.model, default.model) == ("a", "b", "a")
        assert default.text == a.text
        for device in (a.device, b.device):
            assert device.startswith("sim:")

        with pytest.raises(grpc.RpcError) as info:
            recognize("c")
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "'c'" in info.value.details() and "a, b" in info.value.details()

        # Options the model lacks are refused, naming the option (from its capabilities).
        with pytest.raises(grpc.RpcError) as info:
            rec.Recognize(pb.RecognizeRequest(config=pb.RecognitionConfig(
                model="b", language="en"), audio_content=audio), timeout=60)
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "language" in info.value.details() and "'b'" in info.value.details()
        ok = rec.Recognize(pb.RecognizeRequest(config=pb.RecognitionConfig(
            model="a", language="en"), audio_content=audio), timeout=60).result
        assert ok.model == "a"

        status = pb_grpc.AdminStub(channel).GetStatus(pb.GetStatusRequest(), timeout=30)
    models = {m.name: m for m in status.models}
    assert list(models) == ["a", "b"] and models["a"].is_default and not models["b"].is_default
    assert models["a"].family and models["b"].family and models["a"].family != models["b"].family
    assert "en" in models["a"].languages and not models["b"].languages
    assert models["a"].ready_workers == 3 and models["b"].ready_workers == 3  # sim:0, sim:1, cpu
    workers = {w.worker_id: w.model for d in status.devices for w in d.workers}
    assert workers["a@sim:0#0"] == "a" and workers["b@sim:1#0"] == "b"
    # Both models' workers share each simulated GPU.
    sim0 = next(d for d in status.devices if d.name == "sim:0")
    assert {w.model for w in sim0.workers} == {"a", "b"}

    samples = scrape(port)
    for model in ("a", "b"):
        assert value(samples, "asr_worker_up", worker=f"{model}@sim:0#0", model=model) == 1
    seconds = {m: sum(v for (name, labels), v in samples.items()
                      if name == "asr_audio_seconds_total" and ("model", m) in labels)
               for m in ("a", "b")}
    assert seconds["a"] > 0 and seconds["b"] > 0
