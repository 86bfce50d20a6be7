"""Inputs and outputs of a batch run: which files to transcribe, where each result goes, and
which results a resumed run can keep.

Directories are walked recursively for audio files. With `--output-dir`, each input's result is
written to the output directory at the input's path relative to the inputs' common directory
(the input tree is mirrored), with the format's extension. Outputs are written atomically
(a temporary file, then rename), and each is recorded with its size and SHA-256 in a manifest
beside them, so `--resume` keeps exactly the outputs that exist and are complete.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)

AUDIO_SUFFIXES = frozenset({
    ".wav", ".flac", ".mp3", ".ogg", ".oga", ".opus", ".m4a", ".aac", ".mp4", ".webm", ".mkv",
    ".wma", ".amr", ".pcm", ".raw", ".s16le", ".aiff", ".aif", ".caf"})
MANIFEST = ".asr-client-manifest.jsonl"


@dataclass
class Job:
    """One input file: its path as the user named it, its size, and its output file."""

    path: Path
    size: int
    root: Path  # the directory argument it was found under, or its own parent
    out: Path | None = None

    @property
    def name(self) -> str:
        """The path as shown and recorded (`file` in JSON and CSV)."""
        return str(self.path)


def expand(args: list[str]) -> tuple[list[Job], list[tuple[str, str]]]:
    """Jobs for files and (recursively) directories, sorted per argument, duplicates removed;
    plus (argument, reason) for arguments that name nothing usable."""
    jobs: list[Job] = []
    missing: list[tuple[str, str]] = []
    seen: set[Path] = set()
    for arg in args:
        p = Path(arg)
        if p.is_dir():
            found = sorted(f for f in p.rglob("*")
                           if f.is_file() and f.suffix.lower() in AUDIO_SUFFIXES)
            if not found:
                missing.append((arg, "no audio files in this directory"))
            pairs = [(f, p) for f in found]
        elif p.is_file():
            pairs = [(p, p.parent)]
        else:
            missing.append((arg, "no such file or directory"))
            pairs = []
        for f, root in pairs:
            key = f.resolve()
            if key not in seen:
                seen.add(key)
                jobs.append(Job(f, f.stat().st_size, root))
    return jobs, missing


def plan_outputs(jobs: list[Job], output_dir: Path, extension: str) -> None:
    """Set each job's output path, mirroring the inputs' tree below `output_dir`.

    `a/b.wav` becomes `OUT/a/b<ext>`; when two inputs would share an output (`b.wav` and
    `b.mp3`), both keep their whole name (`b.wav<ext>`, `b.mp3<ext>`).
    """
    if not jobs:
        return
    roots = {str(j.root.resolve()) for j in jobs}
    base = Path(os.path.commonpath(sorted(roots)))
    rels = [j.path.resolve().relative_to(base) for j in jobs]
    plain = [r.with_suffix(extension) for r in rels]
    counts = Counter(plain)
    for job, rel, out in zip(jobs, rels, plain, strict=True):
        job.out = output_dir / (out if counts[out] == 1 else rel.with_name(rel.name + extension))


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        while block := f.read(1 << 20):
            h.update(block)
    return h.hexdigest()


class Manifest:
    """Record of the complete outputs in an output directory (one JSON line per output)."""

    def __init__(self, output_dir: Path) -> None:
        self.path = output_dir / MANIFEST
        self.entries: dict[str, dict[str, object]] = {}
        if self.path.exists():
            for line in self.path.read_text(encoding="utf-8", errors="replace").splitlines():
                try:
                    entry = json.loads(line)
                    self.entries[str(entry["output"])] = entry
                except (ValueError, KeyError, TypeError):
                    continue  # a line cut short by a crash: that output is redone

    def _key(self, out: Path) -> str:
        return os.path.relpath(out, self.path.parent)

    def is_complete(self, job: Job) -> bool:
        """True when the job's output exists and is exactly what a finished run wrote, for
        the same input (same size and modification time)."""
        assert job.out is not None
        entry = self.entries.get(self._key(job.out))
        if entry is None or not job.out.is_file():
            return False
        st = job.path.stat()
        return (entry.get("bytes") == job.out.stat().st_size
                and entry.get("input_bytes") == st.st_size
                and entry.get("input_mtime_ns") == st.st_mtime_ns
                and entry.get("sha256") == _sha256(job.out))

    def write(self, job: Job, text: str) -> None:
        """Write the job's output atomically and record it."""
        assert job.out is not None
        job.out.parent.mkdir(parents=True, exist_ok=True)
        data = text.encode("utf-8")
        part = job.out.with_name(job.out.name + ".part")
        part.write_bytes(data)
        os.replace(part, job.out)
        st = job.path.stat()
        entry = {"output": self._key(job.out), "bytes": len(data),
                 "sha256": hashlib.sha256(data).hexdigest(), "input": job.name,
                 "input_bytes": st.st_size, "input_mtime_ns": st.st_mtime_ns}
        self.entries[str(entry["output"])] = entry
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self.path.open("a", encoding="utf-8") as f:
            f.write(json.dumps(entry, ensure_ascii=False) + "\n")
