"""`asr-client`: transcribe files or directories, stream a file, show status, clear caches.

Examples:
  asr-client transcribe talk.wav --server gpu-host:50051 --format json
  asr-client transcribe recordings/ --output-dir out/ --format srt --concurrency 16 --resume
  asr-client transcribe recordings/ --format csv --output all.csv
  asr-client stream meeting.wav --realtime --format json
  arecord -f S16_LE -r 16000 | asr-client stream - --live --sample-rate 16000
  asr-client status
  asr-client clear-cache --device cuda:0
  asr-client --server dns:///asr-scheduler-headless.asr.svc.cluster.local:50051 \\
      --load-balancing round_robin transcribe recordings/ --concurrency 32

Connection options (--server, --token, --tls-*) may come before or after the command.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import sys
from dataclasses import asdict
from pathlib import Path

from client import batch, status_view
from client.errors import AsrError
from client.formats import FORMATS
from client.library import AsrClient, default_server
from client.options import LOAD_BALANCING, ChannelOptions, RetryPolicy, TranscribeOptions
from client.streaming import stream_command


def _connection_options() -> argparse.ArgumentParser:
    """Options accepted before and after the command (defaults: environment, then built-in)."""
    p = argparse.ArgumentParser(add_help=False)
    g = p.add_argument_group("connection")
    s = argparse.SUPPRESS  # so that a value given before the command is not reset after it
    g.add_argument("--server", default=s, help="HOST:PORT (env ASR_SERVER; localhost:50051)")
    g.add_argument("--token", default=s, help="bearer token (env ASR_TOKEN)")
    g.add_argument("--tls", action="store_true", default=s,
                   help="TLS with the system CA roots")
    g.add_argument("--tls-ca", default=s, help="CA bundle for TLS (env ASR_TLS_CA)")
    g.add_argument("--tls-cert", default=s, help="client certificate, mTLS (env ASR_TLS_CERT)")
    g.add_argument("--tls-key", default=s, help="its private key (env ASR_TLS_KEY)")
    g.add_argument("--tls-server-name", default=s,
                   help="name expected in the server certificate")
    g.add_argument("--load-balancing", choices=LOAD_BALANCING, default=s,
                   help="round_robin: spread calls over every replica --server resolves to, "
                   "e.g. dns:///asr-scheduler-headless.NAMESPACE.svc.cluster.local:50051, "
                   "skipping draining ones (env ASR_LOAD_BALANCING; default pick_first)")
    g.add_argument("--keepalive", type=float, default=s, metavar="SECONDS",
                   help="HTTP/2 keepalive ping interval (default off)")
    g.add_argument("--retries", type=int, default=s,
                   help="attempts per call on UNAVAILABLE/RESOURCE_EXHAUSTED/CANCELLED (default 8)")
    g.add_argument("-v", "--verbose", action="store_true", default=s, help="log retries")
    return p


def _recognition_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default="", help="served model name (see `status`)")
    p.add_argument("--language", default="auto")
    p.add_argument("--itn", action="store_true", help="inverse text normalisation")
    p.add_argument("--hotword", action="append", help="hotword (repeatable)")
    p.add_argument("--max-new-tokens", type=int, default=0, metavar="N",
                   help="cap on tokens an LLM-based model (Fun-ASR-Nano) generates per segment "
                   "(0: the server's)")
    p.add_argument("--sample-rate", type=int, default=0, help="rate of raw PCM input")
    p.add_argument("--channels", type=int, default=1, help="channels of raw PCM input")
    p.add_argument("--vad", choices=("auto", "always", "never"), default="auto",
                   help="voice activity segmentation")


def build_parser() -> argparse.ArgumentParser:
    """The whole command line."""
    common = _connection_options()
    parser = argparse.ArgumentParser(prog="asr-client", description=__doc__, parents=[common],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)

    tr = sub.add_parser("transcribe", parents=[common], help="transcribe files or directories")
    tr.add_argument("files", nargs="+", help="audio files and directories (recursive)")
    tr.add_argument("--format", choices=FORMATS, default="text")
    tr.add_argument("--output-dir", type=Path, default=None,
                    help="one output per input here, mirroring the input tree")
    tr.add_argument("-o", "--output", type=Path, default=None,
                    help="one combined file (csv, json/jsonl, text) instead of stdout")
    tr.add_argument("--resume", action="store_true",
                    help="skip inputs whose output exists and is complete")
    tr.add_argument("--concurrency", type=int, default=4, help="files in flight (default 4)")
    tr.add_argument("--timeout", type=float, default=None, help="seconds per file")
    tr.add_argument("--no-progress", action="store_true", help="no progress bar")
    tr.add_argument("-q", "--quiet", action="store_true", help="no summary")
    _recognition_options(tr)

    sm = sub.add_parser("stream", parents=[common], help="stream one file (or - for stdin)")
    sm.add_argument("file", help="audio file, or - for standard input")
    sm.add_argument("--realtime", action="store_true",
                    help="send audio at its real-time rate (WAV or raw PCM)")
    sm.add_argument("--format", choices=("text", "json"), default="text")
    sm.add_argument("--timeout", type=float, default=None)
    sm.add_argument("--live", action="store_true",
                    help="live mode: a streaming model recognises as the audio arrives "
                    "(interim lines update in place, a final line per utterance)")
    sm.add_argument("--final-model", default="",
                    help="live two-pass: served offline model for each utterance's final text")
    sm.add_argument("--end-silence-ms", type=int, default=0, metavar="MS",
                    help="live: silence after speech that ends an utterance, 200-6000 ms "
                    "(default 0: the VAD's own schedule, up to 2 s); shorter gives finals "
                    "sooner but may cut at pauses")
    _recognition_options(sm)

    st = sub.add_parser("status", parents=[common], help="devices, workers, models, queue")
    st.add_argument("--format", choices=("table", "json"), default="table")
    cc = sub.add_parser("clear-cache", parents=[common], help="free cached GPU memory")
    cc.add_argument("--device", default="", help="e.g. cuda:0 (default: all)")
    return parser


def channel_options(args: argparse.Namespace) -> ChannelOptions:
    """Connection settings: flags first, then ASR_* environment variables."""
    def pick(name: str, env: str) -> str:
        return str(getattr(args, name, None) or os.environ.get(env, ""))

    return ChannelOptions(
        server=pick("server", "ASR_SERVER") or default_server(),
        token=pick("token", "ASR_TOKEN"), tls=bool(getattr(args, "tls", False)),
        tls_ca=pick("tls_ca", "ASR_TLS_CA"), tls_cert=pick("tls_cert", "ASR_TLS_CERT"),
        tls_key=pick("tls_key", "ASR_TLS_KEY"),
        tls_server_name=str(getattr(args, "tls_server_name", "")),
        keepalive_s=float(getattr(args, "keepalive", 0.0)),
        load_balancing=pick("load_balancing", "ASR_LOAD_BALANCING") or "pick_first")


def recognition_options(args: argparse.Namespace) -> TranscribeOptions:
    """TranscribeOptions from the recognition flags."""
    return TranscribeOptions(
        language=args.language, enable_itn=args.itn, hotwords=tuple(args.hotword or ()),
        model=args.model, sample_rate=args.sample_rate, channels=args.channels,
        vad_mode=args.vad, max_new_tokens=args.max_new_tokens)


def cmd_status(client: AsrClient, args: argparse.Namespace) -> int:
    """Print the service status (a table fitting the terminal, or JSON)."""
    st = client.status()
    if args.format == "json":
        print(json.dumps(asdict(st), indent=2, ensure_ascii=False))
    else:
        sys.stdout.write(status_view.render(st, shutil.get_terminal_size((80, 24)).columns))
    return 0


def cmd_clear_cache(client: AsrClient, args: argparse.Namespace) -> int:
    """Clear allocator caches and print what each worker freed."""
    for r in client.clear_cache(args.device).results:
        freed = (r.reserved_before_bytes - r.reserved_after_bytes) / 2**20
        print(f"{r.worker_id}: reserved {r.reserved_before_bytes / 2**20:.1f} -> "
              f"{r.reserved_after_bytes / 2**20:.1f} MiB (freed {freed:.1f} MiB)")
    return 0


def cmd_transcribe(client: AsrClient, args: argparse.Namespace) -> int:
    """Transcribe files and directories (see `client.batch`)."""
    return batch.run(client, args, recognition_options(args))


def cmd_stream(client: AsrClient, args: argparse.Namespace) -> int:
    """Stream one file and print each result as it arrives."""
    return stream_command(client, args.file, recognition_options(args), args.realtime,
                          args.format, args.timeout, args.live, args.final_model,
                          args.end_silence_ms)


COMMANDS = {"transcribe": cmd_transcribe, "stream": cmd_stream, "status": cmd_status,
            "clear-cache": cmd_clear_cache}


def main(argv: list[str] | None = None) -> int:
    """Entry point of `asr-client`; returns the exit status (0 ok, 1 failures, 2 usage)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO if getattr(args, "verbose", False)
                        else logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    retry = RetryPolicy(max_attempts=max(1, int(getattr(args, "retries", 8))))
    try:
        with AsrClient(channel_options=channel_options(args), retry=retry,
                       options=TranscribeOptions()) as client:
            return COMMANDS[args.command](client, args)
    except batch.UsageError as exc:
        parser.error(str(exc))
    except AsrError as exc:
        print(f"asr-client {args.command}: {exc}", file=sys.stderr)
        return 1
    except OSError as exc:
        print(f"asr-client {args.command}: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    return 0  # not reached: parser.error exits
