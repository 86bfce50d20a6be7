"""The throughput benchmark runs end to end (tiny model, tiny settings) and reports every
variant with its ratio to the plain generate loop. It checks the script, not the speed."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parent.parent
RATIO = re.compile(r"\| (\d+\.\d+)x \|$")


def _rows(stdout: str, prefix: str) -> list[str]:
    return [line for line in stdout.splitlines() if line.startswith(f"| {prefix}")]


def test_quick_bench_reports_every_variant(models_dir: Path, tmp_path: Path) -> None:
    out_json = tmp_path / "bench.json"
    cmd = [sys.executable, str(ROOT / "bench" / "throughput.py"), "--quick",
           "--model", str(models_dir / "sensevoice-tiny"), "--clips", "4", "--clip-seconds", "3",
           "--concurrency", "1,2", "--workers-per-device", "1,2", "--devices", "cpu",
           "--work-dir", str(tmp_path / "work"), "--json", str(out_json)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = proc.stdout
    for prefix, count in (("(a)", 1), ("(b)", 1), ("(c) ours, 1 worker", 2),
                          ("(c) ours, 2 worker", 2), ("(e) ours direct fp32, 1 worker", 2),
                          ("(e) ours direct fp32, 2 worker", 2)):
        rows = _rows(out, prefix)
        assert len(rows) == count, out
        for row in rows:
            assert RATIO.search(row), row
            assert float(RATIO.search(row).group(1)) > 0, row
    assert RATIO.search(_rows(out, "(a)")[0]).group(1) == "1.00"
    funasr_rows = _rows(out, "(d) funasr-server")
    assert len(funasr_rows) == 2, out  # measured where it can run, else "n/a (why)"
    assert all(RATIO.search(r) or "n/a (" in r for r in funasr_rows), funasr_rows
    assert "target: ours at concurrency 1" in out
    assert "target: direct at concurrency 1" in out and "target: direct at concurrency 8" not in out
    data = json.loads(out_json.read_text())
    assert data["meta"]["device"] == "cpu"
    assert {r["variant"] for r in data["results"]} == {"a", "b", "c", "d", "e"}


@pytest.mark.slow
@pytest.mark.skipif(os.environ.get("ASR_SLOW_TESTS") != "1", reason="set ASR_SLOW_TESTS=1")
def test_gpu_sh_rehearses_every_step_on_the_cpu(tmp_path: Path) -> None:
    """`ASR_GPU_DRY_RUN=1 bench/gpu.sh`: the one GPU command, on the CPU with the tiny models,
    runs each step to the end and writes every section of its report (~3 minutes here)."""
    env = {**os.environ, "ASR_GPU_DRY_RUN": "1", "ASR_BENCH_WORK": str(tmp_path / "work"),
           "ASR_BENCH_MODELS": str(tmp_path / "models")}
    proc = subprocess.run(["bash", str(ROOT / "bench" / "gpu.sh"), str(tmp_path / "out")],
                          capture_output=True, text=True, timeout=900, env=env, cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-2000:]
    steps = (tmp_path / "out" / "steps.txt").read_text()
    for name in ("models", "tests", "throughput", "long_audio", "streaming"):
        assert re.search(rf"^{name}: exit 0 after \d+ s", steps, re.M), steps
    report = (tmp_path / "out" / "report.md").read_text()
    assert "| (e) ours direct fp32, 1 worker(s)/device | 4 |" in report, report
    assert "our text equals FunASR's for the single file: True" in report, report
    # variant, end silence, streams, utterances (the 300 ms end silence may split one), ...,
    # failed streams
    assert re.search(r"^service +300 +2 +([6-9]|1\d) .* 0$", report, re.M), report
    assert re.search(r"^funasr-loop +300 +1 +[3-9] .* 0$", report, re.M), report
    assert re.search(r"\d+ passed", report), report
    for name in ("throughput", "long_audio", "streaming"):
        assert json.loads((tmp_path / "out" / f"{name}.json").read_text()), name


def test_streaming_bench_measures_from_the_end_of_speech() -> None:
    """bench/streaming.py's references: the end of speech is the last audible 10 ms of the
    utterance (not the end the VAD reports, nor where decoding had got to), and the in-process
    loop's reference time is when the service's client would have sent that chunk."""
    import numpy as np

    from bench.streaming import SpeechEnds, chunk_due, sent_at

    audio = np.zeros(16000 * 4, np.float32)
    audio[8000:24000] = 0.5  # speech 0.5-1.5 s
    audio[40000:41600] = 0.5  # speech 2.5-2.6 s
    ends = SpeechEnds(audio)
    assert ends.before(400, 1700) == pytest.approx(1.5)
    assert ends.before(400, 3900) == pytest.approx(2.6)
    assert ends.before(1600, 2400) == pytest.approx(2.4)  # no speech in it: the given end
    sends = [((i + 1) / 10, i / 10) for i in range(40)]  # chunk [t, t + 0.1) sent at t
    for pos in (0.0, 0.05, 0.1, 0.15, 0.2, 1.5, 2.6, 3.99):
        assert chunk_due(pos) == pytest.approx(sent_at(sends, pos)), pos


def test_gpu_util_sums_samples_per_step(tmp_path: Path) -> None:
    """`bench/gpu_util.py summarize`: each step gets the samples taken while it ran, per GPU."""
    samples = tmp_path / "gpu_util.tsv"
    samples.write_text("".join(f"{100 + t / 2:.3f}\t{g}\t{u}\t{1024 * (g + 1)}\t{300 + u}\t"
                               f"{10 * t}\n"
                               for t, (g, u) in enumerate([(0, 0), (1, 5), (0, 80), (1, 0),
                                                           (0, 100), (1, 0), (0, 40),
                                                           (1, 0)])))
    steps = tmp_path / "steps.tsv"
    steps.write_text("models\t90\t100.6\nthroughput\t100.9\t104.0\nlive\t200\t210\n")
    timed = tmp_path / "throughput.json"  # bench/throughput.py --json: its timed parts
    timed.write_text(json.dumps({"results": [
        {"label": "(e) ours direct bf16", "concurrency": 32, "started_at": 101.9,
         "ended_at": 102.1}, {"label": "(d) funasr-server", "concurrency": 1}]}))
    live = tmp_path / "streaming.json"  # bench/streaming.py --json
    live.write_text(json.dumps([{"variant": "service", "streams": 16, "started_at": 100.4,
                                 "ended_at": 101.6}]))
    out = subprocess.run([sys.executable, "bench/gpu_util.py", "summarize", str(samples),
                          str(steps), "--windows-json", str(timed), "--windows-json", str(live),
                          "--windows-json", str(tmp_path / "absent.json")], cwd=ROOT,
                         capture_output=True, text=True, check=True)
    rows = [line for line in out.stdout.splitlines() if line.startswith("| ") and
            not line.startswith("| step")]
    assert rows == [
        "| models | 0 | 1 | 0 | 0 | 0 | 1.0 | 300 | 0 |",
        "| models | 1 | 1 | 5 | 5 | 100 | 2.0 | 305 | 10 |",
        "| throughput | 0 | 3 | 73 | 100 | 100 | 1.0 | 373 | 40 |",
        "| throughput | 1 | 3 | 0 | 0 | 0 | 2.0 | 300 | 50 |",
        "| live | - | 0 | | | | | | |",
        "| (e) ours direct bf16, c=32 | 0 | 1 | 100 | 100 | 100 | 1.0 | 400 | 40 |",
        "| service, 16 streams | 0 | 1 | 80 | 80 | 100 | 1.0 | 380 | 20 |",
        "| service, 16 streams | 1 | 2 | 2 | 5 | 50 | 2.0 | 302 | 20 |"]
