"""A batch run survives the service being killed and restarted: `asr-client transcribe`
retries (UNAVAILABLE, with backoff) and completes with every file."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.audio_fixtures import SENTENCES, espeak_wav
from tests.test_cli import free_port, wait_serving

pytestmark = pytest.mark.integration

BIN = Path(sys.executable).parent
FILES = 40


def serve(models_dir: Path, port: int, log: Path) -> subprocess.Popen[bytes]:
    """`asr-scheduler serve` in its own process group (killed with its workers as a whole)."""
    env = {**os.environ, "ASR_DEVICES": "cpu", "ASR_PORT": str(port), "ASR_METRICS_PORT": "0",
           "ASR_WORKER_THREADS": "1", "ASR_VAD_MODEL": "none"}
    with log.open("ab") as out:
        return subprocess.Popen([str(BIN / "asr-scheduler"), "serve", "--model",
                                 str(models_dir / "sensevoice-tiny"), "--host", "127.0.0.1"],
                                env=env, stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True)


def kill_group(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(30)


def lines(path: Path) -> int:
    return len(path.read_text(encoding="utf-8").splitlines()) if path.exists() else 0


def test_run_completes_across_a_server_kill_and_restart(models_dir: Path,
                                                        tmp_path: Path) -> None:
    corpus = tmp_path / "in"
    first = espeak_wav(" ".join(SENTENCES), corpus / "f00.wav")
    for i in range(1, FILES):
        shutil.copy(first, corpus / f"f{i:02d}.wav")
    port = free_port()
    address = f"127.0.0.1:{port}"
    log = tmp_path / "serve.log"
    server = serve(models_dir, port, log)
    out = tmp_path / "all.jsonl"
    client = None
    try:
        wait_serving(address, server, timeout=300)
        client = subprocess.Popen(
            [str(BIN / "asr-client"), "transcribe", corpus, "--server", address, "--format",
             "jsonl", "-o", str(out), "--concurrency", "1", "--retries", "60", "-v"],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        deadline = time.monotonic() + 300
        while lines(out) < 3 and time.monotonic() < deadline and client.poll() is None:
            time.sleep(0.05)
        kill_group(server)
        done_at_kill = lines(out)
        assert client.poll() is None and 3 <= done_at_kill < FILES, "not killed mid-run"
        time.sleep(2)  # the client meets a dead port for a while
        server = serve(models_dir, port, log)
        _, stderr = client.communicate(timeout=600)
        assert client.returncode == 0, stderr[-3000:]
    finally:
        if client is not None and client.poll() is None:
            client.kill()
        kill_group(server)
    records = [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]
    assert sorted(r["file"] for r in records) == sorted(str(p) for p in corpus.iterdir())
    assert len({r["text"] for r in records}) == 1 and records[0]["text"]
    assert "UNAVAILABLE" in stderr and "retry" in stderr, stderr[-3000:]
    assert f"transcribed {FILES} of {FILES} files" in stderr
