"""The public proto as a contract: `buf lint` is clean (exceptions justified in buf.yaml) and
`buf breaking` finds no change that would break clients of the released proto
(protos/released/, see its README for why a committed copy)."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
BUF = Path(sys.executable).parent / "buf"
PROTO = ROOT / "protos" / "asr" / "v1" / "asr.proto"
RELEASED = ROOT / "protos" / "released"


def buf(*args: str | Path, cwd: Path = ROOT) -> subprocess.CompletedProcess[str]:
    exe = str(BUF) if BUF.exists() else shutil.which("buf")
    if exe is None:
        pytest.fail("buf is missing: `pip install buf-bin` (in the test extra)")
    return subprocess.run([exe, *map(str, args)], cwd=cwd, capture_output=True, text=True,
                          timeout=300)


def released_copy(dst: Path) -> Path:
    """The released tree outside the workspace (buf refuses inputs inside a module)."""
    return Path(shutil.copytree(RELEASED, dst / "released"))


def test_buf_lint_is_clean() -> None:
    run = buf("lint")
    assert run.returncode == 0, run.stdout + run.stderr


def test_no_breaking_change_against_the_release(tmp_path: Path) -> None:
    run = buf("breaking", "--against", released_copy(tmp_path))
    assert run.returncode == 0, run.stdout + run.stderr


@pytest.mark.parametrize(("old", "new", "complaint"), [
    ("  int64 count = 2;", "  int32 count = 2;", 'changed type from "int64" to "int32"'),
    ("  string fallback_reason = 5;", "  reserved 5;", 'Previously present field "5"'),
    ("  rpc ClearCache(ClearCacheRequest) returns (ClearCacheResponse);", "",
     'Previously present RPC "ClearCache"'),
])
def test_buf_breaking_catches_a_breaking_edit(tmp_path: Path, old: str, new: str,
                                              complaint: str) -> None:
    """The check has teeth: the same command fails on a copy of the repo with a bad edit."""
    work = tmp_path / "repo"
    (work / "protos" / "asr" / "v1").mkdir(parents=True)
    shutil.copy(ROOT / "buf.yaml", work / "buf.yaml")
    text = PROTO.read_text()
    assert text.count(old) == 1
    (work / "protos" / "asr" / "v1" / "asr.proto").write_text(text.replace(old, new))
    run = buf("breaking", "--against", released_copy(tmp_path), cwd=work)
    assert run.returncode != 0 and complaint in run.stdout, run.stdout + run.stderr


def test_released_copy_is_the_proto_of_its_commit() -> None:
    commit = (RELEASED / "RELEASE_COMMIT").read_text().strip()
    assert len(commit) == 40
    shown = subprocess.run(["git", "show", f"{commit}:protos/asr/v1/asr.proto"], cwd=ROOT,
                           capture_output=True, timeout=60)
    if shown.returncode != 0:
        pytest.skip(f"commit {commit[:12]} is not in this clone's history (shallow clone)")
    assert shown.stdout == (RELEASED / "asr" / "v1" / "asr.proto").read_bytes()
