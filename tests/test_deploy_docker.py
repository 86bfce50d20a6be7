"""The container image's recipe: hadolint-clean, sends the builder only what it installs,
pins the same torch as the Makefile, and its health check really asks grpc.health.v1.
(No image is built here: there is no registry for the CUDA base image.)"""

from __future__ import annotations

import fnmatch
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.deploy_tools import BIN, ROOT
from tests.test_cli import free_port

DOCKER = ROOT / "deploy" / "docker"
DOCKERFILE = DOCKER / "Dockerfile"
HEALTHCHECK = DOCKER / "healthcheck.py"


def test_hadolint_clean() -> None:
    out = subprocess.run([str(BIN / "hadolint"), "--no-color", str(DOCKERFILE)],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stdout + out.stderr
    assert out.stdout.strip() == ""
    # The only rule switched off (inline, with its reason) is apt version pinning.
    ignored = re.findall(r"hadolint ignore=(\S+)", DOCKERFILE.read_text())
    assert set(ignored) <= {"DL3008"}


def test_image_shape() -> None:
    text = DOCKERFILE.read_text()
    assert re.search(r"^USER 10001", text, re.M), "runs as a non-root user"
    assert 'CMD ["python3", "/opt/asr/healthcheck.py"]' in text
    assert 'ENTRYPOINT ["asr-scheduler", "serve"]' in text
    torch_pin = re.search(r"TORCH\s*\?=\s*(torch==[\d.]+)", (ROOT / "Makefile").read_text())
    assert torch_pin and f"pip install {torch_pin.group(1)}" in text, "same torch as make"
    # torch 2.13 from PyPI is a CUDA 13 build: the base image's CUDA must be 13 too.
    assert torch_pin.group(1) == "torch==2.13.0"
    assert re.search(r"ARG CUDA_IMAGE=nvidia/cuda:13\.\d+\.\d+-runtime-", text)


def test_dockerignore_sends_what_is_copied() -> None:
    """Every COPY source survives Dockerfile.dockerignore; tests, models, .venv do not."""
    patterns = [line.strip() for line in (DOCKER / "Dockerfile.dockerignore").read_text()
                .splitlines() if line.strip() and not line.startswith("#")]

    def sent(path: str) -> bool:
        keep = True
        for p in patterns:
            negate = p.startswith("!")
            pat = p.lstrip("!").rstrip("/")
            if fnmatch.fnmatch(path, pat) or path.startswith(pat + "/") or \
                    fnmatch.fnmatch(path, pat.replace("**/", "*/")):
                keep = negate
        return keep

    sources = [s for line in DOCKERFILE.read_text().splitlines()
               if line.startswith("COPY ") and "--from=" not in line
               for s in line.split()[1:-1]]
    assert sources
    for src in sources:
        assert (ROOT / src).exists(), src
        assert sent(src), f"{src} is excluded from the build context"
    for path in ("tests/test_cli.py", "models/sensevoice-tiny", ".venv/bin/python",
                 "scheduler/__pycache__/x.pyc", "bench/throughput.py"):
        assert not sent(path), path


def run_healthcheck(port: int) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ASR_TLS")}
    return subprocess.run([sys.executable, str(HEALTHCHECK)], capture_output=True, text=True,
                          timeout=60, env={**env, "ASR_PORT": str(port)})


@pytest.mark.integration
def test_healthcheck_script_reads_grpc_health(start_service, models_dir: Path) -> None:  # type: ignore[no-untyped-def]
    svc = start_service(models_dir / "sensevoice-tiny")
    out = run_healthcheck(svc.port)
    assert out.returncode == 0 and "SERVING" in out.stderr, out.stderr
    svc.stop()
    out = run_healthcheck(svc.port)
    assert out.returncode == 1 and "health check failed" in out.stderr
    out = run_healthcheck(free_port())
    assert out.returncode == 1
