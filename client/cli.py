"""`asr-client`: transcribe files or directories, show service status, clear GPU caches.

Examples:
  asr-client transcribe talk.wav --format json
  asr-client transcribe recordings/ --output-dir out/ --concurrency 16
  asr-client status
  asr-client clear-cache --device cuda:0
  asr-client --server dns:///asr-scheduler-headless.asr.svc.cluster.local:50051 \\
      --load-balancing round_robin transcribe recordings/ --concurrency 32
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor, as_completed
from pathlib import Path

import grpc
from rich.console import Console
from rich.progress import Progress
from rich.table import Table

from client.library import (
    LOAD_BALANCING,
    AsrClient,
    TranscribeOptions,
    default_server,
    result_to_dict,
)

AUDIO_SUFFIXES = {".wav", ".flac", ".mp3", ".ogg", ".opus", ".m4a", ".aac", ".mp4", ".webm",
                  ".pcm", ".raw", ".s16le", ".aiff", ".aif"}


def expand(paths: list[str]) -> Iterator[Path]:
    """Files as given; directories walked for audio files, sorted."""
    for p in map(Path, paths):
        if p.is_dir():
            yield from sorted(f for f in p.rglob("*")
                              if f.is_file() and f.suffix.lower() in AUDIO_SUFFIXES)
        else:
            yield p


def _describe(exc: Exception) -> str:
    if isinstance(exc, grpc.RpcError):
        return f"{exc.code().name}: {exc.details()}"  # type: ignore[attr-defined]
    return f"{type(exc).__name__}: {exc}"


def _emit(record: dict[str, object], fmt: str, output_dir: Path | None) -> None:
    if output_dir is not None:
        output_dir.mkdir(parents=True, exist_ok=True)
        stem = Path(str(record["file"])).name
        if fmt == "json":
            (output_dir / f"{stem}.json").write_text(json.dumps(record, ensure_ascii=False) + "\n")
        else:
            (output_dir / f"{stem}.txt").write_text(f"{record['text']}\n")
        return
    if fmt == "json":
        print(json.dumps(record, ensure_ascii=False), flush=True)
    else:
        print(f"{record['file']}\t{record['text']}", flush=True)


def cmd_transcribe(client: AsrClient, args: argparse.Namespace) -> int:
    files = list(expand(args.files))
    if not files:
        print("no audio files found", file=sys.stderr)
        return 2
    opts = TranscribeOptions(language=args.language, enable_itn=args.itn,
                             hotwords=args.hotword or [], sample_rate=args.sample_rate,
                             channels=args.channels)
    failures = 0
    err = Console(stderr=True)
    show_progress = len(files) > 1 and err.is_terminal
    with ThreadPoolExecutor(max_workers=max(1, args.concurrency)) as pool, \
            Progress(console=err, disable=not show_progress) as progress:
        task = progress.add_task("transcribing", total=len(files))
        futures = {pool.submit(client.transcribe_file, f, opts, args.timeout): f for f in files}
        for fut in as_completed(futures):
            path = futures[fut]
            try:
                _emit(result_to_dict(str(path), fut.result()), args.format, args.output_dir)
            except Exception as exc:
                failures += 1
                print(f"{path}: {_describe(exc)}", file=sys.stderr)
            progress.advance(task)
    return 1 if failures else 0


def cmd_status(client: AsrClient, args: argparse.Namespace) -> int:
    st = client.status()
    if args.format == "json":
        from google.protobuf.json_format import MessageToDict

        print(json.dumps(MessageToDict(st), indent=2))
        return 0
    table = Table(title=f"{st.model} (v{st.version}, cpu fallback {st.cpu_fallback}, "
                        f"queue {st.queue_depth}/{st.queue_capacity})")
    for col in ("device", "memory", "util", "accepting", "worker", "pid", "state", "in flight",
                "served", "restarts"):
        table.add_column(col)
    for d in st.devices:
        mem = (f"{d.memory_used_bytes / 2**30:.1f}/{d.memory_total_bytes / 2**30:.1f} GiB"
               if d.memory_total_bytes else "-")
        util = f"{d.utilization_percent}%" if d.utilization_percent >= 0 else "-"
        for w in d.workers or [None]:
            table.add_row(d.name, mem, util, "yes" if d.accepting else "no",
                          *(["-"] * 6 if w is None else [
                              w.worker_id, str(w.pid), w.state, str(w.in_flight),
                              str(w.served), str(w.restarts)]))
    Console().print(table)
    if st.fallbacks:
        print("fallbacks: " + ", ".join(f"{f.reason}={f.count}" for f in st.fallbacks))
    return 0


def cmd_clear_cache(client: AsrClient, args: argparse.Namespace) -> int:
    for r in client.clear_cache(args.device).results:
        print(f"{r.worker_id}: reserved {r.reserved_before_bytes} -> {r.reserved_after_bytes} "
              "bytes")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="asr-client", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--server", default=None, help="HOST:PORT (env ASR_SERVER)")
    parser.add_argument("--token", default=None, help="bearer token (env ASR_TOKEN)")
    parser.add_argument("--tls-ca", default=None, help="CA bundle for TLS (env ASR_TLS_CA)")
    parser.add_argument("--tls-cert", default=None,
                        help="client certificate for mTLS (env ASR_TLS_CERT)")
    parser.add_argument("--tls-key", default=None, help="its private key (env ASR_TLS_KEY)")
    parser.add_argument("--load-balancing", default=None, choices=LOAD_BALANCING,
                        help="round_robin: spread calls over every replica --server resolves "
                             "to, e.g. dns:///asr-scheduler-headless.NAMESPACE.svc."
                             "cluster.local:50051 (env ASR_LOAD_BALANCING; default "
                             "pick_first)")
    sub = parser.add_subparsers(dest="command", required=True)
    tr = sub.add_parser("transcribe", help="transcribe files or directories")
    tr.add_argument("files", nargs="+")
    tr.add_argument("--format", choices=("text", "json"), default="text")
    tr.add_argument("--output-dir", type=Path, default=None,
                    help="write one .txt/.json per file here instead of stdout")
    tr.add_argument("--concurrency", type=int, default=4)
    tr.add_argument("--language", default="auto")
    tr.add_argument("--itn", action="store_true", help="inverse text normalisation")
    tr.add_argument("--hotword", action="append", help="hotword (repeatable)")
    tr.add_argument("--sample-rate", type=int, default=0, help="rate of raw .pcm files")
    tr.add_argument("--channels", type=int, default=1, help="channels of raw .pcm files")
    tr.add_argument("--timeout", type=float, default=None, help="seconds per file")
    st = sub.add_parser("status", help="devices, workers, queues")
    st.add_argument("--format", choices=("table", "json"), default="table")
    cc = sub.add_parser("clear-cache", help="free cached GPU memory")
    cc.add_argument("--device", default="", help="e.g. cuda:0 (default: all)")
    return parser


COMMANDS = {"transcribe": cmd_transcribe, "status": cmd_status, "clear-cache": cmd_clear_cache}


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    server = args.server or default_server()
    token = args.token or os.environ.get("ASR_TOKEN", "")
    tls_ca = args.tls_ca or os.environ.get("ASR_TLS_CA", "")
    tls_cert = args.tls_cert or os.environ.get("ASR_TLS_CERT", "")
    tls_key = args.tls_key or os.environ.get("ASR_TLS_KEY", "")
    balancing = args.load_balancing or os.environ.get("ASR_LOAD_BALANCING", "pick_first")
    if balancing not in LOAD_BALANCING:
        print(f"asr-client: ASR_LOAD_BALANCING={balancing!r}: expected one of "
              f"{', '.join(LOAD_BALANCING)}", file=sys.stderr)
        return 2
    with AsrClient(server, token, tls_ca, tls_cert, tls_key, balancing) as client:
        try:
            return COMMANDS[args.command](client, args)
        except grpc.RpcError as exc:
            print(f"asr-client {args.command}: {_describe(exc)}", file=sys.stderr)
            return 1
