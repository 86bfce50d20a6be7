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


def test_stepwise_bench_compares_four_variants(models_dir: Path, tmp_path: Path) -> None:
    """bench/nano_stepwise.py: FunASR one at a time and static, ours static and step-wise,
    mixed token caps; ours produce FunASR's one-at-a-time texts."""
    out_json = tmp_path / "stepwise.json"
    cmd = [sys.executable, str(ROOT / "bench" / "nano_stepwise.py"),
           "--model", str(models_dir / "funasr-nano-tiny"), "--clips", "6",
           "--clip-seconds", "1,2", "--caps", "2,5", "--concurrency", "3",
           "--json", str(out_json)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = {r["variant"]: r for r in json.loads(out_json.read_text())}
    assert set(rows) == {"funasr-1", "funasr-static", "ours-static", "ours-stepwise"}
    for r in rows.values():
        assert r["tokens"] == 3 * (2 + 5), r  # random weights run every clip to its cap
        assert r["ms_per_token"] > 0 and r["clips_per_s"] > 0, r
    lines = {line.split("|")[1].strip(): line for line in proc.stdout.splitlines()
             if line.startswith("| ours") or line.startswith("| funasr")}
    assert lines["ours-stepwise"].split("|")[8].strip() == "6/6"  # text = funasr-1
    assert lines["ours-static"].split("|")[8].strip() == "6/6"
