"""The `direct` engine through the real service: `--engine`, `NAME=DIR?engine=E`, engine
reported in the status, and the same text as `generate` for concurrent mixed-length
requests (real scheduler, real worker processes, real gRPC on loopback)."""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from gpu_worker.engines.base import resolve_engine
from protos.asr.v1 import asr_pb2 as pb
from protos.common.worker_config import WorkerConfig
from scheduler.models import ModelError, ModelSpec, name_models, parse_model_specs

pytestmark = pytest.mark.integration


def test_model_spec_engine_suffix() -> None:
    assert parse_model_specs(["a=/m/sv?engine=direct", "/m/pf?engine=generate", "/m/x"]) == [
        ModelSpec("/m/sv", "a", "direct"), ModelSpec("/m/pf", "", "generate"),
        ModelSpec("/m/x")]
    assert name_models([ModelSpec("/m/pf", "", "generate")], ["/m/pf"]) == [
        ModelSpec("/m/pf", "pf", "generate")]
    for bad in ("a=/m?engine=", "a=/m?mode=direct", "/m?engine=Direct!"):
        with pytest.raises(ModelError, match="engine=ENGINE"):
            parse_model_specs(bad)


def test_auto_engine_is_direct_where_the_family_supports_it(models_dir: Path) -> None:
    def auto(model: str) -> str:
        return resolve_engine(WorkerConfig(model=model, engine="auto"))

    assert auto(str(models_dir / "sensevoice-tiny")) == "direct"
    assert auto(str(models_dir / "paraformer-tiny")) == "direct"
    assert auto(str(models_dir / "paraformer-streaming-tiny")) == "generate"
    assert auto("iic/SenseVoiceSmall") == "generate"  # a hub id: FunASR's own path
    assert resolve_engine(WorkerConfig(model="x", engine="generate")) == "generate"


def test_direct_and_generate_side_by_side(start_service, models_dir: Path,  # type: ignore[no-untyped-def]
                                          speech: dict[str, Path]) -> None:
    from client.library import AsrClient

    sv, pf = models_dir / "sensevoice-tiny", models_dir / "paraformer-tiny"
    svc = start_service([f"sv={sv}", f"sv-gen={sv}?engine=generate", f"pf={pf}",
                         f"pf-gen={pf}?engine=generate"], max_batch_size=8,
                        cpu_max_batch_size=8, worker_start_timeout_s=300, exact_argmax="off")
    for w in svc.service.dispatcher.workers:  # `--exact-argmax off` reached the workers
        assert w.process is not None
        cmdline = Path(f"/proc/{w.process.pid}/cmdline").read_bytes().split(b"\0")
        assert json.loads(cmdline[-2])["exact_argmax"] is False
    audios = [p.read_bytes() for p in speech.values()]
    with AsrClient(svc.address) as client:
        engines = {m.name: m.engine for m in client.status().models}
        assert engines == {"sv": "direct", "sv-gen": "generate", "pf": "direct",
                           "pf-gen": "generate"}

        def text(model: str, audio: bytes) -> str:
            cfg = pb.RecognitionConfig(model=model)
            return client.recognize_bytes(audio, cfg, timeout=120).text

        jobs = [(m, a) for m in ("sv", "sv-gen", "pf", "pf-gen") for a in audios for _ in (0, 1)]
        with ThreadPoolExecutor(16) as pool:  # concurrent: direct batches mixed lengths
            texts = list(pool.map(lambda job: text(*job), jobs))
    got = dict(zip([(m, i % (2 * len(audios))) for i, (m, _) in enumerate(jobs)], texts,
                   strict=True))
    for direct, generate in (("sv", "sv-gen"), ("pf", "pf-gen")):
        for k in range(2 * len(audios)):
            assert got[(direct, k)] == got[(generate, k)] != ""
