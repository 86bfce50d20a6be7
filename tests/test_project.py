"""Project hygiene: generated stubs are fresh, import boundaries hold, ruff is clean."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tools"))


def _versionless(code: bytes) -> bytes:
    """Generated code without the grpcio-tools release that wrote it: a patch release of
    grpcio-tools (1.85.1 -> 1.85.4) changes only that line. The committed stubs keep the
    oldest release they were made with, the floor their import check asks of grpcio."""
    return re.sub(rb"GRPC_GENERATED_VERSION = '[0-9.]+'", b"GRPC_GENERATED_VERSION = ''", code)


def test_generated_stubs_are_fresh(tmp_path: Path) -> None:
    from gen_protos import PROTOS, generate

    generate(tmp_path)
    checked = 0
    for proto in PROTOS:
        stem = Path(proto).with_suffix("")
        for suffix in ("_pb2.py", "_pb2.pyi", "_pb2_grpc.py"):
            fresh = tmp_path / f"{stem}{suffix}"
            committed = ROOT / f"{stem}{suffix}"
            assert committed.exists(), f"{committed} missing: run 'make protos'"
            assert _versionless(fresh.read_bytes()) == _versionless(committed.read_bytes()), (
                f"{committed.relative_to(ROOT)} is stale: run 'make protos'")
            checked += 1
    assert checked == 3 * len(PROTOS)


def test_every_rpc_and_field_is_commented() -> None:
    for proto in (ROOT / "protos").rglob("*.proto"):
        lines = proto.read_text().splitlines()
        for i, line in enumerate(lines):
            s = line.strip()
            is_field = s.endswith(";") and "=" in s and not s.startswith(("option", "//",
                                                                          "syntax", "package"))
            if s.startswith("rpc ") or (is_field and not s.startswith("reserved")):
                above = lines[i - 1].strip()
                assert above.startswith("//"), f"{proto.name}:{i + 1} lacks a comment: {s}"


def test_import_boundaries() -> None:
    exe = shutil.which("lint-imports", path=str(Path(sys.executable).parent))
    assert exe, "import-linter is not installed"
    out = subprocess.run([exe, "--no-cache"], cwd=ROOT, capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr
    kept = re.search(r"Contracts: (\d+) kept, 0 broken", out.stdout)
    assert kept and int(kept.group(1)) >= 4, out.stdout


def test_scheduler_process_never_loads_torch() -> None:
    code = ("import sys, scheduler.server, scheduler.cli, client.cli; "
            "bad = [m for m in ('torch', 'funasr', 'gpu_worker') if m in sys.modules]; "
            "print(bad); sys.exit(1 if bad else 0)")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr


@pytest.mark.skipif(shutil.which("ruff", path=str(Path(sys.executable).parent)) is None,
                    reason="ruff not installed")
def test_ruff_clean() -> None:
    exe = shutil.which("ruff", path=str(Path(sys.executable).parent))
    out = subprocess.run([str(exe), "check", "."], cwd=ROOT, capture_output=True, text=True)
    assert out.returncode == 0, out.stdout


def test_worker_config_round_trip() -> None:
    """The scheduler fills in the one WorkerConfig; the worker reads back the same values."""
    from protos.common.worker_config import WorkerConfig
    from scheduler.workers import WorkerHandle, WorkerLaunch, WorkerSpec

    handle = WorkerHandle(WorkerSpec("cuda:1#0", "cuda:1", "cuda:1"),
                          WorkerLaunch(WorkerConfig("m", max_batch_size=7), "/tmp"))
    cfg = WorkerConfig.from_json(handle.worker_config().to_json())
    assert (cfg.worker_id, cfg.torch_device, cfg.max_batch_size) == ("cuda:1#0", "cuda:1", 7)
    assert cfg.socket_path.startswith("/tmp/")
    with pytest.raises(ValueError, match="unknown worker config fields: bogus"):
        WorkerConfig.from_json('{"model": "m", "bogus": 1}')
