"""`asr-client transcribe`: many files, bounded concurrency, progress, outputs, resume, summary.

Results go either to one file per input under `--output-dir` (see `client.inputs`) or to one
combined stream (stdout or `--output FILE`): CSV with a header and one row per file, JSON
lines, or `file<TAB>text` lines. Failures are named with their reason on stderr, counted in
the summary and make the exit status 1.
"""

from __future__ import annotations

import csv
import json
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from rich.console import Console
from rich.progress import (
    BarColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

from client import formats
from client.errors import AsrError
from client.inputs import Job, Manifest, expand, plan_outputs
from client.library import AsrClient
from client.options import TranscribeOptions
from client.types import Transcript


class UsageError(Exception):
    """A combination of options that cannot work (exit status 2)."""


@dataclass
class Tally:
    """Counts and figures of a run, for the progress bar and the summary."""

    total: int = 0
    done: int = 0
    failed: list[tuple[str, str]] = field(default_factory=list)
    skipped: int = 0
    audio_s: float = 0.0
    started: float = field(default_factory=time.monotonic)

    @property
    def rtfx(self) -> float:
        """Audio seconds transcribed per wall-clock second of the run."""
        wall = time.monotonic() - self.started
        return self.audio_s / wall if wall > 0 else 0.0

    def summary(self) -> str:
        """One line: files, failures, skipped, audio hours, wall time, RTFx."""
        wall = time.monotonic() - self.started
        parts = [f"transcribed {self.done} of {self.total} files"]
        if self.failed:
            parts.append(f"{len(self.failed)} failed")
        if self.skipped:
            parts.append(f"{self.skipped} skipped (already done)")
        return (", ".join(parts) + f"; {self.audio_s / 3600:.3f} h of audio in {wall:.1f} s "
                f"(RTFx {self.rtfx:.1f})")


def describe(exc: BaseException) -> str:
    """A failure's reason: `CODE: message` for service errors."""
    if isinstance(exc, AsrError):
        return str(exc)
    if isinstance(exc, OSError):
        return f"{exc.strerror or type(exc).__name__}"
    return f"{type(exc).__name__}: {exc}"


class CombinedSink:
    """All results in one stream: stdout or a file (`--output`), resumable for csv/jsonl."""

    def __init__(self, fmt: str, output: Path | None, resume: bool) -> None:
        self.fmt = fmt
        self.done: set[str] = set()
        self.out: IO[str]
        if resume and (output is None or fmt not in ("csv", "json", "jsonl")):
            raise UsageError("--resume needs --output-dir, or --output FILE with --format "
                             "csv, json or jsonl")
        header = fmt == "csv"
        if output is None:
            self.out = sys.stdout
        else:
            kept = self._kept(output) if resume and output.exists() else []
            output.parent.mkdir(parents=True, exist_ok=True)
            self.out = output.open("w", encoding="utf-8", newline="")
            if header:
                self.out.write(formats.csv_text([]))
                header = False
            for line in kept:
                self.out.write(line)
        if header:
            self.out.write(formats.csv_text([]))
        self.out.flush()

    def _kept(self, output: Path) -> list[str]:
        """Complete records of an earlier run (and mark their files done)."""
        text = output.read_text(encoding="utf-8", errors="replace")
        kept: list[str] = []
        if self.fmt == "csv":
            rows = list(csv.reader(text.splitlines()))
            for row in rows[1:]:
                if len(row) == len(formats.CSV_COLUMNS) and row[-2] == formats.STATUS_OK:
                    self.done.add(row[0])
                    kept.append(formats.csv_text([row], header=False))
            return kept
        for line in text.splitlines():
            try:
                record = json.loads(line)
            except ValueError:
                continue
            if isinstance(record, dict) and "file" in record and "text" in record:
                self.done.add(str(record["file"]))
                kept.append(line + "\n")
        return kept

    def result(self, job: Job, t: Transcript) -> None:
        """Write one file's result."""
        if self.fmt == "csv":
            self.out.write(formats.csv_text([formats.csv_row(t, job.name)], header=False))
        elif self.fmt in ("json", "jsonl"):
            self.out.write(formats.json_line(t, job.name) + "\n")
        elif self.fmt == "text":
            self.out.write(f"{job.name}\t{t.text}\n")
        else:
            self.out.write(formats.render(self.fmt, t, job.name))
        self.out.flush()

    def failure(self, job: Job, reason: str) -> None:
        """Record a failed file (a `failed` row in CSV; other formats: stderr only)."""
        if self.fmt == "csv":
            self.out.write(formats.csv_text([formats.csv_row(None, job.name, reason)],
                                            header=False))
            self.out.flush()

    def close(self) -> None:
        """Close the output file (not stdout)."""
        if self.out is not sys.stdout:
            self.out.close()


def _say(console: Console, line: str) -> None:
    """One line on stderr, never wrapped or styled (paths and messages stay greppable)."""
    console.print(line, soft_wrap=True, markup=False, highlight=False)


def _progress(console: Console, enabled: bool) -> Progress:
    return Progress(
        TextColumn("[bold]transcribing"), BarColumn(bar_width=20),
        TextColumn("{task.fields[files]} files"), TextColumn("{task.fields[hours]} h"),
        TextColumn("RTFx {task.fields[rtfx]}"), TimeElapsedColumn(),
        TextColumn("ETA"), TimeRemainingColumn(),
        console=console, disable=not enabled, transient=False)


@dataclass
class Plan:
    """What a run does: the jobs still to do, and where their results go."""

    todo: list[Job]
    sink: CombinedSink | None = None  # one combined stream (stdout or --output)
    manifest: Manifest | None = None  # or one file per input under --output-dir

    def write(self, fmt: str, job: Job, t: Transcript) -> None:
        """Store one file's result."""
        if self.manifest is not None:
            self.manifest.write(job, formats.render(fmt, t, job.name))
        elif self.sink is not None:
            self.sink.result(job, t)


def plan(args: Any, jobs: list[Job]) -> Plan:
    """Outputs for the jobs and, with --resume, the jobs already done (left out)."""
    fmt = args.format
    if args.output_dir is not None:
        if args.output is not None:
            raise UsageError("give --output-dir or --output, not both")
        plan_outputs(jobs, args.output_dir, formats.EXTENSIONS[fmt])
        manifest = Manifest(args.output_dir)
        return Plan([j for j in jobs if not (args.resume and manifest.is_complete(j))],
                    manifest=manifest)
    if fmt in ("srt", "vtt") and len(jobs) > 1:
        raise UsageError(f"--format {fmt} writes one document per input: give --output-dir")
    sink = CombinedSink(fmt, args.output, args.resume)
    return Plan([j for j in jobs if j.name not in sink.done], sink=sink)


def run(client: AsrClient, args: Any, opts: TranscribeOptions) -> int:
    """The `transcribe` command with recognition options `opts`; returns the exit status."""
    err = Console(stderr=True)
    jobs, missing = expand(args.files)
    tally = Tally(total=len(jobs) + len(missing))
    p = plan(args, jobs)
    tally.skipped = len(jobs) - len(p.todo)
    for arg, reason in missing:
        tally.failed.append((arg, reason))
        _say(err, f"FAILED {arg}: {reason}")
        if p.sink is not None:
            p.sink.failure(Job(Path(arg), 0, Path(arg)), reason)
    by_name = {j.name: j for j in p.todo}
    show = err.is_terminal and not args.no_progress and bool(p.todo)
    finished = 0
    try:
        with _progress(err, show) as progress:
            task = progress.add_task("", total=sum(j.size for j in p.todo) or 1,
                                     files=f"0/{len(p.todo)}", hours="0.000", rtfx="-")
            for item in client.transcribe_many(list(by_name), opts,
                                               concurrency=args.concurrency,
                                               timeout=args.timeout):
                job = by_name[str(item.source)]
                finished += 1
                if item.transcript is not None:
                    p.write(args.format, job, item.transcript)
                    tally.done += 1
                    tally.audio_s += item.transcript.timings.audio_duration_s
                else:
                    reason = describe(item.error or RuntimeError("unknown"))
                    tally.failed.append((job.name, reason))
                    if p.sink is not None:
                        p.sink.failure(job, reason)
                    _say(progress.console, f"FAILED {job.name}: {reason}")
                progress.update(task, advance=job.size, files=f"{finished}/{len(p.todo)}",
                                hours=f"{tally.audio_s / 3600:.3f}", rtfx=f"{tally.rtfx:.1f}")
    finally:
        if p.sink is not None:
            p.sink.close()
    if not args.quiet:
        _say(err, tally.summary())
        for name, reason in tally.failed:
            _say(err, f"  failed: {name}: {reason}")
    return 1 if tally.failed else 0


__all__ = ["CombinedSink", "Plan", "Tally", "UsageError", "plan", "run"]
