"""The throughput benchmark covers Fun-ASR-Nano: FunASR one clip at a time, FunASR batched and
our service, each with the token cap and its tokens counted (time per output token). It checks
the script, not the speed."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parent.parent
CAP = 8


def test_quick_bench_covers_nano(models_dir: Path, tmp_path: Path) -> None:
    out_json = tmp_path / "bench.json"
    cmd = [sys.executable, str(ROOT / "bench" / "throughput.py"), "--quick",
           "--model", str(models_dir / "funasr-nano-tiny"), "--clips", "4", "--clip-seconds",
           "3", "--concurrency", "1,4", "--workers-per-device", "1", "--devices", "cpu",
           "--batch-size", "4", "--max-new-tokens", str(CAP),
           "--work-dir", str(tmp_path / "work"), "--json", str(out_json)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "| tokens | ms/token |" in proc.stdout
    data = json.loads(out_json.read_text())
    rows = {(r["variant"], r["concurrency"]): r for r in data["results"]}
    assert set(rows) == {("a", 1), ("b", 4), ("c", 1), ("c", 4), ("d", 1), ("d", 4)}
    for key in (("a", 1), ("b", 4), ("c", 1), ("c", 4)):
        r = rows[key]
        assert 0 < r["tokens"] <= r["requests"] * CAP, r
        assert r["ms_per_token"] > 0, r
    assert "not run for Fun-ASR-Nano" in rows[("d", 1)]["unavailable"]
