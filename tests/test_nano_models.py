"""Fun-ASR-Nano model directories and the Nano family/engines without the service.

The tiny directory builds offline, loads with `AutoModel(model=DIR, disable_update=True)` from
any working directory without touching the network, batches like it decodes one at a time, and
obeys the token cap; `--engine vllm` refuses to start clearly where vLLM or CUDA is missing.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from gpu_worker.engines.base import StartupError, Utterance
from gpu_worker.families.funasr_nano import generate_kwargs
from protos.common.worker_config import WorkerConfig

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parent.parent

# Loads the model in a fresh process whose sockets refuse anything but Unix sockets, from an
# unrelated working directory, and prints the parameter count and one transcript.
_OFFLINE_LOAD = r"""
import json, socket, sys
attempts = []
_connect = socket.socket.connect
def guarded(self, address):
    if self.family != socket.AF_UNIX:
        attempts.append(repr(address))
        raise OSError("network disabled in this test")
    return _connect(self, address)
socket.socket.connect = guarded
import numpy as np, torch
from funasr import AutoModel
m = AutoModel(model=sys.argv[1], disable_update=True, device="cpu", disable_pbar=True)
clip = torch.from_numpy(np.sin(np.arange(32000) / 7.0).astype("float32") * 0.3)
text = m.generate(input=clip, max_length=8)[0]["text"]
params = sum(p.numel() for p in m.model.parameters())
print(json.dumps({"params": params, "text": text, "attempts": attempts}))
"""


@pytest.fixture(scope="module")
def nano_dir(models_dir: Path) -> Path:
    return models_dir / "funasr-nano-tiny"


def test_tiny_loads_offline_from_any_directory(nano_dir: Path, tmp_path: Path) -> None:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT)}
    proc = subprocess.run([sys.executable, "-c", _OFFLINE_LOAD, str(nano_dir.resolve())],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["attempts"] == []
    assert 1e6 < out["params"] < 10e6, out["params"]
    assert out["text"]
    assert (nano_dir / "Qwen3-0.6B" / "tokenizer.json").is_file()


def test_runner_batches_like_one_at_a_time_and_caps_tokens(nano_dir: Path) -> None:
    from gpu_worker.engines.generate import load_runner

    runner = load_runner(str(nano_dir))
    rng = np.random.default_rng(7)
    clips = [(rng.standard_normal(int(16000 * s)) * 0.1).astype(np.float32)
             for s in (1.3, 2.0, 3.7)]
    alone = [runner.transcribe([Utterance(c, max_new_tokens=12)])[0] for c in clips]
    together = runner.transcribe([Utterance(c, max_new_tokens=12) for c in clips])
    assert [t.text for t in together] == [t.text for t in alone]
    assert len({t.text for t in alone}) == 3
    for t in together:
        assert 1 <= t.tokens_generated <= 12
        assert t.decode_steps == max(x.tokens_generated for x in together)
    short = runner.transcribe([Utterance(clips[0], max_new_tokens=3)])[0]
    assert short.tokens_generated <= 3 and short.decode_steps <= 3


def test_prompt_options() -> None:
    kw = generate_kwargs("zh", False, ("阿里巴巴",), 0)
    assert kw == {"hotwords": ["阿里巴巴"], "itn": False, "language": "中文"}
    assert generate_kwargs("auto", True, (), 40) == {"hotwords": [], "itn": True,
                                                     "max_length": 40}
    assert generate_kwargs("en", True, (), 0)["language"] == "英文"
    with pytest.raises(ValueError, match="zh"):
        generate_kwargs("fr", True, (), 0)


def test_vllm_engine_refuses_to_start_without_vllm_or_cuda() -> None:
    import importlib.util

    from gpu_worker.engines.nano_vllm import check_available

    with pytest.raises(StartupError, match=r"vllm|CUDA"):
        check_available("cpu")
    if importlib.util.find_spec("vllm") is None:
        with pytest.raises(StartupError, match="pip install"):
            check_available("cuda:0")


def test_vllm_worker_exits_3_with_a_message(nano_dir: Path, tmp_path: Path) -> None:
    cfg = WorkerConfig(model=str(nano_dir), engine="vllm", worker_id="t",
                       socket_path=str(tmp_path / "w.sock"))
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.run([sys.executable, "-m", "gpu_worker", cfg.to_json()], env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 3, proc.stderr[-2000:]
    assert "cannot start" in proc.stderr and "vllm" in proc.stderr


def test_vllm_engine_refuses_other_families(models_dir: Path) -> None:
    from gpu_worker.engines.base import create_engine

    cfg = WorkerConfig(model=str(models_dir / "sensevoice-tiny"), engine="vllm")
    with pytest.raises(StartupError, match="cannot run model family 'sensevoice'"):
        create_engine(cfg)


@pytest.mark.slow
@pytest.mark.skipif(os.environ.get("ASR_SLOW_TESTS") != "1", reason="set ASR_SLOW_TESTS=1")
def test_full_size_nano(tmp_path: Path) -> None:
    from funasr import AutoModel

    from gpu_worker.make_models import build_models

    path = build_models(tmp_path, ["funasr-nano"])["funasr-nano"]
    model = AutoModel(model=str(path), disable_update=True, device="cpu", disable_pbar=True)
    count = sum(p.numel() for p in model.model.parameters())
    assert abs(count - 829.8e6) < 1.0e6, count
    import torch

    clip = torch.from_numpy((np.random.default_rng(0).standard_normal(16000) * 0.1)
                            .astype(np.float32))
    assert len(model.generate(input=clip, max_length=4)) == 1


def test_client_max_new_tokens_flag_reaches_the_config() -> None:
    from client.cli import build_parser, recognition_options

    args = build_parser().parse_args(["transcribe", "a.wav", "--max-new-tokens", "7",
                                      "--language", "zh", "--hotword", "通义"])
    opts = recognition_options(args)
    assert opts.max_new_tokens == 7
    cfg = opts.to_config("a.wav")
    assert (cfg.max_new_tokens, cfg.language, list(cfg.hotwords)) == (7, "zh", ["通义"])


def test_serve_max_new_tokens_and_engine_reach_the_worker_config() -> None:
    from scheduler.config import ConfigError, ServeConfig
    from scheduler.models import ModelSpec
    from scheduler.server import AsrService
    from scheduler.workers import WorkerSpec

    cfg = ServeConfig.parse(["--max-new-tokens", "64", "--engine", "vllm"], environ={})
    assert (cfg.max_new_tokens, cfg.engine) == (64, "vllm")
    with pytest.raises(ConfigError, match="max-new-tokens"):
        ServeConfig.parse(["--max-new-tokens", "0"], environ={})
    svc = AsrService(cfg)
    svc._runtime_dir = "/nonexistent"
    placements = [WorkerSpec("cuda:0#0", "cuda:0", "cuda:0"),
                  WorkerSpec("cpu#0", "cpu", "cpu", is_cpu=True)]
    svc._plan([ModelSpec("/m/nano", "nano")], placements, None)
    workers = {w.spec.worker_id: w.launch.worker for w in svc.workers}
    assert workers["cuda:0#0"].engine == "vllm" and workers["cuda:0#0"].max_new_tokens == 64
    assert workers["cpu#0"].engine == "generate"  # vLLM needs CUDA: the CPU fallback does not
    svc._plan([ModelSpec("/m/nano", "nano")], placements[1:], None)
    assert svc.workers[0].launch.worker.engine == "vllm"  # CPU only: its worker says why not
