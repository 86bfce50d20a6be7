"""GPU tier: runs only where CUDA and NVML work (skipped elsewhere, never faked).

Run on a GPU machine with `.venv/bin/python -m pytest -m gpu -q`.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from client.library import AsrClient
from protos.asr.v1 import asr_pb2 as pb


def _cuda_count() -> int:
    try:
        import torch

        return torch.cuda.device_count() if torch.cuda.is_available() else 0
    except Exception:
        return 0


pytestmark = [pytest.mark.gpu, pytest.mark.skipif(_cuda_count() == 0, reason="needs a CUDA GPU")]


def test_nvml_reports_real_memory() -> None:
    from scheduler.monitor import NvmlMonitor

    devices = NvmlMonitor().devices()
    assert len(devices) == _cuda_count()
    for d in devices:
        assert d.memory_total > 1 << 30 and 0 < d.memory_used < d.memory_total
        assert d.name.startswith("cuda:") and d.product


def test_service_runs_on_cuda_with_two_workers_per_gpu(start_service, models_dir: Path,  # type: ignore[no-untyped-def]
                                                       speech: dict[str, Path]) -> None:
    svc = start_service(models_dir / "sensevoice-tiny", devices="auto", workers_per_device=2,
                        cpu_fallback="never")
    assert {w.spec.torch_device for w in svc.service.workers} == {
        f"cuda:{i}" for i in range(_cuda_count())}
    with AsrClient(svc.address) as client:
        results = [client.recognize_bytes(p.read_bytes()) for p in speech.values() for _ in (0, 1)]
        status = client.status()
    assert all(r.device.startswith("cuda:") and r.fallback_reason == "" for r in results)
    gpu = [d for d in status.devices if d.name.startswith("cuda:")]
    assert gpu and all(d.memory_total_bytes > 0 and len(d.workers) == 2 for d in gpu)
    assert sum(w.served for d in gpu for w in d.workers) == len(results)


@pytest.mark.parametrize("model", ["sensevoice-tiny", "paraformer-tiny"])
def test_gpu_text_equals_cpu_text(start_service, models_dir: Path, speech: dict[str, Path],  # type: ignore[no-untyped-def]
                                  model: str) -> None:
    cpu = start_service(models_dir / model, devices="cpu")
    gpu = start_service(models_dir / model, devices="auto", cpu_fallback="never")
    for path in speech.values():
        with AsrClient(cpu.address) as c, AsrClient(gpu.address) as g:
            assert g.recognize_bytes(path.read_bytes()).text == \
                c.recognize_bytes(path.read_bytes()).text


def test_bf16_service_keeps_the_text_on_the_test_set(start_service, models_dir: Path,  # type: ignore[no-untyped-def]
                                                     speech: dict[str, Path]) -> None:
    """A `--dtype bf16` service serves on the GPU with text close to fp32's: >= 95 % of the
    characters (a floor against a broken bf16 path: features computed in bf16 gave ~88 % of
    the tokens with CPU autocast standing in; the token-level target is the runner test's
    below). Not equal: on these random-weight models' nearly flat logits bf16's rounding moves
    a few argmaxes (`tests/test_direct.py::test_bf16_tokens_agree_with_fp32`)."""
    import rapidfuzz.distance.Levenshtein as lev

    fp32 = start_service(models_dir / "sensevoice-tiny", devices="auto", cpu_fallback="never")
    bf16 = start_service(models_dir / "sensevoice-tiny", devices="auto", cpu_fallback="never",
                         dtype="bf16")
    cfg = pb.RecognitionConfig()
    with AsrClient(fp32.address) as a, AsrClient(bf16.address) as b:
        pairs = [(a.recognize_bytes(p.read_bytes(), cfg), b.recognize_bytes(p.read_bytes(), cfg))
                 for p in speech.values()]
    assert all(r.device.startswith("cuda:") and not r.fallback_reason for _, r in pairs)
    total = sum(len(want.text) for want, _ in pairs)
    errors = sum(lev.distance(want.text, got.text) for want, got in pairs)
    assert total > 50 and 1 - errors / total >= 0.95, (errors, total)


def _gpu_clips(speech: dict[str, Path]) -> list:  # type: ignore[type-arg]
    """The speech files plus cuts of them: mixed lengths."""
    from tests.audio_fixtures import reference_16k_mono

    whole = [reference_16k_mono(p) for p in speech.values()]
    return whole + [w[:len(w) // (k + 2)] for k, w in enumerate(whole)]


@pytest.mark.parametrize("model", ["sensevoice-tiny", "paraformer-tiny"])
def test_direct_text_equals_generate_on_cuda(models_dir: Path, speech: dict[str, Path],
                                             model: str) -> None:
    from gpu_worker.engines.base import Utterance
    from gpu_worker.engines.generate import load_runner
    from gpu_worker.fast.runner import load_direct_runner

    path = str(models_dir / model)
    generate, direct = load_runner(path, "cuda:0"), load_direct_runner(path, "cuda:0")
    utts = [Utterance(c) for c in _gpu_clips(speech)]
    expected = [generate.transcribe([u])[0].text for u in utts]
    assert [direct.transcribe([u])[0].text for u in utts] == expected
    assert [t.text for t in direct.transcribe(utts)] == expected  # one mixed-length batch


@pytest.mark.parametrize("dtype", ["bf16", "fp16"])
def test_direct_low_precision_token_agreement(models_dir: Path, speech: dict[str, Path],
                                              dtype: str) -> None:
    """bf16/fp16 (autocast) tokens agree with fp32 tokens on >= 99.5 % (edit distance): the
    issue's target. With CPU autocast standing in (same clips and model), bf16 98.97 % (3 of
    291 tokens; 87.6 % before the output layer's exact argmax): the random-weight model's
    logits are nearly flat (median margin between the best two ~0.07 nats), so the encoder's
    bf16 rounding alone moves a few argmaxes (trained models' logits are far from flat);
    fp16 keeps 3 more bits."""
    import rapidfuzz.distance.Levenshtein as lev

    from gpu_worker.engines.base import Utterance
    from gpu_worker.fast.runner import load_direct_runner

    path = str(models_dir / "sensevoice-tiny")
    fp32 = load_direct_runner(path, "cuda:0")
    low = load_direct_runner(path, "cuda:0", dtype=dtype)
    utts = [Utterance(c) for c in _gpu_clips(speech)]
    want, got = fp32.token_ids(utts), low.token_ids(utts)
    total = sum(max(len(w), 1) for w in want)
    errors = sum(lev.distance(w, g) for w, g in zip(want, got, strict=True))
    assert total > 20 and 1 - errors / total >= 0.995, (errors, total)


def test_direct_stages_overlap_on_cuda_with_the_same_text(models_dir: Path,
                                                          speech: dict[str, Path]) -> None:
    """The CUDA path of the staged runner: pinned host buffers, the copy on a side stream,
    two batches in flight through the batcher, and texts equal to one-by-one runs."""
    import asyncio

    from gpu_worker.device import TorchDevice
    from gpu_worker.engines.base import Utterance
    from gpu_worker.engines.batcher import Batcher
    from gpu_worker.fast.runner import load_direct_runner

    direct = load_direct_runner(str(models_dir / "sensevoice-tiny"), "cuda:0")
    utts = [Utterance(c) for c in _gpu_clips(speech)] * 4
    prepared = direct.prepare(utts[:2])
    assert prepared.host.is_pinned() and prepared.wave is not None \
        and prepared.wave.device.type == "cuda" and prepared.copied is not None
    expected = [direct.transcribe([u])[0].text for u in utts]

    async def run() -> tuple[list[str], int]:
        batcher = Batcher(direct, TorchDevice("cuda:0", "fp32", 1), max_batch_size=2,
                          max_queue_delay_s=0.0)
        batcher.start()
        try:
            outs = await asyncio.gather(*(batcher.submit(u) for u in utts))
        finally:
            await batcher.stop()
        return [t.text for t, _ in outs], batcher.counters.peak_in_flight

    texts, peak = asyncio.run(run())
    assert texts == expected and peak == 2
